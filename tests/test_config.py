"""Configuration: the documented keys work as written, errors name the key, secrets never show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from austasync import config as configmod
from austasync.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "austasync.example.toml"

MINIMAL = """
[source]
host = "127.0.0.1"
port = 3306
user = "repl"
password = "s3cret-source"
[target]
host = "127.0.0.1"
port = 3307
user = "austasync"
password = "s3cret-target"
[redis]
url = "redis://127.0.0.1:6379/0"
[replication]
server_id = 4321
databases = ["austa_portal"]
[http]
listen = "127.0.0.1:9108"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_the_documented_keys_load_exactly_as_written(tmp_path: Path) -> None:
    cfg = configmod.load(write(tmp_path, MINIMAL), env={})
    assert (cfg.source.host, cfg.source.port, cfg.source.user) == ("127.0.0.1", 3306, "repl")
    assert cfg.source.password.reveal() == "s3cret-source"
    assert cfg.target.port == 3307
    assert cfg.replication.server_id == 4321
    assert cfg.replication.databases == ("austa_portal",)
    assert cfg.http.host_port == ("127.0.0.1", 9108)


def test_the_example_config_is_valid(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x\n")
    text = EXAMPLE.read_text().replace("/etc/austasync/source.password", str(tmp_path / "pw"))
    text = text.replace("/etc/austasync/target.password", str(tmp_path / "pw"))
    cfg = configmod.load(write(tmp_path, text), env={})
    assert cfg.source.password.reveal() == "x"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {"AUSTASYNC_SOURCE_PASSWORD": "from-env", "AUSTASYNC_TARGET_PORT": "4406"}
    cfg = configmod.load(write(tmp_path, MINIMAL), env=env)
    assert cfg.source.password.reveal() == "from-env"
    assert cfg.target.port == 4406


def test_password_file_is_read_and_its_trailing_newline_dropped(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    text = MINIMAL.replace('password = "s3cret-source"', 'password_file = "pw"')
    cfg = configmod.load(write(tmp_path, text), env={})
    assert cfg.source.password.reveal() == "from-file"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("port = 3306", 'port = "abc"'), "source.port must be an integer"),
        (("port = 3307", "port = 70000"), "target.port must be at most 65535"),
        (("server_id = 4321", "server_id = 0"), "replication.server_id must be at least 1"),
        (('databases = ["austa_portal"]', "databases = []"), "replication.databases must list"),
        (('user = "repl"', 'usr = "repl"'), "unknown key source.usr"),
        (('listen = "127.0.0.1:9108"', 'listen = "nowhere"'), "http.listen must be host:port"),
    ],
)
def test_invalid_values_are_errors_that_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        configmod.load(write(tmp_path, MINIMAL.replace(*change)), env={})


def test_on_ddl_accepts_only_the_documented_policies(tmp_path: Path) -> None:
    text = MINIMAL.replace("server_id = 4321", 'server_id = 4321\non_ddl = "maybe"')
    with pytest.raises(ConfigError, match=r"replication\.on_ddl must be one of"):
        configmod.load(write(tmp_path, text), env={})


def test_secrets_never_show_in_repr_or_describe(tmp_path: Path) -> None:
    text = MINIMAL.replace("redis://127.0.0.1", "redis://:redis-pw@127.0.0.1")
    cfg = configmod.load(write(tmp_path, text), env={})
    for shown in (repr(cfg), str(cfg), str(configmod.describe(cfg))):
        assert "s3cret-source" not in shown
        assert "s3cret-target" not in shown
        assert "redis-pw" not in shown


def test_table_selection_applies_include_and_exclude(tmp_path: Path) -> None:
    text = MINIMAL.replace("server_id = 4321", 'server_id = 4321\nexclude_tables = ["austa_portal.telescope_*"]')
    cfg = configmod.load(write(tmp_path, text), env={})
    assert cfg.table_selected("austa_portal", "users")
    assert not cfg.table_selected("austa_portal", "telescope_entries")
    assert not cfg.table_selected("other", "users")


# --- [http]: who may steer the daemon ---------------------------------------------------------------------------

CONTROL_TOKEN = "ctl-0123456789abcdef-token"


def with_http(text: str) -> str:
    return MINIMAL.replace('listen = "127.0.0.1:9108"', text)


def test_the_control_token_takes_every_form_a_password_takes(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(CONTROL_TOKEN + "\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "control.token").write_text(CONTROL_TOKEN)
    forms: list[tuple[str, dict[str, str], str]] = [
        (f'control_token = "{CONTROL_TOKEN}"', {}, "literal"),
        ('control_token_file = "token"', {}, f"file {tmp_path / 'token'}"),
        ('control_token = "credential:control.token"', {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}, "systemd"),
        ("", {"AUSTASYNC_HTTP_CONTROL_TOKEN": CONTROL_TOKEN}, "literal"),
        ("", {"AUSTASYNC_HTTP_CONTROL_TOKEN_FILE": str(tmp_path / "token")}, "file"),
    ]
    for line, env, source in forms:
        cfg = configmod.load(write(tmp_path, with_http(f'listen = "0.0.0.0:9108"\n{line}')), env=env)
        assert cfg.http.control_token.reveal() == CONTROL_TOKEN, line
        assert cfg.http.control_token.source.startswith(source)
        assert cfg.http.control_exposure() is None  # a token: a non-loopback listen may serve /control/*
        for shown in (repr(cfg), str(configmod.describe(cfg)), repr(cfg.http)):
            assert CONTROL_TOKEN not in shown
        # rollback and the reverse stream use the reversed configuration: the same control plane
        assert configmod.reversed_config(cfg).http == cfg.http


@pytest.mark.parametrize(
    ("listen", "exposed"),
    [
        ("127.0.0.1:9108", False),
        ("127.8.9.10:9108", False),
        ("[::1]:9108", False),
        ("localhost:9108", False),
        ("0.0.0.0:9108", True),
        (":9108", True),
        ("[::]:9108", True),
        ("10.0.0.5:9108", True),
        ("austasync.internal:9108", True),  # a name may resolve anywhere: not trusted as loopback
    ],
)
def test_only_a_loopback_listen_may_serve_control_without_a_token(tmp_path: Path, listen: str, exposed: bool) -> None:
    cfg = configmod.load(write(tmp_path, with_http(f'listen = "{listen}"')), env={})
    problem = cfg.http.control_exposure()
    assert (problem is not None) == exposed
    if problem:
        assert "control_token" in problem and 'control = "disabled"' in problem and "control_listen" in problem
    for fix in ('control = "disabled"', 'control_listen = "127.0.0.1:9109"'):
        fixed = configmod.load(write(tmp_path, with_http(f'listen = "{listen}"\n{fix}')), env={})
        assert fixed.http.control_exposure() is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('control_listen = "0.0.0.0:9109"', "http.control_listen must be a loopback host:port"),
        ('control_listen = "10.1.2.3:9109"', "http.control_listen must be a loopback host:port"),
        ('control_listen = "127.0.0.1:9108"', "http.control_listen must differ from http.listen"),
        ('control = "off"', "http.control must be one of 'enabled', 'disabled'"),
        (f'control = "disabled"\ncontrol_token = "{CONTROL_TOKEN}"', 'http.control = "disabled" turns /control/*'),
        (f'control_token = "{CONTROL_TOKEN}"\ncontrol_token_file = "x"', "keep one"),
    ],
)
def test_contradictory_or_unsafe_control_settings_are_errors(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        configmod.load(write(tmp_path, with_http(f'listen = "127.0.0.1:9108"\n{lines}')), env={})


@pytest.mark.parametrize(
    ("value", "says"),
    [("-1", "must not be negative"), ("nan", "finite number of seconds"), ('"inf"', "finite"), ('"soon"', "a number")],
)
def test_the_retry_budget_is_a_finite_number_of_seconds(tmp_path: Path, value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=f"apply.retry_budget_seconds .*{says}"):
        configmod.load(write(tmp_path, MINIMAL + f"[apply]\nretry_budget_seconds = {value}\n"), env={})


def test_the_retry_budget_defaults_to_five_minutes_and_0_turns_retries_off(tmp_path: Path) -> None:
    assert configmod.load(write(tmp_path, MINIMAL), env={}).apply.retry_budget_seconds == 300
    cfg = configmod.load(write(tmp_path, MINIMAL), env={"AUSTASYNC_APPLY_RETRY_BUDGET_SECONDS": "0"})
    assert cfg.apply.retry_budget_seconds == 0
