"""A daemon killed while it runs a DDL under on_ddl = "exec" (between recording the statement as executing and
checkpointing past it): the next start tells from the target's binlog whether the statement ran, and goes on
without an operator, neither losing it nor running it twice."""

from __future__ import annotations

import json
import signal
import time

import pytest

from austasync.position import Position
from austasync.state import TargetState
from conftest import Env, dump


def _prepare(env: Env) -> tuple[str, int, int]:
    """A streaming migration stopped before an ALTER the source ran; the ALTER's (file, start, end) there."""
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(10))",
        f"INSERT INTO {env.db}.t VALUES (1, 'a'), (2, 'b')",
    )
    env.extra = {"replication": {"on_ddl": "exec"}}
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    file, start = env.source_position()
    env.source.execute(f"ALTER TABLE {env.db}.t ADD COLUMN w INT NOT NULL DEFAULT 7")
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (3, 'c', 8)")
    ends = [int(r[4]) for r in env.source.execute(f"SHOW BINLOG EVENTS IN '{file}' FROM {start}") if r[2] == "Query"]
    return file, start, ends[0]


def _interrupted_stop(
    env: Env,
    file: str,
    start: int,
    end: int,
    target_from: tuple[str, int] | None,
    thread: int,
    own_from: tuple[str, int] | None = None,
) -> None:
    """The record an exec leaves when killed before its checkpoint (written as the daemon writes it): without
    ``target_from`` when killed before the statement was sent."""
    stop = {
        "kind": "ddl_stop",
        "statement": f"ALTER TABLE {env.db}.t ADD COLUMN w INT NOT NULL DEFAULT 7",
        "schema": env.db,
        "start": f"{file}:{start}",
        "end": f"{file}:{end}",
        "sql_mode": None,
        "timestamp": None,
        "time_zone": None,
        "in_transaction": False,
        "executing": True,
        "thread": thread,
    }
    if target_from is not None:
        stop["target_from"] = f"{target_from[0]}:{target_from[1]}"
    if own_from is not None:
        stop["own_from"] = f"{own_from[0]}:{own_from[1]}"
    env.target.execute(
        f"UPDATE {env.state_schema}.state SET pending_stop = '{json.dumps(stop)}' WHERE migration = '{env.name}'"
    )


def _target_end(env: Env) -> tuple[str, int]:
    row = env.target.execute("SHOW MASTER STATUS")[0]
    return str(row[0]), int(row[1])


@pytest.mark.mariadb_only
def test_an_interrupted_exec_that_ran_is_checkpointed_past_not_run_twice(env: Env) -> None:
    file, start, end = _prepare(env)
    before = _target_end(env)
    conn = env.target.connect()  # the daemon's connection, which ran the statement before the kill
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        thread = int(cur.fetchone()[0])
        cur.execute(f"ALTER TABLE {env.db}.t ADD COLUMN w INT NOT NULL DEFAULT 7")
    conn.close()
    _interrupted_stop(env, file, start, end, before, thread)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)  # a second ALTER would fail with a duplicate column and stop the daemon
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    assert "recovered an interrupted DDL execution" in env.daemon_log()
    assert '"ran_on_target": true' in env.daemon_log()
    assert "FOREIGN WRITE" not in env.daemon_log()  # the ALTER is recorded as austasync's own


@pytest.mark.mariadb_only
def test_an_interrupted_exec_that_did_not_run_runs_when_the_stream_reads_it_again(env: Env) -> None:
    file, start, end = _prepare(env)
    conn = env.target.connect()  # a connection that was killed before it sent the statement
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        thread = int(cur.fetchone()[0])
    conn.close()
    _interrupted_stop(env, file, start, end, _target_end(env), thread)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    assert '"ran_on_target": false' in env.daemon_log()


@pytest.mark.mariadb_only
def test_an_interrupted_exec_that_cannot_be_told_stays_a_stop_for_the_operator(env: Env) -> None:
    file, start, end = _prepare(env)
    _interrupted_stop(env, file, start, end, ("binlog.999999", 4), 1)  # a binlog the target never had
    proc = env.start_daemon()
    assert proc.wait(60) == 10, env.daemon_log()[-3000:]
    assert "cannot read the target's binlog" in env.daemon_log()


@pytest.mark.mariadb_only
def test_an_exec_killed_before_its_statement_was_sent_runs_it_when_the_stream_reads_it_again(env: Env) -> None:
    """Killed between recording the statement and sending it (while dropping a pre-created table, say): the record
    has where the exec began but no point the statement started from; the statement cannot have run."""
    file, start, end = _prepare(env)
    conn = env.target.connect()
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        thread = int(cur.fetchone()[0])
    conn.close()
    _interrupted_stop(env, file, start, end, None, thread, own_from=_target_end(env))
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    assert '"ran_on_target": false' in env.daemon_log()
    assert "FOREIGN WRITE" not in env.daemon_log()


def _interrupted_start_up_ddl(env: Env, statement: str) -> tuple[str, int]:
    """What a daemon killed during its start-up DDL leaves: the own-DDL record it began, still open, and the
    DDL its connection ran; the target binlog position the DDL ended at."""
    state = TargetState(env.state_schema, env.name)
    conn = env.target.connect(autocommit=False)
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        thread = int(cur.fetchone()[0])
    state.begin_own_ddl(conn, Position(*_target_end(env)), thread, "start-up DDL")
    conn.commit()
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.close()  # killed: the record is never closed
    return _target_end(env)


@pytest.mark.mariadb_only
def test_start_up_ddl_interrupted_by_a_kill_is_not_reported_as_a_foreign_write(env: Env) -> None:
    env.extra = {"replication": {"on_ddl": "exec"}}
    env.source.execute(f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY)", f"INSERT INTO {env.db}.t VALUES (1)")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # the source gained a table the stream will create; a start-up pre-created it on the target, then was killed
    env.source.execute(f"CREATE TABLE {env.db}.u (id INT PRIMARY KEY)")
    end = _interrupted_start_up_ddl(env, f"CREATE TABLE {env.db}.u (id INT PRIMARY KEY)")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)  # the watcher has read the target's binlog past the CREATE
    assert "FOREIGN WRITE" not in env.daemon_log()
    closed = TargetState(env.state_schema, env.name)
    conn = env.target.connect()
    try:
        assert closed.open_own_ddl(conn) == []
        assert any(first < Position(*end) <= last for first, last, _ in closed.own_ddl(conn))
    finally:
        conn.close()


@pytest.mark.mariadb_only
def test_a_foreign_ddl_beside_an_interrupted_start_up_is_still_reported(env: Env) -> None:
    env.source.execute(f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY)", f"INSERT INTO {env.db}.t VALUES (1)")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    _interrupted_start_up_ddl(env, "DO 1")  # logs nothing: the record covers nothing
    env.target.execute(f"CREATE TABLE {env.db}.intruder (id INT PRIMARY KEY)")  # another session's DDL
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    deadline = time.monotonic() + 20
    while "FOREIGN WRITE" not in env.daemon_log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "intruder" in env.daemon_log()
