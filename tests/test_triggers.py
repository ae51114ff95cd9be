"""Moving triggers between two real servers (austasync.triggers): exact definitions, order, undo, refusals.

The cutover and rollback scenarios that move them are in test_cutover.py; the helpers that build the trigger set
and read definitions back (SHOW CREATE TRIGGER over a plain connection, not austasync's reader) are shared.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from austasync import config as configmod
from austasync import triggers
from austasync.errors import TriggerError
from austasync.triggers import Side, Trigger, TriggerMove, retarget
from conftest import Env
from servers import MariaDB

# sql_mode changes what the bodies mean: under PIPES_AS_CONCAT `||` concatenates, under the default it is OR
TRIGGER_SQL_MODE = "PIPES_AS_CONCAT,ANSI_QUOTES,STRICT_ALL_TABLES"


def create_trigger_tables(server: MariaDB, db: str) -> None:
    server.execute(
        f"CREATE TABLE {db}.docs (id INT PRIMARY KEY AUTO_INCREMENT, title VARCHAR(60) NOT NULL,"
        " stamp VARCHAR(80) NULL) CHARACTER SET utf8mb4",
        f"CREATE TABLE {db}.docs_audit (id INT PRIMARY KEY AUTO_INCREMENT, doc_id INT NOT NULL,"
        " old_title VARCHAR(60) NULL, new_title VARCHAR(60) NULL) CHARACTER SET utf8mb4",
    )


def create_triggers(server: MariaDB, db: str, definer: str) -> None:
    """BEFORE INSERT (two, sharing a table, timing and event: the second created PRECEDES the first) and AFTER
    UPDATE writing to a replicated audit table under another DEFINER; latin1 client, a non-ASCII literal."""
    conn = server.connect(charset="latin1", database=db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET SESSION sql_mode = '{TRIGGER_SQL_MODE}'")
            cur.execute(
                """CREATE TRIGGER docs_stamp BEFORE INSERT ON docs FOR EACH ROW SET NEW.stamp = 'café:' || NEW.title"""
            )
            cur.execute(
                "CREATE TRIGGER docs_upper BEFORE INSERT ON docs FOR EACH ROW PRECEDES docs_stamp"
                " SET NEW.title = UPPER(NEW.title)"
            )
            cur.execute(
                f'CREATE DEFINER="{definer}"@"%" TRIGGER docs_audited AFTER UPDATE ON docs FOR EACH ROW'
                " INSERT INTO docs_audit (doc_id, old_title, new_title) VALUES (OLD.id, OLD.title, NEW.title)"
            )
    finally:
        conn.close()


def create_definer(server: MariaDB, user: str, db: str) -> None:
    server.execute(
        f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY 'trigger-owner-pw'",
        f"GRANT SELECT, INSERT, UPDATE, TRIGGER ON {db}.* TO '{user}'@'%'",
    )


def show_triggers(server: MariaDB, db: str) -> list[tuple[object, ...]]:
    """Every trigger of ``db`` as SHOW CREATE TRIGGER gives it (bytes, no conversion), without ``Created``, plus
    its table, timing, event and ACTION_ORDER; ordered by name."""
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER"
                f" FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}' ORDER BY TRIGGER_NAME"
            )
            meta = list(cur.fetchall())
            cur.execute("SET SESSION character_set_results = binary")
            shown = []
            for name, *rest in meta:
                cur.execute(f"SHOW CREATE TRIGGER `{db}`.`{name}`")
                shown.append((*cur.fetchall()[0][:6], *rest))
            return shown
    finally:
        conn.close()


@pytest.fixture
def moving(env: Env) -> Iterator[Env]:
    """Source and target databases with the same tables; the triggers on the source; root on both sides."""
    env.extra = {"source": {"user": "root", "password": ""}, "target": {"user": "root", "password": ""}}
    env.target.execute(f"CREATE DATABASE {env.db} COLLATE utf8mb4_general_ci")  # not the source's: switched
    definer = f"trg_{env.name[:20]}"
    for server in (env.source, env.target):
        create_trigger_tables(server, env.db)
        create_definer(server, definer, env.db)
    create_triggers(env.source, env.db, definer)
    yield env
    for server in (env.source, env.target):
        server.execute(f"DROP USER IF EXISTS '{definer}'@'%'", f"DROP DATABASE IF EXISTS {env.db}")


def _move(env: Env) -> TriggerMove:
    cfg = configmod.load(env.config_path)
    return TriggerMove(cfg, Side("legacy", cfg.source), Side("new", cfg.target), migration=env.name, by="cutover")


def test_a_move_recreates_every_trigger_exactly_and_in_order_and_its_undo_puts_them_back(moving: Env) -> None:
    env = moving
    originals = show_triggers(env.source, env.db)
    assert [r[0] for r in originals] == [b"docs_audited", b"docs_stamp", b"docs_upper"]
    collation = "SELECT DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = "
    move = _move(env)
    try:
        plan = move.plan()
        move.probe(plan)
        moved = move.apply(plan)
        assert plan.names == [
            f"docs_audited on {env.db}.docs",
            f"docs_upper on {env.db}.docs",
            f"docs_stamp on {env.db}.docs",
        ]
        assert show_triggers(env.target, env.db) == originals
        assert show_triggers(env.source, env.db) == []
        assert env.target.execute(collation + f"'{env.db}'") == [("utf8mb4_general_ci",)]  # switched back
        saved = env.source.execute(
            "SELECT name, side, migration, saved_by, dropped, dropped_at IS NOT NULL FROM _austasync.triggers"
            f" WHERE db = '{env.db}' ORDER BY name"
        )
        assert saved == [(n, "legacy", env.name, "cutover", 1, 1) for n in ("docs_audited", "docs_stamp", "docs_upper")]
        # they behave as on the source: order (upper first), sql_mode (|| concatenates), charset (é), definer
        env.target.execute(
            f"INSERT INTO {env.db}.docs (title) VALUES ('memo')", f"UPDATE {env.db}.docs SET title = 'note'"
        )
        assert env.target.execute(f"SELECT title, stamp FROM {env.db}.docs") == [("note", "café:MEMO")]
        assert env.target.execute(f"SELECT old_title, new_title FROM {env.db}.docs_audit") == [("MEMO", "note")]
        assert move.undo(moved) == []
        assert show_triggers(env.source, env.db) == originals
        assert show_triggers(env.target, env.db) == []
    finally:
        move.close()


def test_saving_twice_keeps_one_row_per_trigger_with_the_latest_time(moving: Env) -> None:
    env = moving
    move = _move(env)
    try:
        plan = move.plan()
        conn = move._conn(move.origin, "admin")
        move.saved.save(conn, plan.owned, migration=env.name, side="legacy", by="cutover")
        first = env.source.execute(f"SELECT MAX(saved_at) FROM _austasync.triggers WHERE db = '{env.db}'")
        move.saved.save(conn, plan.owned, migration=env.name, side="legacy", by="cutover")
        rows = env.source.execute(f"SELECT name, saved_at FROM _austasync.triggers WHERE db = '{env.db}'")
        assert len(rows) == 3 and all(r[1] >= first[0][0] for r in rows)
        assert move.saved.parked(conn, (env.db,), lambda _d, _t: True) == []  # saved, not dropped
    finally:
        move.close()


def test_a_move_that_fails_while_creating_drops_what_it_created_and_the_origin_keeps_its_triggers(
    moving: Env,
) -> None:
    env = moving
    originals = show_triggers(env.source, env.db)
    move = _move(env)
    try:
        plan = move.plan()
        # after the plan: a table that is not replicated takes the name of the second trigger to create
        env.target.execute(
            f"CREATE TABLE {env.db}.scratch (id INT PRIMARY KEY)",
            f"CREATE TRIGGER {env.db}.docs_upper BEFORE INSERT ON {env.db}.scratch FOR EACH ROW SET @x = 1",
        )
        with pytest.raises(TriggerError) as failure:
            move.apply(plan)
        message = str(failure.value)
        assert f"docs_upper on {env.db}.docs" in message and "keeps its triggers" in message
        assert show_triggers(env.source, env.db) == originals
        assert [(r[0], r[6]) for r in show_triggers(env.target, env.db)] == [(b"docs_upper", "scratch")]
        assert env.source.execute(f"SELECT SUM(dropped) FROM _austasync.triggers WHERE db = '{env.db}'")[0][0] == 0
        # and the next plan says what is in the way
        with pytest.raises(TriggerError, match="already has triggers"):
            move.plan()
    finally:
        move.close()


def test_a_missing_definer_on_the_destination_is_refused_before_anything_changes(moving: Env) -> None:
    env = moving
    definer = f"trg_{env.name[:20]}"
    env.target.execute(f"DROP USER '{definer}'@'%'")
    move = _move(env)
    try:
        with pytest.raises(TriggerError) as refused:
            move.probe(move.plan())
        assert f"{definer}@%" in str(refused.value) and f"docs_audited on {env.db}.docs" in str(refused.value)
        assert len(show_triggers(env.source, env.db)) == 3
        assert show_triggers(env.target, env.db) == []
    finally:
        move.close()


def test_a_user_that_cannot_see_triggers_is_refused(moving: Env) -> None:
    env = moving
    env.extra["source"] = {"user": "repl", "password": "repl-secret-pw"}  # SELECT, replication: no TRIGGER
    move = _move(env)
    try:
        with pytest.raises(TriggerError, match="lacks the TRIGGER privilege"):
            move.plan()
    finally:
        move.close()


def test_a_renamed_schema_gets_the_triggers_with_qualified_names_mapped(moving: Env) -> None:
    env = moving
    renamed = f"{env.db}_new"
    env.target.execute(f"CREATE DATABASE {renamed}")
    create_trigger_tables(env.target, renamed)
    env.source.execute(
        f"CREATE TRIGGER `{env.db}`.docs_deleted /* q */ AFTER DELETE ON `{env.db}` . docs FOR EACH ROW"
        " INSERT INTO docs_audit (doc_id) VALUES (OLD.id)"
    )
    env.extra["replication"] = {"rename": {env.db: renamed}}
    move = _move(env)
    try:
        plan = move.plan()
        move.apply(plan)
        shown = {r[0]: r[2] for r in show_triggers(env.target, renamed)}
        assert (
            shown[b"docs_deleted"]
            == (
                f"CREATE DEFINER=`root`@`127.0.0.1` TRIGGER `{renamed}`.docs_deleted /* q */ AFTER DELETE ON"
                f" `{renamed}` . docs FOR EACH ROW INSERT INTO docs_audit (doc_id) VALUES (OLD.id)"
            ).encode()
        )
        assert len(shown) == 4 and show_triggers(env.source, env.db) == []
    finally:
        move.close()
        env.target.execute(f"DROP DATABASE {renamed}")


def _trigger(statement: bytes, db: str = "shop") -> Trigger:
    return Trigger(db, "t", "tr", "BEFORE", "INSERT", 1, "root@%", "", "utf8mb4", "utf8mb4_general_ci", "x", statement)


def test_retarget_maps_the_names_in_the_head_and_refuses_a_body_that_names_the_schema() -> None:
    head = b"CREATE DEFINER=`root`@`%` TRIGGER IF NOT EXISTS shop.tr BEFORE INSERT ON `shop`.t FOR EACH ROW "
    moved = retarget(_trigger(head + b"SET NEW.a = 'shop'"), "store")
    assert moved.db == "store"
    assert moved.statement == (
        b"CREATE DEFINER=`root`@`%` TRIGGER IF NOT EXISTS `store`.tr BEFORE INSERT ON `store`.t FOR EACH ROW "
        b"SET NEW.a = 'shop'"
    )
    unqualified = _trigger(b"CREATE DEFINER=`root`@`%` TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET @a = 1")
    assert retarget(unqualified, "store").statement == unqualified.statement
    assert retarget(unqualified, "shop") is unqualified
    # a body naming the schema refuses, even inside a string literal: a refusal is safer than a guess
    for body in (b"INSERT INTO `shop`.audit VALUES (NEW.id)", b"SET NEW.a = 'shop.x'"):
        with pytest.raises(TriggerError, match="names the database shop in its body"):
            retarget(_trigger(head + body), "store")


def test_preflight_lists_the_source_triggers_that_cutover_will_move(moving: Env) -> None:
    from austasync.preflight import run_preflight  # noqa: PLC0415

    check = next(c for c in run_preflight(configmod.load(moving.config_path)).checks if c.id == "source.triggers")
    assert check.status == "info" and "creates them on the target at promotion" in check.title
    assert sorted(check.detail) == [f"{n} on {moving.db}.docs" for n in ("docs_audited", "docs_stamp", "docs_upper")]


def test_moving_back_refuses_when_the_new_side_changed_a_trigger_since_the_legacy_host_saved_it(moving: Env) -> None:
    env = moving
    forward = _move(env)
    try:
        forward.apply(forward.plan())
    finally:
        forward.close()
    env.target.execute(
        f"CREATE OR REPLACE TRIGGER {env.db}.docs_stamp BEFORE INSERT ON {env.db}.docs FOR EACH ROW"
        " SET NEW.stamp = 'changed'"
    )
    cfg = configmod.reversed_config(configmod.load(env.config_path))
    back = TriggerMove(cfg, Side("new", cfg.source), Side("legacy", cfg.target), migration=env.name, by="rollback")
    try:
        with pytest.raises(TriggerError) as refused:
            back.plan()
        assert f"docs_stamp on {env.db}.docs: definition changed since it was saved" in str(refused.value)
        env.target.execute(f"DROP TRIGGER {env.db}.docs_stamp")  # gone on the new side: also a difference
        with pytest.raises(TriggerError, match=f"docs_stamp on {env.db}.docs: saved on the legacy host"):
            back.plan()
    finally:
        back.close()
    assert show_triggers(env.source, env.db) == []  # refused before anything changed


def test_a_move_that_fails_while_dropping_puts_every_trigger_back_in_its_order(
    moving: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = moving
    env.source.execute(
        f"CREATE TRIGGER {env.db}.audit_checked BEFORE INSERT ON {env.db}.docs_audit FOR EACH ROW SET @n = 1"
    )
    originals = show_triggers(env.source, env.db)
    monkeypatch.setattr(triggers, "LOCK_WAIT_SECONDS", 1)
    reader = env.source.connect(autocommit=False)  # an idle transaction that read docs_audit holds it
    move = _move(env)
    try:
        with reader.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {env.db}.docs_audit")
        plan = move.plan()
        with pytest.raises(TriggerError) as failure:
            move.apply(plan)  # the three triggers of docs are dropped first, then docs_audit's waits
        message = str(failure.value)
        assert f"dropping trigger audit_checked on {env.db}.docs_audit" in message and "SHOW PROCESSLIST" in message
        reader.rollback()
        assert show_triggers(env.source, env.db) == originals  # re-created in ACTION_ORDER: upper before stamp
        assert show_triggers(env.target, env.db) == []
    finally:
        reader.close()
        move.close()
