"""Soak `austasync run` under faults: a writer at a fixed rate, a random fault every so often, then a comparison.

Starts its own throwaway MariaDB source and target and Redis (as the tests do), with the suite's TCP fault proxy
(``tests/faultproxy.py``) between the daemon and each database. Three tables (one a foreign-key child with
ON DELETE CASCADE) are filled and copied; then writer threads hold ``--tps`` small transactions a second on the
source while, every ``--fault-every`` seconds, one fault is injected, in shuffled rounds so each kind comes up:

- ``kill_source`` / ``kill_target``: SIGKILL of mariadbd, restarted after 2-8 s;
- ``redis_down``: redis-server stopped, started again empty after up to a minute;
- ``stall_source``: every source connection stalled past ``read_timeout_seconds`` (30 s);
- ``cut_all``: every connection through both proxies closed at once;
- ``refuse_target``: the target's proxy refuses new connections for 5-20 s after cutting the open ones;
- ``delay_source``: the source's packets delivered 50-200 ms late for 20 s (no reconnect expected).

The lag is measured independently every 0.5 s (the source's binlog end, read directly, against the target's
checkpoint, as ``lag_under_load.py`` does). At the end the writer stops, the daemon catches up and every table is
dumped on both sides by the ``mariadb`` client (``tests/conftest.dump``). Prints one JSON line: faults injected
by kind, faults survived without the daemon exiting (it resumed before the next fault), exits, reconnects by
server, the longest lag, differing rows (must be 0). Exit status 1 when a row differs or the daemon exited.

    python benchmarks/chaos_soak.py --minutes 30 --tps 300 --fault-every 120
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pymysql

from conftest import dump
from faultproxy import FaultProxy
from servers import MariaDB, Redis, free_port

KINDS = ["kill_source", "kill_target", "redis_down", "stall_source", "cut_all", "refuse_target", "delay_source"]
TABLES = {"parent": "id", "child": "id", "note": "k"}
ROWS = 20000


class Writers:
    """``tps`` transactions a second over ``threads`` connections straight to the source (not through the proxy:
    the faults are the daemon's); a source that is down is waited for."""

    def __init__(self, source: MariaDB, tps: float, threads: int = 3) -> None:
        self.source, self.tps, self.threads = source, tps, threads
        self.committed = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = ROWS + 1
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        conn: Any = None
        every = self.threads / self.tps
        deadline = time.monotonic()
        while not self._stop.is_set():
            deadline += every
            try:
                if conn is None:
                    conn = self.source.connect(autocommit=False, connect_timeout=2, read_timeout=10)
                self._transaction(conn, rng)
                with self._lock:
                    self.committed += 1
            except pymysql.err.MySQLError:
                with self._lock:
                    self.failed += 1
                if conn is not None:
                    with contextlib.suppress(pymysql.err.Error):
                        conn.close()
                conn = None
                self._stop.wait(0.5)
                deadline = time.monotonic()
            self._stop.wait(max(0.0, deadline - time.monotonic()))
        if conn is not None and conn.open:
            conn.close()

    def _transaction(self, conn: Any, rng: random.Random) -> None:
        high = self._next
        new = self._id()
        with conn.cursor() as cur:
            roll = rng.random()
            cur.execute("INSERT INTO soak.parent VALUES (%s, %s, 0)", (new, f"p{new}"))
            cur.execute("INSERT INTO soak.child VALUES (%s, %s, %s)", (new, new, rng.random()))
            if roll < 0.6:
                cur.execute("UPDATE soak.parent SET n = n + 1, v = %s WHERE id = %s", (f"u{new}", rng.randint(1, high)))
            if roll < 0.2:
                cur.execute("DELETE FROM soak.parent WHERE id = %s", (rng.randint(1, high),))  # cascades to child
            cur.execute(
                "INSERT INTO soak.note VALUES (%s, %s) ON DUPLICATE KEY UPDATE body = VALUES(body)",
                (f"k{rng.randint(1, 5000)}", "x" * rng.randint(0, 200)),
            )
        conn.commit()


def prepare(source: MariaDB) -> None:
    source.execute(
        "CREATE DATABASE soak",
        "CREATE TABLE soak.parent (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL, n INT NOT NULL)",
        "CREATE TABLE soak.child (id INT PRIMARY KEY, parent_id INT NOT NULL, x DOUBLE NOT NULL,"
        " FOREIGN KEY (parent_id) REFERENCES soak.parent (id) ON DELETE CASCADE)",
        "CREATE TABLE soak.note (k VARCHAR(20) PRIMARY KEY, body TEXT NOT NULL)",
        f"INSERT INTO soak.parent SELECT seq, CONCAT('p', seq), 0 FROM soak.seq_1_to_{ROWS}",
        f"INSERT INTO soak.child SELECT seq, seq, seq / 7 FROM soak.seq_1_to_{ROWS}",
    )


class Soak:
    def __init__(self, base: Path, args: argparse.Namespace) -> None:
        self.base, self.args = base, args
        self.rng = random.Random(args.seed)
        self.source, self.target = MariaDB(base / "src", 21), MariaDB(base / "dst", 22)
        self.redis = Redis(base / "redis")
        for server in (self.source, self.target, self.redis):
            server.start()
        self.source.execute(
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-pw'",
            "GRANT SELECT, SHOW VIEW, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES, SLAVE MONITOR,"
            " BINLOG MONITOR, PROCESS ON *.* TO 'repl'@'%'",
        )
        self.source_proxy, self.target_proxy = FaultProxy(self.source.port), FaultProxy(self.target.port)
        self.http = free_port()
        self.config = base / "soak.toml"
        self.config.write_text(
            f'[source]\nport = {self.source_proxy.port}\nuser = "repl"\npassword = "repl-pw"\n'
            f'[target]\nport = {self.target_proxy.port}\nuser = "root"\n'
            f'[redis]\nurl = "{self.redis.url}"\n'
            '[replication]\nserver_id = 778\ndatabases = ["soak"]\nname = "soak"\n'
            f'[http]\nlisten = "127.0.0.1:{self.http}"\n'
            "[verify]\ninterval_seconds = 0\n"
        )
        self.daemon: subprocess.Popen[bytes] | None = None
        self.exits: list[int] = []
        self.lags: list[float] = []
        self.faults: list[dict[str, Any]] = []
        self._sampling = threading.Event()

    # --- the daemon --------------------------------------------------------------------------------------------

    def start_daemon(self) -> None:
        log = (self.base / f"daemon-{len(self.exits)}.log").open("wb")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "austasync", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        """Running; if it exited, the exit is recorded and it is started again (the soak goes on)."""
        assert self.daemon is not None
        code = self.daemon.poll()
        if code is None:
            return True
        self.exits.append(code)
        print(f"daemon exited with {code}; starting it again", file=sys.stderr)
        self.start_daemon()
        return False

    def checkpoint(self) -> tuple[str, int] | None:
        try:
            rows = self.target.execute("SELECT file, pos FROM _austasync.state WHERE migration = 'soak'")
        except pymysql.err.MySQLError:
            return None
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def head(self) -> tuple[str, int] | None:
        try:
            row = self.source.execute("SHOW MASTER STATUS")[0]
        except pymysql.err.MySQLError:
            return None
        return str(row[0]), int(row[1])

    def caught_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head, done = self.head(), self.checkpoint()
            if head is not None and head == done:
                return True
            time.sleep(0.2)
        return False

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    # --- lag, measured without the daemon ------------------------------------------------------------------------

    def sample(self) -> None:
        behind_since: dict[tuple[str, int], float] = {}
        while not self._sampling.is_set():
            now = time.monotonic()
            head, done = self.head(), self.checkpoint()
            if head is not None:
                behind_since.setdefault(head, now)
            if done is not None:
                pending = [t for p, t in behind_since.items() if p > done]
                self.lags.append(now - min(pending) if pending else 0.0)
                for p in [p for p in behind_since if p <= done]:
                    del behind_since[p]
            time.sleep(0.5)

    # --- faults --------------------------------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        """Inject one fault and heal it; returns when the server or the network is back."""
        rng = self.rng
        if kind == "kill_source":
            self.source.kill()
            time.sleep(rng.uniform(2, 8))
            self.source.start()
        elif kind == "kill_target":
            self.target.kill()
            time.sleep(rng.uniform(2, 8))
            self.target.start()
        elif kind == "redis_down":
            self.redis.stop()
            time.sleep(rng.uniform(5, min(60.0, self.args.fault_every * 0.6)))
            self.redis.start()
        elif kind == "stall_source":
            seconds = rng.uniform(35, 40)
            self.source_proxy.stall(seconds)
            time.sleep(seconds)
        elif kind == "cut_all":
            self.source_proxy.cut()
            self.target_proxy.cut()
        elif kind == "refuse_target":
            self.target_proxy.refuse()
            self.target_proxy.cut()
            time.sleep(rng.uniform(5, 20))
            self.target_proxy.accept()
        elif kind == "delay_source":
            self.source_proxy.delay(rng.uniform(0.05, 0.2))
            time.sleep(20)
            self.source_proxy.delay(0)

    def run(self) -> dict[str, Any]:
        args = self.args
        prepare(self.source)
        self.start_daemon()
        if not self.caught_up(300):
            raise SystemExit("the copy did not finish within 5 minutes")
        writers = Writers(self.source, args.tps)
        writers.start()
        sampler = threading.Thread(target=self.sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        queue: list[str] = []
        next_fault = started + args.fault_every
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, next_fault - time.monotonic())))
            self.alive()
            if time.monotonic() < next_fault or next_fault + 10 > end:
                continue
            if not queue:
                queue = list(KINDS)
                self.rng.shuffle(queue)
            kind = queue.pop()
            exits_before = len(self.exits)
            began = time.monotonic()
            print(f"{time.strftime('%H:%M:%S')} fault {kind}", file=sys.stderr)
            self.fault(kind)
            healed = time.monotonic()
            next_fault = began + args.fault_every
            # survived: the daemon never exited, and resumed (checkpoint at the source's end, writers paused
            # for an instant by the check) before the next fault was due
            resumed = self._resumed(min(next_fault, end) - time.monotonic())
            self.alive()
            self.faults.append(
                {
                    "kind": kind,
                    "fault_seconds": round(healed - began, 1),
                    "resumed_seconds": None if resumed is None else round(resumed - healed, 1),
                    "survived": resumed is not None and len(self.exits) == exits_before,
                }
            )
        writers.stop()
        caught_up = self.caught_up(300)
        self._sampling.set()
        sampler.join()
        differing = {table: self._differing(table, key) for table, key in TABLES.items()}
        text = self.metrics()
        reconnects = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^austasync_reconnects_total\{server="(\w+)"\} (\S+)$', text, re.MULTILINE)
        }
        assert self.daemon is not None
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            final = self.daemon.wait(60)
        else:
            final = self.daemon.returncode
        return {
            "minutes": args.minutes,
            "fault_every_seconds": args.fault_every,
            "tps_target": args.tps,
            "tps_achieved": round(writers.committed / (args.minutes * 60), 1),
            "transactions": writers.committed,
            "writer_errors": writers.failed,
            "faults_injected": len(self.faults),
            "faults_by_kind": dict(Counter(f["kind"] for f in self.faults)),
            "faults_survived_without_exit": sum(1 for f in self.faults if f["survived"]),
            "daemon_exits": self.exits,
            "final_exit_code": final,
            "reconnects_total": reconnects,
            "longest_lag_seconds": round(max(self.lags, default=0.0), 1),
            "caught_up_at_end": caught_up,
            "differing_rows": differing,
            "faults": self.faults,
            "seed": args.seed,
            "machine": f"{os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        }

    def _resumed(self, within: float) -> float | None:
        """When the daemon's checkpoint next reaches a source position read after the fault healed (the writers
        go on meanwhile, so it is "caught up to where the source was", not "idle"), or None."""
        deadline = time.monotonic() + max(0.0, within)
        goal = None
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                return None
            goal = goal or self.head()
            done = self.checkpoint()
            if goal is not None and done is not None and done >= goal:
                return time.monotonic()
            time.sleep(0.2)
        return None

    def _differing(self, table: str, key: str) -> int:
        source, target = set(dump(self.source, "soak", table, key)), set(dump(self.target, "soak", table, key))
        return len(source ^ target)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        for proxy in (self.source_proxy, self.target_proxy):
            proxy.close()
        for server in (self.redis, self.target, self.source):
            server.stop()


def main(argv: list[str] | None = None, on_result: Callable[[dict[str, Any]], None] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--tps", type=float, default=300.0)
    parser.add_argument("--fault-every", type=float, default=120.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", action="store_true", help="keep the servers' directory and the daemon's logs")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="austasync-chaos-soak-"))
    soak = Soak(base, args)
    try:
        result = soak.run()
    finally:
        soak.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))
    if on_result is not None:
        on_result(result)
    bad = sum(result["differing_rows"].values()) or result["daemon_exits"] or result["final_exit_code"]
    return 1 if bad or not result["caught_up_at_end"] else 0


if __name__ == "__main__":
    sys.exit(main())
