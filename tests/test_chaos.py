"""Faults while the daemon runs: it rides them out in-process and the target ends exact.

Each case runs a writer on the source, injects one fault (a server SIGKILLed and restarted, Redis restarted
empty, the binlog connection stalled past the heartbeat, every connection cut or refused by a TCP proxy of our
own, a deadlock on the target), and checks that the daemon process never exited, that it counted the reconnect
(``austasync_reconnects_total{server}``), and that source and target dump the same (conftest.dump, the ``mariadb``
client: no austasync code). Only past ``apply.retry_budget_seconds`` does it exit 3; a binlog purged past the
checkpoint while it reconnects is exit 14, never a silent gap.

The servers are this module's own: the cases kill and restart them.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

from austasync import config as configmod
from austasync import log as logmod
from austasync.db import describe_error
from austasync.errors import BinlogPurgedError, DriftError, UnavailableError
from austasync.metrics import Metrics
from austasync.recovery import Backoff, Outage, Reconnector, classify
from conftest import SOURCE_GRANTS, Env, dump
from faultproxy import FaultProxy
from servers import MariaDB, Redis, free_port

pytestmark = pytest.mark.mariadb_only  # kills and restarts its own mariadbd

EXIT_UNAVAILABLE = 3
EXIT_BINLOG_PURGED = 14
ROWS = 2000


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MariaDB, MariaDB, Redis]]:
    root = tmp_path_factory.mktemp("chaos")
    source, target = MariaDB(root / "source", server_id=411), MariaDB(root / "target", server_id=412)
    redis = Redis(root / "redis")
    starting = [threading.Thread(target=s.start) for s in (source, target)]
    for thread in starting:
        thread.start()
    redis.start()
    for thread in starting:
        thread.join()
    source.execute("CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-secret-pw'", SOURCE_GRANTS["local"])
    target.execute(
        "CREATE USER 'austasync'@'%' IDENTIFIED BY 'target-secret-pw'", "GRANT ALL PRIVILEGES ON *.* TO 'austasync'@'%'"
    )
    yield source, target, redis
    for server in (source, target):
        server.stop()
    redis.stop()
    shutil.rmtree(root, ignore_errors=True)  # two more datadirs, 500 MB: not left for the run's end


@pytest.fixture
def chaos(servers: tuple[MariaDB, MariaDB, Redis], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    name = "chaos_" + re.sub(r"\W", "_", request.node.name.removeprefix("test_"))[:40]
    env = Env(*servers, tmp_path, name)
    env.extra["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    env.extra["replication"] = {"read_timeout_seconds": 5.0}
    env.source.execute(
        f"DROP DATABASE IF EXISTS {env.db}",
        f"CREATE DATABASE {env.db}",
        f"CREATE TABLE {env.db}.t (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL, n INT NOT NULL)",
        f"INSERT INTO {env.db}.t VALUES " + ",".join(f"({i}, 'v{i}', 0)" for i in range(1, ROWS + 1)),
    )
    env.target.execute(f"DROP DATABASE IF EXISTS {env.db}")
    yield env
    env.stop_all()


class Writer:
    """Small transactions on the source at a steady rate from a thread; a source that is down is waited for."""

    def __init__(self, server: MariaDB, db: str, tps: float = 150.0) -> None:
        self.server, self.db, self.tps = server, db, tps
        self.committed = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._rng = random.Random(15)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        conn: pymysql.connections.Connection[pymysql.cursors.Cursor] | None = None
        next_id = int(str(self.server.execute(f"SELECT MAX(id) FROM {self.db}.t")[0][0])) + 1
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = self.server.connect(autocommit=False, connect_timeout=2)
                with conn.cursor() as cur:
                    key = self._rng.randint(1, next_id)
                    cur.execute(f"INSERT INTO {self.db}.t VALUES ({next_id}, 'new', 1)")
                    cur.execute(f"UPDATE {self.db}.t SET n = n + 1, v = 'upd' WHERE id = {key}")
                    if self._rng.random() < 0.3:
                        cur.execute(f"DELETE FROM {self.db}.t WHERE id = {self._rng.randint(1, next_id)}")
                conn.commit()
                next_id += 1
                self.committed += 1
            except pymysql.err.MySQLError:
                self.failed += 1
                if conn is not None:
                    conn.close() if conn.open else None
                conn = None
                next_id += 1  # the insert may have committed before the connection died
                self._stop.wait(0.2)
            self._stop.wait(max(0.0, 1 / self.tps - (time.monotonic() - started)))
        if conn is not None and conn.open:
            conn.close()


def port(env: Env) -> int:
    return int(env.extra["http"]["listen"].rsplit(":", 1)[1])


def get(env: Env, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port(env)}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def reconnects(env: Env, server: str) -> float:
    _, text = get(env, "/metrics")
    match = re.search(rf'^austasync_reconnects_total\{{server="{server}"\}} (\S+)$', text, re.MULTILINE)
    assert match, "austasync_reconnects_total not exported"
    return float(match.group(1))


def wait_for(
    what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], env: Env, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the daemon exited with {proc.returncode}:\n{env.daemon_log()[-4000:]}"
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout}s:\n{env.daemon_log()[-4000:]}")


def copied(env: Env) -> int:
    """Rows the copy has committed on the target so far (its cursors, in the state schema)."""
    try:
        rows = env.target.execute(
            f"SELECT COALESCE(SUM(rows_copied), 0) FROM _austasync.copy_cursor WHERE migration = '{env.name}'"
        )
    except pymysql.err.MySQLError:
        return 0  # not created yet
    return int(str(rows[0][0]))


def grow(env: Env) -> None:
    """Four times the rows, so that a copy slowed by copy.max_rows_per_second is still running at the fault."""
    env.source.execute(
        f"INSERT INTO {env.db}.t SELECT id + {ROWS}, CONCAT('big', id), 2 FROM {env.db}.t",
        f"INSERT INTO {env.db}.t SELECT id + {2 * ROWS}, CONCAT('big', id), 3 FROM {env.db}.t",
    )


def reconnecting(env: Env) -> bool:
    code, body = get(env, "/ready")
    return code == 503 and any(c["name"] == "connected" and not c["ok"] for c in json.loads(body).get("checks", []))


def start(env: Env) -> subprocess.Popen[bytes]:
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc, timeout=60)
    return proc


def finish(env: Env, proc: subprocess.Popen[bytes], writer: Writer, server: str, before: float) -> None:
    """The writer stopped: the daemon catches up without having exited, counted the reconnect, and the dumps match;
    then it still stops cleanly."""
    assert writer.committed >= 30, f"the writer wrote too little to prove anything: {writer.committed}"
    env.wait_caught_up(proc=proc, timeout=60)
    assert proc.poll() is None
    assert reconnects(env, server) > before, env.daemon_log()[-3000:]
    assert dump(env.source, env.db, "t", "id") == dump(env.target, env.db, "t", "id")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, env.daemon_log()[-3000:]


def test_source_killed_and_restarted_mid_stream(chaos: Env) -> None:
    proc = start(chaos)
    before = reconnects(chaos, "source")
    with Writer(chaos.source, chaos.db) as writer:
        time.sleep(1.0)
        chaos.source.kill()
        wait_for("reconnecting", lambda: reconnecting(chaos), proc, chaos)
        assert get(chaos, "/healthz")[0] == 200  # reconnecting is no hang: a liveness probe leaves it alone
        chaos.source.start()
        wait_for("reconnected", lambda: "reconnected; replication resumed" in chaos.daemon_log(), proc, chaos)
        time.sleep(1.0)
    finish(chaos, proc, writer, "source", before)
    log = chaos.daemon_log()
    assert f'"address": "127.0.0.1:{chaos.source.port}"' in log and '"operation": "binlog stream"' in log


def test_target_killed_mid_batch_and_restarted(chaos: Env) -> None:
    chaos.extra["apply"] = {"batch_max_rows": 50, "batch_max_seconds": 0.05}
    proc = start(chaos)
    before = reconnects(chaos, "target")
    with Writer(chaos.source, chaos.db, tps=300) as writer:
        time.sleep(1.0)
        chaos.target.kill()
        wait_for("reconnecting", lambda: reconnecting(chaos), proc, chaos)
        time.sleep(1.0)  # a few refused attempts while it is down
        chaos.target.start()
        wait_for("reconnected", lambda: "reconnected; replication resumed" in chaos.daemon_log(), proc, chaos)
        time.sleep(1.0)
    finish(chaos, proc, writer, "target", before)
    assert "error 2003" in chaos.daemon_log()  # the refused attempts, each with the server's error


def test_source_killed_and_restarted_mid_copy_resumes_the_copy(chaos: Env) -> None:
    grow(chaos)
    chaos.extra["copy"] = {"chunk_rows": 100, "snapshot_seconds": 0.2, "max_rows_per_second": 3000}
    with Writer(chaos.source, chaos.db, tps=100) as writer:
        proc = chaos.start_daemon()
        wait_for("copying", lambda: copied(chaos) >= 1000, proc, chaos)
        chaos.source.kill()
        progress = copied(chaos)
        assert progress < 4 * ROWS, "the copy finished before the kill; slow it down"
        wait_for("reconnecting", lambda: reconnecting(chaos), proc, chaos)
        chaos.source.start()
        wait_for("reconnected", lambda: "reconnected; replication resumed" in chaos.daemon_log(), proc, chaos)
        assert copied(chaos) >= progress  # the copy goes on from its cursors, as after a restart
        time.sleep(1.0)
    finish(chaos, proc, writer, "source", 0)


def test_redis_restarted_empty_never_stops_replication(chaos: Env) -> None:
    proc = start(chaos)
    before = reconnects(chaos, "redis")
    with Writer(chaos.source, chaos.db) as writer:
        chaos.redis.stop()
        time.sleep(2.0)
        # Redis is down, and the target keeps up: only the mirror waits
        committed = chaos.checkpoint()
        time.sleep(1.5)
        assert chaos.checkpoint() != committed, "replication stopped while Redis was down"
        chaos.redis.start()
        wait_for(
            "republished",
            lambda: '"phase": "streaming"' in chaos.run_cli("status", "--json").stdout,
            proc,
            chaos,
        )
    finish(chaos, proc, writer, "redis", before)
    assert "Redis reachable again" in chaos.daemon_log()


def test_binlog_connection_stalled_past_the_heartbeat(chaos: Env) -> None:
    proxy = FaultProxy(chaos.source.port)
    chaos.extra["source"] = {"port": proxy.port}
    chaos.extra["replication"] = {"heartbeat_seconds": 1.0, "read_timeout_seconds": 3.0}
    try:
        proc = start(chaos)
        before = reconnects(chaos, "source")
        with Writer(chaos.source, chaos.db) as writer:
            time.sleep(0.5)
            proxy.stall(6.0)  # the reader hears no heartbeat for 3 s: it gives up on the stream and reconnects
            wait_for("reconnecting", lambda: reconnects(chaos, "source") > before, proc, chaos)
            wait_for("reconnected", lambda: "reconnected; replication resumed" in chaos.daemon_log(), proc, chaos)
        finish(chaos, proc, writer, "source", before)
        assert "timed out" in chaos.daemon_log()
    finally:
        proxy.close()


def test_every_connection_cut_mid_copy_resumes_the_copy(chaos: Env) -> None:
    grow(chaos)
    source, target = FaultProxy(chaos.source.port), FaultProxy(chaos.target.port)
    chaos.extra["source"] = {"port": source.port}
    chaos.extra["target"] = {"port": target.port}
    chaos.extra["copy"] = {"chunk_rows": 100, "snapshot_seconds": 0.2, "max_rows_per_second": 4000}
    try:
        with Writer(chaos.source, chaos.db, tps=100) as writer:
            proc = chaos.start_daemon()
            wait_for("copying", lambda: copied(chaos) >= 1000, proc, chaos)
            progress = copied(chaos)
            assert progress < 4 * ROWS, "the copy finished before the cut; slow it down"
            assert source.cut() + target.cut() >= 3
            wait_for("reconnected", lambda: "reconnected; replication resumed" in chaos.daemon_log(), proc, chaos)
            assert copied(chaos) >= progress  # the copy resumes from its cursor, as after a restart
        assert reconnects(chaos, "source") + reconnects(chaos, "target") >= 1
        finish(chaos, proc, writer, "source" if reconnects(chaos, "source") else "target", 0)
    finally:
        source.close()
        target.close()


def test_deadlock_on_the_target_is_retried_in_process(chaos: Env) -> None:
    proc = start(chaos)
    before = reconnects(chaos, "target")
    chaos.target.execute(
        "CREATE DATABASE IF NOT EXISTS scratch", "CREATE TABLE IF NOT EXISTS scratch.w (id INT PRIMARY KEY)"
    )
    blocker = chaos.target.connect(autocommit=False)
    with Writer(chaos.source, chaos.db, tps=100) as writer:
        with blocker.cursor() as cur:
            # heavier than the daemon's batch, so InnoDB picks the daemon's transaction as the deadlock's victim
            cur.execute("INSERT INTO scratch.w SELECT seq FROM scratch.seq_1_to_5000")
            cur.execute(f"SELECT * FROM {chaos.db}.t WHERE id = 2 FOR UPDATE")
        chaos.source.execute(f"UPDATE {chaos.db}.t SET n = n + 100 WHERE id IN (1, 2)")
        time.sleep(0.5)  # the daemon holds row 1 and waits for row 2
        with blocker.cursor() as cur:
            cur.execute(f"SELECT * FROM {chaos.db}.t WHERE id = 1 FOR UPDATE")
        blocker.rollback()
        blocker.close()
        wait_for("retried", lambda: reconnects(chaos, "target") > before, proc, chaos)
    finish(chaos, proc, writer, "target", before)
    assert "error 1213" in chaos.daemon_log()


def test_refused_connections_while_the_binlog_is_purged_stop_with_exit_14(chaos: Env) -> None:
    proxy = FaultProxy(chaos.source.port)
    chaos.extra["source"] = {"port": proxy.port}
    try:
        proc = start(chaos)
        needed = chaos.checkpoint()[0]  # type: ignore[index]
        with Writer(chaos.source, chaos.db) as writer:
            proxy.refuse()
            proxy.cut()
            wait_for("reconnecting", lambda: reconnecting(chaos), proc, chaos)
            # the status in Redis (published every second) says so too, naming the server
            wait_for(
                "status shows it", lambda: "RECONNECTING to the source" in chaos.run_cli("status").stdout, proc, chaos
            )
            deadline = time.monotonic() + 30
            # MariaDB keeps a file until its binlog checkpoint is written (crash recovery): retry the purge
            while needed in [r[0] for r in chaos.source.execute("SHOW BINARY LOGS")]:
                assert time.monotonic() < deadline, "the source would not purge its old binlog"
                chaos.source.execute("FLUSH BINARY LOGS")
                newest = chaos.source.execute("SHOW MASTER STATUS")[0][0]
                chaos.source.execute(f"PURGE BINARY LOGS TO '{newest}'")
                time.sleep(0.3)
            assert proc.poll() is None
            proxy.accept()
            assert proc.wait(30) == EXIT_BINLOG_PURGED
        log = chaos.daemon_log()
        assert "austasync reset" in log and "error 2003" in log
        # the re-copy the message asks for makes the target exact again
        assert writer.committed >= 30
        assert chaos.run_cli("reset", "--yes").returncode == 0
        proc = start(chaos)
        assert dump(chaos.source, chaos.db, "t", "id") == dump(chaos.target, chaos.db, "t", "id")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proxy.close()


def test_past_the_retry_budget_it_exits_3_naming_the_server(chaos: Env) -> None:
    proxy = FaultProxy(chaos.target.port)
    chaos.extra["target"] = {"port": proxy.port}
    chaos.extra["apply"] = {"retry_budget_seconds": 3}
    try:
        proc = start(chaos)
        proxy.refuse()
        proxy.cut()
        chaos.source.execute(f"UPDATE {chaos.db}.t SET n = 7 WHERE id = 1")
        assert proc.wait(30) == EXIT_UNAVAILABLE
        log = chaos.daemon_log()
        assert f"target 127.0.0.1:{proxy.port} still unreachable after" in log, log[-3000:]
        assert "retry_budget_seconds" in log and "error 2003" in log
    finally:
        proxy.close()


# --- the retry budget's arithmetic, without servers ---------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(base=0.5, cap=10.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [min(10.0, 0.5 * 2**n) for n in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert len(set(delays)) == len(delays)  # jittered, not in step
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_what_is_retried_and_which_server_it_names() -> None:
    config = configmod.from_mapping(
        {"source": {"port": 3306}, "target": {"host": "10.0.0.5", "port": 3307}, "replication": {"databases": ["a"]}}
    )
    lost = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
    lost.austasync_where, lost.austasync_operation = "target 10.0.0.5:3307", "INSERT"  # type: ignore[attr-defined]
    assert classify(lost, config) == Outage("target", "10.0.0.5:3307", "INSERT", describe_error(lost))
    deadlock = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
    deadlock.austasync_where = "target 10.0.0.5:3307"  # type: ignore[attr-defined]
    assert classify(deadlock, config).kind == "lock"  # type: ignore[union-attr]
    binlog = pymysql.err.OperationalError(2013, "Lost connection")
    binlog.austasync_where = "127.0.0.1:3306"  # type: ignore[attr-defined]  # the library's own connection
    assert classify(binlog, config).server == "source"  # type: ignore[union-attr]
    refused = UnavailableError("cannot connect", server="target", address="10.0.0.5:3307", operation="connect")
    assert classify(refused, config).operation == "connect"  # type: ignore[union-attr]
    for stop in (DriftError("drift"), BinlogPurgedError("purged"), pymysql.err.ProgrammingError(1146, "no table")):
        assert classify(stop, config) is None, stop


def test_the_budget_counts_from_the_first_failure_and_is_whole_again_after_a_recovery() -> None:
    now = [0.0]
    reconnector = Reconnector(10.0, logmod.get("test"), Metrics(), clock=lambda: now[0])
    outage = Outage("target", "10.0.0.5:3307", "connect", "error 2003: Can't connect")
    assert reconnector.failed(outage, "streaming") <= 0.5
    now[0] = 9.9
    assert reconnector.failed(outage, "reconnecting") <= 0.1 + 1e-9  # never past the budget
    assert reconnector.status()["attempts"] == 2  # type: ignore[index]
    now[0] = 10.0
    with pytest.raises(UnavailableError, match=r"target 10\.0\.0\.5:3307 still unreachable after 10 s") as gave_up:
        reconnector.failed(outage, "reconnecting")
    assert gave_up.value.server == "target"
    reconnector.recovered("binlog.000001:4")
    assert not reconnector.active and reconnector.status() is None
    now[0] = 100.0
    assert reconnector.failed(outage, "streaming") <= 0.5  # a new outage: a new budget
