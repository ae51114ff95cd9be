"""Bulk copy: `austasync run` (until every table is copied) against mydumper + myloader, same data, same run.

Prepares sysbench tables on a throwaway MariaDB source, then (1) mydumper --threads N to a temp dir and myloader
--threads N into a fresh database on the target, and (2) austasync copying the same tables into the target,
timed from the daemon's start until the target's state says every table is copied. Both tools run twice: without
the target's binlog (myloader's default; austasync's `copy.target_binlog = false`) and with it (myloader
--enable-binlog; austasync's default). Also samples the daemon's peak RSS and the servers' CPU time. Prints one
JSON line with the times and the ratios (>1 means austasync is faster).

    python benchmarks/copy_vs_mydumper.py --tables 4 --rows 250000 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import MariaDB, Redis


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its finished children included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_idle() -> tuple[int, int]:
    """(idle, total) jiffies of the whole machine so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


class CpuMeter:
    """CPU seconds the source and target servers spend during one tool's run, and how idle the machine was."""

    def __init__(self, source: MariaDB, target: MariaDB) -> None:
        assert source.proc is not None and target.proc is not None
        self.pids = {"source": source.proc.pid, "target": target.proc.pid}
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.idle = machine_idle()

    def used(self) -> dict[str, float]:
        idle, total = machine_idle()
        used = {f"{name}_cpu_s": round(cpu_seconds(pid) - self.start[name], 1) for name, pid in self.pids.items()}
        used["machine_idle_pct"] = round(100 * (idle - self.idle[0]) / max(1, total - self.idle[1]), 1)
        return used


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


def time_mydumper(source: MariaDB, target: MariaDB, base: Path, threads: int, binlog: bool) -> tuple[float, float]:
    """mydumper to files, then myloader into a fresh database; ``binlog``: myloader's --enable-binlog (by default
    it turns the target's binlog off for its sessions, which austasync does only when told to)."""
    dump = base / f"dump-{int(binlog)}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    common = ["--host=127.0.0.1", "--user=root", f"--threads={threads}"]
    started = time.monotonic()
    subprocess.run(
        ["mydumper", *common, f"--port={source.port}", "--database=sbtest", f"--outputdir={dump}"],
        check=True,
        capture_output=True,
    )
    load = [
        "myloader",
        *common,
        f"--port={target.port}",
        f"--directory={dump}",
        f"--database=sbtest_myloader{int(binlog)}",
    ]
    subprocess.run([*load, "--enable-binlog"] if binlog else load, check=True, capture_output=True)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, own


def time_austasync(
    source: MariaDB, target: MariaDB, redis: Redis, base: Path, args: argparse.Namespace, binlog: bool
) -> dict[str, float]:
    """`austasync run` into a fresh database (and migration) until its state says every table is copied."""
    name = f"copybench{int(binlog)}"
    config = base / f"{name}.toml"
    config.write_text(
        f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
        f'[redis]\nurl = "{redis.url}"\n[replication]\nserver_id = {778 + int(binlog)}\ndatabases = ["sbtest"]\n'
        f'name = "{name}"\nrename = {{ sbtest = "sbtest_austasync{int(binlog)}" }}\n'
        f"[copy]\nchunk_rows = {args.chunk_rows}\nsnapshot_seconds = 5\ntarget_binlog = {str(binlog).lower()}\n"
        f'render = "{args.render}"\n'
        '[throttle]\nmax_threads_running = 0\n[http]\nlisten = "127.0.0.1:0"\n'
    )
    log = (base / f"{name}.log").open("wb")
    started = time.monotonic()
    command = [sys.executable, "-m", "austasync", "run", "--config", str(config)]
    if os.environ.get("AUSTASYNC_BENCH_PYSPY"):  # a flame graph of the daemon's copy, for profiling
        command = [
            "py-spy",
            "record",
            "--threads",
            "--idle",
            "-o",
            str(base / f"{name}.txt"),
            "-f",
            "raw",
            "--",
            *command,
        ]
    daemon = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    peak = 0.0
    try:
        while True:
            time.sleep(0.05)  # the finish is seen within 50 ms
            if daemon.poll() is not None:
                sys.exit(f"daemon exited: {(base / f'{name}.log').read_text()[-2000:]}")
            peak = max(peak, rss_mb(daemon.pid))
            try:
                rows = target.execute(f"SELECT phase FROM _austasync.state WHERE migration = '{name}'")
            except Exception:  # noqa: BLE001, S112 (state schema not created yet)
                continue
            if rows and rows[0][0] == "streaming":
                daemon_cpu = cpu_seconds(daemon.pid)
                break
        return {"seconds": time.monotonic() - started, "peak_rss_mb": peak, "daemon_cpu_s": daemon_cpu}
    finally:
        if os.environ.get("AUSTASYNC_BENCH_PYSPY"):
            daemon.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT, and passes it on
        else:
            daemon.terminate()
        daemon.wait(30)


@contextlib.contextmanager
def fresh_target(base: Path, name: str, extra: tuple[str, ...]) -> Iterator[MariaDB]:
    target = MariaDB(base / name, 22, extra=extra)
    target.start()
    try:
        yield target
    finally:
        target.stop()
        shutil.rmtree(base / name, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=5000)
    parser.add_argument("--render", choices=["daemon", "source"], default="daemon", help="[copy] render")
    args = parser.parse_args()
    for tool in ("sysbench", "mydumper", "myloader"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install sysbench mydumper")
    base = Path(tempfile.mkdtemp(prefix="austasync-copybench-"))
    # temporary files of each server under its own directory: something on shared machines empties /tmp, and the
    # source's GROUP_CONCAT of a chunk uses an internal temporary table there
    (base / "tmp").mkdir()
    tmpdir = (f"--tmpdir={base / 'tmp'}",)
    source = MariaDB(base / "src", 21, extra=tmpdir)
    redis = Redis(base / "redis")
    for server in (source, redis):
        server.start()
    try:
        prepare(source, args.tables, args.rows)
        results: dict[str, object] = {"tables": args.tables, "rows_per_table": args.rows, "render": args.render}
        # each tool twice: without the target's binlog (myloader's default) and with it (austasync's default);
        # every run loads into a target server of its own, started for it, so no run inherits another's dirty pages
        for binlog in (False, True):
            suffix = "_target_binlog" if binlog else ""
            with fresh_target(base, f"myloader{int(binlog)}", tmpdir) as target:
                meter = CpuMeter(source, target)
                mydumper, tools_cpu = time_mydumper(source, target, base, args.threads, binlog)
                results[f"mydumper_myloader{suffix}_s"] = round(mydumper, 1)
                results[f"mydumper_myloader{suffix}_own_cpu_s"] = round(tools_cpu, 1)
                results[f"mydumper_myloader{suffix}_servers_cpu_s"] = meter.used()
            with fresh_target(base, f"austasync{int(binlog)}", tmpdir) as target:
                meter = CpuMeter(source, target)
                austasync = time_austasync(source, target, redis, base, args, binlog)
                results[f"austasync{suffix}_s"] = round(austasync["seconds"], 1)
                results[f"austasync{suffix}_servers_cpu_s"] = meter.used()
            results[f"austasync{suffix}_daemon_cpu_s"] = round(austasync["daemon_cpu_s"], 1)
            results[f"austasync{suffix}_peak_rss_mb"] = round(austasync["peak_rss_mb"])
            results[f"ratio{suffix}"] = round(mydumper / austasync["seconds"], 2)
        results.update(machine=f"{os.cpu_count()} cores", date=time.strftime("%Y-%m-%d"))
        print(json.dumps(results))
    finally:
        for server in (redis, source):
            server.stop()
        if os.environ.get("AUSTASYNC_BENCH_KEEP"):
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
