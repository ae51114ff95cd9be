"""``austasync run``: copy the selected schemas while streaming the binlog, then keep streaming.

Start-up order matters: check the source, take the Redis lease, fence the target (bump the writer generation,
docs/DESIGN.md#rule-fencing), create the target schema, persist P0 *before* anything is copied
(docs/DESIGN.md#rule-target-truth), start the binlog reader at the checkpoint, and only then copy, each chunk at
the barrier (docs/DESIGN.md#rule-copy-barrier).
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import pymysql
import redis

from austasync import ddl_resume, foreign, governor, objects, preflight, readiness, sdnotify, startup_schema
from austasync import log as logmod
from austasync import repair as repairmod
from austasync.applier import Applier, ChunkWriter, LoadRefused
from austasync.binlog import outcomes, statements
from austasync.binlog import query as query_event
from austasync.binlog.adapter import BinlogReader, TargetWriteWatcher
from austasync.config import Config, control_token_problem, is_loopback_host, split_listen
from austasync.control import AUTO_RELEASE_SECONDS, Control, Request
from austasync.copier import Chunk, ChunkPrefetcher, SnapshotReader
from austasync.db import (
    CONNECTION_LOST,
    Connection,
    binlog_end,
    binlog_end_or_none,
    connect,
    query,
    server_flavor,
    set_read_timeout,
    setup_source_session,
    setup_target_session,
    variable,
)
from austasync.ddl_exec import DdlSession, check_ddl_session, execute_ddl, source_ddl_session
from austasync.ddl_resume import ddl_applied_marker
from austasync.errors import (
    AustasyncError,
    BinlogPurgedError,
    ConfigError,
    DdlStop,
    FencedError,
    SetupError,
    StopError,
    UnavailableError,
    UncarryableValueError,
)
from austasync.events import (
    Begin,
    Boundary,
    Commit,
    Event,
    Heartbeat,
    LiteralRows,
    ReaderFailed,
    Rows,
    SkippedRows,
    Statement,
    TxnImages,
    UnknownRows,
)
from austasync.httpd import ControlPolicy, Endpoints, HttpServer
from austasync.metrics import Metrics
from austasync.mirror import Mirror
from austasync.position import Position
from austasync.recovery import Outage, Reconnector, classify
from austasync.reports import gate_summary
from austasync.scheduler import VerificationScheduler
from austasync.schema import (
    ForeignKey,
    Table,
    TableId,
    check_foreign_keys,
    ensure_target,
    load_foreign_keys,
    load_tables,
)
from austasync.sql import quote_ident
from austasync.startup_schema import SourceSchema
from austasync.state import Checkpoint, CopyCursor, TargetState, connection_id, holder_name
from austasync.telemetry import Telemetry
from austasync.touched import TouchedKeys
from austasync.verifier import Result

_Loaded = tuple[Connection, dict[TableId, Table], list[ForeignKey]]  # the source session and what it read

HEALTH_STALL_SECONDS = 30.0
# skip rules that rest on the names a statement mentions (a misread name could be a replicated table's)
_NAME_RULES = frozenset({"not_replicated", "temporary_table"})
_INEXACT = (
    "the statement holds non-ASCII text the binlog library decoded as UTF-8 while the source session's"
    " character_set_client was another (or unknown), so its text here is not what the source ran"
)
#: how often a copy round asks the source whether a session waits on the round's snapshot (a DDL behind its
#: metadata lock holds back every query queued after it): one small information_schema query
_LOCK_CHECK_SECONDS = 0.25
FOREIGN_REFRESH_SECONDS = 2.0  # how soon an ack or a verification by another process shows in the gate
_DRAIN_SECONDS = 0.05


class Daemon:
    """The long-running copy-and-stream process.

    What talks to the outside is injected or built from ``config``: the clocks (``clock`` for intervals,
    ``wall`` for timestamps), the metrics registry, the progress stream.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        progress: TextIO | None = None,
        metrics: Metrics | None = None,
        start_at: Position | None = None,
        assume_copied: bool = False,
    ) -> None:
        self.config = config
        # a reverse stream starts where the cutover promoted the target, with both sides already equal
        self.start_at = start_at
        self.assume_copied = assume_copied
        self.clock = clock
        self.log = logmod.get("austasync.run")
        self._stop = threading.Event()
        self.mirror = Mirror(config.redis, config.replication.name)
        self.state = TargetState(config.replication.state_schema, config.replication.name)
        self.metrics = metrics or Metrics()
        self.control = Control()
        self.telemetry = Telemetry(
            config,
            self.mirror,
            self.metrics,
            self.log,
            wall=wall,
            clock=clock,
            progress=progress if progress is not None else (sys.stderr if sys.stderr.isatty() else None),
        )
        self.metrics.bind_lag(self.telemetry.lag_seconds, self.telemetry.purge_horizon_seconds)
        self.pause = self.telemetry.pause  # the operator's (austasync throttle --pause), set from the HTTP thread
        self._copy_resume_at = 0.0  # a paced or rate-limited copy rests until then, its snapshot closed
        self.scheduler = VerificationScheduler(config, self.control, self._verification_done, hold=self._held)
        self._saved_verification_at = 0.0
        self.http: HttpServer | None = None
        self.control_http: HttpServer | None = None  # [http] control_listen
        self._conns: list[Connection] = []
        self.on_ready: Callable[[], None] | None = None
        self.on_tick: Callable[[], None] | None = None
        self._last_event_ts: float | None = None
        self._inflight_last_ts: float | None = None  # the newest event of the batch the writer thread commits
        self._chunk_writers: list[ChunkWriter] = []  # the copy's extra target connections (in self._conns too)
        self.stop_signal: int | None = None
        self.selection = statements.Selection(config.replication.databases, config.table_selected)
        self.source_flavor = "mariadb"  # read from the source when it connects (_load_source)
        # event accounting: what the loop decided, and what the readers of earlier pipelines read
        self.tally = outcomes.new_tally()
        self._read_before: list[dict[str, int]] = []
        self.metrics.bind_events(self._event_outcomes)
        self._ddl_applied: Position | None = None  # a DDL inside a transaction that ran before a restart
        # a lost or refused source or target connection: retried in-process for [apply] retry_budget_seconds
        self.recovery = Reconnector(config.apply.retry_budget_seconds, self.log, self.metrics, clock=clock, wall=wall)
        self._started = False  # the pipeline started once: from then on a lost connection is retried
        self._watcher: TargetWriteWatcher | None = None  # the current pipeline's, for its health
        # foreign writes live in the target's state until a covering verification or an ack ends them
        self.foreign = foreign.Recorder(
            lambda: connect(config.target, "target"),
            foreign.ForeignWriteLog(config.replication.state_schema, config.replication.name),
        )
        self._foreign_refreshed = -FOREIGN_REFRESH_SECONDS

    def request_stop(self, signum: int | None = None) -> None:
        """Stop at the next clean point. Safe in a signal handler: sets an event and sends one datagram."""
        self.stop_signal = signum
        sdnotify.stopping()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def progress(self) -> TextIO | None:
        return self.telemetry.progress

    # --- set-up -----------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped; raises a :class:`StopError` subclass when it must stop at a checkpoint."""
        try:
            self._start_http()  # inside: a second listener failing closes the first
            self._run()
        except AustasyncError as exc:
            self.metrics.errors.labels(exc.kind).inc()
            raise
        finally:
            for server in (self.http, self.control_http):
                if server is not None:
                    server.stop()

    def _run(self) -> None:
        self.mirror.ping()
        saved = self.mirror.pause()
        if saved is not None:
            # a pause outlives the daemon that took it: a restart must not resume a copy the operator held
            self._set_pause(saved, persist=False)
            self.log.warning("starting paused by the operator", **saved)
        with contextlib.suppress(Exception):  # no status in Redis: the watcher starts at the target's position
            self.telemetry.watch_resume = (self.mirror.status() or {}).get("foreign_write_watch_position")
        loaded = self._load_source()
        self.telemetry.read_source_settings(loaded[0])
        self._acquire_lease()
        self.metrics.lease_held.set(1)
        try:
            self._run_recovering(loaded)
        finally:
            self.metrics.lease_held.set(0)
            self._close()
            self.foreign.close()
            with contextlib.suppress(Exception):  # Redis down at exit: the lease expires by itself
                self.mirror.release_lease()

    def _run_recovering(self, loaded: _Loaded | None) -> None:
        """Run the pipeline; after a lost or refused connection start it again from the target's checkpoint, as a
        restart would, keeping the lease, the HTTP server and the metrics (:mod:`austasync.recovery`)."""
        while True:
            try:
                if loaded is None:
                    self._keep_lease("while reconnecting")
                    loaded = self._load_source()
                    self.telemetry.read_source_settings(loaded[0])
                self._run_pipelines(*loaded)
                return
            except Exception as exc:
                loaded = None
                outage = self._retryable(exc)
                if outage is None:
                    raise
                self._close()
                if not self._reconnect_wait(outage):
                    self.log.info("stopped while reconnecting; the next run resumes from the target's checkpoint")
                    return

    def _run_pipelines(self, source: Connection, tables: dict[TableId, Table], fks: list[ForeignKey]) -> None:
        while True:
            try:
                self._run_with_lease(source, tables, fks)
                return
            except _SchemaChanged as change:
                # a DDL was replayed on the target: rebuild reader and applier from the new definitions
                self.log.info("restarting the pipeline after DDL", statement=change.statement[:200])
                self._close()
                self._keep_lease("while replaying a DDL")
                source, tables, fks = self._load_source()

    def _retryable(self, exc: BaseException) -> Outage | None:
        """The outage to reconnect from, or None to let ``exc`` end the run: at the first start-up (a wrong host
        or password shows at once), while stopping, without a retry budget, or when it is no connection problem."""
        if not self._started or self.stopping or self.config.apply.retry_budget_seconds <= 0:
            return None
        return classify(exc, self.config)

    def _reconnect_wait(self, outage: Outage) -> bool:
        """Log and count the failed attempt, then wait its backoff while the daemon stays visible: the loop's
        health tick, the lease, the status (phase ``reconnecting``). False when asked to stop meanwhile.

        Raises :class:`UnavailableError` once the outage has lasted ``apply.retry_budget_seconds``.
        """
        delay = self.recovery.failed(outage, self.telemetry.phase)
        self.telemetry.reconnecting = self.recovery.status()
        self.telemetry.set_phase("reconnecting")
        sdnotify.status(f"reconnecting to the {outage.server} {outage.address}")
        until, renewed = self.clock() + delay, float("-inf")
        while not self.stopping:
            now = self.clock()
            self.telemetry.loop_tick = now  # waiting out a backoff is a healthy state
            sdnotify.watchdog()
            if now - renewed >= 1.0:
                renewed = now
                self._keep_lease("while reconnecting")
            if self.telemetry.publish_due():
                self.telemetry.publish()
            if now >= until:
                return True
            self._stop.wait(min(0.2, until - now))
        return False

    def _recovered(self) -> None:
        """The restarted pipeline's first event arrived: the outage is over, the whole budget is back."""
        applier = self.telemetry.applier
        self.recovery.recovered(str(applier.committed) if applier is not None else "")
        self.telemetry.reconnecting = None

    def _renew_lease(self) -> bool:
        """Extend the lease; False only when another daemon holds it. Redis unreachable (or its next attempt not
        due) counts as still ours: the fence in the target, not the lease, stops a stale writer."""
        ttl = self.config.replication.lease_seconds
        return self.telemetry.redis.call("renew the lease", lambda: self.mirror.renew(ttl)) is not False

    def _keep_lease(self, when: str) -> None:
        if not self._renew_lease():
            raise FencedError(f"lost the migration's lease to another daemon {when}; stopping without writing")

    def _load_source(self) -> _Loaded:
        source = connect(self.config.source, "source")
        setup_source_session(source)
        self._conns.append(source)
        self.source_flavor = server_flavor(source)[0]  # whose bits the DDL events' sql_mode holds
        self.source_ddl_settings = source_ddl_session(source)  # what its DDL depends on besides the event
        problems = preflight.check_source(source)
        if problems:
            raise SetupError("the source is not set up for row-based replication:\n  " + "\n  ".join(problems))
        tables, fks = startup_schema.read_tables(source, self.config)
        if not tables:
            raise SetupError(
                f"no table selected in {', '.join(self.config.replication.databases)} on the source; check"
                " replication.databases and the include/exclude lists"
            )
        return source, tables, fks

    def _start_http(self) -> None:
        """``[http] listen`` (metrics, health, and /control/* unless control_listen has it) and control_listen."""
        http = self.config.http
        exposure = http.control_exposure()
        if exposure is not None:
            raise ConfigError(exposure)
        problem = control_token_problem(http.control_token) if http.control_token else None
        if problem is not None:
            raise ConfigError(problem)
        endpoints = Endpoints(
            registry=self.metrics.registry, health=self.health, ready=self.readiness, control=self._control_call
        )
        main_policy = ControlPolicy(
            http.control_token, http.control == "disabled", is_loopback_host(http.host_port[0]), http.control_listen
        )
        self.http = self._listen("http.listen", http.listen, endpoints, main_policy)
        self.telemetry.http_listen = "{}:{}".format(*self.http.address)
        self.telemetry.control_listen = self.telemetry.http_listen
        if http.control_host_port is not None and http.control_listen is not None:
            policy = ControlPolicy(http.control_token, loopback=True)  # a loopback address: checked on load
            self.control_http = self._listen("http.control_listen", http.control_listen, endpoints, policy)
            self.telemetry.control_listen = "{}:{}".format(*self.control_http.address)
        self.telemetry.control_auth = (
            "disabled" if http.control == "disabled" else "token" if http.control_token else "loopback only"
        )
        self.log.info(
            "http listening",
            address=self.telemetry.http_listen,
            control=self.telemetry.control_listen if http.control == "enabled" else "disabled",
            control_auth=self.telemetry.control_auth,
        )

    def _control_call(self, command: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``/control/*`` (already authenticated by the listener's policy). The throttle's pause is answered here,
        in the HTTP thread: it is a flag the loop and the verifier read; the rest waits for the apply loop."""
        if command == "throttle/pause":
            doc = {
                "by": str(body.get("by") or "unknown")[:200],
                "note": str(body.get("note") or "")[:500],
                "since": self.telemetry.wall(),
            }
            return 200, {"paused": True, **doc, "persisted": self._set_pause(doc)}
        if command == "throttle/resume":
            was = self.pause.doc
            return 200, {"paused": False, "was": was, "persisted": self._set_pause(None)}
        return self.control.call(command, body)

    def _set_pause(self, doc: dict[str, Any] | None, *, persist: bool = True) -> bool:
        """Pause (``doc``: who, when, why) or resume; True when Redis keeps it for the next daemon."""
        self.pause.set(doc)
        self.metrics.paused.set(0 if doc is None else 1)
        self.metrics.pace.set(0.0 if doc is not None else self.telemetry.throttle.pace)
        if doc is None:
            self.log.info("throttle: resumed by the operator")
        else:
            self.log.warning("throttle: paused by the operator", **doc)
        if not persist:
            return True
        try:
            self.mirror.publish_pause(doc)
        except Exception as exc:  # noqa: BLE001 (Redis down: the pause holds in this daemon, not across a restart)
            self.log.warning("the pause is not kept in Redis; a restarted daemon would not hold it", error=str(exc))
            return False
        return True

    def _held(self) -> str:
        """The operator's pause, for the verifier ("" = not paused)."""
        return self.pause.reason

    def _listen(self, key: str, listen: str, endpoints: Endpoints, policy: ControlPolicy) -> HttpServer:
        host, port = split_listen(listen)
        try:
            server = HttpServer(host, port, endpoints, policy)
        except OSError as exc:
            raise ConfigError(f"{key} {listen}: cannot listen ({exc.strerror})") from None
        server.start()
        return server

    def _acquire_lease(self) -> None:
        def waiting(holder: str) -> None:
            self.log.info("lease held by another daemon; waiting", holder=holder)
            sdnotify.status("waiting for the migration's lease")
            self.telemetry.loop_tick = self.clock()  # waiting for the lease is a healthy state

        got = self.mirror.acquire_lease(
            holder_name(),
            self.config.replication.lease_seconds,
            wait=True,
            on_wait=waiting,
            should_stop=lambda: self.stopping,
        )
        if not got:
            raise UnavailableError("stopped while waiting for the migration's lease")

    def _fence_target(self, source: Connection) -> tuple[Connection, Connection]:
        """Open the target sessions, refuse a failing preflight subset, and become the only writer
        (docs/DESIGN.md#rule-fencing)."""
        admin = connect(self.config.target, "target")
        self._conns.append(admin)
        writer = connect(self.config.target, "target", autocommit=False)
        self._conns.append(writer)
        setup_target_session(writer)
        self.state.ensure_schema(writer)
        refused = preflight.refusals(self.config, source, admin)
        if refused:
            raise SetupError("`austasync preflight` checks fail; fix them first:\n  " + "\n  ".join(refused))
        generation = self.state.take_over(writer, [connection_id(writer), connection_id(admin)])
        self.telemetry.generation = generation
        self.log.info("fenced the target", generation=generation)
        return admin, writer

    def _run_with_lease(self, source: Connection, tables: dict[TableId, Table], fks: list[ForeignKey]) -> None:
        # a pipeline restart (after an exec DDL) starts from the target's state, not from the last run's memory
        self.telemetry.cursors = {}
        touched = TouchedKeys()  # the keys written from here on, re-checked between full verifications
        self.scheduler = VerificationScheduler(
            self.config, self.control, self._verification_done, touched=touched, hold=self._held
        )
        admin, writer = self._fence_target(source)
        ddl_resume.close_open_own_ddl(self.config, self.state, writer, admin, self.log)
        self._refresh_foreign(force=True)  # what earlier runs recorded and nobody cleared still holds the gate
        checkpoint, resumed, fresh = self._load_checkpoint(source, admin, writer, tables)
        if resumed:
            tables, fks = self._target_definitions(admin)
        elif fresh is not None:
            tables, fks = fresh.tables, fresh.fks
        _check_binlog_available(source, checkpoint.position)
        for cursor in self.state.cursors(writer):
            if (cursor.db, cursor.table) in tables:
                self.telemetry.set_cursor(cursor)
        applier = Applier(
            writer,
            self.state,
            tables,
            fks,
            dict(self.config.replication.rename),
            checkpoint.position,
            checkpoint.skip_events,
            touched,
        )
        reader = BinlogReader(
            self.config.source,
            self.config.replication.server_id,
            tables,
            checkpoint.position,
            queue_size=self.config.apply.queue_max_events,
            heartbeat_seconds=self.config.replication.heartbeat_seconds,
            read_timeout_seconds=self.config.replication.read_timeout_seconds,
            value_tables=applier.value_tables,
            applied_events=checkpoint.skip_events,
            selected=self.selection.table,
            hold_bytes=self.config.apply.hold_bytes,
        )
        self.telemetry.applier, self.telemetry.reader = applier, reader
        watcher: TargetWriteWatcher | None = None
        snapshot: SnapshotReader | None = None
        try:
            # from here on every thread and session is stopped on the way out, a failed start-up too: a reader
            # left running into an in-process restart would share the new one's server_id on the source
            watcher = self._watcher = self._start_watcher(admin)
            reader.start()
            copying = any(not c.done for c in self.telemetry.cursors.values())
            snapshot = SnapshotReader(self.config.source, self.config.copy.render) if copying else None
            self._announce(checkpoint, applier, len(tables), copying=snapshot is not None)
            # from here on the source session runs the loop's short statements only (housekeeping, throttle): a
            # source that stalls every connection is then noticed here as on the binlog stream, and reconnected
            # from, not waited for (the start-up's catalog reads above may take long on a big schema)
            set_read_timeout(source, self.config.replication.read_timeout_seconds or None)
            try:
                self._loop(source, applier, reader, snapshot, tables)
            except StopError as exc:
                _rollback(applier)
                self._record_stop(applier, exc)
                raise
            except BaseException:
                _rollback(applier)
                raise
        finally:
            self._watcher = None
            self.scheduler.stop()
            reader.stop()
            self._read_before = [outcomes.sum_tallies([*self._read_before, reader.tally])]
            if watcher is not None:
                watcher.stop()
            if snapshot:
                snapshot.close()

    def _announce(self, checkpoint: Checkpoint, applier: Applier, tables: int, *, copying: bool) -> None:
        """The pipeline runs: its phase in the checkpoint and the status, the log, systemd, the verifier."""
        self.telemetry.set_phase("copying" if copying else "streaming")
        applier.phase = checkpoint.phase
        if checkpoint.phase != self.telemetry.phase:
            # a restart after DDL can find the copy finished (the last pending table renamed or dropped): the
            # checkpoint says so now, not at the next source event, which may be hours away on an idle source
            applier.commit(phase=self.telemetry.phase)
        self.log.info(
            "started",
            position=str(checkpoint.position),
            skip_events=checkpoint.skip_events,
            phase=self.telemetry.phase,
            tables=tables,
        )
        if self.telemetry.phase == "streaming":
            self.scheduler.start_when_copied()
        sdnotify.ready(f"{self.telemetry.phase} from {checkpoint.position}")
        self._started = True
        if self.on_ready:
            self.on_ready()

    def _start_watcher(self, admin: Connection) -> TargetWriteWatcher | None:
        """Watch the target's binlog from now on for writes that are not austasync's
        (docs/DESIGN.md#rule-foreign-writes).

        Without the privileges to read it, replication goes on but the gate stays not ready: foreign writes
        cannot be ruled out. The error says which grant is missing.
        """
        try:
            rows = query(admin, "SHOW MASTER STATUS")
        except pymysql.err.OperationalError as exc:
            self.telemetry.watch_error = f"cannot read the target's binlog position: {exc.args[-1]}"
            self.log.error(
                "foreign writes cannot be detected: grant the target user REPLICATION SLAVE and BINLOG MONITOR"
                " (MySQL: REPLICATION CLIENT)",
                error=str(exc.args[-1]),
            )
            return None
        if not rows:
            raise SetupError("the target's binlog is off; foreign writes cannot be detected. Set log_bin on the target")
        rep = self.config.replication
        identity = f"{self.config.target.host}:{self.config.target.port} server_id {variable(admin, 'server_id')}"
        previous = self.telemetry.watcher  # a pipeline restart in this process: go on where it stopped
        carried = previous.position if previous is not None and self.telemetry.watch_target == identity else None
        start = carried or self._watch_resume(admin, identity) or Position(str(rows[0][0]), int(rows[0][1]))
        self.telemetry.watch_target = identity
        source_db = {rep.target_db(db): db for db in rep.databases}
        watcher = TargetWriteWatcher(
            self.config.target,
            rep.server_id,
            start,
            source_db,
            rep.state_schema,
            self._foreign_write,
            selected=lambda db, table: db in source_db and self.selection.table(source_db[db], table),
            own_ddl=[(first, last) for first, last, _ in self.state.own_ddl(admin)],
        )
        watcher.start()
        self.telemetry.watcher = watcher
        return watcher

    def _watch_resume(self, admin: Connection, identity: str) -> Position | None:
        """Where the last daemon's watcher stopped on this same target, if the target still has that binlog: the
        writes made while no daemon ran are then checked too."""
        saved = self.telemetry.watch_resume or {}
        if saved.get("target") != identity or not saved.get("at"):
            return None
        try:
            position = Position.parse(str(saved["at"]))
        except ValueError:
            return None
        files = {str(row[0]) for row in query(admin, "SHOW BINARY LOGS")}
        if position.file not in files:
            self.log.warning(
                "the target no longer has the binlog where the last watcher stopped; writes made meanwhile are"
                " left to verify",
                position=str(position),
            )
            return None
        self.log.info("watching the target for foreign writes from where the last daemon stopped", at=str(position))
        return position

    def _foreign_write(self, write: foreign.ForeignWrite) -> None:
        """Called from the watcher thread for every write on the target that is not austasync's, before the
        watcher moves past it: it is recorded in the target first (a failure stops the watcher, so the gate
        says foreign writes cannot be ruled out), then counted once, whatever restarts read it again."""
        if not self.foreign.record(write):
            self.log.info(
                "foreign write already recorded (the target's binlog was read again)",
                target_position=str(write.position),
                what=write.describe(),
            )
            return
        counter = self.metrics.foreign_schema_changes if write.kind == "schema" else self.metrics.foreign_writes
        for label, count in write.series():
            counter.labels(label).inc(count)
        self.scheduler.invalidate(f"a foreign write on the target: {write.describe()}")
        self._refresh_foreign(force=True)
        self.log.error(
            "FOREIGN WRITE (schema change) on the target: someone else changed a replicated view, routine, trigger"
            " or event; verify's schema comparison judges it"
            if write.kind == "schema"
            else "FOREIGN WRITE on the target: something other than austasync changed a replicated table (drift)",
            what=write.describe(),
            statement=write.statement[:300] or None,
            target_position=str(write.position),
            ends_with=write.ends_with(),
        )

    def _refresh_foreign(self, *, force: bool = False) -> None:
        """Re-read the open foreign writes: a verification or an operator's ack (another process) may have
        cleared some. A target that cannot be read keeps the last list: the gate stays as it was."""
        if not force and self.clock() - self._foreign_refreshed < FOREIGN_REFRESH_SECONDS:
            return
        self._foreign_refreshed = self.clock()
        try:
            self.telemetry.set_open_foreign(self.foreign.open())
        except pymysql.err.MySQLError as exc:
            self.log.warning("cannot read the recorded foreign writes from the target", error=str(exc)[:300])

    def _clear_foreign(self, result: Result) -> None:
        """A verification came out: close the foreign writes it covers, recorded with who and how."""
        try:
            cleared = self.foreign.clear_covered(result, f"austasync daemon {holder_name()}")
        except pymysql.err.MySQLError as exc:
            self.log.warning("cannot clear foreign writes after a verification", error=str(exc)[:300])
            return
        for rec in cleared:
            self.log.info(
                "foreign write cleared", id=rec.id, what=rec.write.describe(), how=rec.cleared_how, by=rec.cleared_by
            )
        if cleared:
            self._refresh_foreign(force=True)

    def _target_definitions(self, admin: Connection) -> tuple[dict[TableId, Table], list[ForeignKey]]:
        """The selected tables as the target defines them: the schema as of the checkpoint, not the source's now."""
        names = {self.config.replication.target_db(db): db for db in self.config.replication.databases}
        # every selected table on the target: the source's (ensure_target created those it lacked) and those the
        # stream created that the source has dropped or renamed since, which the stream still writes; not a
        # source table that vanished before ensure_target could create it (the stream says what became of it)
        merged = load_tables(admin, self.config, names)
        fks = check_foreign_keys(merged, load_foreign_keys(admin, merged, names))
        return merged, fks

    def _load_checkpoint(
        self, source: Connection, admin: Connection, writer: Connection, tables: dict[TableId, Table]
    ) -> tuple[Checkpoint, bool, SourceSchema | None]:
        """The checkpoint to resume from (created with P0 on a first start), whether it existed before, and on a
        first start from the binlog's end the source's schema as of P0 (on a resume the target's definitions are
        the schema as of the checkpoint; ``--start-at`` trusts the operator that the schema is that position's)."""
        checkpoint = self.state.load(writer)
        if checkpoint is not None and checkpoint.pending_stop:
            stop = checkpoint.pending_stop
            # killed while running a DDL under on_ddl = "exec": the target's binlog tells whether it ran
            if ddl_resume.interrupted(stop) and ddl_resume.recover(
                self.config, self.state, writer, admin, stop, checkpoint.phase, self.log
            ):
                return self._load_checkpoint(source, admin, writer, tables)
            self._previous_stop(checkpoint, writer, stop)
        fresh = None
        if checkpoint is None and self.start_at is None:
            # the definitions the target tables are created from must be those in force at P0 (startup_schema)
            fresh = startup_schema.read_at_p0(source, self.config, self.selection, self.log)
            tables = fresh.tables
        self._create_on_target(source, admin, writer, tables, fresh, first=checkpoint is None)
        resumed = checkpoint is not None
        if checkpoint is None:
            p0 = fresh.position if fresh else self.start_at or binlog_end(source)
            self.state.init(writer, p0, [(t.db, t.name, t.rows_estimate) for t in tables.values()])
            if self.assume_copied:
                self.state.mark_copied(writer)
            self.log.info("persisted P0; the stream starts here", p0=str(p0), copy=not self.assume_copied)
            checkpoint = self.state.load(writer)
            if checkpoint is None:
                raise UnavailableError("the state row written a moment ago is not in the target; is it read-only?")
        else:
            self.state.add_tables(writer, [(t.db, t.name, t.rows_estimate) for t in tables.values()])
        self._republish_verification(writer)
        return checkpoint, resumed, fresh

    def _previous_stop(self, checkpoint: Checkpoint, writer: Connection, stop: dict[str, Any]) -> None:
        """Stop again at the previous run's DDL stop, or clear a stop the operator restarted past."""
        if stop.get("kind", "ddl_stop") == "ddl_stop":
            self.telemetry.pending_stop = stop
            self.telemetry.set_phase("stopped_ddl")
            self.telemetry.publish(force=True)
            raise DdlStop(_ddl_message(stop))
        if stop.get("kind") == "ddl_applied" and Position.parse(stop["start"]) == checkpoint.position:
            self._ddl_applied = Position.parse(stop["end"])  # kept until the stream is past its transaction
        else:
            # another stop recorded by the previous run (or a DDL marker the stream is past): the operator
            # restarted on purpose; a real stop recurs
            self.log.warning("clearing the previous run's stop", stop=stop)
            self.state.check_fence(writer)
            self.state.save_stop(writer, None)
            query(writer, "COMMIT")

    def _create_on_target(
        self,
        source: Connection,
        admin: Connection,
        writer: Connection,
        tables: dict[TableId, Table],
        fresh: SourceSchema | None,
        *,
        first: bool,
    ) -> None:
        """The target tables the target lacks (and, on a first start, the views and routines), recorded as
        austasync's own DDL for the target-write watcher."""
        logged_from = binlog_end_or_none(admin)
        row = None
        if logged_from is not None:
            # noted before anything runs: a kill before it is recorded as done leaves it open for the next start
            self.state.check_fence(writer)
            row = self.state.begin_own_ddl(writer, logged_from, connection_id(admin), "start-up DDL")
            query(writer, "COMMIT")
        created, made = 0, list[str]()
        try:
            creates = fresh.creates if fresh else None
            created = ensure_target(source, admin, self.config, tables, compare=first, creates=creates)
            if created:
                self.log.info("created target tables", count=created)
            if first:
                # once the tables exist; from P0 on, view and routine DDL comes through the stream (on_ddl)
                definitions = fresh.definitions if fresh else objects.read_definitions(source, self.config)
                objects.create_on_target(admin, self.config, definitions, made)
                if made:
                    self.log.info("created target views and routines", objects=made)
        finally:
            # recorded even when a later object was refused: what was created is austasync's, not a foreign write
            if row is not None:
                what = f"{created} tables, {len(made)} views/routines" if created or made else ""
                self._end_start_up_ddl(admin, writer, row, what)

    def _end_start_up_ddl(self, admin: Connection, writer: Connection, row: int, what: str) -> None:
        """Close the own-DDL record begun before the start-up DDL at the target's binlog end; dropped when nothing
        was created (a range would hide others' writes) or the binlog end cannot be read (the watcher may then
        report the DDL: a false alarm, never a missed write)."""
        logged_to = binlog_end_or_none(admin) if what else None
        self.state.check_fence(writer)
        if logged_to is not None:
            self.state.end_own_ddl(writer, row, logged_to, f"created {what} at start-up")
        else:
            self.state.drop_own_ddl(writer, row)
        query(writer, "COMMIT")

    def _republish_verification(self, writer: Connection) -> None:
        """Redis may have restarted empty: the target's record of the last verification is the truth. With Redis
        down it is kept, and republished when Redis answers (Telemetry.sync_verification)."""
        recorded = self.state.last_verification(writer)
        if recorded is None:
            return
        if self.telemetry.last_verification is None:
            self.telemetry.last_verification = recorded
            self._saved_verification_at = max(self._saved_verification_at, float(recorded.get("finished_at") or 0))
        link = self.telemetry.redis
        current = link.call("read the verification", lambda: (self.mirror.verification(),))
        missing = current is not None and current[0] is None
        if missing and link.call("republish the verification", lambda: self.telemetry.republish_verification(recorded)):
            self.log.info("republished the last verification from the target")

    def _record_stop(self, applier: Applier, exc: StopError) -> None:
        """Keep a fatal stop in the target (and Redis) so the gate stays not-ready across restarts of Redis."""
        stop = {"kind": exc.kind, "message": str(exc)[:2000], "position": str(applier.committed)}
        self.telemetry.pending_stop = stop
        self.telemetry.set_phase("stopped_ddl" if isinstance(exc, DdlStop) else "stopped_error")
        if not isinstance(exc, DdlStop | FencedError):
            with contextlib.suppress(Exception):  # best effort: the connection may be the reason we stop
                self.state.check_fence(applier.conn)
                self.state.save_stop(applier.conn, stop)
                query(applier.conn, "COMMIT")
        self.telemetry.publish(force=True)

    def _close(self) -> None:
        self._chunk_writers = []  # their connections are among these
        for conn in self._conns:
            with contextlib.suppress(Exception):  # closing on the way out; the server cleans up
                conn.close()
        self._conns = []

    # --- health -----------------------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive and turning: the loop ticked recently and the binlog reader thread runs."""
        age = self.clock() - self.telemetry.loop_tick
        reader = self.telemetry.reader
        reader_alive = reader is None or reader.alive
        # reconnecting is no hang: the backoff ticks the loop, and a restart would only wait the same way
        reconnecting = self.telemetry.reconnecting is not None
        ok = age < HEALTH_STALL_SECONDS and (reader_alive or reconnecting)
        return ok, {
            "ok": ok,
            "loop_age_seconds": round(age, 1),
            "reader_alive": reader_alive,
            "reconnecting": reconnecting,
            "phase": self.telemetry.phase,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            verification = self.mirror.verification()
        except Exception:  # noqa: BLE001 (Redis down: the gate reports no verification, hence not ready)
            verification = None
        alive, _ = self.health()
        checks = readiness.evaluate(self.telemetry.status_doc(), verification, alive=alive, now=self.telemetry.wall())
        ok = readiness.is_ready(checks)
        return ok, {"ready": ok, "checks": [c.as_dict() for c in checks]}

    # --- the loop ---------------------------------------------------------------------------------------------

    def _next(self, reader: BinlogReader, timeout: float) -> Event | None:
        event = reader.get(timeout=timeout)
        if event is not None and self.recovery.active and not isinstance(event, ReaderFailed):
            self._recovered()
        return event

    def _loop(
        self,
        source: Connection,
        applier: Applier,
        reader: BinlogReader,
        snapshot: SnapshotReader | None,
        tables: dict[TableId, Table],
    ) -> None:
        """The one long loop: housekeeping, control requests, a copy round when due, then stream into batches.

        Every exit path leaves the target at a committed checkpoint: a SIGTERM commits the open batch (a split
        big transaction records how many of its events are applied), a stop raises after its checkpoint.
        """
        limits = self.config.apply
        while not self.stopping:
            self._housekeeping(source, applier)
            if not applier.in_txn:
                self._serve_control(applier, reader, source)
            if snapshot is not None and not applier.in_txn and self._copy_due():
                if self._copy_round(applier, reader, snapshot, tables, source):
                    snapshot.close()
                    snapshot = None
                    self._drop_copy_writers()
                    self.telemetry.set_phase("streaming")
                    applier.commit(phase="streaming")
                    self.log.info("copy complete; streaming")
                    self.scheduler.start_when_copied()
                continue
            event = self._next(reader, timeout=min(0.2, limits.batch_max_seconds))
            if event is None:
                if not applier.in_txn and applier.pending:
                    self._commit(applier)
                continue
            self._drain(event, applier, reader)
        if self.stop_signal is not None:
            self.log.info("signal received; stopping at a clean checkpoint", signal=self.stop_signal)
        self.telemetry.set_phase("stopping")
        self._commit(applier)
        self.log.info("stopped at a clean checkpoint", position=str(applier.committed), skip_events=applier.skip_events)
        self.telemetry.publish(force=True)

    def _drain(self, event: Event, applier: Applier, reader: BinlogReader) -> None:
        """Apply ``event`` and every event already decoded after it, up to a transaction boundary past a short time
        budget: housekeeping, control requests and copy rounds wait at most that long.

        At catch-up speed the loop's own checks cost as much as applying an event, so transactions (merged by the
        reader) and their events are handled inline here with the same batch limits as :meth:`_batch_full`, and
        everything else goes through :meth:`_handle`.
        """
        limits = self.config.apply
        max_rows, split_rows, max_bytes = limits.batch_max_rows, 4 * limits.batch_max_rows, limits.batch_max_bytes
        max_seconds = limits.batch_max_seconds
        telemetry, clock = self.telemetry, self.clock
        deadline = clock() + _DRAIN_SECONDS
        while True:
            if isinstance(event, TxnImages | LiteralRows | Commit):
                if telemetry.pending_since_ts is None:
                    telemetry.pending_since_ts = float(getattr(event, "oldest", None) or event.timestamp)
                ends = isinstance(event, Commit) or (isinstance(event, TxnImages) and event.end is not None)
                if isinstance(event, TxnImages):
                    if event.start is not None:
                        applier.begin(event.start)
                    applier.literal_part(event)
                    if event.end is not None:
                        applier.commit_seen(event.end, event.timestamp)
                elif isinstance(event, LiteralRows):
                    applier.literal_rows(event)
                else:
                    applier.commit_seen(event.position, event.timestamp)
                stats = applier.stats
                if ends:
                    self._last_event_ts = float(event.timestamp)
                    if stats.rows >= max_rows or stats.bytes >= max_bytes or clock() - stats.started >= max_seconds:
                        self._commit_async(applier)
                    if self.stopping or clock() >= deadline:
                        return
                elif applier.in_txn:
                    # a source transaction bigger than the batch: split it, bounded memory
                    # (docs/DESIGN.md#rule-checkpoint)
                    if stats.rows >= split_rows or stats.bytes >= max_bytes:
                        self._commit_async(applier)
                elif self._batch_full(applier):
                    self._commit_async(applier)
            elif isinstance(event, Begin):
                applier.begin(event.start)
            else:
                self._handle(event, applier)
                if self._batch_full(applier):
                    self._commit_async(applier)
                if self.stopping or (not applier.in_txn and clock() >= deadline):
                    return
            next_event = reader.get(timeout=0.0)
            if next_event is None:
                return
            event = next_event

    def _batch_full(self, applier: Applier) -> bool:
        limits = self.config.apply
        stats = applier.stats
        if applier.in_txn:
            # a source transaction bigger than the batch: split it, bounded memory (docs/DESIGN.md#rule-checkpoint)
            return stats.rows >= 4 * limits.batch_max_rows or stats.bytes >= limits.batch_max_bytes
        return (
            stats.rows >= limits.batch_max_rows
            or stats.bytes >= limits.batch_max_bytes
            or (applier.pending and self.clock() - stats.started >= limits.batch_max_seconds)
        )

    def _commit(self, applier: Applier) -> None:
        rows, txns, started = applier.stats.rows, applier.stats.transactions, applier.stats.started
        begun = self.clock()
        position = applier.commit(phase=self.telemetry.phase)
        if rows or txns:
            self.metrics.batch_rows.observe(rows)
            self.metrics.batch_seconds.observe(self.clock() - begun)
            self.metrics.applied_transactions.inc(txns)
            for (table, operation), count in applier.take_counts().items():
                self.metrics.applied_rows.labels(table, operation).inc(count)
            self.log.debug(
                "batch applied",
                rows=rows,
                transactions=txns,
                position=str(position),
                seconds=round(self.clock() - started, 3),
            )
        self.metrics.last_checkpoint.set(self.telemetry.wall())
        if not applier.in_txn:
            self.telemetry.pending_since_ts = None
            self._inflight_last_ts = None
            if self._last_event_ts is not None:
                self.telemetry.last_applied_ts = self._last_event_ts

    def _commit_async(self, applier: Applier) -> None:
        """Hand the full batch to the applier's writer thread; the previous one is committed when this returns."""
        if applier.phase != self.telemetry.phase:
            self._commit(applier)
            return
        stats = applier.stats
        rows, txns, oldest = stats.rows, stats.transactions, stats.oldest_timestamp
        applier.commit_async()
        self.metrics.batch_rows.observe(rows)
        self.metrics.applied_transactions.inc(txns)
        for (table, operation), count in applier.take_counts().items():
            self.metrics.applied_rows.labels(table, operation).inc(count)
        self.metrics.last_checkpoint.set(self.telemetry.wall())
        if not applier.in_txn:
            # the batch before is committed; the oldest change not yet on the target is this batch's first
            self.telemetry.pending_since_ts = None if oldest is None else float(oldest)
            if self._inflight_last_ts is not None:
                self.telemetry.last_applied_ts = self._inflight_last_ts
            self._inflight_last_ts = self._last_event_ts

    def _handle(self, event: Event, applier: Applier) -> None:
        if isinstance(event, TxnImages):
            if self.telemetry.pending_since_ts is None:
                self.telemetry.pending_since_ts = float(event.oldest or event.timestamp)
            if event.start is not None:
                applier.begin(event.start)
            applier.literal_part(event)
            if event.end is not None:
                self._last_event_ts = float(event.timestamp)
                applier.commit_seen(event.end, event.timestamp)
        elif isinstance(event, LiteralRows):
            if self.telemetry.pending_since_ts is None:
                self.telemetry.pending_since_ts = float(event.timestamp)
            self._last_event_ts = float(event.timestamp)
            applier.literal_rows(event)
        elif isinstance(event, Rows | Commit):
            if self.telemetry.pending_since_ts is None:
                self.telemetry.pending_since_ts = float(event.timestamp)
            self._last_event_ts = float(event.timestamp)
            if isinstance(event, Rows):
                applier.rows(event)
            else:
                applier.commit_seen(event.position, event.timestamp)
        elif isinstance(event, Begin):
            applier.begin(event.start)
        elif isinstance(event, SkippedRows):
            applier.skipped(event.seq)
        elif isinstance(event, UnknownRows):
            self.tally[outcomes.ROWS] -= 1  # the reader counted it as a replicated table's rows; it is a stop
            self._count("stop")
            raise UncarryableValueError(
                f"binlog {event.position}: rows of {event.db}.{event.table}, which the selection covers but"
                " austasync has no definition of: the table was created on the source after the daemon loaded its"
                ' tables, and its DDL was not replayed (on_ddl = "ignore"?). Create it on the target and re-copy'
                " it, or exclude it"
            )
        elif isinstance(event, Boundary):
            applier.boundary(event.position)
        elif isinstance(event, Heartbeat):
            self.metrics.source_heartbeat.set(self.telemetry.wall())
        elif isinstance(event, Statement):
            self._statement(event, applier)
        elif isinstance(event, ReaderFailed):
            raise event.error

    # --- statements: DDL policy and statement-format DML, docs/DESIGN.md#rule-ddl -----------------------------

    def _statement(self, event: Statement, applier: Applier) -> None:
        """A statement logged as text (transaction control never gets here: the reader models it). Skipped only
        when :mod:`austasync.binlog.statements` proves it touches no replicated table; DML stops; anything else
        goes to the ``on_ddl`` policy."""
        done = self._no_effect(event)
        if done:
            self._count(done)
            if not event.in_transaction and done != "ddl_already_applied":
                applier.boundary(event.position)
            return
        parsed, verdict = self._judge(event)
        where = f"binlog {event.position} (default database {event.schema or 'none'})"
        if verdict.action == "stop_dml":
            self._count("stop")
            raise UncarryableValueError(
                f"DML logged as a statement at {where}: {event.query[:200]!r}. It cannot be applied exactly; the"
                " session ran with binlog_format other than ROW. Fix the source and re-copy the affected tables"
            )
        if verdict.action == "skip":
            self._count(verdict.rule)
            if not event.in_transaction:
                applier.boundary(event.position)
            return
        policy = self.config.replication.on_ddl
        self.log.info("DDL on replicated objects", statement=event.query[:500], position=str(event.position),
                      why=verdict.rule, policy=policy)  # fmt: skip
        if policy == "ignore":
            self._count("ddl_ignored")
            self.log.warning("DDL ignored by policy", statement=event.query[:500], position=str(event.position))
            self.scheduler.invalidate("a DDL was ignored by policy")
            if not event.in_transaction:
                applier.boundary(event.position)
            return
        if event.in_transaction and applier.txn_seq > 0:
            self._count("stop")
            raise UncarryableValueError(
                f"DDL inside a source transaction after some of its rows, at {where}: {event.query[:300]!r}."
                " austasync can neither run it at that exact point nor skip it. Nothing of the transaction was"
                " written. Apply the transaction's effect by hand and re-copy the tables it names"
            )
        self._commit(applier)  # everything before it; inside a transaction the checkpoint is the transaction's start
        why = verdict.rule
        cannot = _not_replayable(event)
        if policy == "exec" and cannot:
            why = f"{why}; not run: {cannot}"
            self.log.warning("DDL not replayed: it cannot run on the target as on the source", reason=cannot,
                             statement=event.query[:500], position=str(event.position))  # fmt: skip
        elif policy == "exec":
            if parsed.select:
                self._count("stop")
                raise UncarryableValueError(
                    f"CREATE TABLE ... SELECT logged as a statement at {where}: its rows are not in the binlog, so"
                    " running it on the target would copy the target's rows, not the source's. Use on_ddl = \"stop\","
                    " create and fill the table by hand, then `austasync ddl --skip`"
                )
            self._exec_ddl(event, applier, parsed, verdict.tables)
            self._count("ddl_executed")
            self.scheduler.invalidate("a DDL was executed: rows may change without their keys in the binlog")
            raise _SchemaChanged(event.query)
        self._count("stop")
        stop = {
            "kind": "ddl_stop",
            "statement": event.query,
            "schema": event.schema,
            "start": str(event.start),
            "end": str(event.position),
            "sql_mode": event.sql_mode,
            "sql_mode_flavor": self.source_flavor,
            "timestamp": event.timestamp,
            "time_zone": event.time_zone,
            "in_transaction": event.in_transaction,
            "why": why,
            "settings": self._ddl_settings(event),
        }
        if cannot:
            stop["not_replayable"] = cannot
        self.state.check_fence(applier.conn)
        self.state.save_stop(applier.conn, stop)
        query(applier.conn, "COMMIT")
        raise DdlStop(_ddl_message(stop))

    def _no_effect(self, event: Statement) -> str | None:
        """The rule by which ``event`` changes nothing on the target whatever it says, or None."""
        if self._ddl_applied is not None and event.position == self._ddl_applied:
            # run on the target before the restart that re-read its transaction (see _exec_ddl)
            self._ddl_applied = None
            return "ddl_already_applied"
        # the source's table changes at COMMIT ALTER, and never when the ALTER rolled back; rows logged in between
        # have the table's old shape
        return {"start": "alter_started", "rollback": "alter_rolled_back"}.get(event.alter_phase or "")

    def _judge(self, event: Statement) -> tuple[statements.Parsed, statements.Verdict]:
        parsed = event.parsed or statements.parse(event.query, event.sql_mode)
        verdict = statements.judge(parsed, event.schema, self.selection)
        if (
            verdict.action == "skip"
            and verdict.rule in _NAME_RULES
            and not event.exact
            and not statements.names_are_plain(event.query, event.sql_mode)
        ):
            # the names it was judged by may be misread (QueryFields.exact): not provably harmless
            verdict = statements.Verdict("policy", "its names may be misread: " + _INEXACT)
        return parsed, verdict

    def _event_outcomes(self) -> dict[str, int]:
        """Every event read so far, by outcome and rule: the readers' counts plus the loop's own decisions."""
        reader = self.telemetry.reader
        current = [reader.tally] if reader is not None else []
        return outcomes.sum_tallies([*self._read_before, *current, self.tally])

    def _count(self, rule: str) -> None:
        """An event the loop decided (a statement, rows of an unknown table): its outcome, for the accounting."""
        self.tally[outcomes.key(rule)] += 1

    def _exec_ddl(
        self, event: Statement, applier: Applier, parsed: statements.Parsed, tables: tuple[TableId, ...]
    ) -> None:
        """Replay a DDL on the target at exactly its position (``on_ddl = "exec"``).

        DDL commits implicitly, so the checkpoint cannot move in the same transaction: a stop record marks the
        statement as in progress first, with where the target's binlog stood and which connection runs it; a
        crash in between is resolved at the next start from the target's binlog (:mod:`austasync.ddl_resume`),
        never by a blind second execution.
        """
        rename = self.config.replication.rename
        if rename and any(f"{db}." in event.query or f"`{db}`." in event.query for db in rename):
            raise UncarryableValueError(
                f"DDL at {event.start} names a database that is renamed on the target: {event.query[:300]!r}."
                ' Use on_ddl = "stop" and apply it by hand'
            )
        conn = applier.conn
        session = self._ddl_session(event)
        check_ddl_session(conn, session, f"binlog {event.start}..{event.position}")
        # where the target's binlog shows austasync's own DDL: open until it has run, as the watcher may read it first
        logged_from = binlog_end_or_none(conn)
        stop = {
            "kind": "ddl_stop",
            "statement": event.query,
            "schema": event.schema,
            "start": str(event.start),
            "end": str(event.position),
            "sql_mode": event.sql_mode,
            "sql_mode_flavor": self.source_flavor,
            "timestamp": event.timestamp,
            "time_zone": event.time_zone,
            "in_transaction": event.in_transaction,
            "executing": True,
            "settings": session.settings,
        }
        if logged_from is not None:  # what a restart needs to tell what an interrupted execution did (ddl_resume)
            stop |= {"own_from": str(logged_from), "thread": connection_id(conn)}
        self.state.check_fence(conn)
        self.state.save_stop(conn, stop)
        query(conn, "COMMIT")
        watcher = self.telemetry.watcher
        if watcher is not None and logged_from is not None:
            watcher.own_ddl.append((logged_from, None))
        self._drop_precreated(conn, parsed, event.schema)
        exec_from = binlog_end_or_none(conn)
        if exec_from is not None:
            # what a restart needs to tell whether an interrupted execution ran (ddl_resume): the statements this
            # connection logs from here on are the DDL's alone
            self.state.check_fence(conn)
            self.state.save_stop(conn, stop | {"target_from": str(exec_from), "thread": connection_id(conn)})
            query(conn, "COMMIT")
        # the statement's default database, when it is a replicated one: another database need not exist on the
        # target, and the statement names its replicated tables qualified then (judge() resolved them so)
        replicated = event.schema and self.selection.database(event.schema)
        database = self.config.replication.target_db(event.schema) if replicated else None
        execute_ddl(conn, event.query, database, session)
        logged_to = binlog_end_or_none(conn)
        self.state.check_fence(conn)
        if logged_from is not None and logged_to is not None:
            self.state.record_own_ddl(conn, logged_from, logged_to, event.query)
            if watcher is not None:
                watcher.own_ddl.append((logged_from, logged_to))
        if watcher is not None and logged_from is not None:
            watcher.own_ddl.remove((logged_from, None))
        if event.in_transaction:
            # CREATE ... SELECT (MariaDB logs the table's definition, then its rows, in one transaction): the stream
            # resumes at the transaction's start and takes the rows, knowing the statement has run
            self.state.save_position(conn, event.start, 0, self.telemetry.phase)
            self.state.save_stop(conn, ddl_applied_marker(event.query, event.start, event.position))
        else:
            self.state.save_position(conn, event.position, 0, self.telemetry.phase)
            self.state.save_stop(conn, None)
        self._cursors_after_ddl(conn, parsed, event.schema, tables)
        query(conn, "COMMIT")
        self.log.info("DDL replayed on the target", statement=event.query[:500], position=str(event.position))

    def _ddl_settings(self, event: Statement) -> dict[str, str]:
        """The session variables a DDL runs under besides sql_mode, time zone and clock: the source's globals of
        those the event does not carry, and the event's auto_increment settings."""
        settings = dict(self.source_ddl_settings)
        if event.explicit_defaults_for_timestamp is not None:  # the session's own value beats the global
            settings["explicit_defaults_for_timestamp"] = str(event.explicit_defaults_for_timestamp)
        collation = _collation_name(event.default_collation_for_utf8mb4)
        if collation:
            settings["default_collation_for_utf8mb4"] = collation
        if event.auto_increment is not None:
            settings["auto_increment_increment"], settings["auto_increment_offset"] = map(str, event.auto_increment)
        return settings

    def _ddl_session(self, event: Statement) -> DdlSession:
        return DdlSession(
            event.sql_mode, event.timestamp, event.time_zone, self.source_flavor, self._ddl_settings(event)
        )

    def _drop_precreated(self, conn: Connection, parsed: statements.Parsed, schema: str) -> None:
        """Tables a DDL creates (CREATE TABLE, the new name of a RENAME) that austasync already created at start-up
        from the source's newer definition: still uncopied (no chunk of a table can be copied before the stream
        passes its creation), so they are dropped and made the way the stream says, at this position."""
        for ref in statements.created_tables(parsed):
            db = ref.db or schema
            cursor = self.telemetry.cursors.get((db, ref.name))
            if cursor is not None and not cursor.done:
                target = f"{quote_ident(self.config.replication.target_db(db))}.{quote_ident(ref.name)}"
                query(conn, f"DROP TABLE IF EXISTS {target}")
                self.log.info("dropped a table created ahead of the stream", table=f"{db}.{ref.name}")

    def _cursors_after_ddl(
        self, conn: Connection, parsed: statements.Parsed, schema: str, tables: tuple[TableId, ...]
    ) -> None:
        """Copy cursors after a DDL ran on the target: a table the stream created gets every row from the stream
        (nothing to copy); a renamed table keeps its copy's progress under its new name; any other table it names
        that is still being copied starts its copy again (its shape changed)."""
        cursors = self.telemetry.cursors
        owned: dict[TableId, bool] = {}
        renamed = statements.renamed_tables(parsed)
        for old, new in renamed:
            before = cursors.get((old.db or schema, old.name))
            owned[(new.db or schema, new.name)] = before is not None and before.done
            owned.setdefault((old.db or schema, old.name), True)  # gone under that name: nothing to copy
        if not renamed:
            owned.update({(ref.db or schema, ref.name): True for ref in statements.created_tables(parsed)})
        if parsed.verb.removeprefix("SET STATEMENT ... FOR ").startswith("DROP TABLE"):
            owned.update({(ref.db or schema, ref.name): True for ref in parsed.objects})  # gone: nothing to copy
        for (db, name), done in owned.items():
            if self.selection.table(db, name):
                self.state.set_stream_owned(conn, db, name, done)
        for tid in tables:
            cursor = cursors.get(tid)
            if tid not in owned and cursor is not None and not cursor.done:
                restarted = CopyCursor(cursor.db, cursor.table, None, False, 0, cursor.rows_estimated)
                self.state.save_cursor(conn, restarted)
                self.telemetry.set_cursor(restarted)

    # --- control requests: the verification barrier -----------------------------------------------------------

    def _serve_control(self, applier: Applier, reader: BinlogReader, source: Connection) -> None:
        request = self.control.next()
        if request is None or request.expired:
            return
        if request.command == "repair":
            self._repair(request, applier, reader)
            return
        if request.command == "verify/written":
            if self.telemetry.foreign_writes:
                self.scheduler.invalidate(f"{self.telemetry.foreign_writes} open foreign writes on the target")
            request.answer(200, self.scheduler.written_since_baseline())
            return
        if request.command != "barrier/pause":
            request.answer(409, {"error": "the applier is not paused; POST /control/barrier/pause first"})
            return
        self._commit(applier)
        request.answer(200, {"position": str(applier.committed)})
        self.log.info("barrier: paused", position=str(applier.committed))
        deadline = self.clock() + AUTO_RELEASE_SECONDS
        while self.clock() < deadline and not self.stopping:
            self._housekeeping(source, applier)
            request = self.control.next(timeout=0.1)
            if request is None or request.expired:
                continue
            if request.command == "barrier/release":
                request.answer(200, {"position": str(applier.committed)})
                self.log.info("barrier: released", position=str(applier.committed))
                return
            if request.command == "barrier/pause":
                request.answer(200, {"position": str(applier.committed)})
                continue
            self._barrier_advance(request, applier, reader)
            # the client still needs a moment after an advance (opening its target snapshot)
            deadline = self.clock() + AUTO_RELEASE_SECONDS
        self.log.warning("barrier: released automatically", seconds=AUTO_RELEASE_SECONDS)

    def _repair(self, request: Request, applier: Applier, reader: BinlogReader) -> None:
        """``POST /control/repair``: replace the given keys by the source's rows at this applier's position.

        A source snapshot is opened, the stream applied to exactly its position (the copy's barrier,
        docs/DESIGN.md#rule-repair), the keys read there and replaced in the applier's fenced transaction, committed
        with the checkpoint.
        """
        tables = {str(t): t for t in applier.plans_tables.values()}
        try:
            wanted = repairmod.keys_from_wire(request.body, tables)
        except ValueError as exc:
            request.answer(400, {"error": str(exc)})
            return
        self._commit(applier)
        try:
            snapshot = SnapshotReader(self.config.source)
            position = snapshot.open_snapshot([tables[name] for name in wanted])
        except (UnavailableError, pymysql.err.MySQLError) as exc:
            request.answer(503, {"error": f"cannot open a source snapshot for the repair: {exc}"})
            return
        try:
            # the stream's own errors (a DDL stop, drift, a value it cannot carry) are not the repair's: they
            # propagate and stop the pipeline at its checkpoint, as anywhere else
            if not self._advance_to(position, applier, reader, deadline=self.clock() + AUTO_RELEASE_SECONDS):
                request.answer(503, {"error": f"the stream did not reach {position} in time, or stopping; try again"})
                return
            done = self._replace_keys(request, applier, snapshot, tables, wanted)
        finally:
            snapshot.close()
        if done is not None:
            self.log.info("repaired keys at the barrier", position=str(position), tables=done)
            request.answer(200, {"position": str(position), "tables": done})

    def _replace_keys(
        self,
        request: Request,
        applier: Applier,
        snapshot: SnapshotReader,
        tables: dict[str, Table],
        wanted: dict[str, list[tuple[bytes, ...]]],
    ) -> dict[str, dict[str, int]] | None:
        """The repair's own writes, in one fenced transaction; on failure only they are rolled back (the stream
        was committed at the snapshot's position just before), and the request says why."""
        done = {}
        try:
            for name, keys in wanted.items():
                rows = repairmod.source_rows(snapshot, tables[name], keys)
                deleted = applier.replace_keys(tables[name], keys, rows)
                done[name] = {"keys": len(keys), "rows_deleted": deleted, "rows_written": len(rows)}
            applier.commit()
        except FencedError:
            raise
        except (AustasyncError, pymysql.err.MySQLError) as exc:
            applier.rollback()
            self.log.error("repair failed; nothing of it was written", error=str(exc))
            request.answer(500, {"error": f"repair failed, nothing written: {exc}"})
            return None
        return done

    def _barrier_advance(self, request: Request, applier: Applier, reader: BinlogReader) -> None:
        try:
            target = Position.parse(str(request.body.get("position", "")))
        except ValueError:
            request.answer(400, {"error": 'body must be {"position": "file:pos"}'})
            return
        if target < applier.committed:
            request.answer(409, {"error": f"the applier is already past {target} (at {applier.committed})"})
            return
        try:
            reached = self._advance_to(target, applier, reader, deadline=self.clock() + AUTO_RELEASE_SECONDS)
        except PassedPosition as exc:
            # a position that is no transaction boundary: the caller's mistake, not a reason to stop replicating
            # (the events read on the way are applied as usual). Any other error is the stream's: it propagates
            request.answer(409, {"error": str(exc)})
            return
        if reached:
            request.answer(200, {"position": str(applier.committed)})
        else:
            request.answer(503, {"error": f"{target} was not reached within {AUTO_RELEASE_SECONDS:g} s, or stopping"})

    # --- bulk copy at the barrier, docs/DESIGN.md#rule-copy-barrier -------------------------------------------

    def _copy_due(self) -> bool:
        """Not throttled, not paused by the operator, not resting (a paced copy rests between snapshots)."""
        return not self.telemetry.throttle.active and not self.pause.reason and self.clock() >= self._copy_resume_at

    def _copy_round(
        self,
        applier: Applier,
        reader: BinlogReader,
        snapshot: SnapshotReader,
        tables: dict[TableId, Table],
        source: Connection,
    ) -> bool:
        """Copy chunks in one snapshot; True once every table is copied."""
        pending = [c for c in self.telemetry.cursors.values() if not c.done]
        if not pending:
            return True
        self._commit(applier)
        position = snapshot.open_snapshot([tables[(c.db, c.table)] for c in pending])
        try:
            if not self._advance_to(position, applier, reader):
                snapshot.close_snapshot()
                return False
            work = [(tables[(c.db, c.table)], c.cursor) for c in pending]
            self._copy_chunks(applier, snapshot, work, position, source)
            pending = [c for c in self.telemetry.cursors.values() if not c.done]
        except BaseException:
            # the error that ended the round is the one to report, not the broken session's at its COMMIT
            with contextlib.suppress(Exception):
                snapshot.close_snapshot()
            raise
        snapshot.close_snapshot()
        self.telemetry.publish()
        return not pending

    def _copy_chunks(
        self,
        applier: Applier,
        snapshot: SnapshotReader,
        work: list[tuple[Table, tuple[bytes, ...] | None]],
        position: Position,
        source: Connection,
    ) -> None:
        """Write chunks read ahead from the snapshot until every table is done or the snapshot budget is spent.

        The target's inserts bound the copy, and one connection keeps one of the target's cores busy: chunks go
        through the applier's connection and :data:`_COPY_WRITERS` - 1 more, in parallel. A table always goes
        through the same one, so its chunks commit in key order and its cursor never passes an uncommitted chunk.
        The applier stands at the snapshot's position until every chunk handed out is written.

        The round stops reading (and writes what it read) when its time is up, when the operator pauses, when a
        source session waits on a lock of ours, or when the rows/s ceiling is reached; a paced copy (the
        governor's pace < 1) reads for that share of ``snapshot_seconds`` and then rests in proportion, like the
        ceiling's rest, between rounds: the snapshot is closed while it rests (:meth:`_copy_due`).
        """
        pace = self.telemetry.throttle.pace if 0 < self.telemetry.throttle.pace < 1 else 1.0
        limits = _RoundLimits(self, source, self.config.copy.snapshot_seconds * pace)
        results: queue.Queue[tuple[Table, CopyCursor, int] | BaseException] = queue.Queue()
        phase = self.telemetry.phase

        def write_with_applier(table: Table, cursor: CopyCursor, chunk: Chunk) -> CopyCursor:
            try:
                new = applier.write_chunk(
                    table, cursor, chunk.literals, chunk.last_key, chunk.is_last, chunk.count, chunk.data
                )
            except LoadRefused:
                applier.rollback()  # nothing of the chunk stays; the stream's part was committed at the barrier
                raise
            applier.commit(phase=phase)
            return new

        # unlogged chunks never go through the applier's connection, whose stream writes are logged
        logged = self.config.copy.target_binlog
        writers: list[Callable[[Table, CopyCursor, Chunk], CopyCursor]] = [write_with_applier] if logged else []
        writers += [_writing_with(extra) for extra in self._copy_writers(applier, [t for t, _ in work])]
        lanes = [_CopyLane(write, results) for write in writers]
        lane_of = {table.id: lanes[i % len(lanes)] for i, (table, _) in enumerate(work)}
        handed: set[TableId] = set()
        prefetcher = ChunkPrefetcher(snapshot, work, self.config.copy.chunk_rows, enough=limits.enough)
        failure: BaseException | None = None
        try:
            for table, start, chunk in prefetcher:
                failure = failure or self._copy_results(results, position)
                if failure is not None or self.stopping:
                    break
                cursor = None if table.id in handed else self.telemetry.cursors[table.id]
                handed.add(table.id)
                lane_of[table.id].put(table, start, chunk, cursor)
                limits.handed(chunk.count)
        finally:
            for lane in lanes:
                lane.finish()
            prefetcher.close()
        self._copy_rest(limits.started, limits.copied, pace)
        failure = failure or self._copy_results(results, position)
        if isinstance(failure, LoadRefused):
            # the chunk was not committed and its cursor not moved: the next round reads it again, as an INSERT
            snapshot.insert_only.add(None if failure.everywhere else failure.table)
            self.log.warning(
                "copying with INSERT instead of LOAD DATA", reason=str(failure), every_table=failure.everywhere
            )
        elif failure is not None:
            raise failure

    def _copy_results(
        self, results: queue.Queue[tuple[Table, CopyCursor, int] | BaseException], position: Position
    ) -> BaseException | None:
        """Take the written chunks' new cursors (the lanes' threads commit them); the first failure, if any."""
        failure = None
        while True:
            try:
                item = results.get_nowait()
            except queue.Empty:
                return failure
            if isinstance(item, BaseException):
                failure = failure or item
                continue
            table, new, count = item
            if self.recovery.active:
                self._recovered()  # a chunk read and committed: both servers answer again
            self.telemetry.set_cursor(new)
            self.metrics.copied_rows.inc(count)
            self.log.info(
                "chunk copied", table=str(table), rows=count, total=new.rows_copied, done=new.done, at=str(position)
            )

    def _drop_copy_writers(self) -> None:
        for writer in self._chunk_writers:
            with contextlib.suppress(Exception):  # closing an idle session; the server cleans up anyway
                writer.conn.close()
            if writer.conn in self._conns:
                self._conns.remove(writer.conn)
        self._chunk_writers = []

    def _copy_writers(self, applier: Applier, tables: list[Table]) -> list[ChunkWriter]:
        """The extra target connections of the copy, opened on first use and kept until the copy is complete;
        registered in the fence, so that a takeover kills them as it kills the applier's."""
        logged = self.config.copy.target_binlog
        wanted = min(_COPY_WRITERS, len(tables)) - (1 if logged else 0)
        if not logged and not self._chunk_writers:
            self.log.warning(
                "copy.target_binlog = false: copied rows are not written to the target's binlog; replicas and"
                " binlog backups of the target will not have them"
            )
        while len(self._chunk_writers) < wanted:
            conn = connect(self.config.target, "target", autocommit=False)
            self._conns.append(conn)
            setup_target_session(conn)
            if not logged:
                _skip_binlog(conn)
            self.state.add_connections(conn, [connection_id(conn)])
            self._chunk_writers.append(
                ChunkWriter(conn, self.state, applier.plans_tables, applier.foreign_keys, applier.target_db)
            )
        return self._chunk_writers[:wanted]

    def _copy_rest(self, started: float, copied: int, pace: float) -> None:
        """When the next round may start: after a rest in proportion to this round's time at a pace < 1, and long
        enough to keep ``copy.max_rows_per_second``. The loop streams meanwhile; no snapshot is open."""
        busy = self.clock() - started
        rest = busy * (1 / pace - 1) if pace < 1 else 0.0
        ceiling = self.config.copy.max_rows_per_second
        if ceiling > 0:
            rest = max(rest, copied / ceiling - busy)
        self._copy_resume_at = self.clock() + rest

    def _advance_to(
        self, position: Position, applier: Applier, reader: BinlogReader, deadline: float | None = None
    ) -> bool:
        """Apply the stream up to exactly ``position`` (a transaction boundary) and commit there.

        False when stopping or past ``deadline`` (then the applier stands wherever it got, at a boundary or not).
        """
        while applier.in_txn or applier.position < position:
            if self.stopping or (deadline is not None and self.clock() > deadline):
                return False
            event = self._next(reader, timeout=0.2)
            if self.clock() - self.telemetry.loop_tick > 1.0:
                # a long catch-up to a barrier does not pass through the housekeeping: keep the lease and watchdog
                self.telemetry.loop_tick = self.clock()
                sdnotify.watchdog()
                self._keep_lease("while catching up to a barrier")
            if event is None:
                continue
            self._handle(event, applier)
            if self._batch_full(applier):
                self._commit(applier)
        if applier.position != position:
            raise PassedPosition(
                f"the stream passed the snapshot position {position} without stopping on it (now at"
                f" {applier.position}); refusing to copy a chunk at the wrong point"
            )
        self._commit(applier)
        return True

    # --- housekeeping -----------------------------------------------------------------------------------------

    def _housekeeping(self, source: Connection, applier: Applier) -> None:
        self.telemetry.loop_tick = self.clock()
        if self.on_tick:
            self.on_tick()
        throttle = self.telemetry.throttle
        if self.clock() - throttle.checked >= self.config.throttle.check_interval_seconds:
            throttle.checked = self.clock()
            sdnotify.watchdog()  # from the loop itself: a hung loop stops the pings and systemd restarts us
            sdnotify.status(f"{self.telemetry.phase}, lag {self.telemetry.lag_seconds():.1f}s")
            self._check_throttle(source)
            self.telemetry.refresh_source(source)
            self._keep_lease("while streaming")
            self._check_watcher()
        self._refresh_foreign()
        if self.telemetry.publish_due():
            self.telemetry.publish()
            self.telemetry.sync_verification()
            self._persist_verification(applier)

    def _check_watcher(self) -> None:
        """A target-write watcher that lost its connection means the target did (a restart, a cut): restart the
        pipeline now, from the checkpoint with the watcher where it stopped, rather than at the next write."""
        watcher = self._watcher
        if watcher is not None and watcher.error is not None and is_connection_error(watcher.error):
            raise watcher.error

    def _verification_done(self, result: Result) -> None:
        """Called from the verifier thread: the verdict goes to Redis now and to the target at the next tick; with
        Redis down it is kept, and republished when Redis answers (Telemetry.sync_verification)."""
        doc = gate_summary(result, self.telemetry.wall())
        try:
            self.mirror.publish_verification(doc)
        except (redis.RedisError, OSError) as exc:
            # kept where the loop persists it to the target and republishes it; with Redis up the loop takes it
            # from Redis at its next sync, as always (metrics first, then the target)
            self.telemetry.last_verification = doc
            self.log.warning("cannot publish the verification to Redis; kept for when it answers", error=str(exc))
        self._clear_foreign(result)
        for table in result.tables:
            self.metrics.verify_chunks.labels("mismatch" if table.differences else "match").inc(max(1, table.chunks))

    def _persist_verification(self, applier: Applier) -> None:
        """Keep the last verification (the daemon's or the CLI's) in the target: a Redis restart must not forget it."""
        doc = self.telemetry.last_verification
        if not doc or applier.target_open or float(doc.get("finished_at") or 0) <= self._saved_verification_at:
            return
        self.state.check_fence(applier.conn)
        self.state.save_verification(applier.conn, doc)
        query(applier.conn, "COMMIT")
        self._saved_verification_at = float(doc.get("finished_at") or 0)

    def _check_throttle(self, source: Connection) -> None:
        """Throttle while a source signal is over budget or unreadable (fail closed), or the apply lag is high."""
        reading = governor.read_source(source, self.config.throttle)
        reason, signal = reading.reason, reading.signal
        lag = self.telemetry.lag_seconds()
        if not reason and lag > self.config.throttle.max_lag_seconds:
            reason, signal = f"apply lag {lag:.0f}s > {self.config.throttle.max_lag_seconds:.0f}s", "lag"
        self.metrics.history_list.set(reading.history_list_length)
        self.metrics.probe_seconds.set(reading.probe_seconds)
        self.metrics.lock_waits.set(reading.lock_waits)
        throttle = self.telemetry.throttle
        throttle.history_list_length = reading.history_list_length
        throttle.probe_seconds = reading.probe_seconds
        throttle.lock_waits = reading.lock_waits
        if reason != throttle.reason:
            self.log.info("throttle", active=bool(reason), reason=reason)
            self.metrics.set_throttle(signal)
        throttle.active = bool(reason)
        throttle.reason = reason
        pace, slowed_by = reading.pace, reading.slowed_by
        limit = self.config.throttle.max_lag_seconds
        lag_pace = governor.pace_of(lag, limit, self.config.throttle.slow_from)
        if lag_pace < pace:
            pace, slowed_by = lag_pace, f"apply lag {lag:.0f}s ({100 * lag / limit:.0f}% of {limit:g}s)"
        if bool(slowed_by) != bool(throttle.slowed_by):
            self.log.info(
                "throttle: slowing" if slowed_by else "throttle: full speed", pace=round(pace, 2), by=slowed_by
            )
        throttle.pace, throttle.slowed_by = (0.0, "") if reason else (pace, slowed_by)
        self.metrics.pace.set(0.0 if self.pause.reason else throttle.pace)


class _RoundLimits:
    """When a copy round stops reading: its time is up, the daemon stops or the operator pauses, the rows/s ceiling
    is reached, or a source session waits on a lock of ours (checked every :data:`_LOCK_CHECK_SECONDS` on the
    loop's source connection, idle while the round runs). The chunks already read are still written."""

    def __init__(self, daemon: Daemon, source: Connection, seconds: float) -> None:
        self.daemon = daemon
        self.source = source
        self.started = daemon.clock()
        self.budget = self.started + seconds
        self.ceiling = daemon.config.copy.max_rows_per_second
        self.copied = 0
        self.next_check = self.started + _LOCK_CHECK_SECONDS
        self.cut = ""  # why the round stopped reading early

    def enough(self) -> bool:
        """Asked by the reader thread before each chunk it reads."""
        d = self.daemon
        return bool(self.cut) or d.clock() >= self.budget or d.stopping or bool(d.pause.reason)

    def handed(self, rows: int) -> None:
        """A chunk of ``rows`` was handed to a writer (the loop's thread)."""
        d = self.daemon
        self.copied += rows
        if self.cut:
            return
        if self.ceiling > 0 and self.copied / self.ceiling > d.clock() - self.started:
            self.cut = f"copy.max_rows_per_second {self.ceiling}"
        elif d.config.throttle.watch_lock_waits and d.clock() >= self.next_check:
            self.next_check = d.clock() + _LOCK_CHECK_SECONDS
            waits, why = governor.own_lock_waits(self.source)
            if why:
                self.cut = why
                d.metrics.lock_waits.set(waits)
                d.log.warning("copy round ended early: the source waits on its snapshot", reason=why)


class PassedPosition(UncarryableValueError):
    """The stream went past a requested position without stopping on it: it is no transaction boundary."""


def _skip_binlog(conn: Connection) -> None:
    """``copy.target_binlog = false``: this session's chunks stay out of the target's binlog."""
    try:
        query(conn, "SET SESSION sql_log_bin = 0")
    except pymysql.err.MySQLError as exc:
        raise SetupError(
            f"copy.target_binlog = false needs the target user to set sql_log_bin ({exc.args[-1]}). Grant BINLOG"
            " ADMIN (MariaDB 10.5+; SUPER before) or SYSTEM_VARIABLES_ADMIN (MySQL 8), or set copy.target_binlog"
            " = true"
        ) from None


def _writing_with(writer: ChunkWriter) -> Callable[[Table, CopyCursor, Chunk], CopyCursor]:
    def write(table: Table, cursor: CopyCursor, chunk: Chunk) -> CopyCursor:
        return writer.write_chunk(table, cursor, chunk.literals, chunk.last_key, chunk.is_last, chunk.count, chunk.data)

    return write


_COPY_WRITERS = 2  # target connections writing chunks at once; a 2-core target was measured saturated with 2


class _CopyLane:
    """A thread writing one table group's chunks in the order they are handed to it."""

    def __init__(
        self,
        write: Callable[[Table, CopyCursor, Chunk], CopyCursor],
        results: queue.Queue[tuple[Table, CopyCursor, int] | BaseException],
    ) -> None:
        self._write = write
        self._results = results
        self._chunks: queue.Queue[tuple[Table, tuple[bytes, ...] | None, Chunk, CopyCursor | None] | None] = (
            queue.Queue(maxsize=2)
        )
        self._thread = threading.Thread(target=self._run, name="copy-writer", daemon=True)
        self._thread.start()

    def put(self, table: Table, start: tuple[bytes, ...] | None, chunk: Chunk, cursor: CopyCursor | None) -> None:
        """``cursor``: the table's saved cursor, with its first chunk of the round."""
        self._chunks.put((table, start, chunk, cursor))

    def finish(self) -> None:
        """Write what was handed out, then end the thread."""
        self._chunks.put(None)
        self._thread.join()

    def _run(self) -> None:
        cursors: dict[TableId, CopyCursor] = {}
        failed = False
        while True:
            item = self._chunks.get()
            if item is None:
                return
            if failed:
                continue  # after a failure nothing more is written; the round ends
            table, start, chunk, cursor = item
            if cursor is not None:
                cursors[table.id] = cursor
            saved = cursors[table.id]
            try:
                if start != saved.cursor:
                    raise UncarryableValueError(
                        f"internal error: chunk of {table} read after key {start!r} but the saved cursor is"
                        f" {saved.cursor!r}; refusing to write it"
                    )
                cursors[table.id] = new = self._write(table, saved, chunk)
                self._results.put((table, new, chunk.count))
            except BaseException as exc:  # noqa: BLE001 (raised in the daemon's thread)
                failed = True
                self._results.put(exc)


def _rollback(applier: Applier) -> None:
    """Roll the open batch back on the way out; on a broken connection the server has done it, and the error
    that broke it is the one to report, not this one."""
    with contextlib.suppress(Exception):
        applier.rollback()


class _SchemaChanged(Exception):
    """Raised inside the loop after a DDL was replayed, so the pipeline restarts with the new schema."""

    def __init__(self, statement: str) -> None:
        super().__init__(statement)
        self.statement = statement


def _check_binlog_available(conn: Connection, position: Position) -> None:
    files = [str(r[0]) for r in query(conn, "SHOW BINARY LOGS")]
    if position.file not in files:
        raise BinlogPurgedError(
            f"the source no longer has binlog {position.file}, which the checkpoint {position} needs (oldest is"
            f" {files[0] if files else 'none'}). The target cannot be caught up from the stream: start a re-copy"
            " with `austasync reset --config FILE`, then `austasync run`; raise binlog_expire_logs_seconds on the"
            " source so it does not happen again"
        )


def _collation_name(collation: int | None) -> str | None:
    names = query_event.collation_names(collation)
    return names[1] if names and names[1] else None


def _not_replayable(event: Statement) -> str | None:
    """Why running ``event`` on the target would not do what it did on the source, or None."""
    if not event.exact:
        return _INEXACT
    if event.default_collation_for_utf8mb4 is not None and not _collation_name(event.default_collation_for_utf8mb4):
        return (
            f"the source session's default_collation_for_utf8mb4 is collation {event.default_collation_for_utf8mb4},"
            " which austasync cannot name, and CHARSET utf8mb4 without COLLATE means that collation"
        )
    if event.lc_time_names:
        return (
            f"the source session's lc_time_names was locale number {event.lc_time_names}, not en_US, and a DDL's"
            " expression defaults (DATE_FORMAT, MONTHNAME) fill existing rows in that language"
        )
    return None


def _ddl_message(stop: dict[str, Any]) -> str:
    where = " inside the transaction" if stop.get("in_transaction") else ""
    if stop.get("not_replayable"):
        return (
            f"DDL on a replicated table at source position {stop['end']}{where} (from {stop['start']}) cannot be"
            f" replayed exactly: {stop['not_replayable']}. The target is checkpointed just before it. Read the statement as the"
            f" source ran it from the source's binlog (mariadb-binlog --start-position={stop['start'].split(':')[-1]}"
            f" {stop['start'].split(':')[0]}), apply the same change to the target yourself, then run"
            " `austasync ddl --config FILE --skip` and start `austasync run` again"
        )
    return (
        f"DDL on a replicated table at source position {stop['end']}{where} (from {stop['start']}):"
        f" {stop['statement'][:500]!r}."
        ' on_ddl = "stop": the target is checkpointed just before it. Apply the same change to the target'
        " yourself and run `austasync ddl --config FILE --skip`, or let austasync run it there with"
        " `austasync ddl --config FILE --exec`; then start `austasync run` again"
    )


def is_connection_error(exc: BaseException) -> bool:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    return bool(args) and isinstance(args[0], int) and args[0] in CONNECTION_LOST
