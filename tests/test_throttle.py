"""The throttle's runtime pause, its snapshots, its slowing and its lock-wait signal (issue 16, part 2).

Real daemons and servers: the pause goes through the daemon's authenticated /control/throttle/* endpoints, and
what the source holds is read from the source's own information_schema, not from austasync.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pymysql
import redis

from austasync import config as configmod
from austasync import governor, verifier
from austasync.db import connect, query, start_snapshot
from conftest import Env, dump
from servers import free_port

ROWS = 3000
TOKEN = "throttle-test-token-0123456789abcdef"
HISTORY = "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'"
#: open transactions on the source of the daemon's user (the tests' other sessions are root's)
DAEMON_TRX = (
    "SELECT COUNT(*) FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p"
    " ON p.ID = t.trx_mysql_thread_id WHERE p.USER = 'repl' AND t.trx_autocommit_non_locking = 0"
)  # an autocommit read (the governor's probe) is no snapshot held


def _table(env: Env, rows: int = ROWS) -> None:
    env.source.execute(
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(50) NOT NULL)",
        f"INSERT INTO {env.db}.t SELECT seq, CONCAT('v', seq) FROM {env.db}.seq_1_to_{rows}",
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
    try:
        return int(env.target.execute(f"SELECT COUNT(*) FROM {env.db}.t")[0][0])
    except pymysql.err.ProgrammingError:
        return 0  # not created yet


def _post(port: int, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 (loopback)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _daemon_trx_share(env: Env, seconds: float) -> float:
    """The share of polls (every 0.15 s for ``seconds``) that see a transaction of the daemon's user on the source.

    Not faster: InnoDB refreshes the cache behind INNODB_TRX only when nobody read it for 0.1 s, so a faster
    poller reads the same stale rows forever."""
    deadline = time.monotonic() + seconds
    polls = seen = 0
    while time.monotonic() < deadline:
        polls += 1
        seen += bool(int(env.source.execute(DAEMON_TRX)[0][0]))
        time.sleep(0.15)
    return seen / max(1, polls)


def _daemon_trx_seen(env: Env, seconds: float) -> bool:
    return _daemon_trx_share(env, seconds) > 0


def test_a_paused_copy_holds_no_snapshot_survives_a_restart_and_resumes(env: Env) -> None:
    _table(env)
    port = free_port()
    env.extra = {
        # a ceiling that keeps the copy going for ~15 s, rounds of 1 s
        "copy": {"chunk_rows": 50, "max_rows_per_second": 200, "snapshot_seconds": 1.0},
        "http": {"listen": f"127.0.0.1:{port}", "control_token": TOKEN},
    }
    proc = env.start_daemon()
    deadline = time.monotonic() + 30
    while _copied(env) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert 0 < _copied(env) < ROWS
    # the check sees a snapshot of the daemon's user (else the assertions below would prove nothing)
    mine = connect(configmod.load(env.config_path).source, "source")
    start_snapshot(mine)
    query(mine, f"SELECT COUNT(*) FROM {env.db}.t")
    assert _daemon_trx_seen(env, 1)
    mine.close()
    # the ceiling's rests are taken between snapshots: the source sees the copy's snapshot only while it reads
    # (before, a copy slept at its ceiling with the snapshot open: most polls saw it)
    share = _daemon_trx_share(env, 3)
    assert share < 0.2, share

    # the endpoint is guarded like every /control/*
    assert _post(port, "/control/throttle/pause", None) == 401
    assert _post(port, "/control/throttle/pause", "wrong-token-0123456789") == 403
    paused = env.run_cli("throttle", "--pause", "--note", "business peak", "--by", "ops-test")
    assert paused.returncode == 0 and "paused by ops-test" in paused.stdout, paused.stdout + paused.stderr
    time.sleep(1.5)  # a round under way ends after the chunks it read
    held = _copied(env)
    assert not _daemon_trx_seen(env, 3), "a paused copy keeps a transaction open on the source"
    assert _copied(env) == held < ROWS  # nothing copied while paused
    status = _status(env)
    assert status["throttle"]["paused"]["by"] == "ops-test", status["throttle"]
    assert status["throttle"]["paused"]["note"] == "business peak" and status["throttle"]["pace"] == 0
    text = env.run_cli("status").stdout
    assert "throttle   PAUSED by ops-test since" in text and "business peak" in text, text
    metrics = _metrics(port)
    assert metrics["austasync_throttle_paused"] == 1 and metrics["austasync_throttle_pace"] == 0
    env.source.execute(f"UPDATE {env.db}.t SET v = 'streamed' WHERE id = 1")  # streaming goes on while paused
    deadline = time.monotonic() + 20
    while env.target.execute(f"SELECT v FROM {env.db}.t WHERE id = 1")[0][0] != "streamed":
        assert time.monotonic() < deadline, "the stream stopped while the copy was paused"
        time.sleep(0.1)

    # a restart keeps the pause (Redis), and the copy stays held
    proc.terminate()
    assert proc.wait(30) == 0
    proc = env.start_daemon()
    deadline = time.monotonic() + 30
    while "starting paused by the operator" not in env.daemon_log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "starting paused by the operator" in env.daemon_log(), env.daemon_log()[-3000:]
    time.sleep(2)
    assert _copied(env) == held and not _daemon_trx_seen(env, 1)

    resumed = env.run_cli("throttle", "--resume")
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed"), resumed.stdout + resumed.stderr
    env.wait_caught_up(timeout=90, proc=proc)
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    status = _status(env)
    assert status["throttle"]["paused"] is None and status["throttle"]["pace"] == 1, status["throttle"]
    assert _metrics(port)["austasync_throttle_paused"] == 0


def test_the_throttle_command_names_a_missing_token_and_a_missing_daemon(env: Env) -> None:
    _table(env, 10)
    assert env.run_cli("throttle", "--pause").returncode == 3  # no daemon holds the lease
    port = free_port()
    env.extra = {"http": {"listen": f"127.0.0.1:{port}", "control_token": TOKEN}}
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    env.extra["http"] = {"listen": f"127.0.0.1:{port}"}  # this configuration lacks the daemon's token
    refused = env.run_cli("throttle", "--pause")
    assert refused.returncode == 2 and "control_token" in refused.stderr, refused.stderr
    assert _status(env)["throttle"]["paused"] is None


def test_near_a_limit_the_copy_slows_down_but_goes_on(env: Env) -> None:
    _table(env, 1000)
    holder = env.source.connect()  # history the purge cannot remove while this read view is open
    holder.cursor().execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    holder.cursor().execute(f"SELECT COUNT(*) FROM {env.db}.t")
    for i in range(1, 101):
        env.source.execute(f"UPDATE {env.db}.t SET v = 'h{i}' WHERE id = {i}")
    length = int(env.source.execute(HISTORY)[0][0])
    assert length >= 50, length
    port = free_port()
    # the length is far below the limit, but past slow_from of it: the pace falls below 1, above 0
    env.extra = {
        "throttle": {"max_history_list_length": 4 * length, "slow_from": 0.01, "max_threads_running": 0},
        "copy": {"chunk_rows": 50},
        "http": {"listen": f"127.0.0.1:{port}"},
    }
    try:
        proc = env.start_daemon()
        deadline = time.monotonic() + 20
        throttle: dict[str, Any] = {}
        while time.monotonic() < deadline:
            throttle = _status(env).get("throttle") or {}
            if throttle.get("slowed_by"):
                break
            time.sleep(0.3)
        assert "source history list length" in throttle.get("slowed_by", ""), throttle
        assert 0 < throttle["pace"] < 1 and not throttle["active"], throttle
        assert 0 < _metrics(port)["austasync_throttle_pace"] < 1
        assert "slowed to" in env.run_cli("status").stdout
        env.wait_caught_up(timeout=90, proc=proc)  # slowed, never stopped
    finally:
        holder.close()
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")


def test_pace_shrinks_in_proportion_to_what_is_left_of_the_limit() -> None:
    assert governor.pace_of(70, 100, 0.8) == 1.0
    assert governor.pace_of(90, 100, 0.8) == 0.5
    assert governor.pace_of(95, 100, 0.8) == 0.25
    assert governor.pace_of(100, 100, 0.8) == governor.MIN_PACE  # at the limit: the slowest, then a pause
    assert governor.pace_of(99, 100, 1.0) == 1.0  # slow_from 1: on/off only
    assert governor.pace_of(float("nan"), 100, 0.8) == 1.0  # unread: a reason to pause, decided elsewhere
    assert governor.pace_of(50, 0, 0.8) == 1.0  # not watched


def test_lock_waits_on_our_sessions_are_seen_and_need_process(env: Env) -> None:
    _table(env, 10)
    config = configmod.load(env.config_path)
    ours = connect(config.source, "source", autocommit=False)
    checker = connect(config.source, "source")
    other = env.source.connect()
    try:
        assert governor.own_lock_waits(checker) == (0.0, "")  # nothing registered: nothing can be ours
        governor.own_session(ours)
        start_snapshot(ours)
        query(ours, f"SELECT COUNT(*) FROM {env.db}.t")
        assert governor.own_lock_waits(checker) == (0.0, "")  # an open snapshot alone blocks nobody

        # a DDL behind the snapshot's metadata lock (and every query queued after it)
        ddl = threading.Thread(target=lambda: other.cursor().execute(f"ALTER TABLE {env.db}.t ADD COLUMN w INT"))
        ddl.start()
        deadline = time.monotonic() + 10
        waits, why = 0.0, ""
        while time.monotonic() < deadline and not why:
            waits, why = governor.own_lock_waits(checker)
            time.sleep(0.2)  # see _daemon_trx_share
        assert waits >= 1 and "table metadata locks while a snapshot of ours is open" in why, why
        query(ours, "COMMIT")
        ddl.join(10)
        assert not ddl.is_alive()
        assert governor.own_lock_waits(checker) == (0.0, "")

        # a row lock of ours someone waits for (root's session: the source user may not write)
        governor.forget_session(ours)
        locker = env.source.connect()
        governor.own_session(locker)
        locker.cursor().execute("BEGIN")
        locker.cursor().execute(f"UPDATE {env.db}.t SET v = 'locked' WHERE id = 1")
        waiter = env.source.connect()
        errors: list[BaseException] = []

        def wait_for_the_row() -> None:
            try:
                waiter.cursor().execute(f"UPDATE {env.db}.t SET v = 'x' WHERE id = 1")
            except BaseException as exc:  # noqa: BLE001 (shown by the assertion below)
                errors.append(exc)

        row = threading.Thread(target=wait_for_the_row)
        row.start()
        deadline = time.monotonic() + 10
        why = ""
        while time.monotonic() < deadline and "row locks of ours" not in why:
            _, why = governor.own_lock_waits(checker)
            time.sleep(0.2)
        assert "1 on row locks of ours" in why, why
        locker.cursor().execute("ROLLBACK")
        row.join(10)
        assert not errors, errors
        governor.forget_session(locker)
        for conn in (waiter, locker):
            conn.close()

        # fail closed: without PROCESS the answer is a reason naming the grant, never "no waits"
        governor.own_session(ours)
        env.source.execute(
            "CREATE USER IF NOT EXISTS 'noproc'@'%' IDENTIFIED BY 'noproc-secret-pw'",
            f"GRANT SELECT ON {env.db}.* TO 'noproc'@'%'",
        )
        plain = configmod.load(env.config_path).source
        unprivileged = connect(
            dataclasses.replace(plain, user="noproc", password=configmod.Secret("noproc-secret-pw")), "source"
        )
        try:
            waits, why = governor.own_lock_waits(unprivileged)
        finally:
            unprivileged.close()
        assert math.isnan(waits) and "PROCESS" in why and "watch_lock_waits" in why, why  # NaN: unread
    finally:
        governor.forget_session(ours)
        for conn in (ours, checker, other):
            conn.close()


def test_a_held_verification_waits_with_no_snapshot_open_and_finishes_when_released(env: Env) -> None:
    _table(env, 2000)
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    proc.terminate()
    proc.wait(30)
    config = configmod.load(env.config_path)
    hold = {"reason": "paused by the operator (a test)"}
    results: list[verifier.Result] = []
    thread = threading.Thread(
        target=lambda: results.append(verifier.verify(config, verifier.NoDaemonAligner(), hold=lambda: hold["reason"]))
    )
    thread.start()
    time.sleep(3)
    assert thread.is_alive() and not results  # held
    assert not _daemon_trx_seen(env, 2), "a held verification keeps a snapshot open on the source"
    hold["reason"] = ""
    thread.join(60)
    assert results and results[0].consistent and results[0].tables[0].rows_checked == 2000


def test_the_pause_key_in_redis_is_the_documented_json(env: Env) -> None:
    """A restarted daemon reads what the last one wrote: who paused, when, why (mirror.py's key list)."""
    _table(env, 10)
    client = redis.Redis.from_url(env.redis.url, decode_responses=True)
    client.set(f"t:{env.name}:pause", json.dumps({"by": "someone", "note": "", "since": time.time()}))
    port = free_port()
    env.extra = {"http": {"listen": f"127.0.0.1:{port}"}}
    proc = env.start_daemon()
    time.sleep(4)
    assert _copied(env) == 0 and _status(env)["throttle"]["paused"]["by"] == "someone"
    assert env.run_cli("throttle", "--resume").returncode == 0
    assert client.get(f"t:{env.name}:pause") is None
    env.wait_caught_up(proc=proc)
