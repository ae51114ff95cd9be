"""Password references: systemd credentials, files, AWS Secrets Manager (a real API on loopback: moto in server
mode), re-fetched when MariaDB answers "access denied" after a rotation; secrets never show in reprs or logs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from austasync import config as configmod
from austasync import log as logmod
from austasync.cli import exit_code
from austasync.db import connect, query
from austasync.errors import ConfigError, UnavailableError
from servers import MariaDB, free_port

REGION = "eu-central-1"


@pytest.fixture(scope="module")
def aws_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws(aws_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS environment pointed at the loopback API; no request can reach a real AWS host."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": aws_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


def sm(endpoint: str) -> Any:
    return boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def secret_name() -> str:
    return f"austasync/test/{uuid.uuid4()}"


def config_text(source_password: str, port: int = 3306, extra: str = "") -> str:
    return (
        f'[source]\nport = {port}\nuser = "rot"\npassword = "{source_password}"\n'
        '[target]\nuser = "t"\npassword = "target-literal-pw"\n'
        '[redis]\nurl = "redis://127.0.0.1:1/0"\n'
        f'[replication]\ndatabases = ["d"]\n{extra}'
    )


def load(tmp_path: Path, text: str, env: dict[str, str]) -> configmod.Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return configmod.load(path, env=env)


# --- AWS Secrets Manager ----------------------------------------------------------------------------------------


def test_plain_and_json_secrets_are_read_from_secrets_manager(tmp_path: Path, aws: dict[str, str]) -> None:
    client = sm(aws["AWS_ENDPOINT_URL_SECRETS_MANAGER"])
    plain, structured = secret_name(), secret_name()
    client.create_secret(Name=plain, SecretString="plain-pw-41")
    client.create_secret(Name=structured, SecretString=json.dumps({"username": "rot", "password": "json-pw-42"}))
    cfg = load(tmp_path, config_text(f"aws-sm:{plain}"), aws)
    assert cfg.source.password.reveal() == "plain-pw-41"
    cfg = load(tmp_path, config_text(f"aws-sm:{structured}#password"), aws)
    assert cfg.source.password.reveal() == "json-pw-42"
    assert cfg.source.password.source == f"AWS Secrets Manager secret {structured} (key password)"


def test_the_control_token_is_read_from_secrets_manager_like_a_password(tmp_path: Path, aws: dict[str, str]) -> None:
    client = sm(aws["AWS_ENDPOINT_URL_SECRETS_MANAGER"])
    name = secret_name()
    client.create_secret(Name=name, SecretString=json.dumps({"token": "control-token-from-aws-43"}))
    cfg = load(tmp_path, config_text("pw", extra=f'[http]\ncontrol_token = "aws-sm:{name}#token"\n'), aws)
    assert cfg.http.control_token.reveal() == "control-token-from-aws-43"
    assert cfg.http.control_token.source == f"AWS Secrets Manager secret {name} (key token)"
    assert "control-token-from-aws-43" not in repr(cfg)


def test_an_arn_carries_its_own_region_and_the_env_override_takes_references(
    tmp_path: Path, aws: dict[str, str]
) -> None:
    client = sm(aws["AWS_ENDPOINT_URL_SECRETS_MANAGER"])
    arn = client.create_secret(Name=secret_name(), SecretString="arn-pw")["ARN"]
    env = {k: v for k, v in aws.items() if "REGION" not in k}
    env["AUSTASYNC_SOURCE_PASSWORD"] = f"aws-sm:{arn}"
    cfg = load(tmp_path, config_text("overridden"), env)
    assert cfg.source.password.reveal() == "arn-pw"


def test_secrets_manager_errors_name_the_key_and_never_quote_the_secret(tmp_path: Path, aws: dict[str, str]) -> None:
    client = sm(aws["AWS_ENDPOINT_URL_SECRETS_MANAGER"])
    structured = secret_name()
    client.create_secret(Name=structured, SecretString=json.dumps({"password": "do-not-print-me", "u": "x"}))
    missing = load(tmp_path, config_text(f"aws-sm:{secret_name()}"), aws)
    with pytest.raises(ConfigError, match=r"source\.password: AWS secret .* does not exist"):
        missing.source.password.reveal()
    for reference, message in [
        (f"aws-sm:{structured}", "is a JSON object with a password field; write aws-sm:.*#password"),
        (f"aws-sm:{structured}#pass", r"has no text field 'pass' \(fields: password, u\)"),
    ]:
        cfg = load(tmp_path, config_text(reference), aws)
        with pytest.raises(ConfigError, match=message) as caught:
            cfg.source.password.reveal()
        assert "do-not-print-me" not in str(caught.value)
        assert exit_code(caught.value) == 2
    with pytest.raises(ConfigError, match="aws-sm:<secret id or ARN>"):
        load(tmp_path, config_text("aws-sm:x#"), aws)


def test_an_unreachable_endpoint_is_unavailable_not_a_config_error(tmp_path: Path, aws: dict[str, str]) -> None:
    env = {**aws, "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{free_port()}"}
    cfg = load(tmp_path, config_text(f"aws-sm:{secret_name()}"), env)  # loading does not ask AWS
    with pytest.raises(UnavailableError, match="unreachable") as caught:
        cfg.source.password.reveal()
    assert exit_code(caught.value) == 3


@pytest.fixture
def rotating_user(source: MariaDB) -> Iterator[tuple[MariaDB, str]]:
    user = f"rot{uuid.uuid4().hex[:8]}"
    source.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'first-pw'")
    yield source, user
    source.execute(f"DROP USER '{user}'@'%'")


def test_a_rotated_password_is_fetched_again_on_access_denied(
    tmp_path: Path, aws: dict[str, str], rotating_user: tuple[MariaDB, str]
) -> None:
    server, user = rotating_user
    client = sm(aws["AWS_ENDPOINT_URL_SECRETS_MANAGER"])
    name = secret_name()
    client.create_secret(Name=name, SecretString=json.dumps({"username": user, "password": "first-pw"}))
    cfg = load(tmp_path, config_text(f"aws-sm:{name}#password", server.port).replace('"rot"', f'"{user}"'), aws)
    connect(cfg.source, "source").close()

    # the rotation's setSecret step: the server has the new password, AWSCURRENT still the old one
    server.execute(f"ALTER USER '{user}'@'%' IDENTIFIED BY 'second-pw'")
    client.put_secret_value(
        SecretId=name, SecretString=json.dumps({"password": "second-pw"}), VersionStages=["AWSPENDING"]
    )
    conn = connect(cfg.source, "source")
    assert query(conn, "SELECT CURRENT_USER()")[0][0].startswith(user)
    conn.close()
    assert cfg.source.password.reveal() == "second-pw"

    # finishSecret, then the next rotation completes entirely in AWS before we reconnect
    client.put_secret_value(SecretId=name, SecretString=json.dumps({"password": "third-pw"}))
    server.execute(f"ALTER USER '{user}'@'%' IDENTIFIED BY 'third-pw'")
    connect(cfg.source, "source").close()
    assert cfg.source.password.reveal() == "third-pw"

    # the server changed but nobody told AWS: one refresh, then a clear error (no retry loop)
    server.execute(f"ALTER USER '{user}'@'%' IDENTIFIED BY 'unknown-pw'")
    with pytest.raises(UnavailableError, match="Access denied") as caught:
        connect(cfg.source, "source")
    assert "third-pw" not in str(caught.value)


# --- systemd credentials, files, literals -----------------------------------------------------------------------


def test_systemd_credential_is_read_from_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "source.password").write_text("cred-pw\n")
    cfg = load(tmp_path, config_text("credential:source.password"), {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.source.password.reveal() == "cred-pw"
    assert not cfg.source.password.refresh()  # unchanged: a retry would not help
    (creds / "source.password").write_text("cred-pw-2")
    assert cfg.source.password.refresh()
    assert cfg.source.password.reveal() == "cred-pw-2"


@pytest.mark.parametrize(
    ("reference", "env", "message"),
    [
        ("credential:source.password", {}, r"CREDENTIALS_DIRECTORY is not set; .*LoadCredential=source\.password"),
        ("credential:missing", {"CREDENTIALS_DIRECTORY": "."}, "cannot read credential 'missing'"),
        ("credential:../etc/shadow", {"CREDENTIALS_DIRECTORY": "."}, "not a systemd credential name"),
    ],
)
def test_credential_errors_are_configuration_errors_at_load(
    tmp_path: Path, reference: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, config_text(reference), env)


def test_password_file_is_re_read_on_refresh_and_literal_prefix_escapes(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("file-pw\n")
    cfg = load(tmp_path, config_text("x").replace('password = "x"', 'password_file = "pw"'), {})
    (tmp_path / "pw").write_text("file-pw-rotated\n")
    assert cfg.source.password.reveal() == "file-pw"
    assert cfg.source.password.refresh()
    assert cfg.source.password.reveal() == "file-pw-rotated"
    cfg = load(tmp_path, config_text("literal:credential:not-a-reference"), {})
    assert cfg.source.password.reveal() == "credential:not-a-reference"
    assert not cfg.source.password.refresh()


# --- never shown ------------------------------------------------------------------------------------------------


def test_no_secret_of_any_kind_appears_in_repr_str_describe_logs_or_check_config(
    tmp_path: Path, aws: dict[str, str]
) -> None:
    client = sm(aws["AWS_ENDPOINT_URL_SECRETS_MANAGER"])
    name = secret_name()
    client.create_secret(Name=name, SecretString=json.dumps({"password": "aws-secret-value-1"}))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "target.pw").write_text("credential-secret-value-2")
    env = {**aws, "CREDENTIALS_DIRECTORY": str(creds)}
    text = config_text(f"aws-sm:{name}#password").replace("target-literal-pw", "credential:target.pw")
    text = text.replace("redis://127.0.0.1:1/0", "redis://:redis-secret-value-3@127.0.0.1:1/0")
    cfg = load(tmp_path, text, env)
    values = ["aws-secret-value-1", "credential-secret-value-2", "redis-secret-value-3"]
    assert cfg.source.password.reveal() == values[0]  # fetched, so it sits in memory now
    assert cfg.target.password.reveal() == values[1]

    stream = io.StringIO()
    logmod.configure(configmod.LogConfig(format="json"), stream=stream)
    log = logmod.get("test")
    log.info("config", config=cfg, source=cfg.source, pw=cfg.source.password)
    log.info("plain", password=values[0], url=cfg.redis.url.reveal())
    try:
        raise RuntimeError(f"wrapped {cfg.target}")
    except RuntimeError:
        log.exception("failure")
    shown = [repr(cfg), str(cfg), repr(cfg.source.password), json.dumps(configmod.describe(cfg)), stream.getvalue()]
    path = tmp_path / "c.toml"
    path.write_text(text)
    cli = subprocess.run(
        [sys.executable, "-m", "austasync", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    shown.append(cli.stdout + cli.stderr)
    for output in shown:
        for value in values:
            assert value not in output
    assert "**********" in stream.getvalue()
