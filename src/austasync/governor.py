"""The source's signals the throttle keeps under budget, read fail-closed (issue 16's source governor, part 1).

One reading per throttle check, on the daemon's (or the verifier's) plain source connection:

- ``Threads_running`` (``[throttle] max_threads_running``);
- InnoDB's history list length, ``trx_rseg_history_len`` in ``information_schema.INNODB_METRICS``
  (``max_history_list_length``): undo the purge cannot remove yet, which long snapshots grow and which slows every
  reader of the source. Enabled by default on MariaDB 10.11 and MySQL 8; reading it needs ``PROCESS``;
- the latency of the daemon's own probe (``max_probe_ms``): a primary-key read of one row of
  ``mysql.innodb_table_stats``, timed. Not ``SELECT 1``: that never reaches the storage engine, so a source whose
  InnoDB is slow (buffer pool misses, mutex contention) answers it as fast as an idle one. This table is InnoDB on
  both servers, always there, and readable with the global ``SELECT`` the source user has.

Fail closed: a signal that cannot be read (no privilege, a disabled metric, an error of the server) is a reason to
throttle, naming the signal, the server's error and what to grant or change; it is never taken as "fine". A lost
connection is not absorbed here: it propagates like any other, so the daemon's reconnect handling sees it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymysql

from austasync.config import ThrottleConfig
from austasync.db import Connection, query, status

HISTORY_SQL = "SELECT * FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'"
PROBE_SQL = "SELECT database_name FROM mysql.innodb_table_stats ORDER BY database_name, table_name LIMIT 1"
#: client-side error numbers (lost connection, ...) start here; those propagate instead of throttling
_CLIENT_ERRORS = 2000


@dataclass(frozen=True)
class Reading:
    """One check of the source: why to throttle ("" = under budget) and the readings (NaN = unreadable)."""

    reason: str
    signal: str  # the metric label of the reason: threads_running, history_list, probe, or "" when none
    history_list_length: float = math.nan
    probe_seconds: float = math.nan


def read_source(conn: Connection, config: ThrottleConfig, clock: Callable[[], float] = time.perf_counter) -> Reading:
    """Read every enabled signal of ``config`` on ``conn``; the first over budget (or unreadable) is the reason."""
    reasons: list[tuple[str, str]] = []
    if config.max_threads_running:
        running = int(status(conn, "Threads_running") or 0)
        if running > config.max_threads_running:
            reasons.append(("threads_running", f"source Threads_running {running} > {config.max_threads_running}"))
    history = math.nan
    if config.max_history_list_length:
        history, why = _history(conn, config.max_history_list_length)
        if why:
            reasons.append(("history_list", why))
    probe = math.nan
    if config.max_probe_ms:
        probe, why = _probe(conn, config.max_probe_ms, clock)
        if why:
            reasons.append(("probe", why))
    signal, reason = reasons[0] if reasons else ("", "")
    return Reading(reason, signal, history, probe)


def _history(conn: Connection, limit: int) -> tuple[float, str]:
    try:
        with conn.cursor() as cur:
            cur.execute(HISTORY_SQL)
            names = [str(d[0]).upper() for d in cur.description or ()]
            row = cur.fetchone()
    except pymysql.err.MySQLError as exc:
        _reraise_client(exc)
        return math.nan, (
            f"source history list length unreadable ({_error(exc)}); grant PROCESS to the source user"
            f" (GRANT PROCESS ON *.* TO <user>) or set [throttle] max_history_list_length = 0 to stop watching it"
        )
    if row is None:
        return math.nan, "source history list length unreadable: INNODB_METRICS has no trx_rseg_history_len row"
    values: dict[str, Any] = dict(zip(names, row, strict=False))
    enabled = values.get("ENABLED", values.get("STATUS"))  # MariaDB: ENABLED 1/0; MySQL 8: STATUS enabled/disabled
    if str(enabled).lower() not in ("1", "enabled"):
        return math.nan, (
            "source history list length unreadable: the InnoDB metric trx_rseg_history_len is disabled; run"
            " SET GLOBAL innodb_monitor_enable = 'trx_rseg_history_len' on the source"
        )
    length = float(values["COUNT"])
    if length > limit:
        return length, f"source history list length {length:.0f} > {limit}"
    return length, ""


def _probe(conn: Connection, limit_ms: float, clock: Callable[[], float]) -> tuple[float, str]:
    started = clock()
    try:
        query(conn, PROBE_SQL)
    except pymysql.err.MySQLError as exc:
        _reraise_client(exc)
        return math.nan, (
            f"source probe query unreadable ({_error(exc)}); grant SELECT ON mysql.innodb_table_stats to the source"
            " user or set [throttle] max_probe_ms = 0 to stop probing"
        )
    seconds = clock() - started
    if seconds * 1000 > limit_ms:
        return seconds, f"source probe {seconds * 1000:.0f} ms > {limit_ms:g} ms"
    return seconds, ""


def _reraise_client(exc: pymysql.err.MySQLError) -> None:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    if code >= _CLIENT_ERRORS or code == 0:
        raise exc


def _error(exc: BaseException) -> str:
    args = tuple(getattr(exc, "args", ()))
    return f"error {args[0]}: {args[1]}" if len(args) >= 2 else (str(exc) or type(exc).__name__)
