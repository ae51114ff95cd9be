"""Real throwaway servers for the test suite; the code lives in :mod:`austasync.demo.servers`, shared with the demo
and the benchmarks, and this module keeps the import path the tests use (``from servers import MariaDB``)."""

from __future__ import annotations

from austasync.demo.servers import SOURCE_BINLOG_OPTIONS, MariaDB, Redis, _which, free_port

__all__ = ["SOURCE_BINLOG_OPTIONS", "MariaDB", "Redis", "_which", "free_port"]
