"""Fixtures: real MariaDB source and target (binlog on) and a real Redis, started once per test session.

With ``AUSTASYNC_TEST_BACKEND=docker`` the source and target are MySQL 8.0 containers (testcontainers) instead;
tests of MariaDB-only behaviour carry the ``mariadb_only`` marker and are deselected there.

Each test gets its own database name and migration name, so tests share servers without sharing state. Tests
that kill or restart a server start their own with the factories below.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import MariaDB, Redis

_counter = itertools.count(1)
BACKEND = os.environ.get("AUSTASYNC_TEST_BACKEND", "local")
SOURCE_GRANTS = {
    "local": "GRANT SELECT, SHOW VIEW, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, SLAVE MONITOR,"
    " BINLOG MONITOR, PROCESS ON *.* TO 'repl'@'%'",
    "docker": "GRANT SELECT, SHOW VIEW, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, PROCESS ON *.*"
    " TO 'repl'@'%'",
}


def _server(root: Path, name: str, server_id: int) -> Any:
    if BACKEND == "docker":
        from docker_backend import MySQLContainer  # noqa: PLC0415 (needs a Docker engine)

        return MySQLContainer(server_id)
    if BACKEND != "local":
        raise RuntimeError(f"AUSTASYNC_TEST_BACKEND={BACKEND!r}: use 'local' (MariaDB) or 'docker' (MySQL 8.0)")
    return MariaDB(root / name, server_id=server_id)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    if BACKEND == "docker":
        skip = pytest.mark.skip(reason="MariaDB-only behaviour; this run uses MySQL 8.0 containers")
        for item in items:
            if "mariadb_only" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def source(server_root: Path) -> Iterator[MariaDB]:
    server = _server(server_root, "source", 101)
    server.start()
    server.execute("CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-secret-pw'", SOURCE_GRANTS[BACKEND])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def target(server_root: Path) -> Iterator[MariaDB]:
    server = _server(server_root, "target", 202)
    server.start()
    server.execute(
        "CREATE USER 'austasync'@'%' IDENTIFIED BY 'target-secret-pw'",
        "GRANT ALL PRIVILEGES ON *.* TO 'austasync'@'%'",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(server_root: Path) -> Iterator[Redis]:
    server = Redis(server_root / "redis")
    server.start()
    yield server
    server.stop()


class Env:
    """One test's migration: its database, its config file, and helpers to run and observe the daemon."""

    def __init__(self, source: MariaDB, target: MariaDB, redis: Redis, tmp: Path, name: str) -> None:
        self.source = source
        self.target = target
        self.redis = redis
        self.tmp = tmp
        self.name = name
        self.db = f"db_{name}"
        self.state_schema = "_austasync"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra: dict[str, dict[str, Any]] = {}

    def config_text(self) -> str:
        sections: dict[str, dict[str, Any]] = {
            "source": {"host": "127.0.0.1", "port": self.source.port, "user": "repl", "password": "repl-secret-pw"},
            "target": {
                "host": "127.0.0.1",
                "port": self.target.port,
                "user": "austasync",
                "password": "target-secret-pw",
            },
            "redis": {"url": self.redis.url, "key_prefix": "t"},
            "replication": {
                "server_id": 5000 + next(_counter),
                "databases": [self.db],
                "name": self.name,
                "lease_seconds": 2.0,
            },
            "copy": {"chunk_rows": 200, "snapshot_seconds": 0.5},
            "apply": {"batch_max_rows": 500, "batch_max_seconds": 0.2},
            "http": {"listen": "127.0.0.1:0"},
            # the daemon's own scheduled verification would share the barrier with tests that drive it
            "verify": {"interval_seconds": 0},
        }
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml(value)}")
        return "\n".join(lines) + "\n"

    @property
    def config_path(self) -> Path:
        path = self.tmp / f"{self.name}.toml"
        path.write_text(self.config_text())
        return path

    def start_daemon(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"daemon-{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [sys.executable, "-m", "austasync", "run", "--config", str(self.config_path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.procs.append(proc)
        return proc

    def daemon_log(self, index: int = -1) -> str:
        logs = sorted(self.tmp.glob("daemon-*.log"), key=lambda p: int(p.stem.split("-")[1]))
        return logs[index].read_text(errors="replace") if logs else ""

    def run_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "austasync", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def checkpoint(self) -> tuple[str, int, str] | None:
        rows = self.target.execute(
            f"SELECT file, pos, phase FROM {self.state_schema}.state WHERE migration = '{self.name}'"
        )
        return (str(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None

    def source_position(self) -> tuple[str, int]:
        rows = self.source.execute("SHOW MASTER STATUS")
        return str(rows[0][0]), int(rows[0][1])

    def wait_caught_up(self, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Until the daemon has copied everything and committed exactly the source's current binlog end."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}:\n{self.daemon_log()[-4000:]}")
            try:
                last = self.checkpoint()
            except Exception:  # noqa: BLE001 (state schema not created yet)
                last = None
            if last is not None and last[2] == "streaming" and (last[0], last[1]) == self.source_position():
                return
            time.sleep(0.1)
        raise AssertionError(
            f"not caught up after {timeout}s: checkpoint {last}, source {self.source_position()}\n"
            + self.daemon_log()[-4000:]
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


@pytest.fixture
def env(
    source: MariaDB, target: MariaDB, redis_server: Redis, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Env]:
    name = f"{request.node.name[:40]}_{next(_counter)}".replace("[", "_").replace("]", "").replace("-", "_")
    name = "".join(ch for ch in name if ch.isalnum() or ch == "_")[:50]
    environment = Env(source, target, redis_server, tmp_path, name)
    source.execute(f"CREATE DATABASE {environment.db}")
    yield environment
    environment.stop_all()


def dump(server: MariaDB, db: str, table: str, key: str) -> list[str]:
    """An ordered dump of a table with every column as hex, by the ``mariadb`` client, not austasync's code.

    A FLOAT column prints with about 6 significant digits (16777216 as 16777200; 1.0000001 and 1.0000002 both
    as 1), so it is also dumped as ``col+0E0``, a DOUBLE holding the float32 exactly, which the server prints in
    the shortest form that round-trips.
    """
    columns = server.execute(
        f"SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='{db}'"
        f" AND TABLE_NAME='{table}' ORDER BY ORDINAL_POSITION"
    )
    parts = []
    for name, data_type in columns:
        parts.append(f"COALESCE(HEX(CAST(`{name}` AS BINARY)),'NULL')")
        if str(data_type).lower() == "float":
            parts.append(f"COALESCE(HEX(CAST(`{name}`+0E0 AS BINARY)),'NULL')")
    exprs = ",".join(parts)
    out = subprocess.run(
        [
            "mariadb",
            "--no-defaults",
            "-h127.0.0.1",
            f"-P{server.port}",
            "-uroot",
            "--batch",
            "--raw",
            "--skip-column-names",
            # pinned like austasync's sessions: a global PAD_CHAR_TO_FULL_LENGTH would pad CHAR on one side only
            "--init-command=SET time_zone='+00:00', sql_mode=''",
            "-e",
            f"SELECT {exprs} FROM `{db}`.`{table}` ORDER BY {key}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.splitlines()
