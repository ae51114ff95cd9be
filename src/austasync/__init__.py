"""austasync: move a live MySQL database to a new home with zero downtime and zero data loss."""

__version__ = "0.1.0"
