"""How long a cutover of the demo portal refuses writes, at the demo's write rate.

Loads the onboarding portal (austasync.demo) into a throwaway source, lets austasync copy and stream it while the
demo workload writes, runs `austasync verify` (so the gate is ready), then `austasync cutover` while the workload
keeps writing, and prints the cutover's own figures: seconds from `read_only = ON` to promotion, and each step.

    python benchmarks/cutover_time.py --users 2000 --rate 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pymysql

from austasync.demo import portal
from austasync.demo.servers import MariaDB, Redis
from austasync.demo.workload import Workload


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "austasync", *args, "--config", str(config)], capture_output=True, text=True, check=False
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="austasync-cutover-"))
    source, target, redis = MariaDB(base / "src", 41), MariaDB(base / "dst", 42), Redis(base / "redis")
    for server in (source, target, redis):
        server.start()
    daemon = None
    try:
        conn = source.connect(autocommit=False)
        portal.load(conn, args.users)
        conn.close()
        # the application writes as an unprivileged user: root's SUPER would write straight through read_only
        source.execute(
            "CREATE USER 'portal_app'@'%' IDENTIFIED BY 'portal-app-pw'",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {portal.DATABASE}.* TO 'portal_app'@'%'",
        )
        config = base / "cutover.toml"
        config.write_text(
            f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
            f'[redis]\nurl = "{redis.url}"\n[replication]\nserver_id = 780\ndatabases = ["{portal.DATABASE}"]\n'
            f'name = "cutover"\n[http]\nlisten = "127.0.0.1:{_free_port()}"\n'
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "austasync", "run", "--config", str(config)],
            stdout=(base / "daemon.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        workload = Workload(
            lambda: source.connect(autocommit=False, user="portal_app", password="portal-app-pw"), rate=args.rate
        )
        thread = threading.Thread(target=_run_until_refused, args=(workload,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and cli("ready", config=config).returncode != 0:
            verify = cli("verify", config=config)
            if verify.returncode not in (0, 3):
                sys.exit(f"verify found differences: {verify.stdout[-2000:]}")
            time.sleep(1)
        result = cli("cutover", "--json", "--timeout-seconds", "60", "--app-user", "portal_app", config=config)
        workload.stop()
        thread.join(30)
        if result.returncode != 0:
            sys.exit(f"cutover failed: {result.stderr[-3000:]}")
        doc = json.loads(result.stdout)
        print(
            json.dumps(
                {
                    "users": args.users,
                    "write_rate": args.rate,
                    "writes_refused_seconds": doc["writes_refused_seconds"],
                    "steps": {s["step"]: s["seconds"] for s in doc["steps"]},
                    "machine": f"{os.cpu_count()} cores",
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
        )
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(30)
        for server in (redis, target, source):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _run_until_refused(workload: Workload) -> None:
    try:
        workload.run(0)
    except pymysql.err.OperationalError as exc:
        if exc.args[0] != 1290:  # read_only: the cutover at work
            raise


def _free_port() -> int:
    from austasync.demo.servers import free_port  # noqa: PLC0415

    return free_port()


if __name__ == "__main__":
    main()
