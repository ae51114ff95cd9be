"""Peak memory of the daemon copying and streaming one big table (5M rows by default) under a write load.

1. A throwaway source gets one sysbench-shaped table of ``--rows`` rows (loaded server-side, without binlog).
2. The daemon starts (with its default settings, its own verification included) and copies the table while
   sysbench writes to it at ``--rate`` transactions/s; it then streams on, and the load runs ``--stream-seconds``
   more after the copy is complete and caught up.
3. The daemon's resident memory is sampled every 0.2 s and its kernel high-water mark (VmHWM) read at the end.

Prints one JSON line: rows, copy time, peak RSS overall (VmHWM) and sampled per phase.

    python benchmarks/rss_big_table.py --rows 5000000 --rate 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import MariaDB, Redis


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load_table(source: MariaDB, rows: int) -> None:
    """sysbench's table shape, filled by the server itself in steps of 500k rows, not binlogged."""
    source.execute(
        "CREATE DATABASE sbtest",
        "CREATE TABLE sbtest.sbtest1 (id INT NOT NULL AUTO_INCREMENT, k INT NOT NULL DEFAULT 0,"
        " c CHAR(120) NOT NULL DEFAULT '', pad CHAR(60) NOT NULL DEFAULT '', PRIMARY KEY (id), KEY k_1 (k))",
    )
    step = 500_000
    for first in range(1, rows + 1, step):
        last = min(rows, first + step - 1)
        source.execute(
            "SET SESSION sql_log_bin = 0",
            "INSERT INTO sbtest.sbtest1 (id, k, c, pad) SELECT seq, FLOOR(1 + RAND(seq) * "
            f"{rows}), CONCAT_WS('-', LPAD(seq, 11, '0'), MD5(seq), MD5(seq + 7), LEFT(SHA1(seq), 30)),"
            f" CONCAT_WS('-', LPAD(seq % 99991, 11, '0'), MD5(seq + 1)) FROM sbtest.seq_{first}_to_{last}",
        )


def checkpoint(target: MariaDB) -> tuple[str, int, str] | None:
    try:
        rows = target.execute("SELECT file, pos, phase FROM _austasync.state WHERE migration = 'rssbench'")
    except Exception:  # noqa: BLE001 (state schema not created yet)
        return None
    return (str(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--rate", type=int, default=200, help="sysbench transactions/s during copy and stream")
    parser.add_argument("--stream-seconds", type=int, default=30)
    args = parser.parse_args()
    if not shutil.which("sysbench"):
        sys.exit("sysbench is missing: apt-get install sysbench")
    base = Path(tempfile.mkdtemp(prefix="austasync-rss-"))
    # temporary files of each server under its own directory: something on shared machines empties /tmp
    (base / "tmp").mkdir()
    tmpdir = (f"--tmpdir={base / 'tmp'}",)
    source, target = MariaDB(base / "src", 51, extra=tmpdir), MariaDB(base / "dst", 52, extra=tmpdir)
    redis = Redis(base / "redis")
    for server in (source, target, redis):
        server.start()
    load: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    try:
        started = time.monotonic()
        load_table(source, args.rows)
        loaded = time.monotonic() - started
        config = base / "rss.toml"
        config.write_text(
            f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
            f'[redis]\nurl = "{redis.url}"\n[replication]\nserver_id = 777\ndatabases = ["sbtest"]\n'
            'name = "rssbench"\n[http]\nlisten = "127.0.0.1:0"\n[throttle]\nmax_threads_running = 0\n'
        )
        log = (base / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "austasync", "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        load = subprocess.Popen(
            [
                "sysbench",
                "oltp_write_only",
                "--db-driver=mysql",
                "--mysql-host=127.0.0.1",
                f"--mysql-port={source.port}",
                "--mysql-user=root",
                "--mysql-db=sbtest",
                "--tables=1",
                f"--table-size={args.rows}",
                "--threads=2",
                f"--rate={args.rate}",
                "--time=0",
                "run",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak = {"copying": 0.0, "streaming": 0.0}
        copy_started, copied_at, caught_up_at = time.monotonic(), 0.0, 0.0
        heads: list[tuple[float, tuple[str, int]]] = []
        while True:
            time.sleep(0.2)
            if daemon.poll() is not None:
                sys.exit(f"daemon exited: {(base / 'daemon.log').read_text()[-3000:]}")
            state = checkpoint(target)
            phase = state[2] if state and state[2] in peak else "copying"
            peak[phase] = max(peak[phase], memory_mb(daemon.pid, "VmRSS"))
            if phase == "streaming" and not copied_at:
                copied_at = time.monotonic()
            if copied_at and not caught_up_at and state is not None:
                # under a steady load the checkpoint trails the head by a batch: caught up once it has passed
                # where the head was a second ago
                row = source.execute("SHOW MASTER STATUS")[0]
                heads.append((time.monotonic(), (str(row[0]), int(row[1]))))
                old = [head for at, head in heads if at <= time.monotonic() - 1.0]
                if (old and (state[0], state[1]) >= old[-1]) or time.monotonic() - copied_at > 600:
                    caught_up_at = time.monotonic()
            if caught_up_at and time.monotonic() - caught_up_at >= args.stream_seconds:
                break
        high_water = memory_mb(daemon.pid, "VmHWM")
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "load_rate_tps": args.rate,
                    "table_load_seconds": round(loaded, 1),
                    "copy_seconds": round(copied_at - copy_started, 1),
                    "caught_up_after_copy_seconds": round(caught_up_at - copied_at, 1),
                    "peak_rss_mb": round(high_water),
                    "peak_rss_sampled_mb": {k: round(v) for k, v in peak.items()},
                    "machine": f"{os.cpu_count()} cores",
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
        )
    finally:
        for proc in (load, daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        for server in (redis, target, source):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
