"""Statements as the servers log them: a corpus executed on a real source and read back from its binlog through
the reader, each with the outcome the stream must give it; and the lexer's rules, statement by statement.

The expected outcomes are written by hand from the servers' documented behaviour, not produced by the code under
test: ``policy`` (the on_ddl policy: stop by default), ``dml`` (statement-format DML on a replicated database:
stop), or ``skip:<rule>``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from austasync import config as configmod
from austasync.binlog.adapter import BinlogReader
from austasync.binlog.statements import Selection, judge, parse, tokenize
from austasync.events import Commit, Event, LiteralRows, ReaderFailed, Rows, Statement, TxnImages
from austasync.foreign import statement_write
from austasync.position import Position
from conftest import Env

APP = "{app}"  # the replicated database; {other} is not replicated; tables named excl_* are excluded


def corpus() -> list[tuple[str, str, str]]:
    """(default database, statement, expected outcome), in the order they run."""
    a, o = "app", "other"
    return [
        # ALTER in its forms
        (a, "ALTER TABLE t ADD COLUMN c1 INT", "policy"),
        (a, "alter table `t` drop column c1", "policy"),
        (a, "AlTeR OnLiNe TaBlE t ADD INDEX i1 (v)", "policy"),
        (a, "ALTER IGNORE TABLE t ADD COLUMN c2 INT", "policy"),
        (a, "ALTER TABLE t RENAME COLUMN c2 TO c3", "policy"),
        (a, "ALTER TABLE t DROP COLUMN c3, DROP INDEX i1", "policy"),
        (a, "ALTER TABLE t ENGINE=InnoDB", "policy"),
        (a, "ALTER TABLE t COMMENT 'DROP TABLE x; RENAME TABLE y'", "policy"),
        (a, "ALTER TABLE excl_x COMMENT 'TRUNCATE t'", "skip:not_replicated"),
        (a, "ALTER TABLE `excl_x` ADD COLUMN `t` INT", "skip:not_replicated"),
        (o, "ALTER TABLE o COMMENT '{app}.t'", "skip:not_replicated"),
        (o, "ALTER TABLE {app}.u ADD COLUMN c9 INT", "policy"),
        (o, "ALTER TABLE `{app}` . `u` DROP COLUMN c9", "policy"),
        (a, "ALTER TABLE excl_x RENAME TO excl_y", "skip:not_replicated"),
        (a, "ALTER TABLE excl_y RENAME TO n0", "policy"),  # renamed into the selection
        (a, "ALTER TABLE n0 RENAME TO excl_x", "policy"),  # and out of it
        # indexes
        (a, "CREATE INDEX i2 ON t (v)", "policy"),
        (a, "DROP INDEX i2 ON t", "policy"),
        (a, "CREATE UNIQUE INDEX i3 ON excl_x (id)", "skip:not_replicated"),
        (a, "DROP INDEX i3 ON excl_x", "skip:not_replicated"),
        # TRUNCATE
        (a, "TRUNCATE excl_x", "skip:not_replicated"),
        (a, "TRUNCATE TABLE `excl_x`", "skip:not_replicated"),
        (o, "TRUNCATE TABLE {app}.u", "policy"),
        (o, "truncate table o", "skip:not_replicated"),
        (a, "TRUNCATE u", "policy"),
        # CREATE TABLE in its forms
        (a, "CREATE TABLE n1 (id INT PRIMARY KEY)", "policy"),
        (a, "CREATE TABLE excl_n (id INT PRIMARY KEY)", "skip:not_replicated"),
        (a, "CREATE TABLE n2 LIKE t", "policy"),
        (o, "CREATE TABLE o2 LIKE {app}.t", "skip:not_replicated"),
        (a, "CREATE OR REPLACE TABLE n2 (id INT PRIMARY KEY)", "policy"),
        (a, "CREATE TABLE n5 (PRIMARY KEY (id)) SELECT 1 AS id", "policy"),  # logged inside a transaction
        (a, "CREATE OR REPLACE TABLE n5 (PRIMARY KEY (id)) SELECT 2 AS id", "policy"),
        (a, "CREATE TABLE `we``ird` (id INT PRIMARY KEY)", "policy"),
        (a, "DROP TABLE `we``ird`", "policy"),
        # RENAME and DROP lists
        (a, "RENAME TABLE n2 TO n3", "policy"),
        (a, "RENAME TABLE excl_n TO excl_m", "skip:not_replicated"),
        (a, "RENAME TABLE excl_m TO excl_k, n3 TO n4", "policy"),
        (o, "RENAME TABLE o2 TO o3", "skip:not_replicated"),
        (a, "DROP TABLE n4", "policy"),
        (a, "DROP TABLE IF EXISTS excl_k", "skip:not_replicated"),
        (a, "DROP TABLE IF EXISTS excl_nothing, n1", "policy"),
        (a, "DROP TABLE IF EXISTS nothing_here", "policy"),
        (a, "DROP TABLE n5", "policy"),
        (o, "DROP TABLE o3", "skip:not_replicated"),
        # views, routines, triggers, events, sequences, databases
        (a, "CREATE VIEW v1 AS SELECT * FROM t", "policy"),
        (
            a,
            "CREATE OR REPLACE ALGORITHM=MERGE DEFINER=CURRENT_USER SQL SECURITY INVOKER VIEW v1 AS SELECT id FROM t",
            "policy",
        ),
        (a, "ALTER VIEW v1 AS SELECT id FROM u", "policy"),
        (a, "DROP VIEW v1", "policy"),
        (o, "CREATE VIEW ov AS SELECT * FROM {app}.t", "skip:not_replicated"),
        (o, "DROP VIEW ov", "skip:not_replicated"),
        (a, "CREATE PROCEDURE p1() BEGIN SELECT 1; END", "policy"),
        (a, "DROP PROCEDURE p1", "policy"),
        (a, "CREATE FUNCTION f1() RETURNS INT DETERMINISTIC RETURN 1", "policy"),
        (a, "DROP FUNCTION IF EXISTS f1", "policy"),
        (o, "CREATE FUNCTION of1() RETURNS INT DETERMINISTIC RETURN 1", "skip:not_replicated"),
        (o, "DROP FUNCTION of1", "skip:not_replicated"),
        (a, "CREATE TRIGGER tr1 BEFORE INSERT ON t FOR EACH ROW SET NEW.v = NEW.v", "skip:trigger"),
        (a, "DROP TRIGGER tr1", "skip:trigger"),
        (a, "CREATE EVENT e1 ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM t WHERE id < 0", "skip:scheduled_event"),
        (a, "ALTER EVENT e1 COMMENT 'x'", "skip:scheduled_event"),
        (a, "DROP EVENT e1", "skip:scheduled_event"),
        (a, "CREATE SEQUENCE s1", "policy"),
        (a, "DROP SEQUENCE s1", "policy"),
        (o, "CREATE SEQUENCE os1", "skip:not_replicated"),
        (o, "DROP SEQUENCE os1", "skip:not_replicated"),
        (o, "CREATE DATABASE IF NOT EXISTS {scratch}", "skip:not_replicated"),
        (o, "DROP DATABASE {scratch}", "skip:not_replicated"),
        (a, "ALTER DATABASE {app} CHARACTER SET utf8mb4", "policy"),
        (a, "ALTER DATABASE CHARACTER SET utf8mb4", "policy"),  # the default database
        # accounts and privileges
        (a, "CREATE USER '{user}'@'%' IDENTIFIED BY 'x'", "skip:account_management"),
        (a, "GRANT SELECT ON {app}.* TO '{user}'@'%'", "skip:account_management"),
        (a, "REVOKE SELECT ON {app}.* FROM '{user}'@'%'", "skip:account_management"),
        (a, "ALTER USER '{user}'@'%' IDENTIFIED BY 'y'", "skip:account_management"),
        (a, "SET PASSWORD FOR '{user}'@'%' = PASSWORD('z')", "skip:account_management"),
        (a, "RENAME USER '{user}'@'%' TO '{user}2'@'%'", "skip:account_management"),
        (a, "CREATE ROLE {user}_r", "skip:account_management"),
        (a, "GRANT {user}_r TO '{user}2'@'%'", "skip:account_management"),
        (a, "DROP ROLE {user}_r", "skip:account_management"),
        (a, "DROP USER '{user}2'@'%'", "skip:account_management"),
        # administration
        (a, "FLUSH PRIVILEGES", "skip:server_admin"),
        (a, "ANALYZE TABLE t", "skip:table_maintenance"),
        (a, "OPTIMIZE TABLE t", "skip:table_maintenance"),
        (a, "REPAIR TABLE t", "skip:table_maintenance"),
        # SET STATEMENT ... FOR and every comment form
        (a, "SET STATEMENT max_statement_time=60 FOR ALTER TABLE t ADD COLUMN c4 INT", "policy"),
        (a, "SET STATEMENT sql_mode='', max_statement_time=60 FOR TRUNCATE TABLE excl_x", "skip:not_replicated"),
        (a, "/*!40101 ALTER TABLE t DROP COLUMN c4 */", "policy"),
        (a, "/*M!100100 ALTER TABLE t ADD COLUMN c5 INT */", "policy"),
        (o, "/*M!100100 TRUNCATE TABLE {app}.u */", "policy"),
        (a, "/* plain */ ALTER TABLE t DROP COLUMN c5", "policy"),
        (a, "-- a comment\nALTER TABLE u ADD COLUMN c6 INT", "policy"),
        (a, "# a comment\nALTER TABLE u DROP COLUMN c6", "policy"),
        (a, "ALTER /* x */ TABLE /* y */ excl_x /* z */ COMMENT 'c'", "skip:not_replicated"),
    ]


# statements run in a session with another sql_mode or binlog_format: (mode settings, default db, text, expected)
MODAL = [
    ("SET SESSION sql_mode = 'ANSI_QUOTES'", "app", 'ALTER TABLE "t" ADD COLUMN "c7" INT', "policy"),
    ("SET SESSION sql_mode = 'ANSI_QUOTES'", "app", 'ALTER TABLE "excl_x" ADD COLUMN "q7" INT', "skip:not_replicated"),
    # under NO_BACKSLASH_ESCAPES the backslash ends no quote: the statement renames excl_x into the selection
    (
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "app",
        "ALTER TABLE excl_x COMMENT 'x\\', RENAME TO t2, COMMENT ''",
        "policy",
    ),
    ("SET SESSION binlog_format = 'STATEMENT'", "app", "UPDATE t SET v = 'stmt' WHERE id = 1", "dml"),
    ("SET SESSION binlog_format = 'STATEMENT'", "other", "UPDATE o SET v = 2 WHERE id = 1", "skip:not_replicated"),
    ("SET SESSION binlog_format = 'STATEMENT'", "other", "UPDATE o JOIN {app}.t USING (id) SET o.v = 3", "dml"),
    # the session ends with the table still there: the server logs DROP /*!40005 TEMPORARY */ TABLE IF EXISTS
    ("SET SESSION binlog_format = 'MIXED'", "app", "CREATE TEMPORARY TABLE tmp1 (id INT)", "skip:temporary_table*2"),
    # a temporary table that shadows a replicated one
    ("SET SESSION binlog_format = 'MIXED'", "app", "CREATE TEMPORARY TABLE t (id INT)", "skip:temporary_table*2"),
]


@pytest.fixture
def dbs(env: Env) -> Iterator[dict[str, str]]:
    names = {
        "app": env.db,
        "other": f"o_{env.name}"[:64],
        "scratch": f"x_{env.name}"[:64],
        "user": f"cu{env.name[-8:]}",
    }
    env.source.execute(
        f"CREATE DATABASE {names['other']}",
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(20))",
        f"CREATE TABLE {env.db}.u (id INT PRIMARY KEY, v VARCHAR(20))",
        f"CREATE TABLE {env.db}.excl_x (id INT PRIMARY KEY, v VARCHAR(20))",
        f"CREATE TABLE {names['other']}.o (id INT PRIMARY KEY, v INT)",
        f"INSERT INTO {env.db}.t VALUES (1, 'a')",
        f"INSERT INTO {names['other']}.o VALUES (1, 1)",
    )
    yield names
    env.source.execute(f"DROP DATABASE {names['other']}", f"DROP DATABASE IF EXISTS {names['scratch']}")


def reader_for(env: Env, start: Position, selection: Selection) -> BinlogReader:
    config = configmod.load(env.config_path)
    return BinlogReader(config.source, 7000 + int(time.time()) % 1000, {}, start, selected=selection.table)


def read_until(reader: BinlogReader, end: Position, timeout: float = 30) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    reader.start()
    try:
        while time.monotonic() < deadline:
            event = reader.get(0.2)
            if event is None:
                continue
            if isinstance(event, ReaderFailed):
                raise event.error
            events.append(event)
            position = getattr(event, "position", None) or getattr(event, "end", None)
            if isinstance(position, Position) and position >= end:
                return events
        raise AssertionError(f"the binlog was not read up to {end}; last events: {events[-5:]}")
    finally:
        reader.stop()


def test_a_corpus_of_logged_statements_gets_the_outcome_each_must_have(env: Env, dbs: dict[str, str]) -> None:
    selection = Selection([dbs["app"]], lambda db, t: db == dbs["app"] and not t.startswith("excl_"))
    cases = [(dbs[db], text.format(**dbs), expected) for db, text, expected in corpus()]
    modal = [(mode, dbs[db], text.format(**dbs), expected) for mode, db, text, expected in MODAL]
    assert len(cases) + len(modal) >= 80
    start = Position(*env.source_position())
    for db, text, _ in cases:
        env.source.execute(f"USE {db}", text)
    for mode, db, text, _ in modal:
        env.source.execute(f"USE {db}", mode, text)
    events = read_until(reader_for(env, start, selection), Position(*env.source_position()))
    logged = [e for e in events if isinstance(e, Statement)]
    expected = [(db, text, outcome) for db, text, outcome in cases]
    for _, db, text, outcomes in modal:
        outcome, _, times = outcomes.partition("*")
        expected += [(db, text, outcome)] * int(times or 1)
    got = []
    for event in logged:
        verdict = judge(event.parsed or parse(event.query, event.sql_mode), event.schema, selection)
        outcome = {"skip": f"skip:{verdict.rule}", "policy": "policy", "stop_dml": "dml"}[verdict.action]
        got.append((event.schema, event.query, outcome))
    # one logged statement per case, in order; the text is the server's (DROP TABLE gains a comment, CREATE ...
    # SELECT becomes the table's definition), so cases are matched by position and compared by outcome
    assert len(got) == len(expected), [g[1][:60] for g in got]
    wrong = [(e[1], g[1], e[2], g[2]) for e, g in zip(expected, got, strict=True) if e[2] != g[2]]
    assert not wrong, "\n".join(f"{e!r}\n  logged {g!r}: expected {x}, got {y}" for e, g, x, y in wrong)


def test_savepoint_rollbacks_and_xa_are_modelled_as_the_source_ran_them(env: Env, dbs: dict[str, str]) -> None:
    app, other = dbs["app"], dbs["other"]
    env.source.execute(f"CREATE TABLE {other}.m (id INT PRIMARY KEY) ENGINE=MyISAM")
    tables = {(app, "t")}
    selection = Selection([app], lambda db, t: (db, t) in tables)
    start = Position(*env.source_position())
    env.source.execute(
        f"USE {app}",
        "BEGIN",
        "UPDATE t SET v = 'kept 1' WHERE id = 1",
        f"INSERT INTO {other}.m VALUES (1)",
        "SAVEPOINT a",
        "INSERT INTO t VALUES (10, 'gone')",
        "SAVEPOINT `b b`",
        "INSERT INTO t VALUES (11, 'gone')",
        "ROLLBACK TO `b b`",
        "INSERT INTO t VALUES (12, 'gone')",
        "ROLLBACK WORK TO SAVEPOINT a",
        "INSERT INTO t VALUES (13, 'kept')",
        "COMMIT",
        "XA START 'q'",
        f"INSERT INTO {other}.o VALUES (7, 7)",
        "XA END 'q'",
        "XA PREPARE 'q'",
        "XA COMMIT 'q'",
    )
    events = read_until(reader_for(env, start, selection), Position(*env.source_position()))
    statements = [e for e in events if isinstance(e, Statement)]
    assert statements == []  # transaction control never reaches the consumer as a statement
    commits = [e for e in events if isinstance(e, Commit | TxnImages) and getattr(e, "end", True)]
    assert commits, events
    # the reader handed over exactly the rows events of app.t that the source kept: the first UPDATE and row 13
    # (with no loaded tables they arrive as unknown-table rows, in order)
    kept = [e for e in events if type(e).__name__ == "UnknownRows"]
    assert [e.seq for e in kept] == [1, 5], kept  # (the MyISAM row is logged on its own, before the transaction)
    assert not [e for e in events if isinstance(e, Rows | LiteralRows)]


# --- the lexer and the parser, statement by statement --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode", "words"),
    [
        ("/*!40101 TRUNCATE t */", 0, ["TRUNCATE", "t"]),
        ("/*!TRUNCATE t */", 0, ["TRUNCATE", "t"]),
        ("/*M!100100 TRUNCATE t */", 0, ["TRUNCATE", "t"]),
        ("/*+ hint */ TRUNCATE t", 0, ["TRUNCATE", "t"]),
        ("TRUNCATE t -- x", 0, ["TRUNCATE", "t"]),
        ("TRUNCATE t --x", 0, ["TRUNCATE", "t", "-", "-", "x"]),  # -- needs a space to start a comment
        ("TRUNCATE t # x", 0, ["TRUNCATE", "t"]),
        ("SELECT 'it''s', \"a\\\"b\"", 0, ["SELECT", "it's", ",", 'a\\"b']),
        ('SELECT "t"', 1 << 2, ["SELECT", "t"]),  # ANSI_QUOTES: an identifier
        ("SELECT 'a\\', 'b'", 1 << 20, ["SELECT", "a\\", ",", "b"]),  # NO_BACKSLASH_ESCAPES
        ("SELECT `a``b`", 0, ["SELECT", "a`b"]),
        ("SELECT X'0aff', _utf8mb4'x', N'y'", 0, ["SELECT", "X'0aff'", ",", "x", ",", "y"]),
    ],
)
def test_the_lexer_reads_comments_and_quotes_as_the_server_does(text: str, mode: int, words: list[str]) -> None:
    assert [t.text for t in tokenize(text, mode)] == words


@pytest.mark.parametrize(
    "text",
    [
        "TRUNCATE t /* never closed",
        "TRUNCATE 't",
        "/*!40101 TRUNCATE t",
        "",
        "   -- only a comment\n",
        "SOMETHING NEW t",
        "SET @x = 1",
        "BINLOG 'AAAA'",
        "TRUNCATE t; TRUNCATE u",
        "BEGIN NOT ATOMIC SELECT 1; END",
        "DROP TABLE t t2",
    ],
)
def test_text_that_cannot_be_read_completely_is_never_harmless(text: str) -> None:
    parsed = parse(text)
    assert parsed.category == "unknown"
    assert judge(parsed, "other", Selection(["app"], lambda db, t: db == "app")).action == "policy"


def test_savepoints_and_xa_ids_are_read_in_every_spelling() -> None:
    assert parse("ROLLBACK WORK TO SAVEPOINT `A b`").savepoint == "a b"
    assert parse("rollback to a").savepoint == "a"
    assert parse("XA COMMIT X'78',X'',1").xid == parse("XA COMMIT 'x'").xid == parse("xa commit 'x', '', 1").xid
    assert parse("XA COMMIT 'x' ONE PHASE").one_phase
    assert parse("XA END X'78',X'',1").verb == "XA END"


# --- the target-write watcher judges the target's statements with the same classifier --------------------------

_AT = Position("target-bin.000001", 4)


@pytest.mark.parametrize(
    ("default_db", "statement", "expected"),
    [
        ("app", "CREATE VIEW v AS SELECT id FROM t", ("schema", "objects", ("view src.v",))),
        ("app", "CREATE OR REPLACE DEFINER=`u`@`%` VIEW app.v AS SELECT 1", ("schema", "objects", ("view src.v",))),
        ("app", "DROP PROCEDURE IF EXISTS p", ("schema", "objects", ("procedure src.p",))),
        # a view body naming the replicated database, in a database that is not replicated: none of its business
        ("other", "CREATE VIEW actor_info AS SELECT * FROM app.t", None),
        ("", "CREATE VIEW other.v AS SELECT * FROM app.t", None),
        # triggers and events are compared by no verification: only an acknowledgement ends them
        ("app", "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET @x = 1", ("schema", "ack", ("trigger src.tr",))),
        ("app", "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DELETE FROM t", ("schema", "ack", ("event src.e",))),
        ("app", "CREATE INDEX i ON t (v)", ("ddl", "tables", ("src.t",))),
        ("app", "ALTER TABLE excl_x ADD COLUMN c INT", None),  # an unselected table
        ("app", "DROP DATABASE app", ("ddl", "full", ("database src",))),
        ("app", "UPDATE t SET v = 1", ("statement", "full", ("database src",))),
        ("other", "UPDATE other.x SET v = 1", None),
        ("app", "CALL do_things()", ("statement", "full", ("database src",))),  # its writes are not named
        ("app", "ALTER WIDGET w SET x = 1", ("unparsed", "full", ("src",))),
        ("app", "GRANT SELECT ON app.* TO 'u'@'%'", None),
        ("app", "BEGIN", None),
    ],
)
def test_the_watcher_classifies_target_statements_like_the_stream(
    default_db: str, statement: str, expected: tuple[str, str, tuple[str, ...]] | None
) -> None:
    selection = Selection(["app"], lambda db, table: db == "app" and not table.startswith("excl_"))
    write = statement_write(statement, default_db, selection, {"app": "src"}, _AT)
    assert (None if write is None else (write.kind, write.scope, write.objects)) == expected
    if write is not None and write.kind == "schema":
        assert write.series() == [(obj, 1) for obj in write.objects]  # counted as schema, never as a table
