"""Streaming catch-up: austasync against MariaDB's own (single-threaded) replication, same backlog, same run.

1. sysbench prepares 4 x 50k rows on a throwaway source; austasync copies them to its target and stops at P1;
   a native MariaDB replica replays the source's binlog from its start until P1 (START SLAVE UNTIL).
2. sysbench oltp_write_only runs for 20 s with 4 threads, unthrottled: the backlog P1..P2.
3. Native: the replica's IO thread fetches the backlog first, then only its SQL thread is timed from P1 to P2.
   austasync: the daemon is started at its checkpoint P1 and timed until its checkpoint is P2 (reading the
   binlog over the network included).

Prints one JSON line: transactions in the backlog, both times, the ratio (>1: austasync faster).

    python benchmarks/catchup_vs_native.py --seconds 20 --threads 4
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import MariaDB, Redis


def sysbench(source: MariaDB, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
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
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def master_position(server: MariaDB) -> tuple[str, int]:
    row = server.execute("SHOW MASTER STATUS")[0]
    return str(row[0]), int(row[1])


def checkpoint(target: MariaDB) -> tuple[str, int]:
    try:
        rows = target.execute("SELECT file, pos, phase FROM _austasync.state WHERE migration = 'catchup'")
    except Exception:  # noqa: BLE001 (state schema not created yet)
        return ("", 0)
    return (str(rows[0][0]), int(rows[0][1])) if rows and rows[0][2] == "streaming" else ("", 0)


def slave_status(replica: MariaDB) -> dict[str, object]:
    conn = replica.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            names = [d[0] for d in cur.description or ()]
    finally:
        conn.close()
    return dict(zip(names, row or (), strict=False))


def wait(predicate: Callable[[], bool], timeout: float, what: str, detail: Callable[[], object] = str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}: {detail()}")


def run_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "austasync", "run", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    if not shutil.which("sysbench"):
        sys.exit("sysbench is missing: apt-get install sysbench")
    base = Path(tempfile.mkdtemp(prefix="austasync-catchup-"))
    source, target = MariaDB(base / "src", 31), MariaDB(base / "dst", 32)
    replica, redis = MariaDB(base / "replica", 33), Redis(base / "redis")
    for server in (source, target, replica, redis):
        server.start()
    try:
        source.execute("CREATE DATABASE sbtest")
        sysbench(source, "prepare")
        config = base / "catchup.toml"
        config.write_text(
            f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
            f'[redis]\nurl = "{redis.url}"\n[replication]\nserver_id = 779\ndatabases = ["sbtest"]\n'
            'name = "catchup"\n[http]\nlisten = "127.0.0.1:0"\n[throttle]\nmax_threads_running = 0\n'
            # the daemon verifies by itself once the copy is complete; the replica does nothing like it, so the
            # catch-up is measured without a verification pass competing for the same two cores
            "[verify]\ninterval_seconds = 0\n"
        )
        daemon = run_daemon(config, base / "daemon.log")
        p1 = master_position(source)
        wait(lambda: checkpoint(target) == p1, 300, "the initial copy")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        first = str(source.execute("SHOW BINARY LOGS")[0][0])
        replica.execute(
            f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={source.port}, MASTER_USER='root',"
            f" MASTER_PASSWORD='', MASTER_LOG_FILE='{first}', MASTER_LOG_POS=4",
            f"START SLAVE UNTIL MASTER_LOG_FILE='{p1[0]}', MASTER_LOG_POS={p1[1]}",
        )
        wait(
            lambda: (
                (slave_status(replica).get("Relay_Master_Log_File"), slave_status(replica).get("Exec_Master_Log_Pos"))
                == (p1[0], p1[1])
            ),
            300,
            "the native replica to reach P1",
            lambda: slave_status(replica),
        )
        replica.execute("STOP SLAVE")
        run = sysbench(source, f"--threads={args.threads}", f"--time={args.seconds}", "run")
        transactions = int(next(line.split()[1] for line in run.stdout.splitlines() if "transactions:" in line))
        p2 = master_position(source)

        replica.execute("START SLAVE IO_THREAD")
        wait(
            lambda: (
                (slave_status(replica).get("Master_Log_File"), slave_status(replica).get("Read_Master_Log_Pos")) == p2
            ),
            300,
            "the replica's IO thread to fetch the backlog",
        )
        started = time.monotonic()
        replica.execute("START SLAVE SQL_THREAD")
        wait(
            lambda: (
                (slave_status(replica).get("Relay_Master_Log_File"), slave_status(replica).get("Exec_Master_Log_Pos"))
                == p2
            ),
            600,
            "the native replica to apply the backlog",
        )
        native = time.monotonic() - started

        started = time.monotonic()
        daemon = run_daemon(config, base / "daemon.log")
        wait(lambda: checkpoint(target) == p2, 900, "austasync to apply the backlog")
        austasync = time.monotonic() - started
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        print(
            json.dumps(
                {
                    "backlog_transactions": transactions,
                    "native_seconds": round(native, 1),
                    "native_tps": round(transactions / native),
                    "austasync_seconds": round(austasync, 1),
                    "austasync_tps": round(transactions / austasync),
                    "ratio": round(native / austasync, 2),
                    "machine": f"{os.cpu_count()} cores",
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
        )
    finally:
        for server in (redis, replica, target, source):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
