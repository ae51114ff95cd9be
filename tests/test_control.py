"""Who may steer the daemon: /control/* needs [http] control_token, or a loopback listener, or is disabled.

Real daemons, real HTTP: every request below goes through the daemon's own listener, and the CLI commands read
the token from the same configuration file the daemon was started with.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from conftest import Env, dump
from servers import free_port

EXIT_USAGE = 2


def request(
    port: int, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """POST ``body`` (GET without one) to the daemon on loopback; the status, the headers and the text."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310 (loopback)
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310 (loopback)
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_table(env: Env) -> None:
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(20))",
        f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i}, 'v')" for i in range(1, 201)),
    )


def cli(env: Env, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "austasync", *args, "--config", str(env.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(extra_env or {})},
    )


def verify_json(env: Env, *args: str, extra_env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = cli(env, "verify", "--json", *args, extra_env=extra_env)
    assert result.stdout, f"exit {result.returncode}, no report:\n{result.stderr}"
    return result.returncode, json.loads(result.stdout), result.stderr


def redis_text(env: Env) -> str:
    """Every value the daemon published for this migration, as one text to search."""
    client = redis.Redis.from_url(env.redis.url)
    values = []
    for key in client.scan_iter(f"t:{env.name}:*"):
        kind = client.type(key)
        values.append(repr(client.get(key) if kind == b"string" else client.dump(key)))
    return "\n".join(values)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_with_a_token_control_needs_it_and_verify_and_repair_send_it_from_the_config(env: Env) -> None:
    token = "ctl-" + secrets.token_hex(16)
    token_file = env.tmp / "control_token"
    token_file.write_text(token + "\n")  # a final newline, as `echo` writes it, is not part of the token
    port = free_port()
    env.extra["http"] = {"listen": f"127.0.0.1:{port}", "control_token_file": str(token_file)}
    with_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)

    code, headers, text = request(port, "/control/barrier/pause", {})
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer"), text
    assert "Authorization: Bearer" in json.loads(text)["error"]
    assert request(port, "/control/barrier/pause", {}, {"Authorization": f"Basic {token}"})[0] == 401
    code, _, text = request(port, "/control/barrier/pause", {}, bearer(token[:-1] + "x"))
    assert code == 403 and json.loads(text)["error"] == "the control token is wrong"
    assert request(port, "/control/repair", {"tables": {}}, bearer("nope"))[0] == 403
    assert request(port, "/control/verify/written")[0] == 401  # a GET too: every /control/* request
    code, _, text = request(port, "/control/barrier/pause", {}, bearer(token))
    assert code == 200 and "position" in json.loads(text), text
    assert request(port, "/control/barrier/release", {}, bearer(token))[0] == 200
    # what Prometheus and health checks read carries no credentials
    metrics_code, _, metrics = request(port, "/metrics")
    assert metrics_code == 200 and "austasync_build_info" in metrics
    assert request(port, "/healthz")[0] == 200
    assert request(port, "/ready")[0] in (200, 503)

    # verify and verify --repair take the token from the configuration and reach the barrier
    code, doc, _ = verify_json(env)
    assert code == 0 and doc["aligned"] is True, doc
    env.target.execute(f"UPDATE {env.db}.t SET v = 'drift' WHERE id = 7")
    code, doc, _ = verify_json(env, "--repair")
    assert code == 0 and doc["aligned"] is True, doc
    assert doc["repair"]["tables"] == {f"{env.db}.t": {"keys": 1, "rows_deleted": 1, "rows_written": 1}}
    # a wrong token (here from the environment override) or none is a configuration error with the fix
    (env.tmp / "wrong_token").write_text("x" * 32)
    wrong_file = {"AUSTASYNC_HTTP_CONTROL_TOKEN_FILE": str(env.tmp / "wrong_token")}
    wrong = cli(env, "verify", "--json", extra_env=wrong_file)
    assert wrong.returncode == EXIT_USAGE, wrong.stdout + wrong.stderr
    assert "refused barrier/pause (403)" in wrong.stderr and "differs from the daemon's" in wrong.stderr
    env.extra["http"].pop("control_token_file")
    missing = cli(env, "verify", "--json")
    assert missing.returncode == EXIT_USAGE and "(401)" in missing.stderr, missing.stderr
    assert "set [http] control_token" in missing.stderr
    env.extra["http"]["control_token_file"] = str(token_file)

    status = cli(env, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["control_auth"] == "token"
    assert proc.poll() is None
    published = redis_text(env)
    stop(proc)
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    log = env.daemon_log()
    assert "http listening" in log
    for where, text in {
        "daemon log": log,
        "status": status.stdout + status.stderr,
        "metrics": metrics,
        "redis": published,
        "wrong-token verify": wrong.stdout + wrong.stderr,
    }.items():
        assert token not in text, f"the control token shows in the {where}"


def test_a_non_loopback_listen_without_a_token_refuses_to_start(env: Env) -> None:
    port = free_port()
    env.extra["http"] = {"listen": f"0.0.0.0:{port}"}
    with_table(env)
    proc = env.start_daemon()
    assert proc.wait(60) == EXIT_USAGE, env.daemon_log()[-3000:]
    log = env.daemon_log()
    assert "no [http] control_token is set" in log
    assert "control_token_file" in log and 'control = "disabled"' in log and "control_listen" in log
    assert env.checkpoint() is None  # nothing was started: no state, no copy
    preflight = cli(env, "preflight", "--json")
    check = next(c for c in json.loads(preflight.stdout)["checks"] if c["id"] == "http.control")
    assert check["status"] == "fail" and "control_token_file" in check["fix"], check


def test_control_disabled_refuses_control_and_verify_compares_unaligned_and_says_so(env: Env) -> None:
    port = free_port()
    env.extra["http"] = {"listen": f"0.0.0.0:{port}", "control": "disabled"}
    with_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    code, _, text = request(port, "/control/barrier/pause", {}, bearer("anything-at-all-16"))
    assert code == 403 and "disabled" in json.loads(text)["error"]
    assert request(port, "/metrics")[0] == 200 and request(port, "/healthz")[0] == 200
    code, doc, stderr = verify_json(env)
    assert code == 0 and doc["aligned"] is False, doc
    assert 'control = "disabled"' in doc["unaligned_reason"] and "unaligned" in stderr
    human = cli(env, "verify")
    assert human.returncode == 0 and "NOT aligned: a daemon is streaming but its control plane is disabled" in (
        human.stdout
    )
    env.target.execute(f"UPDATE {env.db}.t SET v = 'drift' WHERE id = 9")
    repair = cli(env, "verify", "--repair")
    assert repair.returncode == EXIT_USAGE and "stop the daemon and repair" in repair.stderr, repair.stderr
    assert proc.poll() is None


def test_a_loopback_control_listen_keeps_the_control_plane_off_the_scraped_port(env: Env) -> None:
    scraped, control = free_port(), free_port()
    env.extra["http"] = {"listen": f"0.0.0.0:{scraped}", "control_listen": f"127.0.0.1:{control}"}
    with_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    code, _, text = request(scraped, "/control/barrier/pause", {})
    assert code == 404 and f"control_listen (127.0.0.1:{control})" in json.loads(text)["error"]
    assert request(scraped, "/metrics")[0] == 200
    assert request(control, "/control/barrier/pause", {})[0] == 200
    assert request(control, "/control/barrier/release", {})[0] == 200
    code, doc, _ = verify_json(env)
    assert code == 0 and doc["aligned"] is True, doc
    status = json.loads(cli(env, "status", "--json").stdout)
    assert status["control_listen"] == f"127.0.0.1:{control}" and status["control_auth"] == "loopback only"
    assert proc.poll() is None


def test_control_bodies_that_cannot_be_used_are_refused_and_change_nothing(env: Env) -> None:
    token = secrets.token_hex(16)
    port = free_port()
    env.extra["http"] = {"listen": f"127.0.0.1:{port}", "control_token": token}
    with_table(env)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    auth = bearer(token)
    # a length over the cap is refused from the header alone: nothing is read (the client sends no body)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/control/repair")
    conn.putheader("Authorization", auth["Authorization"])
    conn.putheader("Content-Length", str(65 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "over 64 MiB" in json.loads(response.read())["error"]
    conn.close()
    for body, says in ((b"[1]", "body must be a JSON object"), (b"{nope", "body is not JSON")):
        code, _, text = raw_post(port, "/control/repair", body, auth)
        assert code == 400 and json.loads(text)["error"] == says
    # unauthenticated: refused before the body is looked at
    assert raw_post(port, "/control/repair", b"{nope", {})[0] == 401
    env.source.execute(f"UPDATE {env.db}.t SET v = 'after' WHERE id = 3")
    env.wait_caught_up(proc=proc)
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    assert proc.poll() is None


def test_the_token_may_come_from_a_systemd_credential(env: Env, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    (tmp_path / "control.token").write_text(token)
    port = free_port()
    env.extra["http"] = {"listen": f"127.0.0.1:{port}", "control_token": "credential:control.token"}
    with_table(env)
    log = open(env.tmp / "daemon-0.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "austasync", "run", "--config", str(env.config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    env.procs.append(proc)
    env.wait_caught_up(proc=proc)
    assert request(port, "/control/barrier/pause", {}, bearer("wrong-token-wrong-token"))[0] == 403
    assert request(port, "/control/barrier/pause", {}, bearer(token))[0] == 200
    assert request(port, "/control/barrier/release", {}, bearer(token))[0] == 200
    code, doc, _ = verify_json(env, extra_env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert code == 0 and doc["aligned"] is True, doc
    stop(proc)
    assert token not in env.daemon_log()
