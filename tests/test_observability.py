"""Lag and drift you can see: /metrics, /healthz, /ready, the verification barrier and the `ready` gate."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from austasync.metrics import REFERENCE
from conftest import Env, dump
from servers import free_port

README = Path(__file__).resolve().parent.parent / "README.md"


def http(env: Env, path: str, body: dict[str, Any] | None = None, timeout: float = 30) -> tuple[int, str]:
    port = env.extra["http"]["listen"].rsplit(":", 1)[1]
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http on loopback only)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(?:\{\})?") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert match, f"{name}{{{labels}}} not exported"
    return float(match.group(1))


def start(env: Env) -> subprocess.Popen[bytes]:
    env.extra.setdefault("http", {})["listen"] = f"127.0.0.1:{free_port()}"
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(20))",
        f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i}, 'v')" for i in range(1, 301)),
    )
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    return proc


def test_metrics_export_every_documented_metric_and_pass_promtool(env: Env) -> None:
    start(env)
    code, text = http(env, "/metrics")
    assert code == 200
    for name, _kind, _labels, _meaning in REFERENCE:
        assert re.search(rf"^# TYPE {re.escape(name)} ", text, re.MULTILINE), name
    assert metric(text, "austasync_copy_done", f'table="{env.db}.t"') == 1
    assert metric(text, "austasync_copy_rows", f'table="{env.db}.t"') == 300
    assert metric(text, "austasync_phase", 'austasync_phase="streaming"') == 1
    assert metric(text, "austasync_lease_held") == 1
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: .ci/run installs the Debian package prometheus"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metrics_reference_in_the_readme_matches_what_the_daemon_exports() -> None:
    readme = README.read_text()
    section = readme.split("### Metrics reference", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(austasync_\w+)` \|", section, re.MULTILINE))
    assert documented == {name for name, *_ in REFERENCE}


def test_applied_rows_are_counted_by_table_and_operation(env: Env) -> None:
    start(env)
    env.source.execute(f"UPDATE {env.db}.t SET v = 'w' WHERE id <= 10", f"DELETE FROM {env.db}.t WHERE id > 295")
    env.wait_caught_up()
    _, text = http(env, "/metrics")
    assert metric(text, "austasync_applied_rows_total", f'operation="update",table="{env.db}.t"') == 10
    assert metric(text, "austasync_applied_rows_total", f'operation="delete",table="{env.db}.t"') == 5


def test_lag_rises_while_the_applier_is_held_with_a_backlog_and_returns_near_zero(env: Env) -> None:
    start(env)
    _, text = http(env, "/metrics")
    assert metric(text, "austasync_replication_lag_seconds") < 2
    code, body = http(env, "/control/barrier/pause", {})
    assert code == 200, body
    for i in range(5):
        env.source.execute(f"UPDATE {env.db}.t SET v = 'x{i}' WHERE id = 1")
        time.sleep(1)
    _, text = http(env, "/metrics")
    assert metric(text, "austasync_replication_lag_seconds") >= 3
    assert metric(text, "austasync_source_binlog_bytes_behind") > 0
    http(env, "/control/barrier/release", {})
    env.wait_caught_up()
    time.sleep(1.5)
    _, text = http(env, "/metrics")
    assert metric(text, "austasync_replication_lag_seconds") < 2


def test_barrier_pauses_advances_to_an_exact_position_and_releases(env: Env) -> None:
    start(env)
    code, body = http(env, "/control/barrier/pause", {})
    assert code == 200
    paused = json.loads(body)["position"]
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (1000, 'a')")
    file, pos = env.source_position()
    env.source.execute(f"INSERT INTO {env.db}.t VALUES (1001, 'b')")
    time.sleep(0.5)
    paused_file, paused_pos = paused.rsplit(":", 1)
    assert env.checkpoint()[:2] == (paused_file, int(paused_pos))  # held: nothing applied past the pause
    code, body = http(env, "/control/barrier/advance", {"position": f"{file}:{pos}"})
    assert code == 200, body
    assert json.loads(body)["position"] == f"{file}:{pos}"
    assert env.target.execute(f"SELECT id FROM {env.db}.t WHERE id >= 1000") == [(1000,)]
    assert http(env, "/control/barrier/release", {})[0] == 200
    env.wait_caught_up()
    assert env.target.execute(f"SELECT id FROM {env.db}.t WHERE id >= 1000 ORDER BY id") == [(1000,), (1001,)]


def test_healthz_and_ready_endpoints_answer_with_their_checks(env: Env) -> None:
    start(env)
    code, body = http(env, "/healthz")
    assert code == 200 and json.loads(body)["ok"] is True
    code, body = http(env, "/ready")
    assert code == 503  # never verified yet
    checks = {c["name"]: c for c in json.loads(body)["checks"]}
    assert checks["copy_complete"]["ok"] is True
    assert checks["verification"]["ok"] is False


def publish_verification(env: Env, **doc: Any) -> None:
    client = redis.Redis.from_url(env.redis.url)
    client.set(f"t:{env.name}:verify", json.dumps(doc))


def ready(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    result = env.run_cli("ready", "--json", *args)
    return result.returncode, json.loads(result.stdout or "{}")


def failing(doc: dict[str, Any]) -> set[str]:
    return {c["name"] for c in doc["checks"] if not c["ok"]}


def test_ready_gate_answers_in_each_state(env: Env) -> None:
    env.extra = {"copy": {"chunk_rows": 50, "max_rows_per_second": 100}}
    env.extra["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(20))",
        f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i}, 'v')" for i in range(1, 1001)),
    )
    proc = env.start_daemon()
    time.sleep(3)
    code, doc = ready(env)
    assert code == 1 and "copy_complete" in failing(doc)  # copying
    env.wait_caught_up(proc=proc, timeout=60)
    time.sleep(1.5)
    publish_verification(env, consistent=True, finished_at=time.time(), drift_rows=0)
    code, doc = ready(env)
    assert code == 0, doc
    assert ready(env, "--max-lag-seconds", "-1")[0] == 1  # lagging beyond the limit
    publish_verification(env, consistent=True, finished_at=time.time() - 3 * 86400, drift_rows=0)
    code, doc = ready(env)
    assert code == 1 and failing(doc) == {"verification"}  # verification too old
    publish_verification(env, consistent=False, finished_at=time.time(), drift_rows=3)
    code, doc = ready(env)
    assert code == 1 and failing(doc) == {"verification"}  # drift found
    publish_verification(env, consistent=True, finished_at=time.time(), drift_rows=0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 35
    while time.monotonic() < deadline and ready(env)[0] == 0:
        time.sleep(1)
    code, doc = ready(env)
    assert code == 1 and "daemon_alive" in failing(doc)  # daemon killed


def test_ready_is_unknown_when_redis_is_down(env: Env, tmp_path: Path) -> None:
    env.redis = type(env.redis)(tmp_path / "dead-redis")  # a port nothing listens on
    result = env.run_cli("ready")
    assert result.returncode == 3
    assert "unknown" in result.stdout


@pytest.mark.parametrize("path", ["/nope", "/control/nope"])
def test_unknown_endpoints_are_404(env: Env, path: str) -> None:
    start(env)
    code, _ = http(env, path, {} if path.startswith("/control") else None)
    assert code == 404


def test_a_write_on_the_target_by_someone_else_is_detected_and_blocks_the_gate(env: Env) -> None:
    start(env)
    env.source.execute(f"UPDATE {env.db}.t SET v = 'by austasync' WHERE id = 1")  # austasync's own writes
    env.wait_caught_up()
    time.sleep(1.5)
    _, text = http(env, "/metrics")
    assert metric(text, "austasync_foreign_writes_total", f'table="{env.db}.t"') == 0
    env.target.execute(f"UPDATE {env.db}.t SET v = 'artisan migrate' WHERE id = 2")  # an app pod writes early
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, text = http(env, "/metrics")
        if metric(text, "austasync_foreign_writes_total", f'table="{env.db}.t"') > 0:
            break
        time.sleep(0.3)
    assert metric(text, "austasync_foreign_writes_total", f'table="{env.db}.t"') == 1
    assert "FOREIGN WRITE" in env.daemon_log()
    time.sleep(1.5)
    publish_verification(env, consistent=True, finished_at=time.time(), drift_rows=0)
    code, doc = ready(env)
    assert code == 1 and "no_foreign_writes" in failing(doc)


def foreign_writes(env: Env) -> dict[str, float]:
    _, text = http(env, "/metrics")
    found = re.findall(r'^austasync_foreign_writes_total\{table="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    return {table: float(value) for table, value in found}


def test_foreign_writes_are_told_from_austasyncs_own_across_target_binlog_rotations(env: Env) -> None:
    start(env)  # the copy's chunks and cursors are in the target's binlog: austasync's own
    env.target.execute("FLUSH BINARY LOGS")
    env.source.execute(f"UPDATE {env.db}.t SET v = 'ours' WHERE id <= 50", f"DELETE FROM {env.db}.t WHERE id = 300")
    env.wait_caught_up()
    other = f"{env.db}_not_replicated"
    env.target.execute(  # another application's database on the same server: none of austasync's business
        f"CREATE DATABASE {other}", f"CREATE TABLE {other}.x (id INT PRIMARY KEY)", f"INSERT INTO {other}.x VALUES (1)"
    )
    env.target.execute("FLUSH BINARY LOGS")
    env.target.execute(f"DELETE FROM {env.db}.t WHERE id IN (3, 4)")  # one transaction, one rows event
    env.target.execute(f"CREATE INDEX by_v ON {env.db}.t (v)")  # DDL behind austasync's back
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(foreign_writes(env)) < 2:
        time.sleep(0.3)
    # the statement is named with the table it changes, as the stream's classifier reads it
    assert foreign_writes(env) == {f"{env.db}.t": 1, f"{env.db}.t (statement: CREATE INDEX)": 1}


def test_the_daemon_verifies_by_itself_after_the_copy_and_finds_drift_on_its_next_pass(env: Env) -> None:
    env.extra = {"verify": {"interval_seconds": 4}}
    start(env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and ready(env)[0] != 0:
        time.sleep(1)
    code, doc = ready(env)
    assert code == 0, doc  # a fresh deployment becomes ready without anyone running verify
    query = f"SELECT last_verify FROM _austasync.state WHERE migration = '{env.name}'"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not env.target.execute(query)[0][0]:
        time.sleep(0.5)
    recorded = env.target.execute(query)[0][0]
    assert recorded and json.loads(recorded)["consistent"] is True  # kept in the target too
    env.target.execute(f"UPDATE {env.db}.t SET v = 'drifted' WHERE id = 7")  # behind the daemon's back
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "verification" not in failing(ready(env)[1]):
        time.sleep(1)
    code, doc = ready(env)
    # the foreign-write watcher saw the write at once; the next scheduled pass names the drifted row
    assert code == 1 and {"verification", "no_foreign_writes"} <= failing(doc)
    deadline = time.monotonic() + 15  # the metric mirrors the verdict within a sync interval (5 s)
    while time.monotonic() < deadline:
        _, text = http(env, "/metrics")
        if metric(text, "austasync_verify_drift_rows", f'table="{env.db}.t"') == 1:
            break
        time.sleep(0.5)
    assert metric(text, "austasync_verify_drift_rows", f'table="{env.db}.t"') == 1


def test_status_shows_phase_progress_verification_and_holder_without_secrets(env: Env) -> None:
    start(env)
    publish_verification(env, consistent=True, finished_at=time.time() - 120, drift_rows=0)
    time.sleep(1.5)
    result = env.run_cli("status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "phase      streaming   alive: yes" in out
    assert "verified   consistent, 2 min ago" in out
    assert re.search(rf"{env.db}\.t\s+300 / ~\d+\s+done", out)
    assert "holder" in out and ":" in out.split("holder", 1)[1].splitlines()[0]
    for secret in ("repl-secret-pw", "target-secret-pw"):
        assert secret not in out
        assert secret not in env.run_cli("status", "--json").stdout


def test_a_foreign_xa_transaction_on_the_target_is_detected(env: Env) -> None:
    """A prepared XA transaction's rows end at its XA PREPARE; they must not ride along with the next transaction,
    which is austasync's own (it touches the state schema) and would hide them."""
    start(env)
    conn = env.target.connect()
    try:
        with conn.cursor() as cur:
            for statement in (
                "XA START 'foreign'",
                f"UPDATE {env.db}.t SET v = 'xa' WHERE id = 7",
                "XA END 'foreign'",
                "XA PREPARE 'foreign'",
                "XA COMMIT 'foreign'",
            ):
                cur.execute(statement)
    finally:
        conn.close()
    env.source.execute(f"UPDATE {env.db}.t SET v = 'ours' WHERE id = 8")  # austasync's next transaction
    env.wait_caught_up()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not foreign_writes(env):
        time.sleep(0.3)
    assert foreign_writes(env) == {f"{env.db}.t": 1}


def test_a_foreign_write_made_while_no_daemon_runs_is_detected_by_the_next(env: Env) -> None:
    proc = start(env)
    env.source.execute(f"UPDATE {env.db}.t SET v = 'ours' WHERE id = 1")
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)  # a status publish: where the watcher got to is in Redis
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    env.target.execute(f"UPDATE {env.db}.t SET v = 'meanwhile' WHERE id = 9")  # nobody watching
    again = env.start_daemon()
    env.source.execute(f"UPDATE {env.db}.t SET v = 'ours again' WHERE id = 2")
    env.wait_caught_up(proc=again)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not foreign_writes(env):
        time.sleep(0.3)
    assert foreign_writes(env) == {f"{env.db}.t": 1}
    assert "from where the last daemon stopped" in env.daemon_log()


def test_a_repair_made_while_no_daemon_runs_is_austasyncs_own_for_the_next(env: Env) -> None:
    """On 86f8c17 the daemon-less repair's transaction touched no state row: the next daemon's watcher took it
    for a foreign write and closed the gate over a repair that had just made both sides equal."""
    proc = start(env)
    time.sleep(1.5)  # a status publish: where the watcher got to is in Redis
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    # drift the watcher cannot see (out of the target's binlog), so that only the repair is in it
    env.target.execute("SET SESSION sql_log_bin = 0", f"UPDATE {env.db}.t SET v = 'drift' WHERE id IN (7, 8)")
    repaired = env.run_cli("verify", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert json.loads(repaired.stdout)["repair"]["tables"] == {
        f"{env.db}.t": {"keys": 2, "rows_deleted": 2, "rows_written": 2}
    }
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    again = env.start_daemon()
    env.source.execute(f"UPDATE {env.db}.t SET v = 'ours again' WHERE id = 2")
    env.wait_caught_up(proc=again)
    time.sleep(2)
    assert not any(foreign_writes(env).values()), foreign_writes(env)
    code, doc = ready(env)
    assert code == 0, doc
    # the watcher did read past the repair: a real foreign write after it is counted, once
    env.target.execute(f"UPDATE {env.db}.t SET v = 'artisan migrate' WHERE id = 9")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(foreign_writes(env).values()):
        time.sleep(0.3)
    assert foreign_writes(env) == {f"{env.db}.t": 1}


# --- the foreign-write lifecycle (issue 17) ---------------------------------------------------------------------


def status_doc(env: Env) -> dict[str, Any]:
    raw = redis.Redis.from_url(env.redis.url).get(f"t:{env.name}:status")
    return json.loads(raw) if raw else {}


def foreign_check(env: Env) -> dict[str, Any]:
    return {c["name"]: c for c in ready(env)[1]["checks"]}["no_foreign_writes"]


def wait_for(condition: Any, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what or condition}")


def target_position(env: Env) -> str:
    rows = env.target.execute("SHOW MASTER STATUS")
    return f"{rows[0][0]}:{rows[0][1]}"


def restart_watching_from(env: Env, proc: subprocess.Popen[bytes], position: str) -> subprocess.Popen[bytes]:
    """Stop the daemon and start another whose watcher resumes at ``position`` (as after a crash before a status
    publish): it reads the same target binlog again."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    client = redis.Redis.from_url(env.redis.url)
    doc = status_doc(env)
    doc["foreign_write_watch_position"]["at"] = position
    client.set(f"t:{env.name}:status", json.dumps(doc))
    again = env.start_daemon()
    env.wait_caught_up(proc=again)
    wait_for(lambda: "already recorded" in env.daemon_log(), what="the watcher to read the write again")
    return again


def cli_verify(env: Env, *args: str) -> tuple[int, dict[str, Any]]:
    result = env.run_cli("verify", "--json", *args, timeout=120)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_a_view_created_on_the_target_is_schema_drift_of_that_view_not_a_row_foreign_write(env: Env) -> None:
    start(env)
    other = f"{env.db}_other"
    env.target.execute(
        f"USE {env.db}",
        "CREATE VIEW v AS SELECT id FROM t",  # what an operator does today: views are not migrated
        f"CREATE DATABASE {other}",  # another schema whose view body names the replicated one
        f"CREATE VIEW {other}.info AS SELECT id FROM {env.db}.t",
    )
    wait_for(lambda: status_doc(env).get("foreign_writes"), what="the view DDL to be seen")
    time.sleep(1.5)  # the watcher has read the second view too
    assert {table: n for table, n in foreign_writes(env).items() if n} == {}  # no row drift of any table
    _, text = http(env, "/metrics")
    assert metric(text, "austasync_foreign_schema_changes_total", f'object="view {env.db}.v"') == 1
    assert f"{other}.info" not in text  # a view outside the selection is none of austasync's business
    check = foreign_check(env)
    assert not check["ok"]
    assert [(w["kind"], w["objects"]) for w in check["value"]["open"]] == [("schema", [f"view {env.db}.v"])]
    # verify's schema comparison judges it: the source has no such view, so a full pass does not clear it
    code, doc = cli_verify(env)
    assert code == 1 and [d["object"] for d in doc["schema_differences"]] == [f"{env.db}.v"]
    assert doc["foreign_writes_cleared"] == [] and len(doc["foreign_writes_open"]) == 1
    env.target.execute(f"DROP VIEW {env.db}.v")
    wait_for(lambda: status_doc(env).get("foreign_writes") == 2, what="the DROP VIEW to be seen")
    code, doc = cli_verify(env)
    assert code == 0, doc
    assert sorted(w["objects"][0] for w in doc["foreign_writes_cleared"]) == [f"view {env.db}.v"] * 2
    wait_for(lambda: foreign_check(env)["ok"], what="the gate check to clear")


def test_a_row_write_closes_the_gate_until_a_repair_and_clean_verification_and_a_restart_keeps_it_open(
    env: Env,
) -> None:
    proc = start(env)
    code, _ = cli_verify(env)
    assert code == 0
    wait_for(lambda: ready(env)[0] == 0, what="the gate to open")
    before = target_position(env)
    env.target.execute(f"UPDATE {env.db}.t SET v = 'artisan migrate' WHERE id = 2")  # an app pod writes early
    wait_for(lambda: "no_foreign_writes" in failing(ready(env)[1]), what="the gate to close")
    code, doc = ready(env)
    assert code == 1 and failing(doc) == {"no_foreign_writes"}
    opened = foreign_check(env)["value"].get("open")
    status = env.run_cli("status").stdout
    code, repaired = cli_verify(env, "--repair")
    assert code == 0, repaired
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    wait_for(lambda: ready(env)[0] == 0, what="the gate to reopen after the repair")
    # while it was open, /ready and status named it; the repair's clean verification cleared it, saying who
    (write,) = opened
    assert write["kind"] == "rows" and write["objects"] == [f"{env.db}.t"]
    assert f"#{write['id']} at target {write['target_position']}: row changes to {env.db}.t" in status
    (cleared,) = repaired["foreign_writes_cleared"]
    assert cleared["id"] == write["id"] and cleared["cleared_by"].startswith("austasync verify by ")
    # a new daemon reads the write again from a saved position before it, with an idle source: still cleared
    proc = restart_watching_from(env, proc, before)
    time.sleep(2.5)  # a refresh and a publish of the new daemon
    code, doc = ready(env)
    assert code == 0, doc
    assert {table: n for table, n in foreign_writes(env).items() if n} == {}  # not counted again


def test_an_acknowledged_foreign_write_ends_and_restarts_never_count_it_twice(env: Env) -> None:
    proc = start(env)
    code, _ = cli_verify(env)
    assert code == 0
    before = target_position(env)
    env.target.execute(f"DELETE FROM {env.db}.t WHERE id = 3")
    wait_for(lambda: status_doc(env).get("foreign_writes") == 1, what="the write to be recorded")
    for _ in range(2):
        proc = restart_watching_from(env, proc, before)
        time.sleep(2.5)
        assert status_doc(env)["foreign_writes"] == 1  # one write, one record, whatever reads it again
        _, text = http(env, "/metrics")
        assert metric(text, "austasync_foreign_writes_total", f'table="{env.db}.t"') == 0  # counted once, before
        assert metric(text, "austasync_foreign_writes_open") == 1
        assert "no_foreign_writes" in failing(ready(env)[1])
    listed = env.run_cli("foreign-writes", "--json")
    assert listed.returncode == 1  # open ones remain
    (write,) = json.loads(listed.stdout)["foreign_writes"]
    acked = env.run_cli("foreign-writes", "--ack", str(write["id"]), "--by", "alice")
    assert acked.returncode == 0, acked.stdout + acked.stderr
    assert f"acknowledged #{write['id']}" in acked.stdout and "by alice" in acked.stdout
    rows = env.target.execute(
        f"SELECT cleared_by, cleared_at IS NOT NULL FROM _austasync.foreign_write WHERE id = {write['id']}"
    )
    assert rows == [("alice", 1)]
    wait_for(lambda: ready(env)[0] == 0, what="the gate to reopen after the ack")
    history = json.loads(env.run_cli("foreign-writes", "--all", "--json").stdout)["foreign_writes"]
    assert [(w["id"], w["cleared_by"]) for w in history] == [(write["id"], "alice")]
    assert env.run_cli("foreign-writes", "--ack", str(write["id"])).returncode == 2  # not open any more
