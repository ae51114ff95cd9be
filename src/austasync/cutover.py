"""``austasync cutover``: stop writes on the legacy source, drain the stream, prove the target exact, promote it.

Steps, each logged with its duration (issue 8):

1. the gate must be ready (the same checks as ``austasync ready``);
2. the source refuses writes: ``SET GLOBAL read_only = ON`` — the one global setting austasync ever changes on the
   legacy host, announced before it happens — after checking that no listed application user can bypass it; then
   no write transaction may still be open;
3. the final source position is read only after that, and the daemon must apply exactly up to it;
4. a verification of both sides, which stand still now;
5. AUTO_INCREMENT counters on the target raised to at least the source's;
6. the target is marked promoted in the fence row (every later austasync write to it refuses); while that row
   is held, the triggers of the replicated tables move (:mod:`austasync.triggers`): created on the target, saved
   and dropped on the source, which from now on is the replica of the reverse stream (a trigger there would fire
   a second time on every replicated row); then the target's own binlog coordinates are recorded (where the
   reverse stream starts) and the result published.

The trigger move is planned and checked (privileges, conflicts, each DEFINER) before ``read_only`` is set, so a
refusal changes nothing. Any failure before the promotion commits sets ``read_only`` back to OFF, undoes the
trigger move and leaves everything as it was, with the reason. ``austasync rollback`` runs the same steps with
the reversed configuration (:func:`austasync.config.reversed_config`): the legacy host gets its saved triggers
back, the new side's are saved and dropped, and the legacy host takes writes again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from austasync import log as logmod
from austasync import readiness
from austasync.config import Config
from austasync.db import Connection, connect, query, setup_source_session, setup_target_session, variable
from austasync.errors import AustasyncError, SetupError, TriggerError, UnavailableError
from austasync.mirror import Mirror
from austasync.position import Position
from austasync.schema import load_tables
from austasync.sql import qualified
from austasync.state import TargetState, connection_id
from austasync.triggers import Moved, Side, TriggerMove, trigger_move
from austasync.verifier import NoDaemonAligner, Result, control_disabled, daemon_control, verify

OPEN_TRANSACTIONS_WAIT_SECONDS = 10.0


@dataclass
class CutoverResult:
    final_position: Position | None = None
    target_position: Position | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    writes_refused_seconds: float = 0.0
    promoted: bool = False
    triggers_moved: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "target_position": str(self.target_position) if self.target_position else None,
            "final_source_position": str(self.final_position) if self.final_position else None,
            "target_binlog_position": str(self.target_position) if self.target_position else None,
            "writes_refused_seconds": round(self.writes_refused_seconds, 3),
            "triggers_moved": self.triggers_moved,
            "steps": self.steps,
        }


class CutoverError(AustasyncError):
    """A cutover step failed; the source was made writable again."""

    kind = "cutover"


def _step(result: CutoverResult, name: str, started: float, **detail: Any) -> None:
    result.steps.append({"step": name, "seconds": round(time.monotonic() - started, 3), **detail})


def check_gate(config: Config, mirror: Mirror) -> None:
    checks = readiness.evaluate(mirror.status(), mirror.verification(), alive=mirror.alive(), now=time.time())
    failing = [f"{c.name}: {c.reason}" for c in checks if not c.ok]
    if failing:
        raise CutoverError("the readiness gate says not ready; nothing was changed:\n  " + "\n  ".join(failing))
    del config


def privileged_app_users(source: Connection, app_users: list[str]) -> list[str]:
    """Listed application users that hold a privilege bypassing read_only (SUPER, READ_ONLY ADMIN)."""
    rows = query(
        source,
        "SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES"
        " WHERE PRIVILEGE_TYPE IN ('SUPER', 'READ_ONLY ADMIN', 'CONNECTION_ADMIN', 'SYSTEM_VARIABLES_ADMIN')",
    )
    wanted = {u.lower() for u in app_users}
    found = []
    for grantee, privilege in rows:
        user = str(grantee).split("@")[0].strip("'").lower()
        if user in wanted:
            found.append(f"{grantee} has {privilege}")
    return found


def _open_write_transactions(source: Connection) -> list[str]:
    rows = query(
        source,
        "SELECT trx_mysql_thread_id, trx_rows_modified FROM information_schema.INNODB_TRX WHERE trx_rows_modified > 0",
    )
    return [f"thread {r[0]} ({r[1]} rows modified)" for r in rows]


def _wait_applied(target: Connection, state: TargetState, final: Position, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint = state.load(target)
        if checkpoint is not None and checkpoint.position >= final and checkpoint.skip_events == 0:
            if checkpoint.position != final:
                raise CutoverError(f"the daemon's checkpoint {checkpoint.position} is past the final position {final}")
            return
        time.sleep(0.1)
    raise CutoverError(f"the daemon did not apply up to the final source position {final} within {timeout:g} s")


def _copy_auto_increment(config: Config, source: Connection, target: Connection) -> list[str]:
    """Raise every target AUTO_INCREMENT to at least the source's, so no deleted patient's id is handed out again."""
    query(source, "SET SESSION information_schema_stats_expiry = 0") if _has_stats_expiry(source) else None
    changed = []
    for table in load_tables(source, config).values():
        row = query(
            source,
            "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (table.db, table.name),
        )
        if not row or row[0][0] is None:
            continue
        wanted = int(row[0][0])
        tdb = config.replication.target_db(table.db)
        current = query(
            target,
            "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (tdb, table.name),
        )
        if current and current[0][0] is not None and int(current[0][0]) >= wanted:
            continue
        query(target, f"ALTER TABLE {qualified(tdb, table.name)} AUTO_INCREMENT = {wanted}")
        changed.append(f"{tdb}.{table.name}={wanted}")
    return changed


def _has_stats_expiry(conn: Connection) -> bool:
    return variable(conn, "information_schema_stats_expiry") is not None


def run_cutover(
    config: Config,
    *,
    app_users: list[str],
    timeout_seconds: float = 60.0,
    announce: Callable[[str], None] = print,
    rollback: bool = False,
    verify_budget_seconds: float = 5.0,
) -> CutoverResult:
    """Run steps 1-6; on failure before 6 commits, the source is made writable again and the error says why.

    ``rollback``: ``config`` is the reversed one; the source is the new side, the target the legacy host, which
    takes the application's writes again at the end.
    """
    result = CutoverResult()
    mirror = Mirror(config.redis, config.replication.name)
    started = time.monotonic()
    check_gate(config, mirror)
    _step(result, "gate", started)
    origin = Side("new" if rollback else "legacy", config.source)
    destination = Side("legacy" if rollback else "new", config.target)
    source = connect(config.source, "source")
    setup_source_session(source)
    target = connect(config.target, "target", autocommit=False)
    setup_target_session(target)
    state = TargetState(config.replication.state_schema, config.replication.name)
    by = "rollback" if rollback else "cutover"
    try:
        with trigger_move(config, origin, destination, migration=config.replication.name, by=by) as triggers:
            _check_app_users(source, app_users, announce)
            # planned before anything changes: a refusal here leaves both sides as they are
            triggers.probe(triggers.plan())
            mirror.publish_cutover({"state": "draining", "at": time.time()})
            announce(
                f"austasync: setting GLOBAL read_only = ON on the source {config.source.describe()}:"
                " application writes will be refused until the application points at the target"
            )
            refused_since = time.monotonic()
            query(source, "SET GLOBAL read_only = ON")
            try:
                _drain_and_promote(
                    config, source, target, state, mirror, result, timeout_seconds, verify_budget_seconds
                )
                started = time.monotonic()
                _promote(target, state, result, triggers, announce)
                _step(result, "promoted", started, target_position=str(result.target_position))
                if rollback:
                    # the legacy host was made read-only by the cutover; it takes the writes again
                    announce(f"austasync: setting GLOBAL read_only = OFF on {config.target.describe()}")
                    query(target, "SET GLOBAL read_only = OFF")
            except BaseException:
                query(source, "SET GLOBAL read_only = OFF")
                mirror.publish_cutover({"state": "failed", "at": time.time()})
                announce("austasync: cutover failed; the source is writable again (read_only = OFF)")
                raise
            result.writes_refused_seconds = time.monotonic() - refused_since
            result.promoted = True
            mirror.publish_cutover({"state": "promoted", "at": time.time(), **result.as_dict()})
    finally:
        source.close()
        target.close()
    return result


def _check_app_users(source: Connection, app_users: list[str], announce: Callable[[str], None]) -> None:
    if not app_users:
        everyone = privileged_app_users(
            source, [str(r[0]) for r in query(source, "SELECT DISTINCT User FROM mysql.user")]
        )
        announce(
            "austasync: no --app-user given; these accounts can write through read_only (make sure the"
            " application is none of them): " + ("; ".join(everyone) or "none")
        )
    bypass = privileged_app_users(source, app_users)
    if bypass:
        raise CutoverError(
            "application users can write through read_only; revoke these first:\n  " + "\n  ".join(bypass)
        )


def _drain_and_promote(
    config: Config,
    source: Connection,
    target: Connection,
    state: TargetState,
    mirror: Mirror,
    result: CutoverResult,
    timeout: float,
    verify_budget: float,
) -> None:
    """Steps 2-5: no write transaction open, the final position drained exactly, verified, counters raised."""
    started = time.monotonic()
    # a transaction that wrote before read_only fails at its next statement or at COMMIT and rolls back:
    # wait for those to end, so the final position below covers every transaction that will ever commit
    deadline = time.monotonic() + min(timeout, OPEN_TRANSACTIONS_WAIT_SECONDS)
    open_trx = _open_write_transactions(source)
    while open_trx and time.monotonic() < deadline:
        time.sleep(0.05)
        open_trx = _open_write_transactions(source)
    if open_trx:
        raise CutoverError("write transactions are still open on the source: " + ", ".join(open_trx))
    status = query(source, "SHOW MASTER STATUS")
    if not status:
        raise SetupError("the source's binlog is off")
    result.final_position = Position(str(status[0][0]), int(status[0][1]))
    _step(result, "source read-only", started, final_position=str(result.final_position))
    started = time.monotonic()
    _wait_applied(target, state, result.final_position, timeout)
    _step(result, "drained", started)
    mirror.publish_cutover({"state": "drained", "final_source_position": str(result.final_position)})
    started = time.monotonic()
    verdict, scope = final_verification(config, mirror, verify_budget)
    if not verdict.consistent:
        drift = sum(len(t.differences) for t in verdict.tables)
        raise CutoverError(f"the final verification found {drift} differing rows (or unverified tables); not promoting")
    _step(result, "verified", started, tables=len(verdict.tables), scope=scope)
    started = time.monotonic()
    changed = _copy_auto_increment(config, source, target)
    _step(result, "auto_increment", started, raised=changed)


def final_verification(config: Config, mirror: Mirror, budget_seconds: float) -> tuple[Result, str]:
    """Step 4, with both sides standing still: the keys written since the daemon's last clean full pass (that
    pass and these keys cover every row), plus a full pass if the last one took no longer than the budget. With
    no such baseline (no clean full pass since the daemon started, drift since, the daemon unreachable) a full
    pass is the only proof. Returns the verdict and what it covered."""
    written = _written_since_baseline(config, mirror)
    last = mirror.verification() or {}
    full_fits = float(last.get("duration_seconds") or float("inf")) <= budget_seconds
    if written is None or full_fits:
        return verify(config, NoDaemonAligner()), "full pass"
    keys = {name: [tuple(k) for k in found] for name, found in dict(written.get("keys") or {}).items()}
    tables = sorted(set(keys) | set(written.get("whole") or []))
    if not tables:
        empty = Result(
            tables=[], aligned=True, source_position=None, started_at=datetime.now(UTC), duration_seconds=0.0, flavor=""
        )
        return empty, "nothing written since the last clean full pass"
    verdict = verify(config, NoDaemonAligner(), tables, keys=keys)
    return verdict, f"{sum(len(k) for k in keys.values())} keys written since the last clean full pass"


def _written_since_baseline(config: Config, mirror: Mirror) -> dict[str, Any] | None:
    status = mirror.status()
    if control_disabled(config, status):
        return None  # its control plane is off: nothing is known about what it wrote
    try:
        written = daemon_control(config, status).written()
    except AustasyncError as exc:
        # no daemon to ask, or it refused this configuration's token: nothing is known about what it wrote
        logmod.get("austasync.cutover").warning("the daemon's written keys are unknown; a full pass", error=str(exc))
        return None
    return written if written.get("baseline") is not None else None


def _promote(
    target: Connection,
    state: TargetState,
    result: CutoverResult,
    triggers: TriggerMove,
    announce: Callable[[str], None],
) -> None:
    """Mark the target promoted under the fence's exclusive lock (every later austasync write refuses) and, while
    the row is held (no stream writes meanwhile), move the triggers; a failure before COMMIT undoes both."""
    query(target, "SET SESSION innodb_lock_wait_timeout = 30")
    rows = query(target, f"SELECT connections FROM {state.schema}.fence WHERE migration = %s", (state.migration,))
    for conn_id in [int(c) for c in str(rows[0][0]).split(",") if c] if rows else []:
        if conn_id != connection_id(target):
            try:
                query(target, f"KILL {conn_id}")
            except Exception:  # noqa: BLE001, S112 (the daemon's session may be gone already)
                continue
    query(
        target,
        f"UPDATE {state.schema}.fence SET promoted = 1, generation = generation + 1 WHERE migration = %s",
        (state.migration,),
    )
    moved: Moved | None = None
    try:
        plan = triggers.plan()
        if plan.wanted:
            announce(
                f"austasync: moving {len(plan.wanted)} triggers with the direction: creating them on"
                f" {plan.destination.describe}, saving and dropping them on {plan.origin.describe} (a replica from"
                " now on, where they would fire a second time): " + ", ".join(plan.names)
            )
        moved = triggers.apply(plan)
        position = query(target, "SHOW MASTER STATUS")
        if not position:
            raise UnavailableError("the target's binlog is off: a reverse stream would have nowhere to start")
        query(target, "COMMIT")
    except BaseException as exc:
        with suppress(Exception):  # the connection may be the thing that failed; its transaction is gone then
            query(target, "ROLLBACK")
        problems = triggers.undo(moved) if moved is not None else []
        if problems:
            raise TriggerError(f"{exc}\nand undoing the trigger move failed:\n  " + "\n  ".join(problems)) from exc
        raise
    result.target_position = Position(str(position[0][0]), int(position[0][1]))
    result.triggers_moved = plan.names
