"""Preflight on real servers: a correct set-up passes, and each misconfiguration is caught with its fix.

Misconfigured servers are dedicated ``mariadbd`` processes started with the offending flag, so the shared
session servers keep their settings whatever happens here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from austasync import config as configmod
from austasync.preflight import Report, check_control, refusals, run_preflight
from conftest import Env
from servers import MariaDB, free_port

SCHEMA = (
    "CREATE TABLE users (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, email VARCHAR(190) NOT NULL UNIQUE)",
    "CREATE TABLE documents (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, user_id BIGINT UNSIGNED NOT NULL,"
    " ocr_text TEXT, CONSTRAINT documents_user_id_foreign FOREIGN KEY (user_id) REFERENCES users (id)"
    " ON DELETE CASCADE)",
    "INSERT INTO users (email) VALUES ('a@example.org'), ('b@example.org')",
    "INSERT INTO documents (user_id, ocr_text) VALUES (1, 'Versichertenkarte'), (2, 'Arztbrief')",
)


def load_schema(server: MariaDB, db: str) -> None:
    server.execute(f"CREATE DATABASE IF NOT EXISTS {db}", f"USE {db}", *SCHEMA)


def preflight(env: Env, **kwargs: Any) -> Report:
    return run_preflight(configmod.load(env.config_path, env={}), **kwargs)


def statuses(report: Report) -> dict[str, str]:
    return {c.id: c.status for c in report.checks}


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "austasync", "preflight", "--config", str(env.config_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[list[MariaDB]]:
    started: list[MariaDB] = []
    yield started
    for server in started:
        server.stop()


def start(dedicated: list[MariaDB], base: Path, server_id: int, *extra: str) -> MariaDB:
    server = MariaDB(base, server_id, extra=extra)
    dedicated.append(server)
    server.start()
    return server


def as_root(server: MariaDB) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "user": "root", "password": ""}


# --- the good case ----------------------------------------------------------------------------------------------


def test_a_correct_set_up_passes_and_shows_no_secret(env: Env) -> None:
    load_schema(env.source, env.db)
    result = cli(env, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] and doc["exit_code"] == 0
    by_id = {c["id"]: c for c in doc["checks"]}
    for check_id in [
        "source.connect",
        "source.settings",
        "source.compression",
        "source.partial_json",
        "source.retention",
        "source.grants",
        "source.tables",
        "source.foreign_keys",
        "target.connect",
        "target.compression",
        "target.binlog",
        "target.grants",
        "target.tables",
        "target.triggers",
        "redis.connect",
        "clock.skew",
        "http.control",
    ]:
        assert by_id[check_id]["status"] == "pass", by_id[check_id]
    # the session source user lacks REPLICATION MASTER ADMIN, so its replicas cannot be listed
    assert by_id["source.server_id"]["status"] == "warn"
    assert "REPLICATION MASTER ADMIN" in by_id["source.server_id"]["fix"]
    assert by_id["source.cascades"]["status"] == "info"
    # views, routines, events and triggers: none here, and the replication user cannot see events (no EVENT)
    assert by_id["source.objects"]["status"] == "info"
    assert by_id["source.objects"]["title"].startswith("0 views, 0 procedures, 0 functions, 0 events, 0 triggers")
    assert by_id["source.cascades"]["detail"] == [
        f"{env.db}.documents(user_id) -> {env.db}.users(id) ON DELETE CASCADE"
    ]
    text = cli(env)
    assert text.returncode == 0
    # the read-only source user cannot see triggers: fine for streaming, and cutover says what it needs
    assert by_id["source.triggers"]["status"] == "info"
    assert "GRANT TRIGGER" in by_id["source.triggers"]["fix"]
    # loopback connections without TLS are info, not a warning
    assert by_id["source.tls"]["status"] == by_id["target.tls"]["status"] == "info"
    assert re.search(r"^preflight: 0 fail, 1 warn, \d+ pass, 5 info; ready to run$", text.stdout, re.MULTILINE)
    for output in (result.stdout, text.stdout, text.stderr):
        assert "repl-secret-pw" not in output
        assert "target-secret-pw" not in output
        assert not re.search(r"\*[0-9A-F]{40}", output)  # a password hash from SHOW GRANTS


# --- each misconfiguration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "flags", "check_id", "expected"),
    [
        ("source", ("--binlog-format=MIXED",), "source.settings", "binlog_format is MIXED; set binlog_format=ROW"),
        ("source", ("--binlog-row-image=MINIMAL",), "source.settings", "binlog_row_image is MINIMAL"),
        ("source", ("--binlog-row-metadata=MINIMAL",), "source.settings", "binlog_row_metadata is MINIMAL"),
        ("source", ("--log-bin-compress=ON",), "source.compression", "log_bin_compress=ON"),
        ("target", ("--skip-log-bin",), "target.binlog", "the target's binlog is off"),
        ("target", ("--log-bin-compress=ON",), "target.compression", "drift would go unnoticed"),
    ],
)
def test_each_server_misconfiguration_fails(
    env: Env, dedicated: list[MariaDB], tmp_path: Path, role: str, flags: tuple[str, ...], check_id: str, expected: str
) -> None:
    server = start(dedicated, tmp_path / "bad", 7000, *flags)
    load_schema(server if role == "source" else env.source, env.db)
    env.extra[role] = as_root(server)
    report = preflight(env)
    check = report.by_id(check_id)
    assert check.status == "fail", check
    assert expected in " ".join((check.title, *check.detail, check.fix))
    assert check.fix
    assert report.exit_code == 1
    result = cli(env)
    assert result.returncode == 1
    assert f"FAIL  {check_id}" in result.stdout


def test_binlog_retention_against_the_estimated_copy_time(env: Env, dedicated: list[MariaDB], tmp_path: Path) -> None:
    server = start(dedicated, tmp_path / "short", 7001, "--binlog-expire-logs-seconds=3600")
    load_schema(server, env.db)
    server.execute(
        f"USE {env.db}", "INSERT INTO users (email) SELECT CONCAT(seq, '@x') FROM seq_1_to_3000", "ANALYZE TABLE users"
    )
    env.extra["source"] = as_root(server)
    check = preflight(env).by_id("source.retention")
    assert check.status == "warn", check  # the copy fits, a long outage does not
    assert "60 min" in check.title
    env.extra["copy"] = {"max_rows_per_second": 1}  # ~3000 s of copy against 3600 s of binlogs
    check = preflight(env).by_id("source.retention")
    assert check.status == "fail", check
    assert "binlog_expire_logs_seconds" in check.fix


def test_server_id_must_differ_from_the_source_and_its_replicas(
    env: Env, dedicated: list[MariaDB], tmp_path: Path
) -> None:
    source = start(dedicated, tmp_path / "src", 7100)
    replica = start(dedicated, tmp_path / "replica", 7777, "--report-host=127.0.0.1", "--report-port=3399")
    load_schema(source, env.db)
    replica.execute(
        f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={source.port}, MASTER_USER='root',"
        " MASTER_PASSWORD='', MASTER_USE_GTID=no",
        "START SLAVE",
    )
    deadline = time.monotonic() + 30
    while not source.execute("SHOW SLAVE HOSTS") and time.monotonic() < deadline:
        time.sleep(0.2)
    env.extra["source"] = as_root(source)
    env.extra["replication"] = {"server_id": 7777}
    check = preflight(env).by_id("source.server_id")
    assert check.status == "fail"
    assert "already used by a replica of the source (127.0.0.1:3399)" in check.title
    env.extra["replication"] = {"server_id": 7100}
    check = preflight(env).by_id("source.server_id")
    assert check.status == "fail"
    assert "the source's own server_id" in check.title
    env.extra["replication"] = {"server_id": 7778}
    check = preflight(env).by_id("source.server_id")
    assert check.status == "pass"
    assert "7777" in check.title


def test_missing_grants_are_listed_exactly(env: Env) -> None:
    load_schema(env.source, env.db)
    suffix = uuid.uuid4().hex[:8]
    src_user, dst_user = f"pfs{suffix}", f"pft{suffix}"
    env.source.execute(
        f"CREATE USER '{src_user}'@'%' IDENTIFIED BY 'limited-src-pw'",
        f"GRANT SELECT ON {env.db}.* TO '{src_user}'@'%'",
    )
    env.target.execute(
        f"CREATE USER '{dst_user}'@'%' IDENTIFIED BY 'limited-dst-pw'",
        f"GRANT ALL PRIVILEGES ON {env.db}.* TO '{dst_user}'@'%'",
    )
    try:
        env.extra["source"] = {"user": src_user, "password": "limited-src-pw"}
        env.extra["target"] = {"user": dst_user, "password": "limited-dst-pw"}
        report = preflight(env)
        source = report.by_id("source.grants")
        assert source.status == "fail"
        assert source.detail == (
            "missing: REPLICATION SLAVE ON *.*",
            "missing: BINLOG MONITOR ON *.*",
            "missing: SLAVE MONITOR ON *.*",
            f"missing: SHOW VIEW ON `{env.db}`.*",  # views are read to be created on the target
            "missing: PROCESS ON *.*",  # the throttle reads the history list length (INNODB_METRICS)
        )
        assert source.fix == (
            f"GRANT REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR, PROCESS ON *.* TO '{src_user}'@'%';"
            f" GRANT SHOW VIEW ON `{env.db}`.* TO '{src_user}'@'%';"
        )
        target = report.by_id("target.grants")
        assert target.status == "fail"
        assert target.detail == (
            "missing: ALL PRIVILEGES ON `_austasync`.*",
            "missing: REPLICATION SLAVE ON *.*",  # the target's own binlog shows foreign writes
            "missing: BINLOG MONITOR ON *.*",
            "missing: CONNECTION ADMIN ON *.*",
        )
        assert report.exit_code == 1
        # the limited user's database-level SELECT is enough for the tables themselves
        assert report.by_id("source.tables").status == "pass"
        rendered = json.dumps(report.to_dict())
        assert "limited-src-pw" not in rendered
        assert not re.search(r"\*[0-9A-F]{40}", rendered)
    finally:
        env.source.execute(f"DROP USER '{src_user}'@'%'")
        env.target.execute(f"DROP USER '{dst_user}'@'%'")


def test_unreplicable_tables_and_an_excluded_cascading_parent_fail(env: Env) -> None:
    load_schema(env.source, env.db)
    env.source.execute(
        f"USE {env.db}",
        "CREATE TABLE legacy_log (id INT PRIMARY KEY) ENGINE=MyISAM",
        "CREATE TABLE no_key (a INT, b INT)",
    )
    report = preflight(env)
    check = report.by_id("source.tables")
    assert check.status == "fail"
    assert f"{env.db}.legacy_log: engine MyISAM is not InnoDB" in check.detail
    assert f"{env.db}.no_key: no primary key and no NOT NULL unique key" in check.detail
    env.extra["replication"] = {"exclude_tables": [f"{env.db}.legacy_log", f"{env.db}.no_key", f"{env.db}.users"]}
    check = preflight(env).by_id("source.foreign_keys")
    assert check.status == "fail"
    assert "documents (constraint documents_user_id_foreign) cascades from" in check.detail[0]


def test_target_shape_rows_and_triggers(env: Env) -> None:
    load_schema(env.source, env.db)
    env.target.execute(
        f"CREATE DATABASE {env.db}",
        f"USE {env.db}",
        "CREATE TABLE users (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, email VARCHAR(100) NOT NULL UNIQUE)",
    )
    try:
        check = preflight(env).by_id("target.tables")
        assert check.status == "fail"
        assert check.detail == (f"{env.db}.users: column email is varchar(100) NO, source has varchar(190) NO",)
        env.target.execute(
            f"USE {env.db}",
            "ALTER TABLE users MODIFY email VARCHAR(190) NOT NULL",
            "INSERT INTO users (email) VALUES ('stale@example.org')",
            "CREATE TRIGGER users_audit AFTER INSERT ON users FOR EACH ROW SET @x = 1",
        )
        report = preflight(env)
        check = report.by_id("target.tables")
        assert check.status == "warn"
        assert check.detail == (f"{env.db}.users",)
        check = report.by_id("target.triggers")
        assert check.status == "fail"
        assert check.detail == (f"users_audit on {env.db}.users",)
    finally:
        env.target.execute(f"DROP DATABASE {env.db}")


# --- reachability, clocks, usage --------------------------------------------------------------------------------


def test_unreachable_servers_exit_3_and_the_rest_is_still_checked(env: Env) -> None:
    load_schema(env.source, env.db)
    env.extra["redis"] = {"url": f"redis://127.0.0.1:{free_port()}/0"}
    env.extra["target"] = {"port": free_port()}
    result = cli(env, "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    by_id = {c["id"]: c for c in doc["checks"]}
    assert doc["unreachable"] == ["target", "redis"]
    assert by_id["target.connect"]["status"] == "fail"
    assert by_id["redis.connect"]["status"] == "fail"
    assert by_id["source.settings"]["status"] == "pass"  # the source was still checked
    assert "target.grants" not in by_id


def test_clock_skew_between_hosts(env: Env) -> None:
    load_schema(env.source, env.db)
    check = preflight(env, clock=lambda: time.time() + 3).by_id("clock.skew")
    assert check.status == "warn"
    assert "between source and this host" in check.title or "and this host" in check.title
    check = preflight(env, clock=lambda: time.time() - 120).by_id("clock.skew")
    assert check.status == "fail"
    assert "NTP" in check.fix


def test_usage_errors_exit_2(env: Env, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[source]\nport = 'x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "austasync", "preflight", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "replication.databases must list" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "austasync", "preflight"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2


def test_refusals_lists_what_run_must_refuse_beyond_its_own_checks(
    env: Env, dedicated: list[MariaDB], tmp_path: Path
) -> None:
    source = start(dedicated, tmp_path / "src", 7200, "--log-bin-compress=ON")
    target = start(dedicated, tmp_path / "dst", 7201, "--skip-log-bin")
    cfg = configmod.from_mapping({"replication": {"databases": [env.db], "server_id": 7200}})
    src, dst = source.connect(), target.connect()
    try:
        lines = refusals(cfg, src, dst)
    finally:
        src.close()
        dst.close()
    assert len(lines) == 3, lines
    assert lines[0].startswith("the source compresses its binlog: log_bin_compress=ON: set log_bin_compress=OFF")
    assert lines[1].startswith("replication.server_id 7200 is the source's own server_id")
    assert lines[2].startswith("the target's binlog is off: enable log_bin")


@pytest.mark.parametrize(
    ("http", "status", "says"),
    [
        ({"listen": "0.0.0.0:9108"}, "fail", "the control plane is open to the network"),
        ({"listen": "127.0.0.1:9108"}, "pass", "answers on loopback only (127.0.0.1:9108)"),
        ({"listen": "0.0.0.0:9108", "control_token": "t" * 32}, "pass", "the control plane needs a token"),
        ({"listen": "0.0.0.0:9108", "control_token": "short"}, "fail", "shorter than 16 characters"),
        ({"listen": "0.0.0.0:9108", "control_token": "with a space inside it"}, "fail", "printable ASCII"),
        ({"listen": "0.0.0.0:9108", "control": "disabled"}, "info", "the control plane is disabled"),
        ({"listen": "0.0.0.0:9108", "control_listen": "127.0.0.1:9109"}, "pass", "loopback only (127.0.0.1:9109)"),
    ],
)
def test_preflight_checks_who_can_reach_the_control_plane(http: dict[str, str], status: str, says: str) -> None:
    base = {"source": {}, "target": {}, "redis": {}, "replication": {"databases": ["d"]}}
    check = check_control(configmod.from_mapping({**base, "http": http}))
    assert (check.id, check.status) == ("http.control", status)
    assert says in " ".join((check.title, *check.detail))
    if status == "fail":
        assert "control_token_file" in check.fix or "openssl rand" in check.fix
    assert "t" * 32 not in repr(check)
