"""``python -m austasync.demo``: the onboarding portal migrated live, on throwaway local servers.

    python -m austasync.demo [local] [--users N] [--rate OPS] [--seconds S] [--keep] [--dir DIR]
    python -m austasync.demo load --host H --port P --user U [--password-file F] [--users N]
    python -m austasync.demo workload --host H --port P --user U [--password-file F] [--rate OPS] [--seconds S]

``local`` (the default) starts a MariaDB source and target and a Redis in a temp dir, loads the portal, runs
``austasync preflight``, then ``austasync run`` while the workload writes to the source; after ``--seconds``
(or Ctrl-C) it stops the workload, waits until the target has caught up, compares every table row by row and
exits 0 only if they are identical. ``load`` and ``workload`` do their part against any server (the Docker
compose stack uses them against MySQL 8.0).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pymysql

from austasync.config import RedisConfig, Secret
from austasync.db import Connection, query
from austasync.demo import portal
from austasync.demo.servers import MariaDB, Redis, free_port
from austasync.demo.workload import Workload
from austasync.mirror import Mirror

MIGRATION = "demo"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def connector(host: str, port: int, user: str, password: str) -> Any:
    def connect() -> Connection:
        conn: Connection = pymysql.connect(
            host=host, port=port, user=user, password=password, charset="utf8mb4", autocommit=False
        )
        query(conn, "SET SESSION time_zone = '+00:00'")
        return conn

    return connect


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return Path(args.password_file).read_text(encoding="utf-8").rstrip("\r\n")
    return str(os.environ.get("DEMO_DB_PASSWORD", ""))


def _wait_for_server(connect: Any, seconds: float = 120) -> Connection:
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn: Connection = connect()
            return conn
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def cmd_load(args: argparse.Namespace) -> int:
    conn = _wait_for_server(connector(args.host, args.port, args.user, _password(args)))
    try:
        if query(
            conn,
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'users'",
            (portal.DATABASE,),
        ):
            say(f"{portal.DATABASE} is already loaded; nothing to do")
            return 0
        counts = portal.load(conn, args.users)
    finally:
        conn.close()
    say("loaded " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


def cmd_workload(args: argparse.Namespace) -> int:
    workload = Workload(connector(args.host, args.port, args.user, _password(args)), rate=args.rate)
    signal.signal(signal.SIGTERM, lambda *_: workload.stop())
    counts = workload.run(args.seconds)
    say("workload: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


# --- local: everything on this machine --------------------------------------------------------------------------


def _users(source: MariaDB, target: MariaDB, base: Path) -> tuple[Path, Path]:
    """README's grants, with random passwords in files only the owner can read (password_file in the config)."""
    repl_pw, target_pw = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    source.execute(
        f"CREATE USER 'repl'@'%' IDENTIFIED BY '{repl_pw}'",
        "GRANT SELECT, SHOW VIEW, REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR, REPLICATION MASTER ADMIN, PROCESS"
        " ON *.* TO 'repl'@'%'",
    )
    target.execute(
        f"CREATE USER 'austasync'@'%' IDENTIFIED BY '{target_pw}'",
        f"GRANT ALL PRIVILEGES ON {portal.DATABASE}.* TO 'austasync'@'%'",
        "GRANT ALL PRIVILEGES ON _austasync.* TO 'austasync'@'%'",
        "GRANT CONNECTION ADMIN, REPLICATION SLAVE, BINLOG MONITOR, PROCESS ON *.* TO 'austasync'@'%'",
        "GRANT SELECT ON mysql.innodb_table_stats TO 'austasync'@'%'",
    )
    paths = []
    for name, value in (("source.password", repl_pw), ("target.password", target_pw)):
        path = base / name
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        paths.append(path)
    return paths[0], paths[1]


def _config(base: Path, source: MariaDB, target: MariaDB, redis_url: str, metrics_port: int) -> Path:
    path = base / "austasync.toml"
    path.write_text(
        f"""# written by python -m austasync.demo
[source]
host = "127.0.0.1"
port = {source.port}
user = "repl"
password_file = "source.password"

[target]
host = "127.0.0.1"
port = {target.port}
user = "austasync"
password_file = "target.password"

[redis]
url = "{redis_url}"

[replication]
server_id = 4321
databases = ["{portal.DATABASE}"]
name = "{MIGRATION}"

[copy]
chunk_rows = 1000

[http]
listen = "127.0.0.1:{metrics_port}"
"""
    )
    return path


def _caught_up(source: MariaDB, target: MariaDB) -> bool:
    try:
        rows = target.execute(f"SELECT file, pos, phase FROM _austasync.state WHERE migration = '{MIGRATION}'")
    except pymysql.err.MySQLError:
        return False
    head = source.execute("SHOW MASTER STATUS")[0]
    return (
        bool(rows) and rows[0][2] == "streaming" and (str(rows[0][0]), str(rows[0][1])) == (str(head[0]), str(head[1]))
    )


def _table_rows(server: MariaDB, table: str) -> list[tuple[Any, ...]]:
    conn = server.connect(conv={}, use_unicode=False)  # every value as the server's bytes
    try:
        query(conn, "SET SESSION time_zone = '+00:00'")
        key = "user_id, badge_id" if table == "user_badges" else "id"
        return query(conn, f"SELECT * FROM `{portal.DATABASE}`.`{table}` ORDER BY {key}")
    finally:
        conn.close()


def compare(source: MariaDB, target: MariaDB) -> tuple[int, list[str]]:
    """Rows compared and the tables that differ: every column of every row, as bytes."""
    total, differ = 0, []
    for table in portal.TABLES:
        left, right = _table_rows(source, table), _table_rows(target, table)
        total += len(left)
        if left != right:
            differ.append(f"{table}: source {len(left)} rows, target {len(right)} rows, contents differ")
    return total, differ


def _status_line(mirror: Mirror) -> str:
    doc = mirror.status() or {}
    tables = doc.get("tables") or {}
    done = sum(1 for t in tables.values() if t.get("done"))
    copied = sum(int(t.get("rows_copied", 0)) for t in tables.values())
    return (
        f"phase {doc.get('phase', 'starting')}, tables copied {done}/{len(tables)}, rows copied {copied},"
        f" lag {doc.get('lag_seconds', '?')} s, position {doc.get('position', '-')}"
    )


def _prepare(args: argparse.Namespace, base: Path, source: MariaDB, target: MariaDB, redis: Redis) -> tuple[Path, int]:
    """Servers up, users with README's grants, the portal loaded, the config written; (config, metrics port)."""
    say(f"starting a MariaDB source and target and a Redis under {base}")
    for server in (source, target, redis):
        server.start()
    say(f"source 127.0.0.1:{source.port}, target 127.0.0.1:{target.port}, redis {redis.url}")
    _users(source, target, base)
    conn = source.connect(autocommit=False)
    try:
        counts = portal.load(conn, args.users)
    finally:
        conn.close()
    say(f"loaded the onboarding portal into {portal.DATABASE}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    metrics_port = free_port()
    return _config(base, source, target, redis.url, metrics_port), metrics_port


def _watch(daemon: subprocess.Popen[bytes], mirror: Mirror, seconds: float, interactive: bool) -> bool:
    """Let it stream for ``seconds`` (0: until Ctrl-C); False if the daemon died meanwhile."""
    deadline = time.monotonic() + seconds if seconds > 0 else None
    try:
        while deadline is None or time.monotonic() < deadline:
            if daemon.poll() is not None:
                return False
            time.sleep(5 if interactive else 2)
            if not interactive:  # on a terminal the daemon draws its own progress line
                say(_status_line(mirror))
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return True


def _verify(source: MariaDB, target: MariaDB, daemon: subprocess.Popen[bytes]) -> int:
    say("waiting for the target to catch up with the source")
    deadline = time.monotonic() + 300
    while not _caught_up(source, target):
        if daemon.poll() is not None or time.monotonic() > deadline:
            say("the target did not catch up")
            return 1
        time.sleep(0.5)
    rows, differ = compare(source, target)
    if differ:
        say("MISMATCH: " + "; ".join(differ))
        return 1
    say(f"source and target are identical: {len(portal.TABLES)} tables, {rows} rows compared byte for byte")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="austasync-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    source, target, redis = MariaDB(base / "source", 1), MariaDB(base / "target", 2), Redis(base / "redis")
    daemon: subprocess.Popen[bytes] | None = None
    workload = Workload(connector("127.0.0.1", source.port, "root", ""), rate=args.rate)
    interactive = sys.stderr.isatty()
    try:
        config, metrics_port = _prepare(args, base, source, target, redis)
        cli = [sys.executable, "-m", "austasync"]
        say(f"austasync preflight --config {config}")
        if subprocess.run([*cli, "preflight", "--config", str(config)], check=False).returncode != 0:
            say("preflight failed; not starting the daemon")
            return 1
        counts_box: list[Counter[str]] = []
        writer = threading.Thread(target=lambda: counts_box.append(workload.run(0)), name="workload", daemon=True)
        writer.start()
        say(f"workload writing to the source at ~{args.rate:g} transactions/s")
        log = None if interactive else (base / "daemon.log").open("wb")
        daemon = subprocess.Popen([*cli, "run", "--config", str(config)], stderr=log, stdout=log)
        say(f"austasync run started (pid {daemon.pid}); metrics: http://127.0.0.1:{metrics_port}/metrics")
        say(f"in another terminal: austasync status --config {config}")
        if not _watch(daemon, Mirror(RedisConfig(url=Secret(redis.url)), MIGRATION), args.seconds, interactive):
            say(f"austasync exited with {daemon.returncode}; its log: {base / 'daemon.log'} (--keep keeps it)")
            return 1
        workload.stop()
        writer.join(60)
        ops = counts_box[0] if counts_box else Counter()
        say("workload done: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
        return _verify(source, target, daemon)
    finally:
        workload.stop()
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()  # SIGTERM: a clean checkpoint, exit 0
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for server in (source, target, redis):
            with contextlib.suppress(Exception):  # stopping what may never have started
                server.stop()
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m austasync.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    local = sub.add_parser("local", help="everything on throwaway local servers (the default)")
    for p in (parser, local):
        p.add_argument("--users", type=int, default=2000, help="portal users to generate (default 2000)")
        p.add_argument("--rate", type=float, default=50.0, help="workload transactions per second (default 50)")
        p.add_argument("--seconds", type=float, default=60.0, help="how long to stream; 0 = until Ctrl-C")
        p.add_argument("--keep", action="store_true", help="keep the temp dir (datadirs, config, logs)")
        p.add_argument("--dir", help="work in this directory instead of a new temp dir")
    for name in ("load", "workload"):
        p = sub.add_parser(name, help=f"only the {name} step, against a running server")
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=3306)
        p.add_argument("--user", default="root")
        p.add_argument("--password-file", help="read the password here (else $DEMO_DB_PASSWORD)")
        if name == "load":
            p.add_argument("--users", type=int, default=2000)
        else:
            p.add_argument("--rate", type=float, default=20.0)
            p.add_argument("--seconds", type=float, default=0.0, help="0 = until SIGTERM")
    args = parser.parse_args(argv)
    if args.command == "load":
        return cmd_load(args)
    if args.command == "workload":
        return cmd_workload(args)
    return cmd_local(args)


if __name__ == "__main__":
    sys.exit(main())
