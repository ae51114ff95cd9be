"""The systemd unit and the Docker files: checked by the tools that will run them, and against the code.

``systemd-analyze verify`` and ``systemd-analyze security --offline`` read the unit as systemd would;
``systemd-sysusers`` creates the dedicated user in a scratch root. ``docker compose config`` parses the compose
file where the compose plugin exists (no Docker engine is needed for that); everything else here runs always.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from austasync import cli
from austasync import config as configmod

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "austasync.service"
DOCKER = ROOT / "docker"


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows a key to repeat, so no dict."""
    section, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str) -> list[str]:
    return [v for _, k, v in unit_entries(UNIT.read_text()) if k == key]


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package systemd)")
    return path


@pytest.fixture
def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's austasync, which verify requires to exist."""
    binary = Path(sys.executable).parent / "austasync"
    assert binary.exists(), binary
    copy = tmp_path / "austasync.service"
    copy.write_text(UNIT.read_text().replace("/opt/austasync/bin/austasync", str(binary)))
    return copy


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(local_unit: Path) -> None:
    result = subprocess.run(
        [systemd_tool("systemd-analyze"), "verify", str(local_unit)], capture_output=True, text=True, check=False
    )
    # verify exits 0 on unknown keys and unparsable values, printing a warning: both count as failures here
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_verify_would_catch_a_broken_unit(local_unit: Path) -> None:
    broken = local_unit.parent / "broken.service"
    broken.write_text(local_unit.read_text().replace("RestartSec=10", "RestartSec=ten\nProtectSystm=strict"))
    result = subprocess.run(
        [systemd_tool("systemd-analyze"), "verify", str(broken)], capture_output=True, text=True, check=False
    )
    assert "Unknown key" in result.stderr and "Failed to parse" in result.stderr


def test_the_unit_is_hardened_by_systemds_own_measure(local_unit: Path) -> None:
    # --threshold is on systemd's internal 0-100 scale: 20 means an exposure level of at most 2.0 ("OK")
    result = subprocess.run(
        [systemd_tool("systemd-analyze"), "security", "--offline=true", "--threshold=20", str(local_unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert score, result.stdout[-2000:] + result.stderr
    assert result.returncode == 0 and float(score.group(1)) <= 2.0, result.stdout[-3000:]


def test_the_unit_matches_the_daemons_contract() -> None:
    entries = {k: v for _, k, v in unit_entries(UNIT.read_text())}
    assert entries["Type"] == "notify"
    assert entries["Restart"] == "on-failure"
    assert int(entries["StartLimitBurst"]) > 0 and int(entries["StartLimitIntervalSec"]) > 0
    assert int(entries["WatchdogSec"]) > 0
    # exactly the stop codes README says a supervisor must not restart into
    assert {int(c) for c in entries["RestartPreventExitStatus"].split()} == {
        cli.EXIT_DDL_STOP,
        cli.EXIT_DRIFT,
        cli.EXIT_UNCARRYABLE,
        cli.EXIT_FENCED,
        cli.EXIT_BINLOG_PURGED,
    }
    assert entries["User"] not in ("root", "0")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert entries[key] == value, key
    credentials = [v.split(":", 1)[0] for v in unit_values("LoadCredential")]
    assert credentials == ["source.password", "target.password"]
    assert entries["ExecStart"].split()[1:] == ["run", "--config", "/etc/austasync/austasync.toml"]


def test_the_credentials_the_unit_loads_resolve_through_the_config(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in (v.split(":", 1)[0] for v in unit_values("LoadCredential")):
        (creds / name).write_text(f"pw-of-{name}\n")
    text = (
        '[source]\npassword = "credential:source.password"\n[target]\npassword = "credential:target.password"\n'
        '[redis]\nurl = "redis://127.0.0.1:6379/0"\n[replication]\ndatabases = ["d"]\n'
    )
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = configmod.load(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.source.password.reveal() == "pw-of-source.password"
    assert cfg.target.password.reveal() == "pw-of-target.password"


def test_sysusers_creates_the_dedicated_login_less_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    user = unit_values("User")[0]
    result = subprocess.run(
        [systemd_tool("systemd-sysusers"), f"--root={tmp_path}", str(ROOT / "systemd" / "austasync.sysusers")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    line = next(x for x in passwd.splitlines() if x.startswith(f"{user}:"))
    fields = line.split(":")
    assert int(fields[2]) != 0 and fields[6] == "/usr/sbin/nologin"
    assert any(g.startswith(f"{unit_values('Group')[0]}:") for g in (tmp_path / "etc" / "group").read_text().split())


# --- Docker -----------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DOCKER / "compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_docker_compose_config_parses_the_stack() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client here: `docker compose config` cannot run (the static checks below still do)")
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    if plugin.returncode != 0:
        pytest.skip("the docker client has no compose plugin (`docker compose` is absent); static checks still run")
    result = subprocess.run(
        [docker, "compose", "-f", str(DOCKER / "compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_file_the_stack_mounts_or_builds_from_exists() -> None:
    doc = compose()
    paths: list[str] = []
    for service in doc["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                paths.append(source)
        build = service.get("build")
        if build:
            paths += [build["context"], str(Path(build["context"]) / build["dockerfile"])]
    paths += [s["file"] for s in doc["secrets"].values()]
    assert len(paths) > 10
    for path in paths:
        assert (DOCKER / path).exists(), path
    for line in dockerfile_stages()[0]:
        if line.startswith("COPY ") and "--from" not in line:
            for item in line.split()[1:-1]:
                assert (ROOT / item).exists(), item


def test_the_stack_has_every_piece_and_the_source_has_the_binlog_flags() -> None:
    services = compose()["services"]
    assert {"source", "target", "redis", "austasync", "prometheus", "grafana"} <= set(services)
    assert services["source"]["image"].startswith("mysql:8.0")
    assert services["target"]["image"].startswith("mysql:8.0")
    flags = dict(f.lstrip("-").split("=", 1) for f in services["source"]["command"])
    assert flags["binlog-format"] == "ROW"
    assert flags["binlog-row-image"] == "FULL"
    assert flags["binlog-row-metadata"] == "FULL"
    assert "log-bin" in flags
    target_flags = dict(f.lstrip("-").split("=", 1) for f in services["target"]["command"])
    assert "log-bin" in target_flags
    ids = {flags["server-id"], target_flags["server-id"]}
    assert len(ids) == 2
    # austasync starts only after preflight passed
    assert services["austasync"]["depends_on"]["preflight"]["condition"] == "service_completed_successfully"


def test_the_containers_config_loads_and_agrees_with_the_stack(tmp_path: Path) -> None:
    doc = compose()
    text = (DOCKER / "austasync.toml").read_text()
    for name, secret in doc["secrets"].items():
        text = text.replace(f"/run/secrets/{name}", str(DOCKER / secret["file"]))
    path = tmp_path / "austasync.toml"
    path.write_text(text)
    cfg = configmod.load(path, env={})
    services = doc["services"]
    assert cfg.source.host == "source" and cfg.target.host == "target"
    assert cfg.redis.url.reveal().startswith("redis://redis:")
    source_ids = {f.split("=")[1] for f in services["source"]["command"] if f.startswith("--server-id")}
    assert str(cfg.replication.server_id) not in source_ids
    port = cfg.http.host_port[1]
    assert f"127.0.0.1:{port}:{port}" in services["austasync"]["ports"]
    prometheus = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"austasync:{port}" in targets
    health = next(i for i in dockerfile_stages()[-1] if i.startswith("ENV "))
    assert f"http://127.0.0.1:{port}/healthz" in health
    mounted = [v for v in services["austasync"]["volumes"] if v.startswith("./austasync.toml:")]
    config_in_container = mounted[0].split(":")[1]
    assert services["austasync"]["command"] == ["run", "--config", config_in_container]
    for name in ("source_repl_password", "target_austasync_password", "austasync_control_token"):
        assert name in services["austasync"]["secrets"]
        assert name in services["preflight"]["secrets"]  # it loads the same config
    # 0.0.0.0 for the healthcheck and Prometheus: /control/* needs the token, and run would refuse without one
    assert not configmod.is_loopback_host(cfg.http.host_port[0])
    assert cfg.http.control_token.source.startswith("file ")
    assert configmod.control_token_problem(cfg.http.control_token) is None
    assert cfg.http.control_exposure() is None


def test_the_dockerfile_is_multi_stage_non_root_signal_safe_and_health_checked() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any(i.startswith("COPY --from=") for i in final)
    users = [i.split()[1] for i in final if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "STOPSIGNAL SIGTERM" in final
    entry = next(i for i in final if i.startswith("ENTRYPOINT "))
    # exec form: the daemon is PID 1 and receives SIGTERM itself; shell form would run it under /bin/sh -c
    assert entry.split(" ", 1)[1].startswith("[")
    health = next(i for i in final if i.startswith("HEALTHCHECK "))
    assert "AUSTASYNC_HEALTH_URL" in health and "CMD [" in health
    assert not any(i.startswith(("RUN pip", "RUN apt")) for i in final)  # build tools stay in the build stage
