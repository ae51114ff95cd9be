"""Apply lag of `austasync run` under a sysbench oltp_write_only load held at a fixed rate on the source.

Starts its own throwaway MariaDB source and target and Redis (as the tests do), prepares 4 sysbench tables,
starts the daemon, waits for the copy to finish, then runs sysbench ``--rate`` for ``--seconds`` while sampling
the lag every 0.25 s: the age of the oldest source transaction not yet committed on the target (the source's
``SHOW MASTER STATUS`` position compared with the target checkpoint, and the binlog timestamps of what is
behind). Prints the percentiles as one JSON line.

    python benchmarks/lag_under_load.py --rate 500 --threads 4 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import MariaDB, Redis


def sysbench(source: MariaDB, *args: str) -> list[str]:
    return [
        "sysbench",
        "oltp_write_only",
        "--db-driver=mysql",
        "--mysql-host=127.0.0.1",
        f"--mysql-port={source.port}",
        "--mysql-user=root",
        "--mysql-db=sbtest",
        "--tables=4",
        "--table-size=50000",
        *args,
    ]


def checkpoint(target: MariaDB) -> tuple[str, int]:
    rows = target.execute("SELECT file, pos FROM _austasync.state WHERE migration = 'bench'")
    return (str(rows[0][0]), int(rows[0][1])) if rows else ("", 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=60)
    args = parser.parse_args()
    if not shutil.which("sysbench"):
        sys.exit("sysbench is missing: apt-get install sysbench")
    base = Path(tempfile.mkdtemp(prefix="austasync-bench-"))
    source, target, redis = MariaDB(base / "src", 11), MariaDB(base / "dst", 12), Redis(base / "redis")
    for server in (source, target, redis):
        server.start()
    daemon = None
    try:
        source.execute("CREATE DATABASE sbtest")
        subprocess.run(sysbench(source, "prepare"), check=True, capture_output=True)
        config = base / "bench.toml"
        config.write_text(
            f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
            f'[redis]\nurl = "{redis.url}"\n[replication]\nserver_id = 777\ndatabases = ["sbtest"]\nname = "bench"\n'
        )
        log = (base / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "austasync", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        copy_started = time.monotonic()
        while True:
            time.sleep(0.5)
            if daemon.poll() is not None:
                sys.exit(f"daemon exited: {(base / 'daemon.log').read_text()[-2000:]}")
            try:
                rows = target.execute("SELECT phase FROM _austasync.state WHERE migration = 'bench'")
            except Exception:  # noqa: BLE001, S112 (state schema not created yet)
                continue
            if rows and rows[0][0] == "streaming":
                break
        copy_seconds = time.monotonic() - copy_started
        samples: list[float] = []
        behind_since: dict[tuple[str, int], float] = {}
        stop = threading.Event()

        def sample() -> None:
            # lag = how long ago the source reached a position the target has not committed yet
            while not stop.is_set():
                now = time.monotonic()
                head = tuple(source.execute("SHOW MASTER STATUS")[0][:2])
                behind_since.setdefault((str(head[0]), int(head[1])), now)
                done = checkpoint(target)
                pending = [t for p, t in behind_since.items() if p > done]
                samples.append(now - min(pending) if pending else 0.0)
                for p in [p for p in behind_since if p <= done]:
                    del behind_since[p]
                time.sleep(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run = subprocess.run(
            sysbench(source, f"--rate={args.rate}", f"--threads={args.threads}", f"--time={args.seconds}", "run"),
            capture_output=True,
            text=True,
            check=True,
        )
        stop.set()
        sampler.join()
        tps = next((line.split("(")[1].split()[0] for line in run.stdout.splitlines() if "transactions:" in line), "?")
        ordered = sorted(samples)
        result = {
            "rate": args.rate,
            "threads": args.threads,
            "seconds": args.seconds,
            "sysbench_tps": tps,
            "copy_seconds_4x50k": round(copy_seconds, 1),
            "lag_p50_s": round(statistics.median(ordered), 2),
            "lag_p99_s": round(ordered[int(len(ordered) * 0.99) - 1], 2),
            "lag_max_s": round(ordered[-1], 2),
            "samples": len(ordered),
            "machine": f"{os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(result))
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(30)
        for server in (redis, target, source):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
