"""The Grafana dashboard and the alert rules work against a real Prometheus scraping a real daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from austasync.metrics import REFERENCE
from conftest import Env
from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "dashboards" / "austasync.json"
RULES = ROOT / "config" / "prometheus" / "austasync-alerts.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "austasync-alerts.test.yml"


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} missing: .ci/run installs the Debian package prometheus"
    return path


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_links_to_a_runbook_entry_in_the_readme() -> None:
    readme = ROOT.joinpath("README.md").read_text().lower()
    doc = yaml.safe_load(RULES.read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert f"### alert: {rule['alert'].lower()}" in readme, f"README has no runbook entry for {rule['alert']}"
        assert anchor == f"alert-{rule['alert'].lower()}"


def test_dashboard_uses_a_datasource_variable_and_only_exported_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert any(v["type"] == "datasource" for v in doc["templating"]["list"])
    assert "uid" not in doc
    exported = {name for name, *_ in REFERENCE}
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"austasync_\w+", target["expr"]):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name in exported or base in exported, f"{panel['title']}: {name} is not exported"


@pytest.fixture
def prometheus(tmp_path: Path, env_with_http: Env) -> Iterator[str]:
    port = free_port()
    daemon_address = env_with_http.extra["http"]["listen"]
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        f"scrape_configs:\n  - job_name: austasync\n    static_configs:\n      - targets: ['{daemon_address}']\n"
    )
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(30)


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback Prometheus)
        return dict(json.loads(response.read()))


@pytest.fixture
def env_with_http(env: Env) -> Env:
    env.extra["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    return env


def test_a_real_prometheus_evaluates_every_dashboard_and_rule_expression(env_with_http: Env, prometheus: str) -> None:
    env = env_with_http
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(20))",
        f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i}, 'v')" for i in range(1, 201)),
    )
    redis.Redis.from_url(env.redis.url).set(
        f"t:{env.name}:verify",
        json.dumps({"consistent": True, "finished_at": time.time(), "drift_rows": 0, "tables": {f"{env.db}.t": 0}}),
    )
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    for i in range(20):
        env.source.execute(f"UPDATE {env.db}.t SET v = 'w{i}' WHERE id = {i + 1}")
        time.sleep(0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not query(prometheus, "austasync_verify_drift_rows")["data"]["result"]:
        time.sleep(1)
    empty = []
    for expr in dashboard_exprs():
        answer = query(prometheus, expr)
        assert answer["status"] == "success", (expr, answer)
        if not answer["data"]["result"]:
            empty.append(expr)
    assert not empty, f"dashboard queries without data: {empty}"
    for alert, expr in rule_exprs().items():
        answer = query(prometheus, expr)
        assert answer["status"] == "success", (alert, answer)
        for name in set(re.findall(r"austasync_\w+", expr)):
            assert query(prometheus, name)["data"]["result"], f"{alert}: {name} has no data"
