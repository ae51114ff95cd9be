"""Fail closed: every statement and transaction the source logs is carried exactly, skipped by a rule that proves it
harmless, or stops the daemon. Each case here left wrong rows on the target while the daemon kept streaming
(issue 12); sides are compared by the ``mariadb`` client's dump, not by austasync's code."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pymysql
import pytest

from conftest import Env, dump
from servers import free_port

EXIT_DDL_STOP = 10
EXIT_UNCARRYABLE = 12


@pytest.fixture
def other(env: Env) -> Iterator[str]:
    """A database outside the selection, on the source, with a non-transactional table in it."""
    name = f"o_{env.name}"[:64]
    env.source.execute(
        f"CREATE DATABASE {name}",
        f"CREATE TABLE {name}.audit (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(40)) ENGINE=MyISAM",
        f"CREATE TABLE {name}.ledger (id INT PRIMARY KEY, v INT) ENGINE=InnoDB",
    )
    yield name
    env.source.execute(f"DROP DATABASE {name}")


def table(env: Env, name: str = "t", rows: int = 20, column: str = "v VARCHAR(50) NOT NULL") -> None:
    value = "CONCAT('v', seq)" if "CHAR" in column else "seq"
    env.source.execute(
        f"CREATE TABLE {env.db}.{name} (id INT PRIMARY KEY, {column})",
        f"INSERT INTO {env.db}.{name} SELECT seq, {value} FROM {env.db}.seq_1_to_{rows}",
    )


def same(env: Env, name: str = "t") -> bool:
    return dump(env.source, env.db, name, "id") == dump(env.target, env.db, name, "id")


def streaming(env: Env, **extra: dict[str, object]) -> subprocess.Popen[bytes]:
    env.extra = {**env.extra, **extra}
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    return proc


def run(env: Env, *statements: str, database: str | None = None) -> None:
    """Statements in one session on the source (autocommit, so BEGIN ... COMMIT is spelled out)."""
    conn = env.source.connect(database=database or env.db)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def stops_with(proc: subprocess.Popen[bytes], code: int) -> None:
    assert proc.wait(30) == code


# --- 1. TRUNCATE from another database, and with include_tables -------------------------------------------------


def test_truncate_of_a_replicated_table_from_another_database_stops(env: Env, other: str) -> None:
    table(env)
    proc = streaming(env)
    run(env, f"TRUNCATE TABLE {env.db}.t", database=other)
    stops_with(proc, EXIT_DDL_STOP)
    assert f"TRUNCATE TABLE {env.db}.t" in env.run_cli("ddl").stdout
    assert len(dump(env.target, env.db, "t", "id")) == 20  # checkpointed before it: nothing lost yet


def test_truncate_stops_when_tables_are_selected_by_include_tables(env: Env) -> None:
    table(env)
    proc = streaming(env, replication={"include_tables": [f"{env.db}.t"]})
    run(env, "TRUNCATE TABLE t")
    stops_with(proc, EXIT_DDL_STOP)


# --- 2. SET STATEMENT ... FOR ---------------------------------------------------------------------------------


def test_set_statement_for_truncate_stops(env: Env) -> None:
    table(env)
    proc = streaming(env)
    run(env, "SET STATEMENT max_statement_time=60 FOR TRUNCATE TABLE t")
    stops_with(proc, EXIT_DDL_STOP)


def test_set_statement_for_alter_is_replayed_under_exec_and_keeps_the_decimals(env: Env) -> None:
    table(env, column="v DECIMAL(10,0) NOT NULL")
    streaming(env, replication={"on_ddl": "exec"})
    run(
        env,
        "SET STATEMENT max_statement_time=60 FOR ALTER TABLE t MODIFY v DECIMAL(10,2) NOT NULL",
        "INSERT INTO t VALUES (100, 1.75)",
    )
    env.wait_caught_up(timeout=60)
    assert env.target.execute(f"SELECT v FROM {env.db}.t WHERE id = 100") == env.source.execute(
        f"SELECT v FROM {env.db}.t WHERE id = 100"
    )
    assert same(env)


# --- 3. lists of tables -------------------------------------------------------------------------------------------


def test_drop_of_several_tables_stops_when_any_of_them_is_replicated(env: Env) -> None:
    table(env, "excl_cache")
    table(env, "d")
    proc = streaming(env, replication={"exclude_tables": [f"{env.db}.excl_*"]})
    run(env, f"DROP TABLE IF EXISTS {env.db}.excl_cache, {env.db}.d")
    stops_with(proc, EXIT_DDL_STOP)
    assert len(dump(env.target, env.db, "d", "id")) == 20


def test_rename_of_several_tables_stops_when_any_of_them_is_replicated(env: Env) -> None:
    table(env, "excl_a")
    table(env, "c")
    proc = streaming(env, replication={"exclude_tables": [f"{env.db}.excl_*"]})
    run(env, "RENAME TABLE excl_a TO excl_b, c TO d")
    stops_with(proc, EXIT_DDL_STOP)


def test_a_statement_naming_only_excluded_tables_is_skipped(env: Env) -> None:
    table(env, "excl_a")
    table(env)
    proc = streaming(env, replication={"exclude_tables": [f"{env.db}.excl_*"]})
    run(env, "RENAME TABLE excl_a TO excl_b", "TRUNCATE TABLE excl_b", "INSERT INTO t VALUES (50, 'after')")
    env.wait_caught_up(proc=proc)
    assert same(env)


# --- 4. CREATE ... SELECT and CREATE OR REPLACE ... SELECT, logged inside a transaction --------------------------


def test_create_select_and_create_or_replace_select_are_carried_under_exec(env: Env) -> None:
    table(env)
    table(env, "u", rows=40)
    proc = streaming(env, replication={"on_ddl": "exec"})
    run(
        env,
        "CREATE TABLE n (PRIMARY KEY (id)) SELECT id, v FROM t WHERE id > 5",
        "CREATE OR REPLACE TABLE t (PRIMARY KEY (id)) SELECT id, v FROM u WHERE id % 3 = 0",
        "INSERT INTO n VALUES (1000, 'later')",
        "UPDATE t SET v = 'changed' WHERE id = 3",
    )
    env.wait_caught_up(timeout=90, proc=proc)
    assert same(env, "n")
    assert same(env, "t")  # the replaced table: only u's rows, not its old ones
    assert len(dump(env.target, env.db, "t", "id")) == 13


def test_create_select_under_stop_stops_before_its_transaction_and_ddl_exec_resumes_with_its_rows(env: Env) -> None:
    table(env)
    proc = streaming(env)
    run(env, "CREATE TABLE n (PRIMARY KEY (id)) SELECT id, v FROM t")
    stops_with(proc, EXIT_DDL_STOP)
    shown = env.run_cli("ddl").stdout
    assert "CREATE TABLE `n`" in shown, shown
    resolved = env.run_cli("ddl", "--exec")
    assert resolved.returncode == 0, resolved.stderr
    run(env, "INSERT INTO n VALUES (500, 'after')")
    proc = env.start_daemon()
    env.wait_caught_up(timeout=90, proc=proc)
    assert same(env, "n")
    assert same(env)


def test_rows_of_a_table_created_while_streaming_are_never_dropped_as_not_replicated(env: Env) -> None:
    table(env)
    proc = streaming(env, replication={"on_ddl": "ignore"})
    run(env, "CREATE TABLE fresh (id INT PRIMARY KEY, v INT)", "INSERT INTO fresh VALUES (1, 1)")
    stops_with(proc, EXIT_UNCARRYABLE)
    assert f"rows of {env.db}.fresh" in env.daemon_log()


# --- 5. savepoint rollbacks with a non-transactional table in the transaction --------------------------------


def test_rows_rolled_back_to_a_savepoint_never_reach_the_target(env: Env, other: str) -> None:
    table(env)
    proc = streaming(env)
    run(
        env,
        "BEGIN",
        f"INSERT INTO {other}.audit (msg) VALUES ('a')",
        "SAVEPOINT trans2",
        "UPDATE t SET v = 'rolled back' WHERE id = 1",
        "INSERT INTO t VALUES (300, 'rolled back')",
        "ROLLBACK TO SAVEPOINT trans2",
        "UPDATE t SET v = 'kept' WHERE id = 2",
        "COMMIT",
    )
    # nested: SAVEPOINT a, b, ROLLBACK TO a drops both stretches; then a new one is released
    run(
        env,
        "BEGIN",
        "UPDATE t SET v = 'kept 3' WHERE id = 3",
        f"INSERT INTO {other}.audit (msg) VALUES ('b')",
        "SAVEPOINT a",
        "DELETE FROM t WHERE id = 4",
        "SAVEPOINT b",
        "DELETE FROM t WHERE id = 5",
        "ROLLBACK TO a",
        "SAVEPOINT c",
        "UPDATE t SET v = 'kept 6' WHERE id = 6",
        "RELEASE SAVEPOINT c",
        "COMMIT",
    )
    run(env, "INSERT INTO t VALUES (301, 'after')")
    env.wait_caught_up(proc=proc)
    assert same(env)
    assert env.target.execute(f"SELECT COUNT(*) FROM {env.db}.t WHERE v = 'rolled back'") == [(0,)]


def test_a_rollback_to_a_savepoint_in_a_transaction_too_big_to_hold_stops(env: Env, other: str) -> None:
    table(env)
    before = dump(env.source, env.db, "t", "id")
    proc = streaming(env, apply={"hold_bytes": 1024})
    run(
        env,
        "BEGIN",
        f"INSERT INTO {other}.audit (msg) VALUES ('a')",
        "SAVEPOINT s",
        *(f"INSERT INTO t VALUES ({1000 + i}, '{'x' * 40}')" for i in range(60)),
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
    )
    stops_with(proc, EXIT_UNCARRYABLE)
    assert "too big to hold" in env.daemon_log()
    assert dump(env.target, env.db, "t", "id") == before  # the rolled-back rows were not committed


# --- 6. XA ----------------------------------------------------------------------------------------------------


def test_an_xa_transaction_on_a_replicated_table_is_refused_before_any_of_its_rows_is_written(env: Env) -> None:
    table(env)
    before = dump(env.source, env.db, "t", "id")
    proc = streaming(env)
    time.sleep(1.0)  # an idle spell: the batch before the XA transaction is committed, the next one is empty
    run(
        env,
        "XA START 'x'",
        "INSERT INTO t VALUES (900, 'never committed')",
        "UPDATE t SET v = 'never committed' WHERE id = 1",
        "XA END 'x'",
        "XA PREPARE 'x'",
        "XA ROLLBACK 'x'",
    )
    stops_with(proc, EXIT_UNCARRYABLE)
    assert "XA transaction" in env.daemon_log()
    assert dump(env.target, env.db, "t", "id") == before


def test_xa_transactions_on_tables_outside_the_selection_are_skipped(env: Env, other: str) -> None:
    table(env)
    proc = streaming(env)
    run(
        env,
        "XA START 'y'",
        f"INSERT INTO {other}.ledger VALUES (1, 1)",
        "XA END 'y'",
        "XA PREPARE 'y'",
        "XA COMMIT 'y'",
        "XA START 'z'",
        f"INSERT INTO {other}.ledger VALUES (2, 2)",
        "XA END 'z'",
        "XA COMMIT 'z' ONE PHASE",
        "INSERT INTO t VALUES (901, 'after xa')",
    )
    env.wait_caught_up(proc=proc)
    assert same(env)


# --- 7. executable comments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("comment", ["/*M!100100 {} */", "/*!40000 {} */", "/*! {} */"])
def test_a_statement_inside_an_executable_comment_is_judged_as_code(env: Env, other: str, comment: str) -> None:
    table(env)
    proc = streaming(env)
    run(env, comment.format(f"TRUNCATE TABLE {env.db}.t"), database=other)
    stops_with(proc, EXIT_DDL_STOP)


# --- the fast cutover check cannot promote over what the stream did not name --------------------------------------


def test_a_truncate_from_another_database_clears_the_written_keys_baseline(env: Env, other: str) -> None:
    table(env)
    env.extra = {
        "replication": {"on_ddl": "exec"},
        "verify": {"interval_seconds": 3600, "touched_interval_seconds": 0},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
    }
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    url = f"http://{env.extra['http']['listen']}/control/verify/written"
    deadline = time.monotonic() + 60
    while _written(url).get("baseline") is None:  # the daemon's first full pass sets it
        assert time.monotonic() < deadline, env.daemon_log()[-3000:]
        time.sleep(0.2)
    truncated_at = time.time()
    run(env, f"TRUNCATE TABLE {env.db}.t", database=other)
    env.wait_caught_up(proc=proc)
    assert dump(env.target, env.db, "t", "id") == []
    # a baseline, if any, is a full pass that started after the TRUNCATE: the keys written since cover every row
    baseline = _written(url).get("baseline")
    assert baseline is None or float(baseline) >= truncated_at, baseline


def _written(url: str) -> dict[str, object]:
    for _ in range(50):
        try:
            request = urllib.request.Request(url, method="POST", data=b"{}")  # noqa: S310 (a loopback test URL)
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return dict(json.loads(response.read()))
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


# --- event accounting -------------------------------------------------------------------------------------------


def test_every_event_read_is_applied_skipped_by_a_rule_or_stopped_and_counted(env: Env, other: str) -> None:
    table(env)
    port = free_port()
    proc = streaming(env, http={"listen": f"127.0.0.1:{port}"})
    run(env, "INSERT INTO t VALUES (100, 'a')", "UPDATE t SET v = 'b' WHERE id = 100")
    run(env, f"INSERT INTO {other}.ledger VALUES (5, 5)", f"INSERT INTO {other}.audit (msg) VALUES ('x')")
    run(env, "GRANT SELECT ON *.* TO 'repl'@'%'", "OPTIMIZE TABLE t", f"CREATE TABLE {other}.n (id INT PRIMARY KEY)")
    run(env, "BEGIN", f"INSERT INTO {other}.audit (msg) VALUES ('y')", "SAVEPOINT s", "DELETE FROM t WHERE id = 1",
        "ROLLBACK TO s", "COMMIT")  # fmt: skip
    env.wait_caught_up(proc=proc)
    time.sleep(1.0)
    counts = _event_counts(port)
    # what the server itself lists from P0, where the daemon's reader started, to the end of its binlog
    (p0_file, p0_pos), *_ = env.target.execute(
        f"SELECT p0_file, p0_pos FROM {env.state_schema}.state WHERE migration = '{env.name}'"
    )
    # (a MariaDB server sends its Annotate_rows events only to replicas that ask for them; austasync does not)
    events = [e for e in _binlog_events(env, (str(p0_file), int(p0_pos))) if e[2] != "Annotate_rows"]
    read = sum(c for (_, rule), c in counts.items() if rule not in ("heartbeat", "artificial"))
    assert read == len(events), (sorted(counts.items()), [(e[2], str(e[5])[:60]) for e in events])
    rows_events = [e for e in events if str(e[2]).endswith("_rows_v1") or str(e[2]).endswith("_rows")]
    assert counts[("applied", "rows")] + counts[("skipped", "rolled_back")] + counts[
        ("skipped", "table_not_selected")
    ] == len(rows_events)
    assert counts[("skipped", "rolled_back")] == 1
    assert counts[("skipped", "account_management")] == 1
    assert counts[("skipped", "table_maintenance")] == 1
    assert counts[("skipped", "not_replicated")] == 1
    assert counts[("stopped", "stop")] == 0


def _event_counts(port: int) -> dict[tuple[str, str], int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        if line.startswith("austasync_binlog_events_total{"):
            labels, value = line[len("austasync_binlog_events_total{") :].split("} ")
            parsed = dict(part.split("=", 1) for part in labels.split(","))
            counts[(parsed["outcome"].strip('"'), parsed["rule"].strip('"'))] = int(float(value))
    assert counts, "austasync_binlog_events_total is not exported"
    return counts


def _binlog_events(env: Env, start: tuple[str, int]) -> list[tuple[object, ...]]:
    conn = env.source.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            files = [str(r[0]) for r in cur.fetchall()]
            events: list[tuple[object, ...]] = []
            for name in files[files.index(start[0]) :]:
                cur.execute(f"SHOW BINLOG EVENTS IN '{name}'" + (f" FROM {start[1]}" if name == start[0] else ""))
                events += list(cur.fetchall())
            return events
    except pymysql.err.MySQLError as exc:
        raise AssertionError(f"cannot list the source's binlog events: {exc}") from exc
    finally:
        conn.close()


# --- DDL text in a character set other than UTF-8 ---------------------------------------------------------------


def _alter_with_default(env: Env, charset: str) -> None:
    conn = env.source.connect(database=env.db, charset=charset)
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE t ADD COLUMN c VARCHAR(10) CHARACTER SET utf8mb4 NOT NULL DEFAULT 'ção'")
    finally:
        conn.close()


def test_a_non_ascii_ddl_from_a_latin1_session_stops_instead_of_running_other_text(env: Env) -> None:
    """The library reads the latin1 bytes of 'ção' as '\\xe7\\xe3o': run on the target, the existing rows would get
    other text than the source's. Under exec the daemon stops before it, and `ddl --exec` refuses it too."""
    table(env)
    proc = streaming(env, replication={"on_ddl": "exec"})
    _alter_with_default(env, "latin1")
    stops_with(proc, EXIT_DDL_STOP)
    assert "cannot be replayed exactly" in env.daemon_log()
    assert [r[0] for r in env.target.execute(f"SHOW COLUMNS FROM {env.db}.t")] == ["id", "v"]  # nothing run
    refused = env.run_cli("ddl", "--exec")
    assert refused.returncode != 0
    assert "apply it to the target by hand" in refused.stderr + refused.stdout
    # the operator applies it as the source ran it, then skips: the sides are equal again
    conn = env.target.connect(database=env.db, charset="latin1")
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE t ADD COLUMN c VARCHAR(10) CHARACTER SET utf8mb4 NOT NULL DEFAULT 'ção'")
    conn.close()
    assert env.run_cli("ddl", "--skip").returncode == 0
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert env.source.execute(f"SELECT DISTINCT c FROM {env.db}.t") == [("ção",)]
    assert same(env)


def test_a_non_ascii_ddl_from_a_utf8_session_is_replayed_exactly(env: Env) -> None:
    table(env)
    proc = streaming(env, replication={"on_ddl": "exec"})
    _alter_with_default(env, "utf8mb4")
    env.wait_caught_up(proc=proc)
    assert env.target.execute(f"SELECT DISTINCT c FROM {env.db}.t") == [("ção",)]
    assert same(env)


# --- session settings a DDL depends on that the binlog does not carry --------------------------------------------


def source_global(env: Env, name: str, value: str, default: str) -> Iterator[None]:
    """The test source server's global ``name`` at ``value`` for one test, ``default`` again after it: set by the
    test, never by austasync."""
    env.source.execute(f"SET GLOBAL {name} = {value}")
    try:
        yield
    finally:
        env.source.execute(f"SET GLOBAL {name} = {default}")


@pytest.fixture
def legacy_timestamps(env: Env) -> Iterator[None]:
    """A source whose sessions default to explicit_defaults_for_timestamp = OFF (MySQL 5.7's default), the target
    left at ON (MariaDB 10.10+ and MySQL 8.0)."""
    yield from source_global(env, "explicit_defaults_for_timestamp", "OFF", "ON")


def test_a_timestamp_column_added_under_exec_gets_the_sources_implicit_default(
    env: Env, legacy_timestamps: None
) -> None:
    """ADD COLUMN ts TIMESTAMP means NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE ... on the source (OFF) and NULL
    on a target session left at ON: the existing rows would differ, with nothing in the binlog to say so."""
    table(env)
    proc = streaming(env, replication={"on_ddl": "exec"})
    run(env, "ALTER TABLE t ADD COLUMN ts TIMESTAMP")
    env.wait_caught_up(proc=proc)
    source_ddl = env.source.execute(f"SHOW CREATE TABLE {env.db}.t")[0][1]
    assert env.target.execute(f"SHOW CREATE TABLE {env.db}.t")[0][1] == source_ddl
    assert same(env)


def test_ddl_exec_of_a_stopped_ddl_runs_it_under_the_sources_settings(env: Env, legacy_timestamps: None) -> None:
    table(env)
    proc = streaming(env)  # on_ddl = "stop"
    run(env, "ALTER TABLE t ADD COLUMN ts TIMESTAMP")
    stops_with(proc, EXIT_DDL_STOP)
    assert env.run_cli("ddl", "--exec").returncode == 0
    source_ddl = env.source.execute(f"SHOW CREATE TABLE {env.db}.t")[0][1]
    assert env.target.execute(f"SHOW CREATE TABLE {env.db}.t")[0][1] == source_ddl


def test_a_ddl_from_a_session_with_another_lc_time_names_stops_under_exec(env: Env) -> None:
    """MONTHNAME in an expression default fills the existing rows in the session's language, which the target
    session (en_US) would not: the daemon stops before it and says why."""
    table(env)
    proc = streaming(env, replication={"on_ddl": "exec"})
    run(env, "SET lc_time_names = 'pt_BR'", "ALTER TABLE t ADD COLUMN m VARCHAR(20) DEFAULT (MONTHNAME('2020-01-01'))")
    stops_with(proc, EXIT_DDL_STOP)
    assert "lc_time_names" in env.daemon_log()
    assert [r[0] for r in env.target.execute(f"SHOW COLUMNS FROM {env.db}.t")] == ["id", "v"]


# --- MariaDB's two-phase ALTER (binlog_alter_two_phase): each ALTER is logged at its start and at its end --------


@pytest.fixture
def two_phase_alter(env: Env) -> Iterator[None]:
    yield from source_global(env, "binlog_alter_two_phase", "ON", "OFF")


def test_a_two_phase_alter_is_run_once_at_its_commit_and_not_at_all_when_it_rolled_back(
    env: Env, two_phase_alter: None
) -> None:
    """START ALTER and COMMIT ALTER carry the same statement: run at both, ADD COLUMN would fail the second time;
    run at a START ALTER whose ALTER then failed on the source (ROLLBACK ALTER), the target would keep a change
    the source never made."""
    table(env)
    proc = streaming(env, replication={"on_ddl": "exec"})
    run(env, "ALTER TABLE t ADD COLUMN w INT", "INSERT INTO t VALUES (100, 'v1', 7)")
    with pytest.raises(pymysql.err.IntegrityError):
        run(env, "ALTER TABLE t ADD UNIQUE (v)")  # 'v1' twice: the ALTER fails and is logged as rolled back
    run(env, "INSERT INTO t VALUES (101, 'x', 8)")
    env.wait_caught_up(proc=proc)
    assert proc.poll() is None
    source_ddl = env.source.execute(f"SHOW CREATE TABLE {env.db}.t")[0][1]
    assert env.target.execute(f"SHOW CREATE TABLE {env.db}.t")[0][1] == source_ddl
    assert same(env)


def test_a_two_phase_alter_under_stop_stops_once(env: Env, two_phase_alter: None) -> None:
    table(env)
    proc = streaming(env)
    run(env, "ALTER TABLE t ADD COLUMN w INT", "INSERT INTO t VALUES (100, 'v1', 7)")
    stops_with(proc, EXIT_DDL_STOP)
    assert env.run_cli("ddl", "--exec").returncode == 0
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)  # no second stop at the COMMIT ALTER's copy of the statement
    assert proc.poll() is None
    assert same(env)
