"""Every error austasync raises on purpose, in one place.

The hierarchy says what the operator must do, not where the error came from. Exit codes are mapped from these
classes only in :mod:`austasync.cli`:

=====================  ====  =====================================================================
class                  exit  meaning
=====================  ====  =====================================================================
ConfigError            2     the configuration or the command line is wrong; nothing was started
UnavailableError       3     a server could not be reached or answered an error; retrying may help
SetupError             4     a server or schema is set up in a way austasync cannot replicate
TriggerError           4     triggers cannot be moved at cutover/rollback as they are (a SetupError)
DdlStop                10    the stream reached DDL on a replicated table under ``on_ddl = "stop"``
DriftError             11    the target holds data the source does not explain; never "fixed" silently
UncarryableValueError  12    an event or value cannot be carried exactly; stopped at a clean checkpoint
FencedError            13    another daemon took over the migration; this one must not write
BinlogPurgedError      14    the source purged a binlog the checkpoint needs; a re-copy is needed
=====================  ====  =====================================================================
"""

from __future__ import annotations


class AustasyncError(Exception):
    """Base of every error austasync raises on purpose. ``str()`` is the operator-facing message."""

    kind = "error"


class ConfigError(AustasyncError):
    """The configuration file, environment or command line is invalid."""

    kind = "config"


class UnavailableError(AustasyncError):
    """A server (source, target, Redis) is unreachable or refused us; transient from our point of view.

    Where it is known, which server (``server``: "source", "target" or "redis", and its ``address``), what was
    being done (``operation``) and the server's own error (``detail``: code and text) travel with it, so the
    daemon's reconnect log and metrics can say them without parsing the message.
    """

    kind = "unavailable"

    def __init__(
        self,
        message: str,
        *,
        server: str | None = None,
        address: str | None = None,
        operation: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.server = server
        self.address = address
        self.operation = operation
        self.detail = detail


class SetupError(AustasyncError):
    """Servers or schemas are configured in a way that cannot be replicated exactly (binlog format, keys...)."""

    kind = "setup"


class TriggerError(SetupError):
    """Triggers could not be moved with the direction of the stream; the message names trigger, table and fix."""

    kind = "triggers"


class StopError(AustasyncError):
    """The daemon stopped at a clean checkpoint and must not be restarted blindly into the same stop."""

    kind = "stop"


class DdlStop(StopError):
    """DDL on a replicated table under ``on_ddl = "stop"``; resolve it with ``austasync ddl``."""

    kind = "ddl_stop"


class DriftError(StopError):
    """The target disagrees with the source in a way only drift explains (unique-key collision, foreign write)."""

    kind = "drift"


class UncarryableValueError(StopError):
    """An event or a value that austasync cannot carry exactly; it refuses to write a guess."""

    kind = "uncarryable"


class FencedError(StopError):
    """This daemon's writer generation is stale (another daemon took over) or the target was promoted."""

    kind = "fenced"


class BinlogPurgedError(StopError):
    """The source no longer has the binlog the checkpoint points into."""

    kind = "binlog_purged"
