"""Single writer, fencing, resume and stops: a second daemon never writes, a frozen one cannot, bad input
gets a clear error and a non-zero exit with nothing written."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Env, dump
from servers import MariaDB

EXIT_SETUP = 4
EXIT_DDL_STOP = 10
EXIT_UNCARRYABLE = 12


def simple_table(env: Env, rows: int = 100) -> None:
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(50) NOT NULL)",
        f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i}, 'v{i}')" for i in range(1, rows + 1)),
    )


def same(env: Env, table: str = "t", key: str = "id") -> bool:
    return dump(env.source, env.db, table, key) == dump(env.target, env.db, table, key)


def test_second_daemon_waits_for_the_lease_and_writes_nothing(env: Env) -> None:
    simple_table(env)
    first = env.start_daemon()
    env.wait_caught_up(proc=first)
    generation = env.target.execute(f"SELECT generation FROM _austasync.fence WHERE migration = '{env.name}'")
    second = env.start_daemon()
    time.sleep(3)
    assert second.poll() is None, "the second daemon must wait, not exit"
    assert "lease held by another daemon" in env.daemon_log(1)
    # the waiting daemon did not fence the target: the generation is still the first daemon's
    assert env.target.execute(f"SELECT generation FROM _austasync.fence WHERE migration = '{env.name}'") == generation
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (1000, 'x')")
    env.wait_caught_up(proc=first)
    assert same(env)
    first.send_signal(signal.SIGTERM)
    assert first.wait(10) == 0
    # the waiting daemon takes over once the lease is free
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (1001, 'y')")
    env.wait_caught_up(proc=second)
    assert same(env)


def test_frozen_daemon_that_wakes_after_a_takeover_cannot_write(env: Env) -> None:
    simple_table(env)
    old = env.start_daemon()
    env.wait_caught_up(proc=old)
    old.send_signal(signal.SIGSTOP)
    # rows the frozen daemon has already read (or will read when it wakes) but not applied
    env.source.execute(f"UPDATE {env.db}.t SET v = 'changed-while-frozen' WHERE id <= 10")
    new = env.start_daemon()
    env.wait_caught_up(proc=new)
    new.send_signal(signal.SIGSTOP)  # keep the new daemon from repairing whatever the old one might write
    # a change the old daemon would apply if it could still write
    env.source.execute(f"DELETE FROM {env.db}.t WHERE id > 90")
    before = dump(env.target, env.db, "t", "id")
    target_pos = env.target.execute("SHOW MASTER STATUS")[0][:2]
    old.send_signal(signal.SIGCONT)
    code = old.wait(30)
    assert code != 0, "the stale daemon must stop"
    # not a single row written by the stale daemon: the target's own binlog did not move, the rows are unchanged
    assert env.target.execute("SHOW MASTER STATUS")[0][:2] == target_pos
    assert dump(env.target, env.db, "t", "id") == before
    new.send_signal(signal.SIGCONT)
    env.wait_caught_up(proc=new)
    assert same(env)


def test_kill_9_mid_big_transaction_resumes_without_loss_or_doubles(env: Env) -> None:
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(50) NOT NULL, n INT NOT NULL)",
        f"CREATE TABLE {env.db}.counter (id INT PRIMARY KEY, hits INT NOT NULL)",
        f"INSERT INTO {env.db}.counter VALUES (1, 0)",
    )
    env.extra = {"apply": {"batch_max_rows": 200}}
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    conn = env.source.connect(autocommit=False)
    with conn.cursor() as cur:
        for i in range(40):
            # many rows events in one transaction: the applier must split it (bounded memory)
            cur.execute(f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i * 100 + j}, 'v', {j})" for j in range(100)))
            cur.execute(f"UPDATE {env.db}.counter SET hits = hits + 1 WHERE id = 1")
    conn.commit()
    conn.close()
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert same(env)
    assert same(env, "counter")
    assert env.target.execute(f"SELECT hits FROM {env.db}.counter")[0][0] == 40


def test_ddl_on_a_replicated_table_stops_with_its_own_exit_code_and_can_be_skipped(env: Env) -> None:
    simple_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (500, 'before ddl')")
    env.source.execute(f"ALTER TABLE {env.db}.t ADD COLUMN extra INT NULL")
    assert proc.wait(30) == EXIT_DDL_STOP
    assert "ALTER TABLE" in env.daemon_log()
    assert same(env) is False  # shapes differ now; the row before the DDL is there though
    assert env.target.execute(f"SELECT v FROM {env.db}.t WHERE id = 500") == [("before ddl",)]
    # starting again without resolving stops again, with the same code
    again = env.start_daemon()
    assert again.wait(30) == EXIT_DDL_STOP
    shown = env.run_cli("ddl")
    assert "ALTER TABLE" in shown.stdout
    resolved = env.run_cli("ddl", "--exec")
    assert resolved.returncode == 0, resolved.stderr
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (501, 'after ddl', 7)")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert same(env)
    time.sleep(1.5)
    # the watcher does not resume from before the resolved DDL: austasync ran it there, no one else
    assert "FOREIGN WRITE" not in env.daemon_log()


def test_tables_without_a_usable_key_or_not_innodb_are_refused_by_name(env: Env) -> None:
    env.source.execute(
        f"CREATE TABLE {env.db}.nokey (a INT NULL, b INT NULL)",
        f"CREATE TABLE {env.db}.legacy (id INT PRIMARY KEY) ENGINE=MyISAM",
        f"CREATE TABLE {env.db}.ok (id INT PRIMARY KEY)",
    )
    proc = env.start_daemon()
    assert proc.wait(30) == EXIT_SETUP
    log = env.daemon_log()
    assert f"{env.db}.nokey" in log
    assert f"{env.db}.legacy" in log
    assert "exclude_tables" in log
    assert not env.target.execute(f"SHOW DATABASES LIKE '{env.db}'")


def test_existing_target_table_of_another_shape_is_refused_naming_the_columns(env: Env) -> None:
    simple_table(env)
    env.target.execute(
        f"CREATE DATABASE {env.db}", f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(10) NOT NULL, w INT)"
    )
    proc = env.start_daemon()
    assert proc.wait(30) == EXIT_SETUP
    log = env.daemon_log()
    assert "extra columns w" in log
    assert "column v is varchar(10)" in log
    assert env.target.execute(f"SELECT COUNT(*) FROM {env.db}.t") == [(0,)]


def test_wrong_password_is_a_clear_error_without_the_password(env: Env) -> None:
    simple_table(env)
    env.extra = {"source": {"password": "definitely-wrong-pw"}}
    proc = env.start_daemon()
    assert proc.wait(30) == 3
    log = env.daemon_log()
    assert "Access denied" in log
    assert "definitely-wrong-pw" not in log
    assert "repl-secret-pw" not in log


@pytest.fixture
def statement_source(tmp_path: Path) -> MariaDB:
    server = MariaDB(tmp_path / "stmt", server_id=303, extra=("--binlog-format=MIXED",))
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def test_source_not_in_row_format_is_refused_with_what_to_change(env: Env, statement_source: MariaDB) -> None:
    env.source = statement_source
    env.source.execute(f"CREATE DATABASE {env.db}", f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY)")
    env.source.execute(
        "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-secret-pw'", "GRANT ALL PRIVILEGES ON *.* TO 'repl'@'%'"
    )
    proc = env.start_daemon()
    assert proc.wait(30) == EXIT_SETUP
    assert "binlog_format=ROW" in env.daemon_log()


def test_dml_logged_as_a_statement_stops_the_daemon(env: Env) -> None:
    simple_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    conn = env.source.connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION binlog_format = 'STATEMENT'")
        cur.execute(f"UPDATE {env.db}.t SET v = 'stmt' WHERE id = 1")
    conn.close()
    assert proc.wait(30) == EXIT_UNCARRYABLE
    assert "DML logged as a statement" in env.daemon_log()
    assert env.target.execute(f"SELECT v FROM {env.db}.t WHERE id = 1") == [("v1",)]


def test_binlog_purged_past_the_checkpoint_says_a_recopy_is_needed_and_reset_recovers(env: Env) -> None:
    simple_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    env.source.execute(f"UPDATE {env.db}.t SET v = 'lost unless re-copied' WHERE id = 5")
    needed = env.checkpoint()[0]
    deadline = time.monotonic() + 30
    # MariaDB keeps a file until its binlog checkpoint is written (crash recovery): retry the purge
    while needed in [r[0] for r in env.source.execute("SHOW BINARY LOGS")]:
        assert time.monotonic() < deadline, "the source would not purge its old binlog"
        env.source.execute("FLUSH BINARY LOGS")
        newest = env.source.execute("SHOW MASTER STATUS")[0][0]
        env.source.execute(f"PURGE BINARY LOGS TO '{newest}'")
        time.sleep(0.5)
    proc = env.start_daemon()
    assert proc.wait(30) == 14
    assert "austasync reset" in env.daemon_log()
    reset = env.run_cli("reset", "--yes")
    assert reset.returncode == 0, reset.stderr
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert same(env)


def test_redis_flushed_while_running_is_republished_from_the_target(env: Env) -> None:
    import redis  # noqa: PLC0415

    simple_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    client = redis.Redis.from_url(env.redis.url)
    client.set(f"t:{env.name}:verify", '{"consistent": true, "finished_at": 1}')
    client.flushall()
    time.sleep(2.5)
    status = env.run_cli("status", "--json")
    assert status.returncode == 0
    assert '"phase": "streaming"' in status.stdout
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (2000, 'after flush')")
    env.wait_caught_up(proc=proc)
    assert same(env)


def test_copy_throttles_while_the_source_is_busy(env: Env) -> None:
    simple_table(env, rows=400)
    env.extra = {"throttle": {"max_threads_running": 2}, "copy": {"chunk_rows": 50}}
    busy = [env.source.connect() for _ in range(3)]
    threads = []
    import threading  # noqa: PLC0415

    for conn in busy:
        thread = threading.Thread(target=lambda c=conn: c.cursor().execute("SELECT SLEEP(6)"), daemon=True)
        thread.start()
        threads.append(thread)
    time.sleep(0.3)
    proc = env.start_daemon()
    time.sleep(3)
    status = env.run_cli("status", "--json")
    assert '"active": true' in status.stdout and "Threads_running" in status.stdout, status.stdout
    assert env.target.execute(f"SELECT COUNT(*) FROM {env.db}.t") == [(0,)]  # nothing copied while throttled
    for thread in threads:
        thread.join(10)
    env.wait_caught_up(proc=proc)
    assert same(env)
    for conn in busy:
        conn.close()


def test_on_ddl_exec_replays_the_ddl_at_its_position_and_keeps_streaming(env: Env) -> None:
    simple_table(env)
    env.extra = {"replication": {"on_ddl": "exec"}}
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    env.source.execute(
        f"INSERT INTO {env.db}.t VALUES (500, 'before')",
        f"ALTER TABLE {env.db}.t ADD COLUMN score INT NOT NULL DEFAULT 7",
        f"INSERT INTO {env.db}.t VALUES (501, 'after', 42)",
        f"CREATE TABLE {env.db}.created_later (id INT PRIMARY KEY, note VARCHAR(10))",
        f"INSERT INTO {env.db}.created_later VALUES (1, 'new')",
        f"UPDATE {env.db}.t SET score = 9 WHERE id = 1",
    )
    env.wait_caught_up(proc=proc)
    assert same(env)
    assert same(env, "created_later")
    assert "DDL replayed on the target" in env.daemon_log()


def test_a_stop_while_resuming_a_split_transaction_never_lowers_its_applied_count(env: Env) -> None:
    """Review finding: a SIGTERM before the applied prefix was re-read must not save a smaller skip count."""
    from austasync import config as configmod  # noqa: PLC0415
    from austasync.applier import Applier  # noqa: PLC0415
    from austasync.db import connect, setup_target_session  # noqa: PLC0415
    from austasync.events import Rows  # noqa: PLC0415
    from austasync.position import Position  # noqa: PLC0415
    from austasync.schema import load_tables  # noqa: PLC0415
    from austasync.state import TargetState, connection_id  # noqa: PLC0415

    simple_table(env, rows=1)
    env.target.execute(
        f"CREATE DATABASE {env.db}", f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(50) NOT NULL)"
    )
    cfg = configmod.load(env.config_path)
    tables = load_tables(env.source.connect(), cfg)
    conn = connect(cfg.target, "target", autocommit=False)
    setup_target_session(conn)
    state = TargetState("_austasync", env.name)
    state.ensure_schema(conn)
    state.take_over(conn, [connection_id(conn)])
    start = Position("binlog.000001", 1000)
    state.init(conn, start, [])
    saved = f"SELECT file, pos, skip_events FROM _austasync.state WHERE migration = '{env.name}'"

    applier = Applier(conn, state, tables, [], {}, start, skip_events=5)
    applier.commit(phase="stopping")  # stopped before the transaction's first event came back
    assert env.target.execute(saved) == [("binlog.000001", 1000, 5)]

    applier = Applier(conn, state, tables, [], {}, start, skip_events=5)
    applier.begin(start)
    for seq in (1, 2):  # two of the five applied events re-read, then a stop
        applier.rows(Rows(env.db, "t", "insert", ("id", "v"), ((None, (9, b"x")),), seq, start, 0))
    applier.commit(phase="stopping")
    assert env.target.execute(saved) == [("binlog.000001", 1000, 5)]
    assert env.target.execute(f"SELECT COUNT(*) FROM {env.db}.t WHERE id = 9") == [(0,)]  # skipped, not re-applied
    conn.close()


def test_truncate_without_the_table_keyword_stops_like_any_ddl(env: Env) -> None:
    simple_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    conn = env.source.connect(database=env.db)
    conn.cursor().execute("TRUNCATE t")
    conn.close()
    assert proc.wait(30) == EXIT_DDL_STOP
    assert "TRUNCATE t" in env.daemon_log()


def test_exec_replays_ddl_with_the_source_clock_so_current_timestamp_defaults_match(env: Env) -> None:
    simple_table(env)
    env.extra = {"replication": {"on_ddl": "exec"}}
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # Laravel's ->useCurrent(): every existing row gets "now", which must be the source's moment
    env.source.execute(f"ALTER TABLE {env.db}.t ADD COLUMN created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP")
    time.sleep(2.2)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert same(env)


def test_a_signal_arriving_while_the_daemon_writes_its_log_stops_it_cleanly(env: Env) -> None:
    """A signal handler that logged could interrupt the main thread inside its own log call and wait forever
    for the logger's lock (seen: a daemon that never exited after SIGTERM). Here the log goes to a pipe nobody
    reads yet, so the daemon is stuck in a log write when the signal lands; then the pipe is drained."""
    simple_table(env, rows=3000)
    env.extra = {"copy": {"chunk_rows": 1, "snapshot_seconds": 30}}
    proc = subprocess.Popen(
        [sys.executable, "-m", "austasync", "run", "--config", str(env.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    env.procs.append(proc)
    time.sleep(3)  # one-row chunks log constantly: the 64 KiB pipe is full long before this
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.stdout is not None
    output: list[bytes] = []
    drain = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the daemon did not exit after SIGINT") from None
    drain.join(10)
    log = b"".join(output).decode(errors="replace")
    assert code == 0, log[-3000:]
    assert "signal received; stopping at a clean checkpoint" in log
