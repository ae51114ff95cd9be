"""``austasync run``: copy the selected schemas while streaming the binlog, then keep streaming.

Start-up order matters (DESIGN.md rules 2, 7, 11): check the source, take the Redis lease, fence the target
(bump the writer generation), create the target schema, persist P0 *before* anything is copied, start the binlog
reader at the checkpoint, and only then copy, each chunk at the barrier.
"""

from __future__ import annotations

import contextlib
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from austasync import log as logmod
from austasync.applier import Applier
from austasync.binlog.adapter import BinlogReader
from austasync.config import Config
from austasync.copier import SnapshotReader
from austasync.db import (
    CONNECTION_LOST,
    Connection,
    connect,
    query,
    server_flavor,
    setup_source_session,
    setup_target_session,
    status,
    variable,
)
from austasync.errors import (
    BinlogPurgedError,
    DdlStop,
    FencedError,
    SetupError,
    UnavailableError,
    UncarryableValueError,
)
from austasync.events import (
    Begin,
    Boundary,
    Commit,
    Event,
    Heartbeat,
    ReaderFailed,
    Rows,
    SkippedRows,
    Statement,
)
from austasync.mirror import Mirror
from austasync.position import Position
from austasync.schema import (
    ForeignKey,
    Table,
    TableId,
    check_foreign_keys,
    ensure_target,
    load_foreign_keys,
    load_tables,
)
from austasync.state import CopyCursor, TargetState, connection_id, holder_name

ALIVE_TTL_SECONDS = 10.0
_DML = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|LOAD\s+DATA)\b", re.IGNORECASE)
_DDL = re.compile(
    r"^\s*(CREATE|ALTER|DROP|RENAME|TRUNCATE)\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?"
    r"(TABLE|DATABASE|SCHEMA|INDEX|UNIQUE\s+INDEX|FULLTEXT\s+INDEX|SPATIAL\s+INDEX|VIEW|TRIGGER|PROCEDURE|FUNCTION|EVENT)\b",
    re.IGNORECASE,
)
_IGNORABLE_IN_TXN = re.compile(r"^\s*(SAVEPOINT|RELEASE\s+SAVEPOINT|ROLLBACK\s+TO)\b", re.IGNORECASE)
_COMMENT = re.compile(r"/\*(?!!).*?\*/|^\s*(--|#)[^\n]*\n", re.DOTALL)


@dataclass
class Throttle:
    active: bool = False
    reason: str = ""
    checked: float = 0.0


def check_source(conn: Connection) -> list[str]:
    """The source settings austasync cannot work without; each item says what to change."""
    problems = []
    flavor, version = server_flavor(conn)
    if flavor == "mysql" and version < (8, 0, 14):
        problems.append(f"MySQL {'.'.join(map(str, version))} is too old: binlog_row_metadata=FULL needs 8.0.14+")
    if flavor == "mariadb" and version < (10, 5):
        problems.append(f"MariaDB {'.'.join(map(str, version))} is too old: binlog_row_metadata needs 10.5+")
    expected = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}
    for name, want in expected.items():
        have = variable(conn, name)
        if (have or "").upper() != want:
            problems.append(f"source {name} is {have or 'unset'}; set {name}={want} in the source's my.cnf")
    return problems


class Daemon:
    """The long-running copy-and-stream process. Inject ``clock`` and ``sleep`` to test timing."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        progress: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.log = logmod.get("austasync.run")
        self.progress = progress if progress is not None else (sys.stderr if sys.stderr.isatty() else None)
        self._stop = threading.Event()
        self.mirror = Mirror(config.redis, config.replication.name)
        self.state = TargetState(config.replication.state_schema, config.replication.name)
        self.phase = "starting"
        self.throttle = Throttle()
        self.cursors: dict[TableId, CopyCursor] = {}
        self.source_head: Position | None = None
        self.last_publish = 0.0
        self.last_consumed_ts: int | None = None
        self._conns: list[Any] = []
        self.ready_callback: Callable[[], None] | None = None

    def request_stop(self) -> None:
        """Stop at the next clean point (SIGTERM)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- set-up -----------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped; raises a :class:`StopError` subclass when it must stop at a checkpoint."""
        self.mirror.ping()
        source = connect(self.config.source, "source")
        setup_source_session(source)
        self._conns.append(source)
        problems = check_source(source)
        if problems:
            raise SetupError("the source is not set up for row-based replication:\n  " + "\n  ".join(problems))
        tables = load_tables(source, self.config)
        if not tables:
            raise SetupError(
                f"no table selected in {', '.join(self.config.replication.databases)} on the source; check"
                " replication.databases and the include/exclude lists"
            )
        fks = check_foreign_keys(tables, load_foreign_keys(source, tables))
        self._acquire_lease()
        try:
            self._run_with_lease(source, tables, fks)
        finally:
            self._close()
            with contextlib.suppress(Exception):  # Redis down at exit: the lease expires by itself
                self.mirror.release_lease()

    def _acquire_lease(self) -> None:
        def waiting(holder: str) -> None:
            self.log.info("lease held by another daemon; waiting", holder=holder)

        got = self.mirror.acquire_lease(
            holder_name(),
            self.config.replication.lease_seconds,
            wait=True,
            on_wait=waiting,
            should_stop=lambda: self.stopping,
        )
        if not got:
            raise UnavailableError("stopped while waiting for the migration's lease")

    def _run_with_lease(self, source: Connection, tables: dict[TableId, Table], fks: list[ForeignKey]) -> None:
        admin = connect(self.config.target, "target")
        self._conns.append(admin)
        writer = connect(self.config.target, "target", autocommit=False)
        self._conns.append(writer)
        setup_target_session(writer)
        self.state.ensure_schema(writer)
        generation = self.state.take_over(writer, [connection_id(writer), connection_id(admin)])
        self.log.info("fenced the target", generation=generation)
        checkpoint = self.state.load(writer)
        if checkpoint is not None and checkpoint.pending_stop:
            raise DdlStop(_ddl_message(checkpoint.pending_stop))
        created = ensure_target(source, admin, self.config, tables)
        if created:
            self.log.info("created target tables", count=created)
        if checkpoint is None:
            p0 = _master_position(source)
            self.state.init(writer, p0, [(t.db, t.name, t.rows_estimate) for t in tables.values()])
            self.log.info("persisted P0; the stream starts here", p0=str(p0))
            checkpoint = self.state.load(writer)
            if checkpoint is None:
                raise UnavailableError("the state row written a moment ago is not in the target; is it read-only?")
        else:
            self.state.add_tables(writer, [(t.db, t.name, t.rows_estimate) for t in tables.values()])
        _check_binlog_available(source, checkpoint.position)
        self.cursors = {(c.db, c.table): c for c in self.state.cursors(writer) if (c.db, c.table) in tables}
        applier = Applier(
            writer,
            self.state,
            tables,
            fks,
            dict(self.config.replication.rename),
            checkpoint.position,
            checkpoint.skip_events,
        )
        reader = BinlogReader(
            self.config.source,
            self.config.replication.server_id,
            tables,
            checkpoint.position,
            queue_size=self.config.apply.queue_max_events,
            heartbeat_seconds=self.config.replication.heartbeat_seconds,
            read_timeout_seconds=self.config.replication.read_timeout_seconds,
        )
        reader.start()
        snapshot = SnapshotReader(self.config.source) if any(not c.done for c in self.cursors.values()) else None
        self.phase = "copying" if snapshot else "streaming"
        applier.phase = self.phase
        self.log.info(
            "started",
            position=str(checkpoint.position),
            skip_events=checkpoint.skip_events,
            phase=self.phase,
            tables=len(tables),
        )
        if self.ready_callback:
            self.ready_callback()
        try:
            self._loop(source, applier, reader, snapshot, tables)
        except BaseException:
            applier.rollback()
            raise
        finally:
            reader.stop()
            if snapshot:
                snapshot.close()

    def _close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(Exception):  # closing on the way out; the server cleans up
                conn.close()
        self._conns = []

    # --- the loop ---------------------------------------------------------------------------------------------

    def _loop(
        self,
        source: Connection,
        applier: Applier,
        reader: BinlogReader,
        snapshot: SnapshotReader | None,
        tables: dict[TableId, Table],
    ) -> None:
        """The one long loop: housekeeping, a copy round when due, then stream events into batches.

        Every exit path leaves the target at a committed checkpoint: a SIGTERM commits the open batch (a split
        big transaction records how many of its events are applied), a stop raises after its checkpoint.
        """
        limits = self.config.apply
        while not self.stopping:
            self._housekeeping(source, applier)
            if snapshot is not None and not applier.in_txn and not self.throttle.active:
                if self._copy_round(applier, reader, snapshot, tables):
                    snapshot.close()
                    snapshot = None
                    self.phase = "streaming"
                    applier.commit(phase=self.phase)
                    self.log.info("copy complete; streaming")
                continue
            event = _next(reader, timeout=min(0.2, limits.batch_max_seconds))
            if event is None:
                if not applier.in_txn and applier.pending:
                    self._commit(applier)
                continue
            self._handle(event, applier)
            if self._batch_full(applier):
                self._commit(applier)
        applier.commit()
        self.log.info("stopped at a clean checkpoint", position=str(applier.committed), skip_events=applier.skip_events)
        self._publish(applier, force=True)

    def _batch_full(self, applier: Applier) -> bool:
        limits = self.config.apply
        stats = applier.stats
        if applier.in_txn:
            # a source transaction bigger than the batch: split it, bounded memory (rule 1)
            return stats.rows >= 4 * limits.batch_max_rows or stats.bytes >= limits.batch_max_bytes
        return (
            stats.rows >= limits.batch_max_rows
            or stats.bytes >= limits.batch_max_bytes
            or (applier.pending and self.clock() - stats.started >= limits.batch_max_seconds)
        )

    def _commit(self, applier: Applier) -> None:
        rows, txns = applier.stats.rows, applier.stats.transactions
        started = applier.stats.started
        position = applier.commit(phase=self.phase)
        if rows:
            self.log.debug(
                "batch applied",
                rows=rows,
                transactions=txns,
                position=str(position),
                seconds=round(self.clock() - started, 3),
            )

    def _handle(self, event: Event, applier: Applier) -> None:
        if isinstance(event, Rows):
            self.last_consumed_ts = event.timestamp
            applier.rows(event)
        elif isinstance(event, Commit):
            self.last_consumed_ts = event.timestamp
            applier.commit_seen(event.position, event.timestamp)
        elif isinstance(event, Begin):
            applier.begin(event.start)
        elif isinstance(event, SkippedRows):
            applier.skipped(event.seq)
        elif isinstance(event, Boundary):
            applier.boundary(event.position)
        elif isinstance(event, Heartbeat):
            self.source_head = event.position
        elif isinstance(event, Statement):
            self._statement(event, applier)
        elif isinstance(event, ReaderFailed):
            raise event.error

    # --- statements: DDL policy and statement-format DML (rule 9) ---------------------------------------------

    def _statement(self, event: Statement, applier: Applier) -> None:
        text = _COMMENT.sub("", event.query).strip()
        replicated = self._mentions_replicated(event.schema, text)
        if event.in_transaction:
            if _IGNORABLE_IN_TXN.match(text):
                return
            if _DML.match(text) and replicated:
                applier.rollback()
                raise UncarryableValueError(
                    f"DML logged as a statement at {event.position} (schema {event.schema}): {text[:200]!r}."
                    " It cannot be applied exactly; the session ran with binlog_format other than ROW."
                    " Fix the source and re-copy the affected tables"
                )
            return
        if _DML.match(text) and replicated:
            raise UncarryableValueError(
                f"DML logged as a statement at {event.position}: {text[:200]!r}; cannot be applied exactly"
            )
        if not (_DDL.match(text) and replicated):
            applier.boundary(event.position)
            return
        policy = self.config.replication.on_ddl
        if policy == "ignore":
            self.log.warning("DDL ignored by policy", statement=text[:500], position=str(event.position))
            applier.boundary(event.position)
            return
        applier.commit(phase=self.phase)
        stop = {"statement": event.query, "schema": event.schema, "start": str(event.start), "end": str(event.position)}
        if policy == "exec":
            raise UncarryableValueError(
                'on_ddl = "exec" is not implemented in this version; use "stop" and resolve with `austasync ddl`'
            )
        self.state.check_fence(applier.conn)
        self.state.save_stop(applier.conn, stop)
        query(applier.conn, "COMMIT")
        self.phase = "stopped_ddl"
        self._publish(applier, force=True)
        raise DdlStop(_ddl_message(stop))

    def _mentions_replicated(self, schema: str, text: str) -> bool:
        dbs = self.config.replication.databases
        if schema in dbs:
            return True
        lowered = text.lower()
        return any(f"{db.lower()}." in lowered or f"`{db.lower()}`" in lowered for db in dbs)

    # --- bulk copy at the barrier (rule 7) --------------------------------------------------------------------

    def _copy_round(
        self, applier: Applier, reader: BinlogReader, snapshot: SnapshotReader, tables: dict[TableId, Table]
    ) -> bool:
        """Copy chunks in one snapshot; True once every table is copied."""
        pending = [c for c in self.cursors.values() if not c.done]
        if not pending:
            return True
        applier.commit(phase=self.phase)
        round_tables = [tables[(c.db, c.table)] for c in pending]
        position = snapshot.open_snapshot(round_tables)
        try:
            if not self._advance_to(position, applier, reader):
                return False
            budget = self.clock() + self.config.copy.snapshot_seconds
            copied = 0
            started = self.clock()
            while pending and self.clock() < budget and not self.stopping:
                for cursor in list(pending):
                    table = tables[(cursor.db, cursor.table)]
                    chunk = snapshot.read_chunk(table, cursor.cursor, self.config.copy.chunk_rows)
                    new = applier.write_chunk(table, cursor, chunk.rows, chunk.last_key, chunk.is_last)
                    applier.commit(phase=self.phase)
                    self.cursors[(cursor.db, cursor.table)] = new
                    copied += len(chunk.rows)
                    self.log.info(
                        "chunk copied",
                        table=str(table),
                        rows=len(chunk.rows),
                        total=new.rows_copied,
                        done=new.done,
                        at=str(position),
                    )
                    pending = [c for c in self.cursors.values() if not c.done]
                    self._rate_limit(copied, started)
                    if self.clock() >= budget:
                        break
        finally:
            snapshot.close_snapshot()
        self._publish(applier)
        return not pending

    def _rate_limit(self, copied: int, started: float) -> None:
        ceiling = self.config.copy.max_rows_per_second
        if ceiling <= 0:
            return
        ahead = copied / ceiling - (self.clock() - started)
        if ahead > 0:
            self._stop.wait(ahead)

    def _advance_to(self, position: Position, applier: Applier, reader: BinlogReader) -> bool:
        """Apply the stream up to exactly ``position`` (a transaction boundary) and commit there."""
        while applier.in_txn or applier.position < position:
            if self.stopping:
                return False
            event = _next(reader, timeout=0.2)
            if event is None:
                continue
            self._handle(event, applier)
            if self._batch_full(applier):
                self._commit(applier)
        if applier.position != position:
            raise UncarryableValueError(
                f"the stream passed the snapshot position {position} without stopping on it (now at"
                f" {applier.position}); refusing to copy a chunk at the wrong point"
            )
        applier.commit(phase=self.phase)
        return True

    # --- housekeeping -----------------------------------------------------------------------------------------

    def _housekeeping(self, source: Connection, applier: Applier) -> None:
        now = self.clock()
        if now - self.throttle.checked >= self.config.throttle.check_interval_seconds:
            self.throttle.checked = now
            self._check_throttle(source)
            if not self.mirror.renew_lease(self.config.replication.lease_seconds):
                raise FencedError("lost the migration's lease to another daemon; stopping without writing")
        if now - self.last_publish >= 1.0:
            self._publish(applier)

    def _check_throttle(self, source: Connection) -> None:
        limit = self.config.throttle.max_threads_running
        reason = ""
        if limit:
            running = int(status(source, "Threads_running") or 0)
            if running > limit:
                reason = f"source Threads_running {running} > {limit}"
        lag = self.lag_seconds
        if not reason and lag is not None and lag > self.config.throttle.max_lag_seconds:
            reason = f"apply lag {lag:.0f}s > {self.config.throttle.max_lag_seconds:.0f}s"
        if reason != self.throttle.reason:
            self.log.info("throttle", active=bool(reason), reason=reason)
        self.throttle.active = bool(reason)
        self.throttle.reason = reason

    @property
    def lag_seconds(self) -> float:
        applier = getattr(self, "_applier_ref", None)
        ts = None
        if applier is not None and applier.stats.oldest_timestamp is not None:
            ts = applier.stats.oldest_timestamp
        if ts is None:
            return 0.0
        return max(0.0, self.wall() - float(ts))

    def _publish(self, applier: Applier, force: bool = False) -> None:
        self._applier_ref = applier
        self.last_publish = self.clock()
        tables = {
            f"{c.db}.{c.table}": {"rows_copied": c.rows_copied, "rows_estimated": c.rows_estimated, "done": c.done}
            for c in self.cursors.values()
        }
        doc = {
            "phase": self.phase,
            "position": str(applier.committed),
            "skip_events": applier.skip_events,
            "source_head": str(self.source_head) if self.source_head else None,
            "lag_seconds": round(self.lag_seconds, 3),
            "tables": tables,
            "throttle": {"active": self.throttle.active, "reason": self.throttle.reason},
            "holder": holder_name(),
            "generation": self.state.generation,
            "updated_at": self.wall(),
        }
        try:
            self.mirror.publish(doc, ALIVE_TTL_SECONDS)
        except Exception as exc:  # noqa: BLE001 (Redis is a mirror: losing it must not stop replication)
            if force:
                self.log.warning("could not publish status to Redis", error=type(exc).__name__)
        if self.progress is not None:
            done = sum(1 for c in self.cursors.values() if c.done)
            copied = sum(c.rows_copied for c in self.cursors.values())
            self.progress.write(
                f"\r{self.phase:<10} tables {done}/{len(self.cursors)} rows copied {copied:>10}"
                f" position {applier.committed} lag {self.lag_seconds:5.1f}s "
                f"{'THROTTLED: ' + self.throttle.reason if self.throttle.active else '':<40}"
            )
            self.progress.flush()


def _next(reader: BinlogReader, timeout: float) -> Event | None:
    try:
        return reader.events.get(timeout=timeout)
    except queue.Empty:
        return None


def _master_position(conn: Connection) -> Position:
    try:
        rows = query(conn, "SHOW BINARY LOG STATUS")
    except Exception:  # noqa: BLE001 (before MySQL 8.2 / on MariaDB the statement is SHOW MASTER STATUS)
        rows = query(conn, "SHOW MASTER STATUS")
    if not rows:
        raise SetupError("the source's binlog is off (SHOW MASTER STATUS is empty); set log_bin in its my.cnf")
    return Position(str(rows[0][0]), int(rows[0][1]))


def _check_binlog_available(conn: Connection, position: Position) -> None:
    files = [str(r[0]) for r in query(conn, "SHOW BINARY LOGS")]
    if position.file not in files:
        raise BinlogPurgedError(
            f"the source no longer has binlog {position.file}, which the checkpoint {position} needs (oldest is"
            f" {files[0] if files else 'none'}). The target cannot be caught up from the stream: start a re-copy"
            " with `austasync reset --config FILE`, then `austasync run`; raise binlog_expire_logs_seconds on the"
            " source so it does not happen again"
        )


def _ddl_message(stop: dict[str, Any]) -> str:
    return (
        f"DDL on a replicated table at source position {stop['start']}: {stop['statement'][:500]!r}."
        ' on_ddl = "stop": the target is checkpointed just before it. Apply the same change to the target'
        " yourself and run `austasync ddl --config FILE --skip`, or let austasync run it there with"
        " `austasync ddl --config FILE --exec`; then start `austasync run` again"
    )


def is_connection_error(exc: BaseException) -> bool:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    return bool(args) and isinstance(args[0], int) and args[0] in CONNECTION_LOST
