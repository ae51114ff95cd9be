"""Sessions are pinned: a server's global sql_mode changes nothing austasync writes or compares.

Each case sets a global ``sql_mode`` on the source or on the target of this module's own server pair (restored
after the case), then copies (two rows a chunk, so every chunk bound is a tricky key), streams, verifies and
repairs tables whose string keys hold newline, CR, NUL, ^Z, quotes and backslashes. Both sides are compared by
hex dumps made by the ``mariadb`` client (conftest.dump), which shares no code with austasync.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from austasync.config import load as load_config
from austasync.db import connect, query
from austasync.ddl_exec import sql_mode_names
from austasync.errors import UncarryableValueError
from conftest import SOURCE_GRANTS, Env, dump
from servers import MariaDB, Redis, free_port

# string keys whose bytes a backslash-escaped literal reads differently under NO_BACKSLASH_ESCAPES, and their
# look-alikes (a backslash followed by the escape letter), so a misread bound lands on another existing key
KEYS = [
    b"a",
    b"a\nb",
    b"a\\nb",
    b"a\rb",
    b"a\\rb",
    b"a\x00b",
    b"a\\0b",
    b"a\x1ab",
    b"a\\Zb",
    b"a'b",
    b"a''b",
    b"a\\'b",
    b'a"b',
    b"a\\b",
    b"\\",
    b"'",
    b"\n",
    b"b",
]
TABLES = {
    # a general_ci key sorts the backslash after the letters: the bounds must compare under the column's collation
    "t_text": "k VARCHAR(20) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci PRIMARY KEY, v VARCHAR(40) NOT NULL,"
    " c CHAR(6) NULL, d DATE NULL",
    "t_bin": "k VARBINARY(20) PRIMARY KEY, v BLOB NULL",
    "t_comp": "a CHAR(6) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci, b VARBINARY(8), v INT NOT NULL,"
    " PRIMARY KEY (a, b)",
}
ORDER = {"t_text": "k", "t_bin": "k", "t_comp": "a, b"}
MODES = ["NO_BACKSLASH_ESCAPES", "ANSI_QUOTES", "PAD_CHAR_TO_FULL_LENGTH", "ORACLE"]


def x(raw: bytes) -> str:
    """A hex literal: the test's own statements read the same under every mode."""
    return f"X'{raw.hex()}'"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MariaDB, MariaDB]]:
    """A source and a target of this module's own: the cases change their global settings."""
    root = tmp_path_factory.mktemp("sessions")
    source, target = MariaDB(root / "source", server_id=311), MariaDB(root / "target", server_id=312)
    source.start()
    target.start()
    source.execute("CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-secret-pw'", SOURCE_GRANTS["local"])
    target.execute(
        "CREATE USER 'austasync'@'%' IDENTIFIED BY 'target-secret-pw'", "GRANT ALL PRIVILEGES ON *.* TO 'austasync'@'%'"
    )
    yield source, target
    source.stop()
    target.stop()


@contextlib.contextmanager
def global_sql_mode(server: MariaDB, mode: str) -> Iterator[None]:
    """The server's global sql_mode for the block (new sessions take it), restored after."""
    before = str(server.execute("SELECT @@GLOBAL.sql_mode")[0][0])
    server.execute(f"SET GLOBAL sql_mode = '{mode}'")
    try:
        yield
    finally:
        server.execute(f"SET GLOBAL sql_mode = '{before}'")


def new_env(pair: tuple[MariaDB, MariaDB], redis: Redis, tmp: Path, name: str) -> Env:
    env = Env(pair[0], pair[1], redis, tmp, name)
    env.extra["copy"] = {"chunk_rows": 2}
    env.extra["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    env.source.execute(f"DROP DATABASE IF EXISTS {env.db}", f"CREATE DATABASE {env.db}")
    env.target.execute(f"DROP DATABASE IF EXISTS {env.db}")
    return env


def fill(env: Env) -> None:
    """The tables and their rows, written under the server's default mode (before the case sets its own)."""
    statements = [f"USE {env.db}"]
    statements += [f"CREATE TABLE {t} ({ddl})" for t, ddl in TABLES.items()]
    for i, key in enumerate(KEYS):
        statements.append(f"INSERT INTO t_text VALUES ({x(key)}, {x(b'v' + key)}, 'c{i % 3}', '2020-01-{i + 1:02d}')")
        statements.append(f"INSERT INTO t_bin VALUES ({x(key)}, {x(key * 3)})")
    for i, a in enumerate([b"x", b"x\n", b"x'", b"x\\", b"x\x00"]):
        for j, b in enumerate([b"\x00", b"\\", b"'", b"z\n"]):
            statements.append(f"INSERT INTO t_comp VALUES ({x(a)}, {x(b)}, {i * 10 + j})")
    env.source.execute(*statements)


def stream_changes(env: Env) -> None:
    """Inserts, updates, a delete and key changes, all at tricky keys, in a session under the global mode."""
    n1, n2, n3, n4 = x(b"n\n1"), x(b"n'2"), x(b"n\\3"), x(b"n\x004")
    backslash, quotes, changed = x(b"\\"), x(b"''"), x(b"changed\\")
    env.source.execute(
        f"USE {env.db}",
        f"INSERT INTO t_text VALUES ({n1}, 'n1', NULL, NULL), ({n3}, {backslash}, 'c', NULL)",
        f"INSERT INTO t_bin VALUES ({n4}, NULL), ({n2}, {quotes})",
        f"UPDATE t_text SET v = {changed} WHERE k IN ({x(KEYS[1])}, {x(KEYS[13])})",
        f"DELETE FROM t_text WHERE k = {x(KEYS[9])}",
        f"UPDATE t_text SET k = {x(b'a' + KEYS[14] + b'rr')} WHERE k = {x(KEYS[3])}",
        f"UPDATE t_bin SET k = {x(KEYS[14] + b'0')} WHERE k = {x(KEYS[5])}",
        f"UPDATE t_comp SET v = v + 100 WHERE a = {x(b'x' + KEYS[14])}",
        f"DELETE FROM t_comp WHERE a = {x(b'x' + KEYS[15])} AND b = {x(KEYS[14])}",
    )


def drift(env: Env) -> None:
    """Three differences written behind the daemon's back, at tricky keys of t_text."""
    env.target.execute(
        f"USE {env.db}",
        f"DELETE FROM t_text WHERE k = {x(KEYS[6])}",
        f"UPDATE t_text SET v = 'drift' WHERE k = {x(KEYS[5])}",
        f"INSERT INTO t_text VALUES ({x(b'e' + KEYS[14] + b'x')}, 'extra', NULL, NULL)",
    )


def assert_same(env: Env) -> None:
    for table, order in ORDER.items():
        src, dst = dump(env.source, env.db, table, order), dump(env.target, env.db, table, order)
        assert src == dst, f"{table}: {len(src)} source rows, {len(dst)} target rows\n{src}\n{dst}"


def verify(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "austasync", "verify", "--json", *args, "--config", str(env.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ),
    )
    assert proc.stdout, f"exit {proc.returncode}, no report:\n{proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.mariadb_only
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["source", "target"])
def test_copy_stream_verify_and_repair_under_a_global_sql_mode(
    pair: tuple[MariaDB, MariaDB], redis_server: Redis, tmp_path: Path, side: str, mode: str
) -> None:
    env = new_env(pair, redis_server, tmp_path, f"sessions_{side}_{mode.lower()}")
    fill(env)
    with global_sql_mode(pair[0] if side == "source" else pair[1], mode):
        proc = env.start_daemon()
        try:
            env.wait_caught_up(proc=proc)
            assert_same(env)  # the copy: every chunk bound a tricky key
            stream_changes(env)
            env.wait_caught_up(proc=proc)
            assert_same(env)
            code, doc = verify(env)
            assert code == 0 and doc["aligned"] is True, doc
            drift(env)
            code, doc = verify(env, "--repair")
            assert code == 0, doc
            assert doc["repair"]["differences_before"] == {f"{env.db}.t_text": 3}, doc
            env.wait_caught_up(proc=proc)
            assert_same(env)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, env.daemon_log()[-3000:]
            code, doc = verify(env)  # no daemon: the verifier's own sessions, compared as is
            assert code == 0 and doc["aligned"] is False, doc
        finally:
            env.stop_all()


# --- the DDL replay's sql_mode ----------------------------------------------------------------------------------


def test_every_mariadb_sql_mode_bit_is_named_and_an_unknown_bit_refused() -> None:
    assert sql_mode_names(None) is None
    assert sql_mode_names(0) == ""
    assert sql_mode_names(1 << 9) == "ORACLE"  # dropped before: the DDL then ran under another grammar
    assert sql_mode_names(1 << 20 | 1 << 31) == "NO_BACKSLASH_ESCAPES,PAD_CHAR_TO_FULL_LENGTH"
    assert sql_mode_names(1 << 32 | 1 << 33 | 1 << 34) == (
        "EMPTY_STRING_IS_NULL,SIMULTANEOUS_ASSIGNMENT,TIME_ROUND_FRACTIONAL"
    )
    assert len((sql_mode_names((1 << 35) - 1, "mariadb") or "").split(",")) == 35
    with pytest.raises(UncarryableValueError, match=r"bit 35"):
        sql_mode_names(1 << 35 | 1)
    with pytest.raises(UncarryableValueError, match=r"bit 40, 63"):
        sql_mode_names(1 << 40 | 1 << 63)


def test_mysql_sql_mode_bits_follow_mysql() -> None:
    assert sql_mode_names(1 << 32, "mysql") == "TIME_TRUNCATE_FRACTIONAL"
    # the 5.7 modes MySQL 8 removed are dropped as its own replica drops them
    assert sql_mode_names(1 << 9 | 1 << 28 | 1 << 20, "mysql") == "NO_BACKSLASH_ESCAPES"
    with pytest.raises(UncarryableValueError, match=r"bit 4\b"):
        sql_mode_names(1 << 4, "mysql")
    with pytest.raises(UncarryableValueError, match=r"bit 33"):
        sql_mode_names(1 << 33, "mysql")


@pytest.mark.mariadb_only
def test_the_bit_names_are_the_servers_own(pair: tuple[MariaDB, MariaDB]) -> None:
    """Each bit set alone on a real server: the names it reports map back to exactly that session's modes."""
    conn = pair[1].connect()
    try:
        with conn.cursor() as cur:
            names: dict[str, int] = {}
            for n in range(35):
                cur.execute(f"SET SESSION sql_mode = {1 << n}")
                cur.execute("SELECT @@SESSION.sql_mode")
                alone = str(cur.fetchone()[0]).split(",")
                if len(alone) == 1:
                    names[alone[0]] = 1 << n
            assert len(names) == 26, names  # every bit but the 9 combination modes shows alone
            for n in range(35):
                cur.execute(f"SET SESSION sql_mode = {1 << n}")
                cur.execute("SELECT @@SESSION.sql_mode")
                shown = set(str(cur.fetchone()[0]).split(","))
                bits = sum(names.get(s, 0) for s in shown) | 1 << n
                assert set((sql_mode_names(bits) or "").split(",")) == shown, n
    finally:
        conn.close()


# --- CHAR keys under a NO PAD collation -------------------------------------------------------------------------

# in the order MariaDB's index keeps them under utf8mb4_nopad_bin (padded with spaces: 'a\x01' < 'a   ')
NO_PAD_KEYS = [b"", b"a\x01", b"a\t", b"a", b"a\x1f!", b"b", b"b\n", b"c\x00", b"c"]


@pytest.mark.mariadb_only
def test_a_char_key_with_a_no_pad_collation_is_refused_at_start(env: Env) -> None:
    """Its range comparisons disagree with its index order: copied in chunks of two, rows were lost."""
    env.extra["copy"] = {"chunk_rows": 2}
    rows = ",".join(f"({x(k)}, {i})" for i, k in enumerate(NO_PAD_KEYS))
    env.source.execute(
        f"USE {env.db}",
        "CREATE TABLE t_nopad (k CHAR(4) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin PRIMARY KEY, v INT)",
        f"INSERT INTO t_nopad VALUES {rows}",
        # the same keys under a PAD SPACE collation: carried
        "CREATE TABLE t_pad (k CHAR(4) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY, v INT)",
        f"INSERT INTO t_pad VALUES {rows}",
    )
    proc = env.start_daemon()
    try:
        with contextlib.suppress(AssertionError):
            env.wait_caught_up(timeout=30, proc=proc)
        if proc.poll() is None:  # carried instead of refused: then it had better be exact
            src, dst = dump(env.source, env.db, "t_nopad", "k"), dump(env.target, env.db, "t_nopad", "k")
            assert src == dst, f"rows lost: {len(src)} on the source, {len(dst)} on the target"
            pytest.fail("the CHAR NO PAD key was carried, not refused")
        assert proc.returncode == 4, env.daemon_log()[-3000:]
        log = env.daemon_log()
        assert f"{env.db}.t_nopad: key column k is CHAR with the NO PAD collation utf8mb4_nopad_bin" in log
        assert "t_pad:" not in log
    finally:
        env.stop_all()


@pytest.mark.mariadb_only
def test_a_session_is_pinned_when_it_connects_and_again_when_it_reconnects(
    pair: tuple[MariaDB, MariaDB], redis_server: Redis, tmp_path: Path
) -> None:
    env = new_env(pair, redis_server, tmp_path, "sessions_pinned")
    config = load_config(env.config_path)
    want = ("NO_AUTO_VALUE_ON_ZERO,STRICT_ALL_TABLES,ALLOW_INVALID_DATES,NO_ENGINE_SUBSTITUTION", "+00:00", "utf8mb4")
    settings = "SELECT @@SESSION.sql_mode, @@SESSION.time_zone, @@SESSION.character_set_client"
    with global_sql_mode(pair[0], "ORACLE,NO_BACKSLASH_ESCAPES,PAD_CHAR_TO_FULL_LENGTH,EMPTY_STRING_IS_NULL"):
        zone = str(pair[0].execute("SELECT @@GLOBAL.time_zone")[0][0])
        pair[0].execute("SET GLOBAL time_zone = '+05:45'")
        try:
            conn = connect(config.source, "source")
            assert query(conn, settings)[0] == want
            pair[0].execute(f"KILL {query(conn, 'SELECT CONNECTION_ID()')[0][0]}")
            conn.ping(reconnect=True)  # what PyMySQL does on a reconnect: a new session, pinned again
            assert query(conn, settings)[0] == want
            conn.close()
        finally:
            pair[0].execute(f"SET GLOBAL time_zone = '{zone}'")
