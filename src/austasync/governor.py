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

- lock waits caused by this process's own source sessions (``watch_lock_waits``): sessions waiting for a row lock
  a transaction of ours holds (``INNODB_LOCK_WAITS`` joined to ``INNODB_TRX``), and sessions waiting for a table's
  metadata lock while a transaction of ours is open (the snapshot's shared metadata locks hold back an ``ALTER``,
  and every query queued behind it). Which sessions are ours is known exactly: each snapshot session registers
  its connection id (:func:`own_session`). A metadata-lock waiter cannot be tied to its blocker without
  ``performance_schema`` (off by default on MariaDB), so it counts as ours while one of ours is open: that can
  slow the copy for someone else's lock, never the other way round.

Below a limit, a signal past ``slow_from`` of it (80% by default) already slows the copy and verification: their
pace shrinks in proportion to what is left of the budget (:func:`pace_of`), so the source sees the migration back
off before a limit is crossed instead of only on/off.

Not watched: the lag of the source's other replicas. The source does not know it (``SHOW SLAVE HOSTS`` lists
their ids, not their position); only each replica's ``SHOW SLAVE STATUS`` does, which needs a connection and a
user on every replica. Until that is configured, replica lag is the operator's dashboard, not the governor's.

Fail closed: a signal that cannot be read (no privilege, a disabled metric, an error of the server) is a reason to
throttle, naming the signal, the server's error and what to grant or change; it is never taken as "fine". A lost
connection is not absorbed here: it propagates like any other, so the daemon's reconnect handling sees it.

The operator's pause (:class:`Pause`, ``austasync throttle --pause``) holds the copy and the daemon's verification
whatever the signals say, until resumed.
"""

from __future__ import annotations

import math
import threading
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
#: the slowest pace a signal below its limit asks for: a signal at 99.9% of its limit still lets the work move
MIN_PACE = 0.05
_MDL_WAIT = "Waiting for table metadata lock"
_UNKNOWN_TABLE = 1109

#: connection ids of this process's snapshot sessions on the source (the copy's, the verifier's, a repair's)
_own: set[int] = set()
_own_lock = threading.Lock()


def own_session(conn: Connection) -> None:
    """Register ``conn`` as one of this process's source sessions: a lock wait it causes throttles the work."""
    with _own_lock:
        _own.add(int(conn.thread_id()))  # type: ignore[no-untyped-call]


def forget_session(conn: Connection) -> None:
    with _own_lock:
        _own.discard(int(conn.thread_id()))  # type: ignore[no-untyped-call]


def own_sessions() -> list[int]:
    with _own_lock:
        return sorted(_own)


@dataclass(frozen=True)
class Reading:
    """One check of the source: why to throttle ("" = under budget) and the readings (NaN = unreadable)."""

    reason: str
    signal: str  # the metric label of the reason: threads_running, history_list, probe, lock_waits, or ""
    history_list_length: float = math.nan
    probe_seconds: float = math.nan
    #: share of full speed the work may take (1 = full; below 1 when a signal is past slow_from of its limit)
    pace: float = 1.0
    #: what slows it when ``pace`` < 1, e.g. "source probe 210 ms (84% of 250 ms)"
    slowed_by: str = ""
    lock_waits: float = math.nan  # waits on our sessions' locks; NaN: unreadable or not watched


def pace_of(value: float, limit: float, slow_from: float) -> float:
    """The pace a signal at ``value`` asks for: 1 up to ``slow_from`` of ``limit``, then in proportion to what is
    left of the budget (90% of the limit with slow_from 0.8: half speed), never under :data:`MIN_PACE`.

    Over the limit is not this function's business (that is a pause); a limit of 0 (not watched), an unread value
    or ``slow_from`` >= 1 (on/off only) ask for full speed."""
    if limit <= 0 or slow_from >= 1 or not math.isfinite(value):
        return 1.0
    start = slow_from * limit
    if value <= start:
        return 1.0
    return max(MIN_PACE, min(1.0, (limit - value) / (limit - start)))


def read_source(conn: Connection, config: ThrottleConfig, clock: Callable[[], float] = time.perf_counter) -> Reading:
    """Read every enabled signal of ``config`` on ``conn``; the first over budget (or unreadable) is the reason,
    and the pace is the slowest any signal below its limit asks for."""
    reasons: list[tuple[str, str]] = []
    paces: list[tuple[float, str]] = []
    if config.max_threads_running:
        shown = status(conn, "Threads_running")
        if shown is None or not shown.isdigit():
            # a signal that cannot be read counts as over budget, as the others do (never as 0 threads)
            reasons.append(("threads_running", f"source Threads_running cannot be read (got {shown!r})"))
            paces.append((0.0, "source Threads_running unreadable"))
        else:
            running = int(shown)
            if running > config.max_threads_running:
                reasons.append(("threads_running", f"source Threads_running {running} > {config.max_threads_running}"))
            paces.append(_slowed(running, config.max_threads_running, config.slow_from, "source Threads_running", ""))
    history = math.nan
    if config.max_history_list_length:
        history, why = _history(conn, config.max_history_list_length)
        if why:
            reasons.append(("history_list", why))
        paces.append(
            _slowed(history, config.max_history_list_length, config.slow_from, "source history list length", "")
        )
    probe = math.nan
    if config.max_probe_ms:
        probe, why = _probe(conn, config.max_probe_ms, clock)
        if why:
            reasons.append(("probe", why))
        paces.append(_slowed(probe * 1000, config.max_probe_ms, config.slow_from, "source probe", " ms"))
    waits = math.nan
    if config.watch_lock_waits:
        waits, why = own_lock_waits(conn)
        if why:
            reasons.append(("lock_waits", why))
    signal, reason = reasons[0] if reasons else ("", "")
    pace, slowed_by = min(paces, default=(1.0, ""), key=lambda p: p[0])
    return Reading(reason, signal, history, probe, pace, slowed_by if pace < 1 else "", waits)


def _slowed(value: float, limit: float, slow_from: float, what: str, unit: str) -> tuple[float, str]:
    pace = pace_of(value, limit, slow_from)
    if pace >= 1:
        return 1.0, ""
    return pace, f"{what} {value:.0f}{unit} ({100 * value / limit:.0f}% of {limit:g}{unit})"


def own_lock_waits(conn: Connection) -> tuple[float, str]:
    """(how many source sessions wait on a lock of one of our sessions, why to throttle or ""). Fail closed: an
    unreadable answer (no ``PROCESS``, a server without these tables) is a reason, naming the fix.

    Ask at most every few tenths of a second, from all callers together: InnoDB refreshes the cache behind
    ``INNODB_TRX`` and ``INNODB_LOCK_WAITS`` only when nobody read it for 0.1 s, so a faster poller (of any
    client) keeps reading the same stale rows."""
    ids = own_sessions()
    if not ids:
        return 0.0, ""  # no session of ours is open: no wait can be ours
    listed = ",".join(str(i) for i in ids)
    rest = (
        f" (SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id IN ({listed})),"
        # not our own sessions: one of ours waiting behind someone's DDL is no wait we cause
        f" (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE LIKE '{_MDL_WAIT}%'"
        f" AND ID NOT IN ({listed}))"
    )
    mariadb = (
        "SELECT (SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS w JOIN information_schema.INNODB_TRX b"
        f" ON b.trx_id = w.blocking_trx_id WHERE b.trx_mysql_thread_id IN ({listed})),{rest}"
    )
    # MySQL 8 moved the lock waits to performance_schema, by its own thread ids (not tested here: MariaDB only)
    mysql = (
        "SELECT (SELECT COUNT(*) FROM performance_schema.data_lock_waits w JOIN performance_schema.threads t"
        f" ON t.THREAD_ID = w.BLOCKING_THREAD_ID WHERE t.PROCESSLIST_ID IN ({listed})),{rest}"
    )
    try:
        try:
            row = query(conn, mariadb)[0]
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] != _UNKNOWN_TABLE:
                raise
            row = query(conn, mysql)[0]
    except pymysql.err.MySQLError as exc:
        _reraise_client(exc)
        return math.nan, (
            f"source lock waits unreadable ({_error(exc)}); grant PROCESS to the source user or set"
            " [throttle] watch_lock_waits = false to stop watching them"
        )
    row_waits, open_trx, mdl_waits = (int(v or 0) for v in row)
    waits = row_waits + (mdl_waits if open_trx else 0)
    if waits:
        parts = [f"{row_waits} on row locks of ours"] if row_waits else []
        if open_trx and mdl_waits:
            parts.append(f"{mdl_waits} on table metadata locks while a snapshot of ours is open")
        return float(waits), f"source sessions wait on the migration's locks: {', '.join(parts)}"
    return 0.0, ""


class Pause:
    """The operator's pause of the copy and the daemon's verification (``austasync throttle --pause``): set and
    cleared from the HTTP thread, read by the apply loop and the verifier thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._doc: dict[str, Any] | None = None

    def set(self, doc: dict[str, Any] | None) -> None:
        """``doc`` (who, when, why) pauses; None resumes."""
        with self._lock:
            self._doc = dict(doc) if doc is not None else None

    @property
    def doc(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._doc) if self._doc is not None else None

    @property
    def reason(self) -> str:
        """ "" when not paused, else what the logs and the verifier say."""
        doc = self.doc
        if doc is None:
            return ""
        why = f": {doc['note']}" if doc.get("note") else ""
        return f"paused by the operator ({doc.get('by') or 'unknown'}){why}; `austasync throttle --resume` resumes"


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
