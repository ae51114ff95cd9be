"""The throttle's source governor: history list length and probe latency, fail closed (issue 16, part 1)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from typing import Any

from austasync import governor
from austasync.config import ThrottleConfig
from conftest import Env, dump
from servers import free_port

ROWS = 400
HISTORY = "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'"


def _table(env: Env) -> None:
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(50) NOT NULL)",
        f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i}, 'v{i}')" for i in range(1, ROWS + 1)),
    )


def _status(env: Env) -> dict[str, Any]:
    result = env.run_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _copied(env: Env) -> int:
    return int(env.target.execute(f"SELECT COUNT(*) FROM {env.db}.t")[0][0]) if _exists(env) else 0


def _exists(env: Env) -> bool:
    sql = f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{env.db}' AND TABLE_NAME = 't'"
    return bool(env.target.execute(sql)[0][0])


def test_history_list_over_budget_pauses_the_copy_until_the_limit_is_raised(env: Env) -> None:
    _table(env)
    # history the purge cannot remove: a read view held open while another session changes rows
    holder = env.source.connect()
    holder.cursor().execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    holder.cursor().execute(f"SELECT COUNT(*) FROM {env.db}.t")
    for i in range(1, 51):
        env.source.execute(f"UPDATE {env.db}.t SET v = 'h{i}' WHERE id = {i}")
    length = int(env.source.execute(HISTORY)[0][0])
    assert length >= 10, length
    port = free_port()
    env.extra = {
        "throttle": {"max_history_list_length": 5, "max_threads_running": 0},
        "copy": {"chunk_rows": 50},
        "http": {"listen": f"127.0.0.1:{port}"},
    }
    proc = env.start_daemon()
    time.sleep(4)
    status = _status(env)
    assert status["throttle"]["active"], status["throttle"]
    assert "history list length" in status["throttle"]["reason"], status["throttle"]
    assert status["throttle"]["source_history_list_length"] >= 10, status["throttle"]
    metrics = _metrics(port)
    assert metrics['austasync_throttle_active{reason="history_list"}'] == 1
    assert metrics["austasync_source_history_list_length"] >= 10
    assert metrics["austasync_source_probe_seconds"] >= 0
    assert _copied(env) == 0  # nothing copied while throttled
    proc.terminate()
    proc.wait(30)
    holder.close()
    env.extra["throttle"] = {"max_history_list_length": 1_000_000}
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    status = _status(env)
    assert not status["throttle"]["active"], status["throttle"]
    assert status["throttle"]["source_probe_seconds"] is not None


def test_a_source_user_without_process_keeps_the_throttle_active_naming_the_grant(env: Env) -> None:
    _table(env)
    env.source.execute(
        "CREATE USER IF NOT EXISTS 'noproc'@'%' IDENTIFIED BY 'noproc-secret-pw'",
        "GRANT SELECT, SHOW VIEW, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, SLAVE MONITOR,"
        " BINLOG MONITOR ON *.* TO 'noproc'@'%'",
    )
    env.extra = {
        "source": {"user": "noproc", "password": "noproc-secret-pw"},
        "throttle": {"max_threads_running": 0},
        "copy": {"chunk_rows": 50},
    }
    env.start_daemon()
    time.sleep(4)
    status = _status(env)
    assert status["throttle"]["active"], status["throttle"]
    reason = status["throttle"]["reason"]
    assert "history list length unreadable" in reason and "PROCESS" in reason, reason
    assert status["throttle"]["source_history_list_length"] is None
    assert _copied(env) == 0  # fail closed: an unreadable signal is over budget, never fine


def test_a_probe_slower_than_the_budget_throttles_and_shows_its_reading(env: Env) -> None:
    _table(env)
    # no round trip to a server is faster than a microsecond: the probe is always over this budget
    env.extra = {"throttle": {"max_probe_ms": 0.001, "max_threads_running": 0}, "copy": {"chunk_rows": 50}}
    env.start_daemon()
    time.sleep(4)
    status = _status(env)
    assert status["throttle"]["active"] and "source probe" in status["throttle"]["reason"], status["throttle"]
    assert status["throttle"]["source_probe_seconds"] > 0
    assert _copied(env) == 0
    text = env.run_cli("status").stdout
    assert "throttle   ON: source probe" in text and "probe " in text.split("source     ")[1], text


def test_verify_waits_while_a_signal_is_unreadable(env: Env) -> None:
    _table(env)
    env.start_daemon()
    env.wait_caught_up()
    env.source.execute(
        "CREATE USER IF NOT EXISTS 'noproc'@'%' IDENTIFIED BY 'noproc-secret-pw'",
        "GRANT SELECT, SHOW VIEW, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, SLAVE MONITOR,"
        " BINLOG MONITOR ON *.* TO 'noproc'@'%'",
    )
    env.extra = {"source": {"user": "noproc", "password": "noproc-secret-pw"}, "throttle": {"max_threads_running": 0}}
    try:
        env.run_cli("verify", "--json", timeout=8)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
        assert "verification paused by the throttle" in stderr and "PROCESS" in stderr, stderr
    else:
        raise AssertionError("verify finished although the history list length could not be read")
    env.extra = {"throttle": {"max_threads_running": 0}}
    assert env.run_cli("verify", "--json", timeout=60).returncode == 0


class _HidesThreadsRunning:
    """A source connection whose server answers SHOW GLOBAL STATUS without Threads_running (as a proxy in front of
    the source can): the signal cannot be read."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        cur = self._conn.cursor(*args, **kwargs)
        execute = cur.execute

        def hiding(sql: Any, args: Any = None) -> Any:
            if args == ("Threads_running",):
                return execute("SHOW GLOBAL STATUS LIKE 'no_such_status'")
            return execute(sql, args)

        cur.execute = hiding
        return cur


def test_an_unreadable_threads_running_is_over_budget_not_zero(env: Env) -> None:
    conn = env.source.connect()
    try:
        config = ThrottleConfig(max_threads_running=50, max_history_list_length=0, max_probe_ms=0)
        assert governor.read_source(conn, config).signal == ""  # readable, and 1 thread is under 50
        reading = governor.read_source(_HidesThreadsRunning(conn), config)  # type: ignore[arg-type]
        assert reading.signal == "threads_running"
        assert "cannot be read" in reading.reason
    finally:
        conn.close()
