"""Every database error message names what failed and where, and never ends in an empty detail: the formatter
(db.describe_error) over the driver's real exceptions, raised by real servers (issue 15: a target restart used
to end the daemon with "a database connection failed: " and nothing after the colon)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest

from austasync.config import DatabaseConfig, Secret
from austasync.db import Connection, connect, describe_error, query
from austasync.errors import UnavailableError
from conftest import Env
from servers import MariaDB, free_port


def _config(server: MariaDB, password: str = "") -> DatabaseConfig:
    return DatabaseConfig(host="127.0.0.1", port=server.port, user="root", password=Secret(password))


def _raised(action: Callable[[], Any]) -> BaseException:
    with pytest.raises(pymysql.err.MySQLError) as caught:
        action()
    return caught.value


def _lost(conn: Connection, killer: MariaDB) -> None:
    killer.execute(f"KILL {conn.thread_id()}")
    time.sleep(0.2)
    query(conn, "SELECT 1")


def _gone_away(conn: Connection) -> None:
    query(conn, "SET SESSION wait_timeout = 1")
    time.sleep(2.5)
    query(conn, "SELECT 1")


def _read_only(conn: Connection) -> None:
    query(conn, "CREATE TABLE IF NOT EXISTS test.ro (id INT PRIMARY KEY)")
    query(conn, "START TRANSACTION READ ONLY")
    query(conn, "INSERT INTO test.ro VALUES (1)")


def _closed(conn: Connection) -> None:
    conn.close()
    query(conn, "SELECT 1")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("lost", r"error 2013: Lost connection"),
        ("gone_away", r"error (2006: MySQL server has gone away|2013: Lost connection)"),
        ("read_only", r"error 1792: Cannot execute statement in a READ ONLY transaction"),
        ("closed", r"the connection was already closed"),
    ],
)
def test_a_failed_statement_says_what_the_server_said_and_which_server(env: Env, case: str, expected: str) -> None:
    conn = connect(_config(env.target), "target")
    env.target.execute("CREATE DATABASE IF NOT EXISTS test")
    actions: dict[str, Callable[[], Any]] = {
        "lost": lambda: _lost(conn, env.target),
        "gone_away": lambda: _gone_away(conn),
        "read_only": lambda: _read_only(conn),
        "closed": lambda: _closed(conn),
    }
    text = describe_error(_raised(actions[case]))
    assert re.match(expected, text), text
    if case != "closed":  # a closed connection raises before it talks to any server
        assert text.endswith(f"(on target 127.0.0.1:{env.target.port})"), text
    assert not text.rstrip().endswith(":"), text


def test_a_refused_connection_and_denied_access_name_the_server_and_never_the_password(env: Env) -> None:
    refused = DatabaseConfig(host="127.0.0.1", port=free_port(), user="root", password=Secret("pw-xyz-123"))
    with pytest.raises(UnavailableError) as caught:
        connect(refused, "source")
    assert f"cannot connect to the source (root@127.0.0.1:{refused.port})" in str(caught.value)
    assert "error 2003" in str(caught.value)
    denied = DatabaseConfig(host="127.0.0.1", port=env.source.port, user="repl", password=Secret("not-the-pw-987"))
    with pytest.raises(UnavailableError) as caught:
        connect(denied, "source")
    assert "error 1045" in str(caught.value) and "not-the-pw-987" not in str(caught.value)


def test_an_error_without_any_text_still_says_what_it_is() -> None:
    assert (
        describe_error(pymysql.err.OperationalError(2013, ""))
        == "error 2013: OperationalError without a message from the driver"
    )
    assert describe_error(pymysql.err.InterfaceError(0, "")).startswith("the connection was already closed")
    assert describe_error(pymysql.err.InterfaceError()) == "InterfaceError without a message from the driver"
