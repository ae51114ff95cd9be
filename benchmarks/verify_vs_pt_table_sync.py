"""`austasync verify` against `pt-table-sync --print`: same servers, same tables, same injected differences.

Starts a throwaway MariaDB source and target and Redis (as the tests do), prepares sysbench tables on the source,
copies them to the target with the `mariadb-dump | mariadb` clients (so neither tool under test did the copy),
injects a few differences on the target (changed, missing and extra rows, the extra one past the source's last
key), then times both tools in alternating rounds. Each run of each tool must name exactly the injected rows,
or the script fails. Prints one JSON line: median seconds of each tool and their ratio (>= 2 is the goal).

    python benchmarks/verify_vs_pt_table_sync.py --tables 4 --rows 250000 --rounds 3

Needs `sysbench` and `pt-table-sync` (Debian: apt-get install -y sysbench percona-toolkit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import MariaDB, Redis

Difference = tuple[str, int]  # (table, id)
_TICK = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by both servers and by the tool's own process: where a run's time goes."""

    def __init__(self, *servers: MariaDB) -> None:
        self.pids = [s.proc.pid for s in servers if s.proc is not None]

    def _servers(self) -> float:
        total = 0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / _TICK

    def _children(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self.began = (self._servers(), self._children())

    def stop(self) -> tuple[float, float]:
        return self._servers() - self.began[0], self._children() - self.began[1]


def prepare(source: MariaDB, target: MariaDB, tables: int, rows: int) -> None:
    source.execute("CREATE DATABASE sbtest")
    subprocess.run(
        [
            "sysbench",
            "oltp_read_only",
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
    client = ["--no-defaults", "-h127.0.0.1", "-uroot"]
    dump = subprocess.Popen(
        ["mariadb-dump", *client, f"-P{source.port}", "--databases", "sbtest"], stdout=subprocess.PIPE
    )
    subprocess.run(["mariadb", *client, f"-P{target.port}"], stdin=dump.stdout, check=True)
    if dump.wait() != 0:
        sys.exit("mariadb-dump failed")


def inject(target: MariaDB, tables: int, rows: int) -> set[Difference]:
    """A few differences of each kind, spread over the tables; returns (table, id) of each."""
    wanted: set[Difference] = set()
    for n in range(1, tables + 1):
        table = f"sbtest{n}"
        changed, missing, extra = rows // 7 * n % rows + 1, rows // 3 + n, rows + n
        target.execute(
            f"UPDATE sbtest.{table} SET c = CONCAT('drift-', SUBSTRING(c, 7)) WHERE id = {changed}",
            f"UPDATE sbtest.{table} SET k = k + 1 WHERE id = {changed + 1}",
            f"DELETE FROM sbtest.{table} WHERE id = {missing}",
            f"INSERT INTO sbtest.{table} (id, k, c, pad) VALUES ({extra}, 1, 'extra', 'row')",
        )
        wanted |= {(table, changed), (table, changed + 1), (table, missing), (table, extra)}
    return wanted


def run_austasync(config: Path) -> tuple[float, set[Difference]]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "austasync", "verify", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode != 1:
        sys.exit(f"austasync verify exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    found = {(t["table"].split(".")[1], int(d["key"]["id"])) for t in doc["tables"] for d in t["differences"]}
    return seconds, found


_STATEMENT = re.compile(r"^(DELETE FROM|INSERT INTO|REPLACE INTO|UPDATE) `sbtest`\.`(\w+)`")
_ID = re.compile(r"`id`=?'?(\d+)'?|VALUES \('?(\d+)'?")


def run_pt(source: MariaDB, target: MariaDB, *options: str) -> tuple[float, set[Difference]]:
    started = time.monotonic()
    proc = subprocess.run(
        [
            "pt-table-sync",
            "--print",
            *options,
            "--databases",
            "sbtest",
            f"h=127.0.0.1,P={source.port},u=root",
            f"h=127.0.0.1,P={target.port},u=root",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if proc.returncode not in (0, 2):  # 2: differences found
        sys.exit(f"pt-table-sync exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    found: set[Difference] = set()
    for line in proc.stdout.splitlines():
        statement = _STATEMENT.match(line)
        key = _ID.search(line)
        if statement and key:
            found.add((statement.group(2), int(key.group(1) or key.group(2))))
    return seconds, found


def machine() -> str:
    memory = Path("/proc/meminfo").read_text().split()[1]
    version = subprocess.run(["mariadbd", "--version"], capture_output=True, text=True, check=False).stdout.split()
    return (
        f"{os.cpu_count()} cores, {int(memory) // 1024 // 1024} GiB, MariaDB {version[2] if len(version) > 2 else '?'},"
        f" CPython {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--with-md5", action="store_true", help="also time pt-table-sync --function MD5 (a 128-bit row hash)"
    )
    args = parser.parse_args()
    for tool in ("sysbench", "pt-table-sync"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y sysbench percona-toolkit")
    base = Path(tempfile.mkdtemp(prefix="austasync-verifybench-"))
    source, target, redis = MariaDB(base / "src", 21), MariaDB(base / "dst", 22), Redis(base / "redis")
    for server in (source, target, redis):
        server.start()
    try:
        prepare(source, target, args.tables, args.rows)
        wanted = inject(target, args.tables, args.rows)
        config = base / "verify.toml"
        config.write_text(
            f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
            f'[redis]\nurl = "{redis.url}"\n[replication]\ndatabases = ["sbtest"]\nname = "bench"\n'
        )
        where = machine()
        # a first, untimed run of each: InnoDB has just loaded the dump, and each tool's first pass pays for it
        run_austasync(config)
        run_pt(source, target)
        ours: list[float] = []
        theirs: list[float] = []
        theirs_md5: list[float] = []
        meter = CpuMeter(source, target)
        cpu: dict[str, list[tuple[float, float]]] = {"austasync": [], "pt": []}
        for _ in range(args.rounds):
            meter.start()
            seconds, found = run_austasync(config)
            cpu["austasync"].append(meter.stop())
            if found != wanted:
                sys.exit(f"austasync verify found {sorted(found)}, injected {sorted(wanted)}")
            ours.append(seconds)
            meter.start()
            seconds, found = run_pt(source, target)
            cpu["pt"].append(meter.stop())
            if found != wanted:
                sys.exit(f"pt-table-sync found {sorted(found)}, injected {sorted(wanted)}")
            theirs.append(seconds)
            if args.with_md5:
                seconds, found = run_pt(source, target, "--function", "MD5")
                if found != wanted:
                    sys.exit(f"pt-table-sync --function MD5 found {sorted(found)}, injected {sorted(wanted)}")
                theirs_md5.append(seconds)
        result: dict[str, object] = {
            "workload": f"{args.tables} sysbench tables x {args.rows} rows, {len(wanted)} injected differences",
            "austasync_verify_s": round(statistics.median(ours), 2),
            "pt_table_sync_print_s": round(statistics.median(theirs), 2),
            "ratio": round(statistics.median(theirs) / statistics.median(ours), 2),
            "austasync_runs_s": [round(s, 2) for s in ours],
            "pt_table_sync_runs_s": [round(s, 2) for s in theirs],
            "both_found_every_difference": True,
            # CPU seconds per run (median): both servers together, and the tool's own process
            "cpu_s": {
                tool: {
                    "servers": round(statistics.median(c[0] for c in runs), 2),
                    "client": round(statistics.median(c[1] for c in runs), 2),
                }
                for tool, runs in cpu.items()
            },
            **(
                {"pt_table_sync_md5_s": round(statistics.median(theirs_md5), 2), "pt_md5_runs_s": theirs_md5}
                if theirs_md5
                else {}
            ),
            "machine": where,
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(result))
    finally:
        for server in (redis, target, source):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
