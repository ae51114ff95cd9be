"""Cutover: the source stops taking writes, every committed write reaches the target, the target is promoted."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import pymysql
import pytest
import redis

from conftest import Env, dump

EXIT_FENCED = 13


@pytest.fixture
def cut(env: Env) -> Iterator[Env]:
    """A migration whose source user may set read_only, with an unprivileged application user writing."""
    env.extra = {"source": {"user": "root", "password": ""}}
    env.source.execute(
        f"CREATE TABLE {env.db}.consents (id INT PRIMARY KEY AUTO_INCREMENT, patient VARCHAR(40) NOT NULL)",
        f"INSERT INTO {env.db}.consents (patient) VALUES " + ",".join(f"('p{i}')" for i in range(200)),
        f"DELETE FROM {env.db}.consents WHERE id > 150",  # AUTO_INCREMENT stays above the highest id
        f"CREATE USER 'app_{env.name[:20]}'@'%' IDENTIFIED BY 'app-pw'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {env.db}.* TO 'app_{env.name[:20]}'@'%'",
    )
    yield env
    env.source.execute("SET GLOBAL read_only = OFF", f"DROP USER 'app_{env.name[:20]}'@'%'")
    env.target.execute("SET GLOBAL read_only = OFF")  # shared servers: a failed rollback test must not leak it


def verified(env: Env) -> None:
    redis.Redis.from_url(env.redis.url).set(
        f"t:{env.name}:verify", json.dumps({"consistent": True, "finished_at": time.time(), "drift_rows": 0})
    )


class AppWriter(threading.Thread):
    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.stop = threading.Event()
        self.committed: list[int] = []
        self.refused = 0

    def run(self) -> None:
        conn = self.env.source.connect(user=f"app_{self.env.name[:20]}", password="app-pw", database=self.env.db)
        while not self.stop.is_set():
            try:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO consents (patient) VALUES ('live')")
                    self.committed.append(int(cur.lastrowid))
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != 1290:  # --read-only: refused, as cutover promises
                    raise
                self.refused += 1
            time.sleep(0.005)
        conn.close()


def test_cutover_under_writes_loses_nothing_and_promotes_the_target(cut: Env) -> None:
    env = cut
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)
    verified(env)
    writer = AppWriter(env)
    writer.start()
    time.sleep(1)
    result = env.run_cli("cutover", "--app-user", f"app_{env.name[:20]}", "--json", timeout=120)
    time.sleep(0.5)
    writer.stop.set()
    writer.join(10)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read_only = ON" in result.stderr  # announced before it happens
    doc = json.loads(result.stdout)
    assert doc["promoted"] is True
    assert writer.refused > 0 and writer.committed
    ids = {int(r[0]) for r in env.target.execute(f"SELECT id FROM {env.db}.consents")}
    assert set(writer.committed) <= ids  # every committed source write is on the target
    assert dump(env.source, env.db, "consents", "id") == dump(env.target, env.db, "consents", "id")
    info = "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_NAME = 'consents' AND TABLE_SCHEMA = "
    assert env.target.execute(info + f"'{env.db}'")[0][0] >= env.source.execute(info + f"'{env.db}'")[0][0]
    assert env.target.execute(f"SELECT promoted FROM _austasync.fence WHERE migration = '{env.name}'") == [(1,)]
    assert "cutover    promoted" in env.run_cli("status").stdout
    assert json.loads(env.run_cli("ready", "--json").stdout)["cutover"] == "promoted"
    # the streaming daemon was fenced off; a new one refuses to write to a promoted target
    proc.wait(30)
    again = env.start_daemon()
    assert again.wait(30) == EXIT_FENCED


def test_cutover_refuses_when_the_gate_is_not_ready_and_changes_nothing(cut: Env) -> None:
    env = cut
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)  # no verification published: not ready
    result = env.run_cli("cutover", timeout=60)
    assert result.returncode == 1
    assert "not ready" in result.stderr
    assert env.source.execute("SELECT @@GLOBAL.read_only") == [(0,)]


def test_a_cutover_that_fails_after_read_only_makes_the_source_writable_again(cut: Env) -> None:
    env = cut
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)
    verified(env)
    proc.send_signal(signal.SIGSTOP)  # alive for a few more seconds, but it will not drain
    try:
        env.source.execute(f"INSERT INTO {env.db}.consents (patient) VALUES ('not yet applied')")
        result = env.run_cli("cutover", "--timeout-seconds", "2", timeout=60)
        assert result.returncode == 1
        assert "did not apply up to the final source position" in result.stderr
        assert "writable again" in result.stderr
        assert env.source.execute("SELECT @@GLOBAL.read_only") == [(0,)]
        assert env.target.execute(f"SELECT promoted FROM _austasync.fence WHERE migration = '{env.name}'") == [(0,)]
    finally:
        proc.send_signal(signal.SIGCONT)
    env.wait_caught_up(proc=proc)


def test_an_application_user_that_can_bypass_read_only_is_refused(cut: Env) -> None:
    env = cut
    app = f"app_{env.name[:20]}"
    env.source.execute(f"GRANT SUPER ON *.* TO '{app}'@'%'")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)
    verified(env)
    result = env.run_cli("cutover", "--app-user", app, timeout=60)
    assert result.returncode == 1
    assert "can write through read_only" in result.stderr and app in result.stderr
    assert env.source.execute("SELECT @@GLOBAL.read_only") == [(0,)]


def test_after_cutover_the_reverse_stream_keeps_the_legacy_host_exact(cut: Env) -> None:
    env = cut
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)
    verified(env)
    result = env.run_cli("cutover", "--app-user", f"app_{env.name[:20]}", timeout=120)
    assert result.returncode == 0, result.stderr
    proc.wait(30)
    reverse = env.start_daemon("--reverse")
    # the application now writes to the promoted target
    env.target.execute(
        f"INSERT INTO {env.db}.consents (patient) VALUES ('after cutover 1'), ('after cutover 2')",
        f"UPDATE {env.db}.consents SET patient = 'revoked' WHERE id = 3",
        f"DELETE FROM {env.db}.consents WHERE id = 4",
    )
    head = tuple(env.target.execute("SHOW MASTER STATUS")[0][:2])
    query = f"SELECT file, pos FROM _austasync.state WHERE migration = '{env.name}-reverse'"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert reverse.poll() is None, env.daemon_log()[-3000:]
        try:
            rows = env.source.execute(query)
        except pymysql.err.ProgrammingError:
            rows = []
        if rows and (rows[0][0], int(rows[0][1])) == head:
            break
        time.sleep(0.2)
    assert dump(env.source, env.db, "consents", "id") == dump(env.target, env.db, "consents", "id")
    assert env.source.execute("SELECT @@GLOBAL.read_only") == [(1,)]  # the application still cannot write there
    reverse.send_signal(signal.SIGTERM)
    assert reverse.wait(15) == 0


def test_a_full_rollback_round_trip_ends_with_both_sides_equal_and_the_legacy_host_writable(cut: Env) -> None:
    env = cut
    env.target.execute(f"CREATE USER IF NOT EXISTS 'app_{env.name[:20]}'@'%' IDENTIFIED BY 'app-pw'")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)
    verified(env)
    assert env.run_cli("cutover", "--app-user", f"app_{env.name[:20]}", timeout=120).returncode == 0
    proc.wait(30)
    reverse = env.start_daemon("--reverse")
    env.target.execute(f"INSERT INTO {env.db}.consents (patient) VALUES ('written on the new side')")
    time.sleep(2)
    redis.Redis.from_url(env.redis.url).set(
        f"t:{env.name}-reverse:verify",
        json.dumps({"consistent": True, "finished_at": time.time(), "drift_rows": 0}),
    )
    result = env.run_cli("rollback", "--json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["promoted"] is True
    assert dump(env.source, env.db, "consents", "id") == dump(env.target, env.db, "consents", "id")
    assert env.source.execute("SELECT @@GLOBAL.read_only") == [(0,)]  # the legacy host takes writes again
    assert env.target.execute("SELECT @@GLOBAL.read_only") == [(1,)]  # the new side refuses them
    reverse.wait(30)
    env.target.execute(f"DROP USER IF EXISTS 'app_{env.name[:20]}'@'%'")
