"""What the migration costs the legacy source: its users' latency and its CPU, phase by phase (issue 16).

The source `mariadbd` is pinned to CPU 0 (`taskset`, at nice -10 so that other jobs of a shared machine landing
on CPU 0 yield to it); the target, Redis, the daemon, the load client and this script run on CPU 1. An
application-like load runs on the source at a fixed rate (sysbench `oltp_read_write --rate`, nice -10, on the
very tables being migrated, so the stream carries its writes), in slices of `--slice-seconds`, each with its own
latency histogram (sysbench prints one only when a run ends), merged per phase.

Within each migration phase the slices alternate: one with the migration's work running ("on"), one with it held
("off"), so whatever else runs on the machine weighs on both alike; ``p99_on_vs_off`` is the phase's figure.
``p99_vs_baseline`` compares with the slices of the first phase instead (no daemon at all). Phases:

1. ``baseline``: no migration;
2. ``copy_render_source`` and ``copy``: `austasync run` at default settings copying the tables, held by its own
   `/control/throttle/pause` between slices; ``copy`` has the default ``[copy] render`` (the daemon renders),
   the other the source rendering (each into a database of its own);
3. ``streaming``: the second daemon caught up, streaming the load's writes, held by SIGSTOP (the next "on"
   slice then catches up what was held: a little more than steady streaming);
4. ``verify_full``: back-to-back verification passes at full speed (aligned through the daemon's barrier);
5. ``verify_paced``: passes at the scheduled passes' default pace (``[verify] pace`` = 0.5).

Per phase: the load's p50/p95/p99 (ms) and rate on and off, the source's CPU (``/proc/<pid>/stat`` utime+stime)
per second on and off, and the InnoDB history list length's maximum. Without load, on the same data: the source
CPU seconds per million rows of austasync's copy (both renders) and of `mydumper` (dump only: what the source
pays), of a full verification pass and of `pt-table-sync --print`, and of the copy's chunk queries: rendered by
the source (CONCAT/QUOTE/GROUP_CONCAT) against a plain SELECT of the same rows. Prints one JSON line. The packages
it needs (sysbench, mydumper, percona-toolkit) are installed with apt-get when missing.

    python benchmarks/source_impact.py --tables 4 --rows 400000 --rate 300 --slice-seconds 3 --slices 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from austasync import config as configmod
from austasync import log as logmod
from austasync import verifier
from austasync.copier import SnapshotReader
from austasync.db import connect
from austasync.schema import load_tables
from servers import MariaDB, Redis, free_port

SOURCE_CPU, OTHERS_CPU = 0, 1
PACKAGES = {"sysbench": "sysbench", "mydumper": "mydumper", "pt-table-sync": "percona-toolkit"}
_TICK = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 1.0
LONG_REST = verifier.LONG_REST_SECONDS
_BUCKET = re.compile(r"^\s*([0-9.]+)\s+\|[* ]*\s(\d+)\s*$")


def ensure_packages() -> None:
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if not shutil.which(tool)})
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True, env=env)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def pin(pid: int, cpu: int, nice: int = 0) -> None:
    """Every thread of ``pid`` on ``cpu``; with ``nice``, at that priority too (new threads inherit both)."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)
    if nice:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Sysbench:
    """oltp_read_write on the source's sbtest tables."""

    def __init__(self, source: MariaDB, tables: int, rows: int, threads: int, rate: int, cpu: int = OTHERS_CPU) -> None:
        self.common = [
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            f"--mysql-port={source.port}",
            "--mysql-user=root",
            "--mysql-db=sbtest",
            f"--tables={tables}",
            f"--table-size={rows}",
        ]
        self.threads, self.rate, self.cpu = threads, rate, cpu

    def prepare(self) -> None:
        subprocess.run(
            ["sysbench", "oltp_read_write", *self.common, f"--threads={min(4, self.threads)}", "prepare"],
            check=True,
            capture_output=True,
        )

    def slice(self, seconds: int) -> dict[str, Any]:
        """One run of ``seconds`` at the fixed rate: its histogram (ms -> count), transactions, start and end."""
        began = time.monotonic()
        out = subprocess.run(
            [
                # above the daemon and the target on CPU 1, so their work does not show as the source's latency
                "taskset",
                "-c",
                str(self.cpu),
                "nice",
                "-n",
                "-10",
                "sysbench",
                "oltp_read_write",
                *self.common,
                f"--threads={self.threads}",
                f"--rate={self.rate}",
                f"--time={seconds}",
                "--histogram=on",
                "--percentile=99",
                "run",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        histogram: dict[float, int] = {}
        for line in out.splitlines():
            match = _BUCKET.match(line)
            if match:
                histogram[float(match.group(1))] = histogram.get(float(match.group(1)), 0) + int(match.group(2))
        txns = re.search(r"transactions:\s+(\d+)", out)
        return {
            "histogram": histogram,
            "txns": int(txns.group(1)) if txns else 0,
            "began": began,
            "ended": time.monotonic(),
        }


def percentiles(slices: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[float, int] = {}
    for piece in slices:
        for value, count in piece["histogram"].items():
            merged[value] = merged.get(value, 0) + count
    total = sum(merged.values())
    result: dict[str, float] = {}
    for name, share in (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        running = 0
        for value in sorted(merged):
            running += merged[value]
            if running >= share * total:
                result[name] = value
                break
    seconds = sum(p["ended"] - p["began"] for p in slices)
    result["tps"] = round(sum(p["txns"] for p in slices) / max(seconds, 1e-9), 1)
    result["events"] = total
    return result


HISTORY = "SELECT `COUNT` FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'"


class Phase:
    """The load's slices over one phase, with the migration's work running ("on") and, alternately, held ("off"):
    both see the same machine, so other jobs on a shared box weigh on both alike. Also the source's CPU per slice
    and its InnoDB history list length (sampled every 0.5 s)."""

    def __init__(self, name: str, source: MariaDB) -> None:
        assert source.proc is not None
        self.name, self.pid = name, source.proc.pid
        self.on: list[dict[str, Any]] = []
        self.off: list[dict[str, Any]] = []
        self.cpu0, self.t0, self.load0 = cpu_seconds(self.pid), time.monotonic(), loadavg()
        self.history: list[int] = []
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(source,), daemon=True)
        self._sampler.start()

    def _sample(self, source: MariaDB) -> None:
        conn = source.connect()
        try:
            while not self._stop.wait(0.5):
                with conn.cursor() as cur:
                    cur.execute(HISTORY)
                    self.history.append(int(cur.fetchone()[0]))
        finally:
            conn.close()

    def slice(self, bench: Sysbench, seconds: int) -> dict[str, Any]:
        before = cpu_seconds(self.pid)
        piece = bench.slice(seconds)
        piece["source_cpu_s"] = cpu_seconds(self.pid) - before
        return piece

    def done(self) -> dict[str, Any]:
        self._stop.set()
        self._sampler.join()
        seconds = time.monotonic() - self.t0
        doc: dict[str, Any] = {"seconds": round(seconds, 1), "history_list_max": max(self.history, default=None)}
        for label, pieces in (("on", self.on), ("off", self.off)):
            if pieces:
                doc[label] = percentiles(pieces)
                busy = sum(p["ended"] - p["began"] for p in pieces)
                doc[label]["source_cores"] = round(sum(p["source_cpu_s"] for p in pieces) / busy, 3)
                doc[label]["slices"] = len(pieces)
        if self.on and self.off:
            doc["p99_on_vs_off"] = round(doc["on"]["p99_ms"] / doc["off"]["p99_ms"], 2)
            doc["p95_on_vs_off"] = round(doc["on"]["p95_ms"] / doc["off"]["p95_ms"], 2)
            doc["migration_source_cores"] = round(doc["on"]["source_cores"] - doc["off"]["source_cores"], 3)
        doc["source_cpu_s"] = round(cpu_seconds(self.pid) - self.cpu0, 2)
        doc["loadavg_1m"] = round((self.load0 + loadavg()) / 2, 2)
        return doc


def alternate(
    phase: Phase,
    bench: Sysbench,
    seconds: int,
    switch: tuple[Callable[[], object], Callable[[], object]],
    pairs: int,
    over: Callable[[], bool] = lambda: False,
) -> None:
    """``pairs`` times (or until ``over()``): a slice with the work running, then one with it held. Each switch is
    given :data:`SETTLE_SECONDS` to take effect (a round or a chunk under way ends) before its slice starts; an
    "on" slice during which the work ended does not count."""
    on, off = switch
    for _ in range(pairs):
        if over():
            return
        on()
        time.sleep(SETTLE_SECONDS)
        piece = phase.slice(bench, seconds)
        if over():
            return
        phase.on.append(piece)
        off()
        time.sleep(SETTLE_SECONDS)
        phase.off.append(phase.slice(bench, seconds))


def write_config(path: Path, name: str, source: MariaDB, target: MariaDB, redis: Redis, extra: str = "") -> Path:
    path.write_text(
        f'[source]\nport = {source.port}\nuser = "root"\n[target]\nport = {target.port}\nuser = "root"\n'
        f'[redis]\nurl = "{redis.url}"\n[replication]\nserver_id = {hash(name) % 100000 + 1000}\n'
        f'databases = ["sbtest"]\nname = "{name}"\n{extra}'
    )
    return path


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "austasync", "run", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def phase_of(target: MariaDB, name: str) -> str | None:
    try:
        rows = target.execute(f"SELECT phase FROM _austasync.state WHERE migration = '{name}'")
    except Exception:  # noqa: BLE001 (the state schema is not created yet)
        return None
    return str(rows[0][0]) if rows else None


def wait_streaming(target: MariaDB, name: str, daemon: subprocess.Popen[bytes], log: Path) -> float:
    started = time.monotonic()
    while phase_of(target, name) != "streaming":
        if daemon.poll() is not None:
            sys.exit(f"daemon exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return time.monotonic() - started


def quiet_figures(
    source: MariaDB, target: MariaDB, redis: Redis, base: Path, rows: int, threads: int
) -> dict[str, Any]:
    """Source CPU per million rows without load: austasync's copy and a full verification pass against mydumper and
    pt-table-sync; the copy's chunk query rendered by the source against a plain SELECT (rendered in the daemon)."""
    assert source.proc is not None
    pid = source.proc.pid
    per_m = 1e6 / rows
    out: dict[str, Any] = {}

    before = cpu_seconds(pid)
    started = time.monotonic()
    subprocess.run(
        [
            "mydumper",
            "--host=127.0.0.1",
            "--user=root",
            f"--port={source.port}",
            f"--threads={threads}",
            "--database=sbtest",
            f"--outputdir={base / 'dump'}",
        ],
        check=True,
        capture_output=True,
    )
    out["mydumper_s"] = round(time.monotonic() - started, 2)
    out["mydumper_source_cpu_s_per_m_rows"] = round((cpu_seconds(pid) - before) * per_m, 2)
    shutil.rmtree(base / "dump", ignore_errors=True)

    for render in ("source", "daemon"):
        name = f"quiet_{render}"
        config = write_config(
            base / f"{name}.toml",
            name,
            source,
            target,
            redis,
            f'rename = {{ sbtest = "sbtest_{name}" }}\n[copy]\nrender = "{render}"\n[verify]\ninterval_seconds = 0\n'
            '[http]\nlisten = "127.0.0.1:0"\n',
        )
        before = cpu_seconds(pid)
        log = base / f"{name}.log"
        daemon = start_daemon(config, log)
        seconds = wait_streaming(target, name, daemon, log)
        cpu = cpu_seconds(pid) - before
        daemon_cpu = cpu_seconds(daemon.pid)
        daemon.terminate()
        daemon.wait(30)
        out[f"austasync_copy_render_{render}_s"] = round(seconds, 2)
        out[f"austasync_copy_render_{render}_source_cpu_s_per_m_rows"] = round(cpu * per_m, 2)
        out[f"austasync_copy_render_{render}_daemon_cpu_s_per_m_rows"] = round(daemon_cpu * per_m, 2)

    # one full verification pass, no daemon (the copied database as it is)
    config = write_config(
        base / "quiet_verify.toml",
        "quiet_source",
        source,
        target,
        redis,
        'rename = { sbtest = "sbtest_quiet_source" }\n',
    )
    cfg = configmod.load(config)
    before = cpu_seconds(pid)
    started = time.monotonic()
    result = verifier.verify(cfg, verifier.NoDaemonAligner())
    assert result.consistent, "the quiet copy differs from the source"
    out["austasync_verify_s"] = round(time.monotonic() - started, 2)
    out["austasync_verify_source_cpu_s_per_m_rows"] = round((cpu_seconds(pid) - before) * per_m, 2)

    before = cpu_seconds(pid)
    started = time.monotonic()
    for n in range(1, 100):
        table = f"sbtest{n}"
        if not source.execute(f"SHOW TABLES FROM sbtest LIKE '{table}'"):
            break
        subprocess.run(
            [
                "pt-table-sync",
                "--print",
                f"h=127.0.0.1,P={source.port},u=root,D=sbtest,t={table}",
                f"h=127.0.0.1,P={target.port},u=root,D=sbtest_quiet_source,t={table}",
            ],
            check=True,
            capture_output=True,
        )
    out["pt_table_sync_s"] = round(time.monotonic() - started, 2)
    out["pt_table_sync_source_cpu_s_per_m_rows"] = round((cpu_seconds(pid) - before) * per_m, 2)
    out.update(chunk_queries(source, redis, base, pid))
    return out


def chunk_queries(source: MariaDB, redis: Redis, base: Path, pid: int) -> dict[str, Any]:
    """The copy's chunk reads over every table in one snapshot: rendered by the source (the default) against a
    plain SELECT of the same chunks (what daemon-side rendering asks of the source), each with the source's CPU and
    this process's (the daemon's share of the work)."""
    config = write_config(base / "chunks.toml", "chunks", source, source, redis)
    cfg = configmod.load(config)
    conn = connect(cfg.source, "source")
    tables = list(load_tables(conn, cfg).values())
    conn.close()
    out: dict[str, Any] = {}
    reader = SnapshotReader(cfg.source, "source")  # read_chunk renders on the source; render_chunk here
    # the source's twice: the first warms the buffer pool; plain also in chunks of 50,000 (per-query overhead)
    for mode, limit in (("source", 5000), ("plain", 5000), ("daemon", 5000), ("source", 5000), ("plain", 50000)):
        rows = 0
        before, client = cpu_seconds(pid), time.process_time()
        reader.open_snapshot(tables)
        for table in tables:
            cursor = None
            while True:
                if mode == "source":
                    chunk = reader.read_chunk(table, cursor, limit)
                    count, cursor, last = chunk.count, chunk.last_key, chunk.is_last
                elif mode == "plain":
                    raw = reader.read_rows(table, cursor, limit)
                    count, last = len(raw), len(raw) < limit
                    cursor = tuple(raw[-1][: len(table.key)]) if raw else None  # type: ignore[arg-type]
                else:
                    chunk = reader.render_chunk(table, cursor, limit)
                    count, cursor, last = chunk.count, chunk.last_key, chunk.is_last
                rows += count
                if last or cursor is None:
                    break
        reader.close_snapshot()
        per_m = 1e6 / max(rows, 1)
        label = mode if limit == 5000 else f"{mode}_{limit}"
        out[f"chunks_{label}_source_cpu_s_per_m_rows"] = round((cpu_seconds(pid) - before) * per_m, 2)
        out[f"chunks_{label}_client_cpu_s_per_m_rows"] = round((time.process_time() - client) * per_m, 2)
        out["chunks_rows"] = rows
    reader.close()
    return out


@contextlib.contextmanager
def servers(base: Path) -> Iterator[tuple[MariaDB, MariaDB, Redis]]:
    (base / "tmp").mkdir()
    # the whole data set in the buffer pool, so the phases compare CPU and not the disk
    extra = (f"--tmpdir={base / 'tmp'}", "--innodb-buffer-pool-size=1G")
    source = MariaDB(base / "src", 31, extra=extra)
    target = MariaDB(base / "dst", 32, extra=extra)
    redis = Redis(base / "redis")
    for server in (source, target, redis):
        server.start()
    assert source.proc is not None
    # its own core, and ahead of anything else that lands there (a shared machine runs other jobs on CPU 0 too):
    # the nearest this box gets to a production source on its own host
    pin(source.proc.pid, SOURCE_CPU, nice=-10)
    try:
        yield source, target, redis
    finally:
        for server in (redis, target, source):
            server.stop()


def control(port: int, action: str) -> None:
    """The daemon's /control/throttle/<action> (loopback: no token needed)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/control/throttle/{action}", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        response.read()


def loaded_copy(
    out: dict[str, Any],
    label: str,
    config: Path,
    name: str,
    servers: tuple[MariaDB, MariaDB],
    base: Path,
    bench: Sysbench,
    args: argparse.Namespace,
    port: int,
) -> subprocess.Popen[bytes]:
    """A daemon copying under the load, paused and resumed slice by slice until every table is copied (it then
    goes on streaming)."""
    source, target = servers
    log = base / f"{name}.log"
    phase = Phase(label, source)
    daemon = start_daemon(config, log)
    deadline = time.monotonic() + 60
    while phase_of(target, name) is None and time.monotonic() < deadline:  # started: the copy follows
        time.sleep(0.1)
    began = time.monotonic()
    alternate(
        phase,
        bench,
        args.slice_seconds,
        (lambda: control(port, "resume"), lambda: control(port, "pause")),
        10_000,
        over=lambda: phase_of(target, name) == "streaming",
    )
    control(port, "resume")
    wait_streaming(target, name, daemon, log)
    out[label] = phase.done()
    out[label]["copy_wall_s"] = round(time.monotonic() - began, 1)
    off = out[label].get("off", {}).get("source_cores", 0.0)
    # the copy's source CPU: the phase's, less what the load alone takes (the "off" slices' rate)
    out[label]["copy_source_cpu_s_per_m_rows"] = round(
        (out[label]["source_cpu_s"] - off * out[label]["seconds"]) * 1e6 / (args.tables * args.rows), 2
    )
    return daemon


def loaded_phases(
    source: MariaDB, target: MariaDB, redis: Redis, base: Path, args: argparse.Namespace
) -> dict[str, Any]:
    bench = Sysbench(source, args.tables, args.rows, args.threads, args.rate, args.load_cpu)
    out: dict[str, Any] = {}
    baseline = Phase("baseline", source)
    for _ in range(args.slices):
        baseline.off.append(baseline.slice(bench, args.slice_seconds))
    out["baseline"] = baseline.done()

    # the render that is not the default first, into a database of its own, by a daemon stopped once copied
    other = "daemon" if configmod.CopyConfig().render == "source" else "source"
    for label, render in ((f"copy_render_{other}", other), ("copy", configmod.CopyConfig().render)):
        name = f"loaded_{render}"
        port = free_port()
        config = write_config(
            base / f"{name}.toml",
            name,
            source,
            target,
            redis,
            f'rename = {{ sbtest = "sbtest_{name}" }}\n[copy]\nrender = "{render}"\n[verify]\ninterval_seconds = 0\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\n',
        )
        if args.skip_copy_phases and label != "copy":
            continue
        if args.skip_copy_phases:  # copied without the load, only to stream and verify
            daemon = start_daemon(config, base / f"{name}.log")
            wait_streaming(target, name, daemon, base / f"{name}.log")
            continue
        daemon = loaded_copy(out, label, config, name, (source, target), base, bench, args, port)
        out[label]["render"] = render
        if label != "copy":
            daemon.terminate()
            daemon.wait(30)

    # streaming, held by stopping the daemon's process (the binlog waits; the next "on" slice catches it up)
    streaming = Phase("streaming", source)
    alternate(
        streaming,
        bench,
        args.slice_seconds,
        (lambda: daemon.send_signal(signal.SIGCONT), lambda: daemon.send_signal(signal.SIGSTOP)),
        args.slices,
    )
    daemon.send_signal(signal.SIGCONT)
    out["streaming"] = streaming.done()

    cfg = configmod.load(config)
    aligner = verifier.HttpAligner(f"http://127.0.0.1:{port}")
    paces = [("verify_full", 1.0), ("verify_paced", cfg.verify.pace)]
    paces += [(f"verify_paced_{pace:g}", pace) for pace in args.more_paces]
    if args.closed_rests:
        paces.append(("verify_paced_closed_rests", cfg.verify.pace))
    for label, pace in paces:
        # an experiment: every rest of a paced pass taken with its snapshots closed (verifier.LONG_REST_SECONDS)
        verifier.LONG_REST_SECONDS = 0.0 if label == "verify_paced_closed_rests" else LONG_REST
        phase = Phase(label, source)
        stop = threading.Event()
        held = {"reason": ""}
        checked: list[int] = []
        worker = threading.Thread(target=verify_passes, args=(cfg, aligner, pace, held, stop, checked))
        worker.start()
        alternate(
            phase,
            bench,
            args.slice_seconds,
            (lambda held=held: held.update(reason=""), lambda held=held: held.update(reason="held by the benchmark")),
            args.slices,
        )
        stop.set()
        held["reason"] = ""
        worker.join()
        out[label] = phase.done()
        out[label]["passes"] = len(checked)
        out[label]["rows_checked"] = sum(checked)
    daemon.terminate()
    daemon.wait(30)
    for label in ("copy", f"copy_render_{other}", "streaming", *(label for label, _ in paces)):
        if "on" in out.get(label, {}):  # a copy shorter than one slice has none
            out[label]["p99_vs_baseline"] = round(out[label]["on"]["p99_ms"] / out["baseline"]["off"]["p99_ms"], 2)
    return out


def verify_passes(
    cfg: configmod.Config,
    aligner: verifier.Aligner,
    pace: float,
    held: dict[str, str],
    stop: threading.Event,
    checked: list[int],
) -> None:
    """Verification passes back to back until ``stop``, waiting while ``held`` has a reason (the verifier's hold,
    as the operator's pause holds the daemon's): the rows each pass checked."""
    while not stop.is_set():
        result = verifier.verify(cfg, aligner, pace=pace, hold=lambda: held["reason"])
        assert result.consistent, "the target differs from the source"
        checked.append(sum(t.rows_checked for t in result.tables))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=4)
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--rate", type=int, default=300, help="sysbench transactions per second on the source")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--slice-seconds", type=int, default=5)
    parser.add_argument("--slices", type=int, default=6, help="slices per phase (the copy's: as long as it lasts)")
    parser.add_argument("--mydumper-threads", type=int, default=2)
    parser.add_argument("--skip-quiet", action="store_true", help="only the loaded phases")
    parser.add_argument("--skip-copy-phases", action="store_true", help="copy unmeasured; stream and verify")
    parser.add_argument("--load-cpu", type=int, default=OTHERS_CPU, help="where sysbench runs (default: CPU 1)")
    parser.add_argument(
        "--closed-rests", action="store_true", help="also a paced phase whose every rest closes the snapshots"
    )
    parser.add_argument(
        "--more-paces", type=float, nargs="*", default=[], help="verification paces to measure besides 1 and 0.5"
    )
    args = parser.parse_args()
    ensure_packages()
    logmod.configure(configmod.LogConfig(level="warning"))  # the in-process verifier's log, off stdout's JSON line
    os.sched_setaffinity(0, {OTHERS_CPU})  # this script and everything it starts; the source is moved to CPU 0
    base = Path(tempfile.mkdtemp(prefix="austasync-impact-", dir=os.environ.get("AUSTASYNC_BENCH_DIR")))
    started = time.monotonic()
    try:
        with servers(base) as (source, target, redis):
            bench = Sysbench(source, args.tables, args.rows, args.threads, args.rate)
            source.execute("CREATE DATABASE sbtest")
            bench.prepare()
            source.execute("ANALYZE TABLE " + ", ".join(f"sbtest.sbtest{n}" for n in range(1, args.tables + 1)))
            results: dict[str, Any] = {
                "tables": args.tables,
                "rows_per_table": args.rows,
                "rate": args.rate,
                "threads": args.threads,
            }
            if not args.skip_quiet:
                results["quiet"] = quiet_figures(
                    source, target, redis, base, args.tables * args.rows, args.mydumper_threads
                )
            results["loaded"] = loaded_phases(source, target, redis, base, args)
            results.update(
                machine=f"{os.cpu_count()} cores",
                date=time.strftime("%Y-%m-%d"),
                total_s=round(time.monotonic() - started),
            )
            print(json.dumps(results))
    finally:
        if os.environ.get("AUSTASYNC_BENCH_KEEP"):
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
