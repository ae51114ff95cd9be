"""TLS to the databases: `[source]`/`[target]` `tls` and `tls_ca`, against servers that require encrypted
connections, with certificates made for the test by the openssl command."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from austasync import config as configmod
from austasync.db import connect, query
from austasync.errors import UnavailableError
from certs import make_certificates
from conftest import Env, dump
from servers import MariaDB, Redis

EXIT_UNAVAILABLE = 3


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _tls_server(base: Path, server_id: int, certs: Path) -> MariaDB:
    server = MariaDB(
        base,
        server_id,
        extra=(
            f"--ssl-ca={certs / 'ca.pem'}",
            f"--ssl-cert={certs / 'server.pem'}",
            f"--ssl-key={certs / 'server.key'}",
            "--require-secure-transport=ON",  # an unencrypted connection is refused
        ),
    )
    server.start()
    server.execute(
        "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-secret-pw'",
        "GRANT SELECT, SHOW VIEW, REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR, PROCESS ON *.* TO 'repl'@'%'",
        "CREATE USER 'austasync'@'%' IDENTIFIED BY 'target-secret-pw'",
        "GRANT ALL PRIVILEGES ON *.* TO 'austasync'@'%'",
    )
    return server


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory, certificates: Path) -> Iterator[tuple[MariaDB, MariaDB]]:
    source = _tls_server(tmp_path_factory.mktemp("tls_source"), 501, certificates)
    target = _tls_server(tmp_path_factory.mktemp("tls_target"), 502, certificates)
    yield source, target
    target.stop()
    source.stop()


def _db_config(server: MariaDB, **tls: str) -> configmod.DatabaseConfig:
    return configmod.from_mapping(
        {
            "source": {"port": server.port, "user": "repl", "password": "repl-secret-pw", **tls},
            "replication": {"databases": ["x"]},
        }
    ).source


def test_verify_identity_encrypts_and_checks_the_servers_certificate(
    tls_servers: tuple[MariaDB, MariaDB], certificates: Path
) -> None:
    source, _ = tls_servers
    conn = connect(_db_config(source, tls="verify_identity", tls_ca=str(certificates / "ca.pem")), "source")
    try:
        cipher = query(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")[0][1]
        assert cipher, "the session is not encrypted"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("tls", "ca", "says"),
    [
        ("verify_ca", "other-ca.pem", "certificate verify failed"),  # signed by another CA
        ("disabled", None, "requires encrypted connections"),  # MariaDB says "access denied"; the hint says why
    ],
)
def test_a_connection_that_fails_its_tls_setting_is_refused_with_the_reason(
    tls_servers: tuple[MariaDB, MariaDB], certificates: Path, tls: str, ca: str | None, says: str
) -> None:
    source, _ = tls_servers
    settings = {"tls": tls, **({"tls_ca": str(certificates / ca)} if ca else {})}
    with pytest.raises(UnavailableError) as refused:
        connect(_db_config(source, **settings), "source")
    assert says in str(refused.value) and "repl-secret-pw" not in str(refused.value)


def test_required_refuses_a_server_without_tls(source: MariaDB) -> None:
    with pytest.raises(UnavailableError) as refused:
        connect(_db_config(source, tls="required"), "source")
    assert "SSL" in str(refused.value) or "TLS" in str(refused.value), refused.value


def test_tls_settings_are_checked_when_the_configuration_loads(tmp_path: Path) -> None:
    with pytest.raises(configmod.ConfigError, match="must be one of preferred, required"):
        configmod.from_mapping({"source": {"tls": "yes"}, "replication": {"databases": ["x"]}})
    with pytest.raises(configmod.ConfigError, match="is not a readable file"):
        configmod.from_mapping({"target": {"tls_ca": str(tmp_path / "nope.pem")}, "replication": {"databases": ["x"]}})


def test_the_daemon_copies_and_streams_between_servers_that_accept_only_tls(
    tls_servers: tuple[MariaDB, MariaDB], certificates: Path, redis_server: Redis, tmp_path: Path
) -> None:
    """Every connection the daemon opens (copy, binlog reader, target writers, target binlog watcher) must be
    encrypted: these servers refuse any other."""
    source, target = tls_servers
    env = Env(source, target, redis_server, tmp_path, f"tls_{int(time.time() * 1000) % 10**9}")
    ca = str(certificates / "ca.pem")
    env.extra = {"source": {"tls": "verify_identity", "tls_ca": ca}, "target": {"tls": "verify_identity", "tls_ca": ca}}
    env.source.execute(
        f"CREATE DATABASE {env.db}",
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)",
        f"INSERT INTO {env.db}.t SELECT seq, CONCAT('v', seq) FROM {env.db}.seq_1_to_500",
    )
    proc = env.start_daemon()
    try:
        env.wait_caught_up(proc=proc)
        env.source.execute(f"UPDATE {env.db}.t SET v = 'streamed' WHERE id <= 20")
        env.wait_caught_up(proc=proc)
        assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
        assert "error" not in env.daemon_log().lower(), env.daemon_log()[-2000:]
    finally:
        env.stop_all()
