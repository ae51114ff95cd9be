"""Cutover: the source stops taking writes, every committed write reaches the target, the target is promoted."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pymysql
import pytest
import redis

from conftest import Env, dump
from servers import free_port
from test_triggers import create_definer, create_trigger_tables, create_triggers, show_triggers

EXIT_SETUP = 4
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


def streaming_and_verified(env: Env) -> subprocess.Popen[bytes]:
    """A daemon caught up and publishing (the gate reads its status), with a clean verification in Redis."""
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    time.sleep(1.5)
    verified(env)
    return proc


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
    proc = streaming_and_verified(env)
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
    proc = streaming_and_verified(env)
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
    streaming_and_verified(env)
    result = env.run_cli("cutover", "--app-user", app, timeout=60)
    assert result.returncode == 1
    assert "can write through read_only" in result.stderr and app in result.stderr
    assert env.source.execute("SELECT @@GLOBAL.read_only") == [(0,)]


def test_after_cutover_the_reverse_stream_keeps_the_legacy_host_exact(cut: Env) -> None:
    env = cut
    proc = streaming_and_verified(env)
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
    proc = streaming_and_verified(env)
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


# --- triggers move with the direction -----------------------------------------------------------------------------


@pytest.fixture
def triggered(cut: Env) -> Iterator[Env]:
    """``cut`` plus docs/docs_audit with three triggers on the source (test_triggers.create_triggers): two BEFORE
    INSERT in a set order that set columns, one AFTER UPDATE that writes to the replicated audit table under
    another DEFINER; non-default sql_mode, latin1 client. Their effects so far are on the source."""
    env = cut
    definer = f"trg_{env.name[:20]}"
    create_trigger_tables(env.source, env.db)
    for server in (env.source, env.target):
        create_definer(server, definer, env.db)
    create_triggers(env.source, env.db, definer)
    env.source.execute(
        f"INSERT INTO {env.db}.docs (title) VALUES ('first'), ('second')",
        f"UPDATE {env.db}.docs SET title = 'first draft' WHERE id = 1",
    )
    yield env
    for server in (env.source, env.target):
        server.execute(f"DROP USER IF EXISTS '{definer}'@'%'")


def _cut_over(env: Env) -> tuple[subprocess.CompletedProcess[str], subprocess.Popen[bytes]]:
    proc = streaming_and_verified(env)
    assert show_triggers(env.target, env.db) == []  # none on the replica while it streams
    return env.run_cli("cutover", "--app-user", f"app_{env.name[:20]}", "--json", timeout=120), proc


def _wait_reverse_applied(env: Env, reverse: subprocess.Popen[bytes]) -> None:
    """Until the reverse stream's checkpoint on the legacy host is the new side's binlog end."""
    head = tuple(env.target.execute("SHOW MASTER STATUS")[0][:2])
    query = f"SELECT file, pos FROM _austasync.state WHERE migration = '{env.name}-reverse'"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert reverse.poll() is None, env.daemon_log()[-3000:]
        try:
            rows = env.source.execute(query)
        except pymysql.err.ProgrammingError:
            rows = []  # the reverse daemon has not created its state table yet
        if rows and (rows[0][0], int(rows[0][1])) == head:
            return
        time.sleep(0.2)
    raise AssertionError(f"the reverse stream did not reach {head}:\n{env.daemon_log()[-3000:]}")


def _write_on_the_new_side(env: Env) -> None:
    env.target.execute(
        f"INSERT INTO {env.db}.docs (title) VALUES ('after cutover')",
        f"UPDATE {env.db}.docs SET title = 'second draft' WHERE id = 2",
        f"UPDATE {env.db}.docs SET title = 'final' WHERE id = 1",
    )


MOVED = ["docs_audited on {db}.docs", "docs_upper on {db}.docs", "docs_stamp on {db}.docs"]


def test_cutover_moves_the_triggers_to_the_new_side_and_the_reverse_stream_applies_each_write_once(
    triggered: Env,
) -> None:
    env = triggered
    originals = show_triggers(env.source, env.db)
    result, proc = _cut_over(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "moving 3 triggers with the direction" in result.stderr  # announced, like read_only
    assert json.loads(result.stdout)["triggers_moved"] == [m.format(db=env.db) for m in MOVED]
    assert show_triggers(env.target, env.db) == originals  # SHOW CREATE TRIGGER, byte for byte
    assert show_triggers(env.source, env.db) == []  # the legacy host is the replica now
    saved = env.source.execute(f"SELECT name, side, saved_by, dropped FROM _austasync.triggers WHERE db = '{env.db}'")
    assert sorted(saved) == [(n, "legacy", "cutover", 1) for n in ("docs_audited", "docs_stamp", "docs_upper")]
    proc.wait(30)
    reverse = env.start_daemon("--reverse")
    _write_on_the_new_side(env)
    _wait_reverse_applied(env, reverse)
    # the new side's triggers fired there (in order, under their sql_mode and charset); the legacy host got rows
    assert env.target.execute(f"SELECT stamp FROM {env.db}.docs WHERE id = 3") == [("café:AFTER CUTOVER",)]
    for table in ("docs", "docs_audit"):
        assert dump(env.source, env.db, table, "id") == dump(env.target, env.db, table, "id")
    # one audit row per update: the one made on the source before cutover, the two on the new side; not doubled
    assert env.source.execute(f"SELECT COUNT(*) FROM {env.db}.docs_audit") == [(3,)]
    reverse.send_signal(signal.SIGTERM)
    assert reverse.wait(15) == 0


def test_rollback_gives_the_legacy_host_its_triggers_back_and_leaves_the_new_side_none(triggered: Env) -> None:
    env = triggered
    originals = show_triggers(env.source, env.db)
    result, proc = _cut_over(env)
    assert result.returncode == 0, result.stdout + result.stderr
    proc.wait(30)
    reverse = env.start_daemon("--reverse")
    _write_on_the_new_side(env)
    _wait_reverse_applied(env, reverse)
    redis.Redis.from_url(env.redis.url).set(
        f"t:{env.name}-reverse:verify",
        json.dumps({"consistent": True, "finished_at": time.time(), "drift_rows": 0}),
    )
    result = env.run_cli("rollback", "--json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "moving 3 triggers with the direction" in result.stderr
    assert json.loads(result.stdout)["triggers_moved"] == [m.format(db=env.db) for m in MOVED]
    assert show_triggers(env.source, env.db) == originals  # identical to the legacy host's own definitions
    assert show_triggers(env.target, env.db) == []  # a replica again, should forward streaming resume
    legacy = env.source.execute(
        f"SELECT side, dropped, restored_at IS NOT NULL FROM _austasync.triggers WHERE db = '{env.db}'"
    )
    assert legacy == [("legacy", 0, 1)] * 3
    new = env.target.execute(f"SELECT side, saved_by, dropped FROM _austasync.triggers WHERE db = '{env.db}'")
    assert new == [("new", "rollback", 1)] * 3
    env.source.execute(f"INSERT INTO {env.db}.docs (title) VALUES ('back home')")  # the legacy host's own triggers
    assert env.source.execute(f"SELECT stamp FROM {env.db}.docs WHERE title = 'BACK HOME'") == [("café:BACK HOME",)]
    reverse.wait(30)


def test_a_cutover_that_fails_before_promotion_leaves_the_triggers_where_they_were(triggered: Env) -> None:
    env = triggered
    originals = show_triggers(env.source, env.db)
    proc = streaming_and_verified(env)
    proc.send_signal(signal.SIGSTOP)  # it will not drain: the cutover fails after read_only, before promotion
    try:
        env.source.execute(f"INSERT INTO {env.db}.docs (title) VALUES ('not yet applied')")
        result = env.run_cli("cutover", "--timeout-seconds", "2", timeout=60)
        assert result.returncode == 1, result.stderr
        assert "did not apply up to the final source position" in result.stderr
        assert "moving" not in result.stderr
        assert show_triggers(env.source, env.db) == originals
        assert show_triggers(env.target, env.db) == []
    finally:
        proc.send_signal(signal.SIGCONT)
    env.wait_caught_up(proc=proc)  # the stream goes on, the target still without triggers


def test_cutover_refuses_before_read_only_when_a_trigger_definer_is_missing_on_the_new_side(triggered: Env) -> None:
    env = triggered
    originals = show_triggers(env.source, env.db)
    env.target.execute(f"DROP USER 'trg_{env.name[:20]}'@'%'")
    result, proc = _cut_over(env)
    assert result.returncode == EXIT_SETUP, result.stderr
    assert f"trg_{env.name[:20]}@%" in result.stderr and f"docs_audited on {env.db}.docs" in result.stderr
    assert "does not exist" in result.stderr
    assert "read_only = ON" not in result.stderr  # refused before anything changed
    assert env.source.execute("SELECT @@GLOBAL.read_only") == [(0,)]
    assert show_triggers(env.source, env.db) == originals
    assert show_triggers(env.target, env.db) == []
    assert proc.poll() is None  # the stream goes on


def _first_full_pass(env: Env, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while "scheduled verification done" not in env.daemon_log() and time.monotonic() < deadline:
        assert proc.poll() is None, env.daemon_log()[-3000:]
        time.sleep(0.2)


@pytest.mark.parametrize(("drift_at_a_written_key", "control_token"), [(False, False), (True, False), (False, True)])
def test_a_cutover_after_a_clean_full_pass_checks_the_keys_written_since(
    cut: Env, drift_at_a_written_key: bool, control_token: bool
) -> None:
    """With a control token the written keys are asked for with the config's token (else a full pass runs)."""
    env = cut
    env.extra["verify"] = {"interval_seconds": 3600, "touched_interval_seconds": 0}
    env.extra["http"] = {"listen": f"127.0.0.1:{free_port()}"}
    if control_token:
        (env.tmp / "control_token").write_text("cutover-control-token-0123456789\n")
        env.extra["http"]["control_token_file"] = str(env.tmp / "control_token")
    proc = env.start_daemon()
    env.wait_caught_up(proc=proc)
    _first_full_pass(env, proc)  # the daemon's own full pass: the gate opens, the written keys start afresh
    writer = AppWriter(env)
    writer.start()
    time.sleep(1)
    if drift_at_a_written_key:  # behind the daemon's back, on a row it wrote (the writer only inserts)
        row = f"SELECT COUNT(*) FROM {env.db}.consents WHERE id = {writer.committed[0]}"
        while env.target.execute(row) != [(1,)]:
            time.sleep(0.05)
        # unlogged: the target-write watcher would otherwise report it first and the gate would refuse the cutover
        # for a foreign write (also fail-closed, but not what this case checks: the written keys' verification)
        env.target.execute(
            "SET SESSION sql_log_bin = 0",
            f"UPDATE {env.db}.consents SET patient = 'drift' WHERE id = {writer.committed[0]}",
        )
    # a budget of 0: never a full pass, the written keys only
    result = env.run_cli(
        "cutover", "--app-user", f"app_{env.name[:20]}", "--json", "--verify-budget-seconds", "0", timeout=120
    )
    writer.stop.set()
    writer.join(10)
    if drift_at_a_written_key:
        assert result.returncode == 1 and "differing rows" in result.stderr, result.stdout + result.stderr
        assert env.source.execute("SELECT @@GLOBAL.read_only") == [(0,)]
        return
    assert result.returncode == 0, result.stdout + result.stderr
    (step,) = [s for s in json.loads(result.stdout)["steps"] if s["step"] == "verified"]
    written = len(writer.committed)
    assert step["scope"] == f"{written} keys written since the last clean full pass", (step, written)
    assert dump(env.source, env.db, "consents", "id") == dump(env.target, env.db, "consents", "id")
