"""Redis as the ecosystem runs it: ``rediss://`` verified against ``[redis] tls_ca``, an ACL user whose password is
a secret in every form passwords take, against a real ``redis-server`` that speaks only TLS and wants a password
(certificates made for the test by the openssl command)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from austasync import config as configmod
from austasync.errors import ConfigError, UnavailableError
from austasync.mirror import Mirror
from austasync.preflight import Report, check_redis
from certs import make_certificates
from conftest import Env, dump
from servers import MariaDB, Redis, _which, free_port

ACL_PASSWORD = "acl-pw-9c1f4e"
DEFAULT_PASSWORD = "default-pw-77ab"
EXIT_UNAVAILABLE = 3


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    return make_certificates(tmp_path_factory.mktemp("redis_tls"))


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, certificates: Path) -> Iterator[Redis]:
    """TLS only (no plain port), the default user behind requirepass, and an ACL user limited to the t: keys."""
    server = Redis(
        tmp_path_factory.mktemp("redis_tls_server"),
        tls=True,
        extra=(
            "--tls-cert-file", str(certificates / "server.pem"),
            "--tls-key-file", str(certificates / "server.key"),
            "--tls-ca-cert-file", str(certificates / "ca.pem"),
            "--tls-auth-clients", "no",  # no client certificates: the ACL password authenticates
            "--requirepass", DEFAULT_PASSWORD,
            "--user", "austasync", "on", f">{ACL_PASSWORD}", "~t:*", "+@all",
        ),
    )  # fmt: skip
    server.start()
    yield server
    server.stop()


def _redis_section(server: Redis, certificates: Path, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "url": server.url,
        "key_prefix": "t",
        "tls_ca": str(certificates / "ca.pem"),
        "username": "austasync",
        "password": ACL_PASSWORD,
    }
    section.update(overrides)
    return {k: v for k, v in section.items() if v is not None}


def _config(section: dict[str, Any], env: dict[str, str] | None = None) -> configmod.Config:
    return configmod.from_mapping({"redis": section, "replication": {"databases": ["x"]}}, env)


def _redis_cli(server: Redis, certificates: Path, *command: str) -> str:
    """The server's own client, not austasync's code: TLS verified against the CA, as the ACL user."""
    result = subprocess.run(
        [_which("redis-cli"), "-h", "127.0.0.1", "-p", str(server.port), "--tls", "--cacert",
         str(certificates / "ca.pem"), "--user", "austasync", "--pass", ACL_PASSWORD, "--no-auth-warning", *command],
        capture_output=True, text=True, check=True, timeout=10,
    )  # fmt: skip
    return result.stdout.strip()


def test_the_daemon_publishes_its_status_over_tls_as_the_acl_user(
    source: MariaDB, target: MariaDB, tls_redis: Redis, certificates: Path, tmp_path: Path
) -> None:
    """The password from a file; the status read back by redis-cli over verified TLS; no password in the log."""
    env = Env(source, target, tls_redis, tmp_path, f"rtls_{int(time.time() * 1000) % 10**9}")
    (tmp_path / "redis.pw").write_text(ACL_PASSWORD + "\n")
    env.extra = {"redis": _redis_section(tls_redis, certificates, password=None, password_file="redis.pw")}
    env.source.execute(
        f"CREATE DATABASE {env.db}",
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)",
        f"INSERT INTO {env.db}.t SELECT seq, CONCAT('v', seq) FROM {env.db}.seq_1_to_300",
    )
    proc = env.start_daemon()
    try:
        env.wait_caught_up(proc=proc)
        env.source.execute(f"UPDATE {env.db}.t SET v = 'streamed' WHERE id <= 10")
        env.wait_caught_up(proc=proc)
        assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
        deadline = time.monotonic() + 20
        status: dict[str, Any] = {}
        while time.monotonic() < deadline and status.get("phase") != "streaming":
            raw = _redis_cli(tls_redis, certificates, "GET", f"t:{env.name}:status")
            status = json.loads(raw) if raw else {}
            time.sleep(0.2)
        assert status.get("phase") == "streaming", status
        assert _redis_cli(tls_redis, certificates, "EXISTS", f"t:{env.name}:lease") == "1"
        shown = env.run_cli("status", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["phase"] == "streaming"
        log = env.daemon_log()
        assert ACL_PASSWORD not in log and ACL_PASSWORD not in shown.stdout + shown.stderr
    finally:
        env.stop_all()


def _run_refused(env: Env) -> subprocess.CompletedProcess[str]:
    return env.run_cli("run", timeout=60)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"password": "not-the-password"}, "check [redis] username and password"),
        ({"username": None, "password": None}, "check [redis] username and password"),  # NOAUTH
        ({"tls_ca": "other-ca.pem"}, "set [redis] tls_ca"),
    ],
    ids=["wrong-password", "no-password", "wrong-ca"],
)
def test_a_wrong_password_or_ca_stops_run_naming_the_server_and_the_fix(
    source: MariaDB,
    target: MariaDB,
    tls_redis: Redis,
    certificates: Path,
    tmp_path: Path,
    overrides: dict[str, Any],
    says: str,
) -> None:
    env = Env(source, target, tls_redis, tmp_path, f"rbad_{int(time.time() * 1000) % 10**9}")
    if "tls_ca" in overrides:
        overrides = {"tls_ca": str(certificates / overrides["tls_ca"])}
    env.extra = {"redis": _redis_section(tls_redis, certificates, **overrides)}
    env.source.execute(f"CREATE DATABASE {env.db}")
    result = _run_refused(env)
    assert result.returncode == EXIT_UNAVAILABLE, result.stdout + result.stderr
    assert f"127.0.0.1:{tls_redis.port}" in result.stderr and says in result.stderr, result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
    assert ACL_PASSWORD not in result.stdout + result.stderr


def test_a_plain_url_to_a_tls_only_port_says_to_write_rediss(tls_redis: Redis, certificates: Path) -> None:
    cfg = _config(_redis_section(tls_redis, certificates, url=f"redis://127.0.0.1:{tls_redis.port}/0", tls_ca=None))
    with pytest.raises(UnavailableError) as refused:
        Mirror(cfg.redis, "m").ping()
    assert "rediss://" in str(refused.value) and f"127.0.0.1:{tls_redis.port}" in str(refused.value), refused.value


def test_preflight_reports_the_redis_connection_with_tls_and_user(
    tls_redis: Redis, redis_server: Redis, certificates: Path
) -> None:
    report = Report()
    assert check_redis(report, _config(_redis_section(tls_redis, certificates))) is not None
    line = next(c for c in report.checks if c.id == "redis.connect")
    assert line.status == "pass" and "TLS verified" in line.title and "user austasync" in line.title, line
    plain = Report()
    check_redis(plain, _config({"url": redis_server.url}))
    line = next(c for c in plain.checks if c.id == "redis.connect")
    assert line.status == "pass" and "no TLS" in line.title, line
    bad = Report()
    check_redis(bad, _config(_redis_section(tls_redis, certificates, password="nope-nope")))
    line = next(c for c in bad.checks if c.id == "redis.connect")
    assert line.status == "fail" and f"127.0.0.1:{tls_redis.port}" in line.title, line
    assert report.unreachable == [] and bad.unreachable == ["redis"]
    assert "nope-nope" not in repr(bad) and "username and password" in repr(bad), bad


def test_the_password_as_a_systemd_credential_and_default_user_requirepass(
    tls_redis: Redis, certificates: Path, tmp_path: Path
) -> None:
    (tmp_path / "redis-default").write_text(DEFAULT_PASSWORD)
    cfg = _config(
        _redis_section(tls_redis, certificates, username=None, password="credential:redis-default"),
        {"CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    mirror = Mirror(cfg.redis, "cred")
    mirror.ping()
    mirror.publish({"phase": "x"}, 5)
    assert mirror.status() == {"phase": "x"}


def test_the_password_from_aws_secrets_manager_and_a_rotation_is_fetched_again(
    tls_redis: Redis, certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "eu-central-1",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{port}",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        sm = boto3.client("secretsmanager", region_name="eu-central-1", endpoint_url=env[
            "AWS_ENDPOINT_URL_SECRETS_MANAGER"])  # fmt: skip
        sm.create_secret(Name="redis/acl", SecretString=json.dumps({"password": "old-before-rotation"}))
        cfg = _config(_redis_section(tls_redis, certificates, password="aws-sm:redis/acl#password"), env)
        mirror = Mirror(cfg.redis, "aws")
        with pytest.raises(UnavailableError, match="refused the credentials") as refused:
            mirror.ping()  # fetched at first connect: the old value, refused
        assert "old-before-rotation" not in str(refused.value)
        assert "AWS Secrets Manager secret redis/acl" in str(refused.value)
        sm.put_secret_value(SecretId="redis/acl", SecretString=json.dumps({"password": ACL_PASSWORD}))
        mirror.ping()  # refused again, fetched again: the rotated value
    finally:
        moto.stop()


def test_a_rotated_password_file_is_read_again_when_redis_refuses(
    tls_redis: Redis, certificates: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("stale-password")
    cfg = _config(_redis_section(tls_redis, certificates, password=None, password_file=str(secret)))
    secret.write_text(ACL_PASSWORD)  # rotated after the configuration loaded
    Mirror(cfg.redis, "rot").ping()


def test_the_password_never_shows_in_reprs_describe_or_tracebacks(tls_redis: Redis, certificates: Path) -> None:
    cfg = _config(_redis_section(tls_redis, certificates))
    mirror = Mirror(cfg.redis, "repr")
    mirror.ping()
    pool = mirror.client.connection_pool
    shown = [repr(cfg), str(cfg.redis), repr(mirror.client), repr(pool), repr(pool.connection_kwargs),
             json.dumps(configmod.describe(cfg)), cfg.redis.describe()]  # fmt: skip
    try:
        Mirror(_config(_redis_section(tls_redis, certificates, password=ACL_PASSWORD + "x")).redis, "tb").ping()
    except UnavailableError:
        shown.append(traceback.format_exc())
    for text in shown:
        assert ACL_PASSWORD not in text, text


def test_redis_settings_are_checked_when_the_configuration_loads(certificates: Path) -> None:
    ca = str(certificates / "ca.pem")
    with pytest.raises(ConfigError, match="no TLS"):
        _config({"url": "redis://127.0.0.1:1/0", "tls_ca": ca})
    with pytest.raises(ConfigError, match="keep one") as both:
        _config({"url": "rediss://:url-pw@127.0.0.1:1/0", "password": "pw"})
    assert "url-pw" not in str(both.value)
    with pytest.raises(ConfigError, match="must start with") as scheme:
        _config({"url": "http://u:secret-in-url@127.0.0.1:1/0"})
    assert "secret-in-url" not in str(scheme.value)
    with pytest.raises(ConfigError, match="tls_verify"):
        _config({"url": "rediss://127.0.0.1:1/0", "tls_verify": "none"})
    cfg = _config({"url": "rediss://127.0.0.1:1/0", "tls_ca": ca}, {"AUSTASYNC_REDIS_PASSWORD": "from-env"})
    assert cfg.redis.tls and cfg.redis.password.reveal() == "from-env" and cfg.redis.tls_verify == "verify_identity"


@pytest.mark.parametrize("command", [["ddl"], ["reset", "--yes"]])
def test_a_redis_failure_after_start_up_names_the_server_not_just_the_exception(
    tmp_path: Path, command: list[str]
) -> None:
    """The message names the server and what failed; the CLI's last-resort handler (a Redis error after the first
    ping) now says the same instead of only the exception's class name."""
    port = free_port()  # nothing listens there
    config = tmp_path / "c.toml"
    config.write_text(
        '[source]\nhost = "127.0.0.1"\nport = 1\nuser = "x"\npassword = "source-pw-1"\n'
        '[target]\nhost = "127.0.0.1"\nport = 1\nuser = "x"\npassword = "target-pw-2"\n'
        f'[redis]\nurl = "redis://127.0.0.1:{port}"\n'
        '[replication]\nserver_id = 9999\ndatabases = ["app"]\nname = "m"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "austasync", *command, "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr
    assert f"Redis 127.0.0.1:{port}" in done.stderr and "unreachable" in done.stderr, done.stderr
