"""Where the stream goes on after a DDL: the checkpoint past a statement that ran on the target, and the recovery
of one whose execution was interrupted (the daemon killed between recording it and checkpointing past it).

DDL commits implicitly, so ``on_ddl = "exec"`` records the statement as executing before it runs and checkpoints
past it after. A daemon killed in between used to leave a DDL stop for the operator ("it may or may not have
run"). The record now also holds the id of the connection that runs it, the target's binlog end when the exec
began (``own_from``) and, once the tables pre-created at start-up are dropped and the statement is about to be
sent, the binlog end then (``target_from``). So the next start can tell: once that connection is gone from the
target, a statement it logged after ``target_from`` means the DDL ran (DDL is atomic on MariaDB 10.6+ and MySQL
8.0: logged if and only if it committed); none, or no ``target_from`` at all, means it did not, and the stream
reads it again. What the connection logged from ``own_from`` on is recorded as austasync's own DDL. Anything it
cannot read (the binlog purged, no privilege) leaves the stop for the operator, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from austasync.binlog.adapter import logged_statements
from austasync.config import Config
from austasync.db import Connection, query
from austasync.position import Position
from austasync.state import TargetState

# transaction control a connection logs around its writes; any other statement of the DDL's connection is the DDL
_NOT_DDL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "XA ")
_WAIT_SECONDS = 300.0


def ddl_applied_marker(statement: str, start: Position, end: Position) -> dict[str, Any]:
    """The state's note that a DDL inside the transaction starting at ``start`` ran on the target: the stream
    resumes at ``start`` and skips the statement ending at ``end`` (not a stop: the gate ignores it)."""
    return {"kind": "ddl_applied", "statement": statement[:2000], "start": str(start), "end": str(end)}


def finish(state: TargetState, conn: Connection, stop: dict[str, Any], phase: str) -> str:
    """Checkpoint past a DDL that has run on the target (the caller commits); where the stream resumes."""
    end, start = Position.parse(stop["end"]), Position.parse(stop["start"])
    if stop.get("in_transaction"):
        # the rows of its transaction (CREATE ... SELECT) are still to come: resume at the transaction's start
        state.save_position(conn, start, 0, phase)
        state.save_stop(conn, ddl_applied_marker(stop["statement"], start, end))
        return f"{start}, with the rows of its transaction"
    state.save_position(conn, end, 0, phase)
    state.save_stop(conn, None)
    return str(end)


def interrupted(stop: dict[str, Any]) -> bool:
    """A DDL stop left by an ``exec`` that did not get to checkpoint past its statement, recoverable here: it
    names the connection and where the target's binlog stood (``own_from`` from the start, ``target_from`` once
    the pre-created tables are dropped and the statement is about to run)."""
    return bool(stop.get("executing")) and "thread" in stop and ("own_from" in stop or "target_from" in stop)


def _still_running(admin: Connection, thread: int, log: Any, sleep: Callable[[float], None]) -> bool:
    deadline = time.monotonic() + _WAIT_SECONDS
    while query(admin, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (thread,))[0][0]:
        if time.monotonic() > deadline:
            return True
        log.info("waiting for the interrupted DDL's connection to end on the target", thread=thread)
        sleep(2.0)
    return False


@dataclass(frozen=True)
class Outcome:
    """What the interrupted connection left in the target's binlog: whether the DDL ran, and the end of its own
    statements there (the DDL, or the DROP of a pre-created table), or None when it logged none."""

    ran: bool
    own_to: Position | None


def outcome(
    config: Config, admin: Connection, stop: dict[str, Any], log: Any, sleep: Callable[[float], None] = time.sleep
) -> Outcome | None:
    """What the interrupted ``exec`` of ``stop`` did on the target; None when that cannot be told."""
    thread = int(stop["thread"])
    if _still_running(admin, thread, log, sleep):
        return None
    own_from = Position.parse(stop.get("own_from") or stop["target_from"])
    try:
        logged = logged_statements(config.target, config.replication.server_id, own_from)
    except Exception as exc:  # noqa: BLE001 (any failure to read leaves the decision to the operator)
        log.warning("cannot read the target's binlog to tell whether the interrupted DDL ran", error=str(exc)[:300])
        return None
    ends = [s.end for s in logged if s.thread == thread and not s.text.lstrip().upper().startswith(_NOT_DDL)]
    # killed before target_from was recorded: the statement had not been sent (only the DROP of pre-created
    # tables may have run); after it, a statement of that connection past target_from is the DDL
    target_from = Position.parse(stop["target_from"]) if "target_from" in stop else None
    ran = target_from is not None and any(end > target_from for end in ends)
    return Outcome(ran, ends[-1] if ends else None)


def recover(
    config: Config,
    state: TargetState,
    writer: Connection,
    admin: Connection,
    stop: dict[str, Any],
    phase: str,
    log: Any,
) -> bool:
    """Resolve an interrupted ``exec``: checkpoint past the DDL if it ran, forget the record if it did not (the
    stream reads it again). False when it cannot be told; the stop stays for the operator."""
    found = outcome(config, admin, stop, log)
    if found is None:
        return False
    state.check_fence(writer)
    if found.own_to is not None:  # austasync's own DDL, which the target-write watcher must not report
        own_from = Position.parse(stop.get("own_from") or stop["target_from"])
        state.record_own_ddl(writer, own_from, found.own_to, stop["statement"])
    if found.ran:
        resumes = finish(state, writer, stop, phase)
    else:
        state.save_stop(writer, None)
        resumes = "the statement, which runs again"
    query(writer, "COMMIT")
    log.warning(
        "recovered an interrupted DDL execution",
        statement=str(stop["statement"])[:300],
        ran_on_target=found.ran,
        resumes_at=resumes,
    )
    return True


def close_open_own_ddl(
    config: Config, state: TargetState, writer: Connection, admin: Connection, log: Any,
    sleep: Callable[[float], None] = time.sleep,
) -> None:  # fmt: skip
    """Close the own-DDL records a kill left open (start-up DDL begun but not recorded as done): each covers what
    its connection logged from its start, as read back from the target's binlog, or is dropped when it logged
    nothing. Left open (covering nothing, so the watcher may report a false foreign write, never miss one) when
    the connection is still there or the binlog cannot be read."""
    for row, start, thread, what in state.open_own_ddl(writer):
        if _still_running(admin, thread, log, sleep):
            continue
        try:
            logged = logged_statements(config.target, config.replication.server_id, start)
        except Exception as exc:  # noqa: BLE001 (the record stays open: a false alarm at worst)
            log.warning("cannot read the target's binlog to close an interrupted DDL record", error=str(exc)[:300])
            continue
        ends = [s.end for s in logged if s.thread == thread]
        state.check_fence(writer)
        if ends:
            state.end_own_ddl(writer, row, ends[-1], what)
        else:
            state.drop_own_ddl(writer, row)
        query(writer, "COMMIT")
        log.info("closed an interrupted DDL record", what=what[:200], covers_to=str(ends[-1]) if ends else None)
