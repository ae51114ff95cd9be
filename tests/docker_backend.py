"""MySQL 8.0 in Docker (testcontainers) behind the same interface as the local ``MariaDB`` test server.

``AUSTASYNC_TEST_BACKEND=docker`` makes the session's source and target MySQL 8.0 containers, so the suite runs
unchanged against the legacy host's engine. No Docker engine runs on the build machines: this path is written to
the testcontainers API and has not been run there; a machine with Docker runs it with that one variable.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pymysql

MYSQL_IMAGE = "mysql:8.0"


class MySQLContainer:
    """A MySQL 8.0 container with the source's binlog settings and a root user without password."""

    def __init__(self, server_id: int) -> None:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415 (only with Docker)

        self.container = (
            DockerContainer(MYSQL_IMAGE)
            .with_env("MYSQL_ALLOW_EMPTY_PASSWORD", "yes")
            .with_env("MYSQL_ROOT_HOST", "%")
            .with_exposed_ports(3306)
            .with_command(
                f"--server-id={server_id} --log-bin=binlog --binlog-format=ROW --binlog-row-image=FULL"
                " --binlog-row-metadata=FULL --gtid-mode=ON --enforce-gtid-consistency=ON"
                " --character-set-server=utf8mb4 --max-connections=500"
                " --innodb-flush-log-at-trx-commit=2 --sync-binlog=0"
            )
        )
        self.port = 0

    def start(self, timeout: float = 180.0) -> None:
        self.container.start()
        self.port = int(self.container.get_exposed_port(3306))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.5)
        raise RuntimeError(f"MySQL container did not accept connections within {timeout}s")

    def connect(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "root",
            "password": "",
            "autocommit": True,
            "charset": "utf8mb4",
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    def execute(self, *statements: str) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            rows: list[tuple[Any, ...]] = []
            with conn.cursor() as cur:
                for stmt in statements:
                    cur.execute(stmt)
                    rows = list(cur.fetchall())
            return rows
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        del sig
        self.container.stop()

    def kill(self) -> None:
        self.container.get_wrapped_container().kill()
