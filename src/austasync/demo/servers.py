"""Real throwaway servers: ``mariadbd`` and ``redis-server`` in temp dirs on free ports.

Shared by the test suite (``tests/servers.py`` re-exports this), the benchmarks and the demo. Nothing here is
mocked: each server is a real process that can be stopped, killed and restarted. A server that cannot start
raises, so an integration test without its servers fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

from austasync.db import Connection

SOURCE_BINLOG_OPTIONS = (
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _which(name: str) -> str:
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError(f"{name} not found: install the Debian package (see .ci/run)")


@dataclass
class MariaDB:
    """One ``mariadbd`` with its own datadir, binlog on, root without password on 127.0.0.1."""

    base: Path
    server_id: int
    extra: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def tmpdir(self) -> Path:
        """The server's own temporary directory: in a shared /tmp, another process's clean-up deleted a running
        server's temporary tables (``Error on delete of '/tmp/#sql-temptable-...'``)."""
        return self.base / "tmp"

    def install(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        (self.base / "binlog").mkdir(exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        result = subprocess.run(
            [
                _which("mariadb-install-db"),
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            check=False,
            capture_output=True,
            env={**os.environ, "TMPDIR": str(self.tmpdir)},
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
            raise RuntimeError(f"mariadb-install-db failed with {result.returncode} in {self.datadir}:\n{output}")

    def start(self, timeout: float = 60.0) -> None:
        if not self.datadir.exists():
            self.install()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        args = [
            _which("mariadbd"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.base / 'mysqld.sock'}",
            f"--pid-file={self.base / 'mysqld.pid'}",
            f"--log-error={self.base / 'error.log'}",
            f"--server-id={self.server_id}",
            f"--log-bin={self.base / 'binlog' / 'binlog'}",
            "--user=root",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=256M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=500",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            *SOURCE_BINLOG_OPTIONS,
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.base / "error.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}:\n{log}")
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        raise RuntimeError(f"mariadbd on port {self.port} did not accept connections within {timeout}s")

    def connect(self, **kwargs: Any) -> Connection:
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "root",
            "password": "",
            "autocommit": True,
            "charset": "utf8mb4",
        }
        params.update(kwargs)
        conn: Connection = pymysql.connect(**params)
        return conn

    def execute(self, *statements: str) -> list[tuple[object, ...]]:
        """Run statements in one autocommit session; return the last one's rows."""
        conn = self.connect()
        try:
            rows: list[tuple[object, ...]] = []
            with conn.cursor() as cur:
                for stmt in statements:
                    cur.execute(stmt)
                    rows = list(cur.fetchall())
            return rows
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Redis:
    """One ``redis-server`` without persistence, so a restart comes back empty.

    ``extra`` adds server arguments (``--requirepass``, ``--user``, ``--tls-cert-file``...). With ``tls`` the port
    speaks TLS only (``--tls-port``, ``--port 0``); the certificate arguments go in ``extra``.
    """

    base: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        ports = ("--port", "0", "--tls-port", str(self.port)) if self.tls else ("--port", str(self.port))
        self.proc = subprocess.Popen(
            [
                _which("redis-server"),
                *ports,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base),
                "--logfile",
                str(self.base / "redis.log"),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self._log_tail()}")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s: {self._log_tail()}")

    def _answers(self) -> bool:
        """PONG, or NOAUTH from a server that wants a password: either way it serves."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                sock: socket.socket = raw
                if self.tls:
                    # only a liveness probe: the code under test does the verifying
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    sock = context.wrap_socket(raw)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _log_tail(self) -> str:
        log = self.base / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
