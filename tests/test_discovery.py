"""Nothing silently out of scope (issue 13): every table type is carried or refused, views and routines reach the
target, and `verify` compares the schemas too.

Results are read from the servers themselves (information_schema, SHOW CREATE, SHOW BINLOG EVENTS, plain SELECTs),
not through austasync's code.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from conftest import Env, dump


def _verify(env: Env) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "austasync", "verify", "--json", "--config", str(env.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout, f"exit {proc.returncode}, no report:\n{proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def _preflight(env: Env) -> dict[str, dict[str, Any]]:
    proc = env.run_cli("preflight", "--json", timeout=120)
    assert proc.stdout, proc.stderr
    return {c["id"]: c for c in json.loads(proc.stdout)["checks"]}


def _copy_and_stop(env: Env) -> None:
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, env.daemon_log()[-3000:]


# --- every TABLE_TYPE ---------------------------------------------------------------------------------------------


def test_a_system_versioned_table_is_refused_never_skipped_and_never_consistent(env: Env) -> None:
    env.source.execute(
        f"USE {env.db}", "CREATE TABLE t (id INT PRIMARY KEY, v INT)", "INSERT INTO t VALUES (1, 1), (2, 2)"
    )
    _copy_and_stop(env)
    env.source.execute(
        f"USE {env.db}",
        "CREATE TABLE sv (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING",
        "INSERT INTO sv VALUES (1, 10), (2, 20)",
        "UPDATE sv SET v = v + 1 WHERE id = 1",  # a history row
    )
    assert env.source.execute("SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_NAME = 'sv'") == [
        ("SYSTEM VERSIONED",)
    ]
    # verify: never CONSISTENT while a selected table is neither replicated nor compared
    code, doc = _verify(env)
    assert code == 1 and doc["consistent"] is False, doc
    assert any(d["object"] == f"{env.db}.sv" for d in doc["schema_differences"]), doc
    assert any(r.startswith(f"{env.db}.sv: system-versioned") for r in doc["not_verified"]), doc
    # preflight and run refuse it, naming the table, the reason and the fix
    tables = _preflight(env)["source.tables"]
    assert tables["status"] == "fail"
    (line,) = [d for d in tables["detail"] if d.startswith(f"{env.db}.sv:")]
    assert "row_start/row_end" in line and "exclude_tables" in line and "DROP SYSTEM VERSIONING" in line
    proc = env.start_daemon()
    assert proc.wait(60) == 4
    assert f"{env.db}.sv: system-versioned" in env.daemon_log()
    # the fix it names works: excluded, it is out of scope on purpose, and the rest stays exact
    env.extra["replication"] = {"exclude_tables": [f"{env.db}.sv"]}
    assert _preflight(env)["source.tables"]["status"] == "pass"
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    code, doc = _verify(env)
    assert code == 0 and doc["consistent"] is True and doc["not_verified"] == [], doc
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")


def test_a_sequence_is_refused_with_the_fix(env: Env) -> None:
    env.source.execute(
        f"USE {env.db}",
        "CREATE TABLE t (id INT PRIMARY KEY)",
        "CREATE SEQUENCE invoice_no START WITH 1000",
        "SELECT NEXTVAL(invoice_no)",
    )
    tables = _preflight(env)["source.tables"]
    assert tables["status"] == "fail"
    (line,) = [d for d in tables["detail"] if d.startswith(f"{env.db}.invoice_no:")]
    assert "SEQUENCE" in line and "exclude_tables" in line and "SETVAL" in line
    proc = env.start_daemon()
    assert proc.wait(60) == 4 and f"{env.db}.invoice_no: a SEQUENCE" in env.daemon_log()


# --- views, routines, events, triggers ---------------------------------------------------------------------------

OBJECTS = (
    "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL, s VARCHAR(20) NULL)",
    "INSERT INTO t VALUES (1, 10, 'a''b'), (2, 20, NULL), (3, 30, 'c\\\\d')",
    "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(40))",
    # a_top reads z_base: created in dependency order, not name order
    "CREATE VIEW z_base AS SELECT id, v * 2 AS w, s FROM t WHERE s <> 'x''y'",
    "CREATE VIEW a_top AS SELECT id, w FROM z_base WHERE w > 15",
    "SET SESSION sql_mode = 'PIPES_AS_CONCAT,NO_BACKSLASH_ESCAPES'",
    "CREATE PROCEDURE add_log(IN m VARCHAR(40)) INSERT INTO log (msg) VALUES ('p:' || m)",
    "CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2",
    "SET SESSION sql_mode = DEFAULT",
    "CREATE EVENT purge_log ON SCHEDULE EVERY 1 HOUR DO DELETE FROM log",
    "CREATE TRIGGER t_ai AFTER INSERT ON t FOR EACH ROW INSERT INTO log (msg) VALUES ('t')",
)


def _routine_rows(server: Any, db: str) -> list[tuple[object, ...]]:
    return server.execute(
        "SELECT ROUTINE_NAME, ROUTINE_TYPE, DEFINER, SQL_MODE, ROUTINE_DEFINITION FROM information_schema.ROUTINES"
        f" WHERE ROUTINE_SCHEMA = '{db}' ORDER BY 1"
    )


def test_views_and_routines_reach_the_target_as_defined_events_and_triggers_do_not(env: Env) -> None:
    env.source.execute(f"USE {env.db}", *OBJECTS)
    objects = _preflight(env)["source.objects"]
    assert objects["status"] == "info", objects
    # the replication user sees no events and no triggers (no EVENT or TRIGGER privilege), and preflight says so
    assert any("cannot see events" in d and "EVENT privilege" in d for d in objects["detail"]), objects
    env.extra["source"] = {"user": "root", "password": ""}
    objects = _preflight(env)["source.objects"]
    del env.extra["source"]
    assert objects["title"].startswith("2 views, 1 procedures, 1 functions, 1 events, 1 triggers")
    assert any(f"{env.db}.purge_log" in d and "not created on the target" in d for d in objects["detail"])
    assert any(f"{env.db}.a_top" in d and f"{env.db}.z_base" in d for d in objects["detail"])
    _copy_and_stop(env)
    for view in ("a_top", "z_base"):
        both = [s.execute(f"SELECT * FROM {env.db}.{view} ORDER BY id") for s in (env.source, env.target)]
        assert both[0] == both[1] and both[0], view
        definition = (
            "SELECT VIEW_DEFINITION, DEFINER, SECURITY_TYPE FROM information_schema.VIEWS"
            f" WHERE TABLE_SCHEMA = '{env.db}' AND TABLE_NAME = '{view}'"
        )
        assert env.source.execute(definition) == env.target.execute(definition)
    source_routines = _routine_rows(env.source, env.db)
    assert [r[:2] for r in source_routines] == [("add_log", "PROCEDURE"), ("twice", "FUNCTION")]
    assert "PIPES_AS_CONCAT" in str(source_routines[0][3])
    assert _routine_rows(env.target, env.db) == source_routines  # definer, sql_mode and body
    assert env.target.execute(f"SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{env.db}'") == [
        (0,)
    ]
    assert env.target.execute(
        f"SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{env.db}'"
    ) == [(0,)]
    # recorded as austasync's own DDL: the target-write watcher skips that stretch of the target's binlog
    ((start_file, start_pos, end_file, end_pos, what),) = env.target.execute(
        f"SELECT from_file, from_pos, to_file, to_pos, statement FROM _austasync.own_ddl WHERE migration = '{env.name}'"
    )
    assert "4 views/routines" in str(what) and start_file == end_file
    events = env.target.execute(f"SHOW BINLOG EVENTS IN '{start_file}' FROM {start_pos}")
    creates = [e for e in events if e[2] == "Query" and any(k in str(e[5]) for k in ("VIEW", "PROCEDURE", "FUNCTION"))]
    assert len(creates) == 4 and all(int(str(e[4])) <= int(str(end_pos)) for e in creates), creates
    assert "FOREIGN WRITE" not in env.daemon_log()
    # the identical pair is consistent, objects included
    code, doc = _verify(env)
    assert code == 0 and doc["consistent"] is True and doc["schema_differences"] == [], doc
    # a restart does not create them again (they exist) and sees no foreign write
    proc = env.start_daemon()
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (4, 40, 'e')")  # the trigger's row comes as a row event
    env.wait_caught_up(proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0 and "FOREIGN WRITE" not in env.daemon_log()
    env.target.execute(f"CALL {env.db}.add_log('x')")  # || is concatenation under the routine's own sql_mode
    assert env.target.execute(f"SELECT msg FROM {env.db}.log ORDER BY id") == [("t",), ("p:x",)]


def test_a_view_over_a_table_that_is_not_replicated_is_refused_with_the_fix(env: Env) -> None:
    env.source.execute(
        f"USE {env.db}",
        "CREATE TABLE t (id INT PRIMARY KEY)",
        "CREATE TABLE secret (id INT PRIMARY KEY)",
        "CREATE VIEW joined AS SELECT t.id FROM t JOIN secret USING (id)",
    )
    env.extra["replication"] = {"exclude_tables": [f"{env.db}.secret"]}
    proc = env.start_daemon()
    assert proc.wait(60) == 4
    log = env.daemon_log()
    assert f"view {env.db}.joined" in log and "exclude it (replication.exclude_tables)" in log


# --- verify compares the schemas ------------------------------------------------------------------------------------


def _differences(doc: dict[str, Any]) -> dict[str, str]:
    return {f"{d['kind']} {d['object']}": d["difference"] for d in doc["schema_differences"]}


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["tables"] if t["table"] == name)


def test_verify_reports_missing_objects_and_changed_definitions(env: Env) -> None:
    env.source.execute(
        f"USE {env.db}",
        "CREATE TABLE a (id INT PRIMARY KEY, v INT NOT NULL, k VARCHAR(10) NULL, KEY by_k (k))",
        "CREATE TABLE b (id INT PRIMARY KEY)",
        "INSERT INTO a VALUES (1, 1, 'x'), (2, 2, 'y')",
        "INSERT INTO b VALUES (1)",
        "CREATE VIEW v AS SELECT id, v FROM a",
        "CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC RETURN x + 1",
    )
    _copy_and_stop(env)
    code, doc = _verify(env)
    assert code == 0 and doc["consistent"] is True, doc

    def differs(*on_target: str, undo: tuple[str, ...]) -> dict[str, Any]:
        env.target.execute(f"USE {env.db}", *on_target)
        try:
            code, doc = _verify(env)
        finally:
            env.target.execute(f"USE {env.db}", *undo)
        assert code == 1 and doc["consistent"] is False, doc
        return doc

    doc = differs("DROP VIEW v", undo=("CREATE VIEW v AS SELECT id, v FROM a",))
    assert _differences(doc) == {f"view {env.db}.v": f"missing on the target ({env.db}.v)"}
    doc = differs("DROP TABLE b", undo=("CREATE TABLE b (id INT PRIMARY KEY)", "INSERT INTO b VALUES (1)"))
    assert _differences(doc) == {f"table {env.db}.b": f"missing on the target ({env.db}.b)"}
    assert _table(doc, f"{env.db}.b")["schema_differences"] == [f"table {env.db}.b does not exist on the target"]
    doc = differs("ALTER TABLE a MODIFY v BIGINT NOT NULL", undo=("ALTER TABLE a MODIFY v INT NOT NULL",))
    assert _differences(doc) == {}
    (line,) = _table(doc, f"{env.db}.a")["schema_differences"]
    assert line.startswith("column v is bigint(20) no") and "(type differs)" in line
    doc = differs("ALTER TABLE a ALTER v SET DEFAULT 7", undo=("ALTER TABLE a ALTER v DROP DEFAULT",))
    assert _table(doc, f"{env.db}.a")["schema_differences"][0].endswith("(default differs)")
    doc = differs("ALTER TABLE a DROP KEY by_k", undo=("ALTER TABLE a ADD KEY by_k (k)",))
    assert _table(doc, f"{env.db}.a")["schema_differences"] == ["index by_k is missing on the target"]
    doc = differs("CREATE TABLE stray (id INT PRIMARY KEY)", undo=("DROP TABLE stray",))
    assert _differences(doc) == {f"table {env.db}.stray": f"exists only on the target ({env.db}.stray)"}
    doc = differs("DROP FUNCTION f", undo=("CREATE FUNCTION f(x INT) RETURNS INT DETERMINISTIC RETURN x + 1",))
    assert _differences(doc) == {f"function {env.db}.f": f"missing on the target ({env.db}.f)"}
    doc = differs(
        "CREATE OR REPLACE VIEW v AS SELECT id, v + 1 AS v FROM a",
        undo=("CREATE OR REPLACE VIEW v AS SELECT id, v FROM a",),
    )
    assert _differences(doc) == {f"view {env.db}.v": "definition differs between source and target"}
    code, doc = _verify(env)  # everything undone: consistent again
    assert code == 0 and doc["consistent"] is True, doc
