"""A first start reads the source's schema as of P0: DDL that lands while the definitions are read is never half
in the target's tables and half in the stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from austasync import startup_schema
from austasync.binlog import statements
from austasync.config import load as load_config
from austasync.db import connect
from austasync.errors import SetupError
from conftest import Env, dump


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


class _DdlDuringRead:
    """A source connection that runs ``ddl(n)`` on another session just after its n-th statement that ``at``
    accepts: the DDL lands inside the read, as a DDL on a busy source can."""

    def __init__(self, conn: Any, other: Any, ddl: Callable[[int], list[str]], times: int, at: Callable[[str], bool]):
        self._conn, self._other, self._ddl, self._times, self._at, self._done = conn, other, ddl, times, at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _Cursor(self._conn.cursor(*args, **kwargs), self)

    def after(self, sql: Any) -> None:
        if self._done < self._times and isinstance(sql, str) and self._at(sql):
            with self._other.cursor() as cur:
                for statement in self._ddl(self._done):
                    cur.execute(statement)
            self._done += 1


def _first_definition(sql: str) -> bool:
    """The first definition read: ``SHOW CREATE TABLE`` of table ``a`` (the foreign keys are read from it too)."""
    return sql.startswith("SHOW CREATE TABLE") and sql.endswith(".`a`")


class _Positions:
    """Every other read of the binlog's end: each read's ``before``, the DDL landing before any definition."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self, sql: str) -> bool:
        if sql.startswith(("SHOW MASTER STATUS", "SHOW BINARY LOG STATUS")):
            self.reads += 1
            return self.reads % 2 == 1
        return False


class _Cursor:
    def __init__(self, cur: Any, owner: _DdlDuringRead) -> None:
        self._cur, self._owner = cur, owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def __enter__(self) -> _Cursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cur.close()

    def execute(self, sql: Any, args: Any = None) -> Any:
        result = self._cur.execute(sql, args)
        self._owner.after(sql)
        return result


def _tables(env: Env) -> None:
    env.source.execute(
        f"CREATE TABLE {env.db}.a (id INT PRIMARY KEY, v INT)",
        f"CREATE TABLE {env.db}.b (id INT PRIMARY KEY, v INT)",
        f"INSERT INTO {env.db}.a VALUES (1, 1)",
        f"INSERT INTO {env.db}.b VALUES (1, 1)",
    )


def _read(
    env: Env, ddl: Callable[[int], list[str]], times: int = 1, at: Callable[[str], bool] = _first_definition
) -> tuple[startup_schema.SourceSchema, _Log]:
    config = load_config(env.config_path)
    conn = connect(config.source, "source")
    other = env.source.connect(autocommit=True)
    log = _Log()
    try:
        source = _DdlDuringRead(conn, other, ddl, times, at)
        selection = statements.Selection(config.replication.databases, config.table_selected)
        found = startup_schema.read_at_p0(source, config, selection, log, sleep=lambda _s: None)  # type: ignore[arg-type]
    finally:
        conn.close()
        other.close()
    return found, log


def test_a_ddl_during_the_read_makes_it_read_again_and_p0_follows_the_ddl(env: Env) -> None:
    _tables(env)
    found, log = _read(
        env, lambda _: [f"ALTER TABLE {env.db}.a ADD COLUMN w INT", f"RENAME TABLE {env.db}.b TO {env.db}.c"]
    )
    assert [event for event, _ in log.lines] == ["DDL ran on the source while its schema was read; reading it again"]
    assert sorted(found.tables) == [(env.db, "a"), (env.db, "c")]
    assert [c.name for c in found.tables[(env.db, "a")].columns] == ["id", "v", "w"]
    assert "`w` int" in found.creates[(env.db, "a")]
    # P0 is past both DDL statements: the stream starting there replays neither
    file, pos = env.source_position()
    assert (found.position.file, found.position.pos) == (file, pos)


def test_ddl_outside_the_selection_does_not_make_it_read_again(env: Env) -> None:
    _tables(env)
    other_db = f"x_{env.name}"[:60]
    found, log = _read(
        env, lambda _: [f"CREATE DATABASE `{other_db}`", f"CREATE TABLE `{other_db}`.z (id INT PRIMARY KEY)"]
    )
    env.source.execute(f"DROP DATABASE `{other_db}`")
    assert log.lines == []
    assert sorted(found.tables) == [(env.db, "a"), (env.db, "b")]


def test_ddl_during_every_read_is_refused_with_the_statement(env: Env) -> None:
    _tables(env)
    last = startup_schema.ATTEMPTS - 1
    with pytest.raises(SetupError, match=rf"DDL kept changing .*ADD COLUMN w{last} INT.*Nothing was created"):
        _read(env, lambda i: [f"ALTER TABLE {env.db}.a ADD COLUMN w{i} INT"], startup_schema.ATTEMPTS, _Positions())


@pytest.mark.mariadb_only
def test_a_first_start_under_ddl_copies_the_schema_and_rows_of_p0(env: Env) -> None:
    """End to end: the daemon started while a writer renames and alters tables; the target ends equal to the
    source by the independent dump."""
    _tables(env)
    env.extra = {"replication": {"on_ddl": "exec"}}

    def ddl_storm() -> None:
        # bursts with pauses: a first start reads again after a DDL, so some read must fall between two bursts
        with env.source.connect(autocommit=True) as conn, conn.cursor() as cur:
            for i in range(12):
                cur.execute(f"ALTER TABLE {env.db}.a ADD COLUMN w{i} INT DEFAULT {i}")
                cur.execute(f"RENAME TABLE {env.db}.{'b' if i == 0 else f'b{i - 1}'} TO {env.db}.b{i}")
                cur.execute(f"INSERT INTO {env.db}.a (id, v) VALUES ({i + 10}, {i})")
                time.sleep(0.25)

    storm = threading.Thread(target=ddl_storm)
    proc = env.start_daemon()
    storm.start()
    storm.join()
    env.wait_caught_up(proc=proc)
    assert dump(env.source, env.db, "a", "id") == dump(env.target, env.db, "a", "id")
    assert dump(env.source, env.db, "b11", "id") == dump(env.target, env.db, "b11", "id")
    assert proc.poll() is None
