"""Bulk copy: `austasync run` (until every table is copied) against mydumper + myloader, same data, same run.

Prepares sysbench tables on a throwaway MariaDB source, then (1) mydumper --threads N to a temp dir and myloader
--threads N into a fresh database on the target, and (2) austasync copying the same tables into the target,
timed from the daemon's start until the target's state says every table is copied. Also samples the daemon's
peak RSS. Prints one JSON line with both times and the ratio (>1 means austasync is faster).

    python benchmarks/copy_vs_mydumper.py --tables 4 --rows 250000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import MariaDB, Redis


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def prepare(source: MariaDB, tables: int, rows: int) -> None:
    source.execute("CREATE DATABASE sbtest")
    subprocess.run(
        [
            "sysbench",
            "oltp_write_only",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            f"--mysql-port={source.port}",
            "--mysql-user=root",
            "--mysql-db=sbtest",
            f"--tables={tables}",
            f"--table-size={rows}",
            f"--threads={min(tables, 4)}",
            "prepare",
        ],
        check=True,
        capture_output=True,
    )


def time_mydumper(source: MariaDB, target: MariaDB, base: Path, threads: int) -> float:
    dump = base / "dump"
    common = ["--host=127.0.0.1", "--user=root", f"--threads={threads}"]
    started = time.monotonic()
    subprocess.run(
        ["mydumper", *common, f"--port={source.port}", "--database=sbtest", f"--outputdir={dump}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["myloader", *common, f"--port={target.port}", f"--directory={dump}", "--database=sbtest_myloader"],
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def time_austasync(source: MariaDB, target: MariaDB, redis: Redis, base: Path, args: argparse.Namespace) -> dict[str, float]:
    config = base / "copy.toml"
    config.write_text(
        f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
        f'[redis]\nurl = "{redis.url}"\n[replication]\nserver_id = 778\ndatabases = ["sbtest"]\nname = "copybench"\n'
        f"[copy]\nchunk_rows = {args.chunk_rows}\nsnapshot_seconds = 5\n[throttle]\nmax_threads_running = 0\n"
        '[http]\nlisten = "127.0.0.1:0"\n'
    )
    log = (base / "daemon.log").open("wb")
    started = time.monotonic()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "austasync", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    peak = 0.0
    try:
        while True:
            time.sleep(0.2)
            if daemon.poll() is not None:
                sys.exit(f"daemon exited: {(base / 'daemon.log').read_text()[-2000:]}")
            peak = max(peak, rss_mb(daemon.pid))
            try:
                rows = target.execute("SELECT phase FROM _austasync.state WHERE migration = 'copybench'")
            except Exception:  # noqa: BLE001, S112 (state schema not created yet)
                continue
            if rows and rows[0][0] == "streaming":
                break
        return {"seconds": time.monotonic() - started, "peak_rss_mb": peak}
    finally:
        daemon.terminate()
        daemon.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=5000)
    args = parser.parse_args()
    for tool in ("sysbench", "mydumper", "myloader"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install sysbench mydumper")
    base = Path(tempfile.mkdtemp(prefix="austasync-copybench-"))
    # temporary files of each server under its own directory: something on shared machines empties /tmp, and the
    # source's GROUP_CONCAT of a chunk uses an internal temporary table there
    (base / "tmp").mkdir()
    tmpdir = (f"--tmpdir={base / 'tmp'}",)
    source, target = MariaDB(base / "src", 21, extra=tmpdir), MariaDB(base / "dst", 22, extra=tmpdir)
    redis = Redis(base / "redis")
    for server in (source, target, redis):
        server.start()
    try:
        prepare(source, args.tables, args.rows)
        mydumper = time_mydumper(source, target, base, args.threads)
        austasync = time_austasync(source, target, redis, base, args)
        print(
            json.dumps(
                {
                    "tables": args.tables,
                    "rows_per_table": args.rows,
                    "mydumper_myloader_seconds": round(mydumper, 1),
                    "austasync_seconds": round(austasync["seconds"], 1),
                    "ratio": round(mydumper / austasync["seconds"], 2),
                    "austasync_peak_rss_mb": round(austasync["peak_rss_mb"]),
                    "machine": f"{os.cpu_count()} cores",
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
        )
    finally:
        for server in (redis, target, source):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
