"""``austasync preflight``: everything that can be checked before a migration starts, each with a fix.

It only reads: no server setting, table or key is changed. Each check ends ``pass``, ``warn`` (works, but an
operator should know), ``fail`` (``run`` would refuse, stop later, or copy wrongly) or ``info``. The source's
replication settings, table keys and engines, foreign-key coverage and the target's shape and triggers are
checked by the very functions ``run`` uses at start-up (:func:`check_source`,
:mod:`austasync.schema`), so preflight and ``run`` cannot disagree on those.

Privileges are read from ``SHOW GRANTS`` (never printed: MariaDB includes the password hash in it) and compared
with README's grants; privileges that come from roles are not expanded, which turns a missing privilege into a
warning when the user has roles.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pymysql
import redis

from austasync import objects
from austasync.config import Config, DatabaseConfig, control_token_problem
from austasync.db import Connection, connect, query, server_flavor, setup_source_session, variable
from austasync.errors import ConfigError, SetupError, UnavailableError
from austasync.mirror import Mirror
from austasync.schema import (
    ForeignKey,
    Table,
    TableId,
    _describe_diff,
    _shape,
    _target_triggers,
    check_foreign_keys,
    load_foreign_keys,
    load_tables,
)
from austasync.sql import qualified, quote_ident
from austasync.triggers import blind_databases

Status = Literal["pass", "warn", "fail", "info"]

#: rows per second assumed for the copy estimate when no ceiling is configured: a third of what the benchmark
#: machine copied (4 x 50k sysbench rows in 7 s), because production sources throttle the copy
ASSUMED_COPY_ROWS_PER_SECOND = 10_000
#: below this, a daemon outage (a weekend, a broken host) outlives the binlog it needs and forces a re-copy
RETENTION_WARN_SECONDS = 24 * 3600
CLOCK_SKEW_WARN_SECONDS = 1.0
#: lag is measured against the source's binlog timestamps with this host's clock, so skew shows up as lag
#: (and holds the copy's lag throttle, 30 s by default, for no reason)
CLOCK_SKEW_FAIL_SECONDS = 10.0
ER_ACCESS_DENIED_NEED_PRIVILEGE = (1227, 1142, 1044)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


@dataclass(frozen=True)
class Check:
    id: str
    status: Status
    title: str
    detail: tuple[str, ...] = ()
    fix: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    config_errors: list[str] = field(default_factory=list)

    def add(self, check: Check) -> None:
        self.checks.append(check)

    @property
    def exit_code(self) -> int:
        if self.config_errors:
            return EXIT_USAGE
        if self.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_FAILED if any(c.status == "fail" for c in self.checks) else EXIT_OK

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "warn": 0, "fail": 0, "info": 0}
        for check in self.checks:
            out[check.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "unreachable": self.unreachable,
            "checks": [{**asdict(c), "detail": list(c.detail)} for c in self.checks],
        }

    def by_id(self, check_id: str) -> Check:
        for check in self.checks:
            if check.id == check_id:
                return check
        raise KeyError(check_id)


# --- connecting -------------------------------------------------------------------------------------------------


def check_source(conn: Connection) -> list[str]:
    """The source settings austasync cannot work without; each item says what to change."""
    problems = []
    flavor, version = server_flavor(conn)
    if flavor == "mysql" and version < (8, 0, 14):
        problems.append(f"MySQL {'.'.join(map(str, version))} is too old: binlog_row_metadata=FULL needs 8.0.14+")
    if flavor == "mariadb" and version < (10, 5):
        problems.append(f"MariaDB {'.'.join(map(str, version))} is too old: binlog_row_metadata needs 10.5+")
    expected = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}
    for name, want in expected.items():
        have = variable(conn, name)
        if (have or "").upper() != want:
            problems.append(f"source {name} is {have or 'unset'}; set {name}={want} in the source's my.cnf")
    return problems


def _connect(report: Report, cfg: DatabaseConfig, role: str) -> Connection | None:
    check_id = f"{role}.connect"
    try:
        conn = connect(cfg, role)
    except UnavailableError as exc:
        report.unreachable.append(role)
        report.add(Check(check_id, "fail", f"cannot connect to the {role}", (str(exc),), _connect_fix(str(exc))))
        return None
    except ConfigError as exc:
        report.config_errors.append(str(exc))
        report.add(Check(check_id, "fail", f"cannot get the {role} password", (str(exc),), "fix the named key"))
        return None
    setup_source_session(conn)  # time_zone +00:00: the clock check compares epochs
    flavor, version = server_flavor(conn)
    user = str(query(conn, "SELECT CURRENT_USER()")[0][0])
    name = f"{'MariaDB' if flavor == 'mariadb' else 'MySQL'} {'.'.join(map(str, version))}"
    report.add(Check(check_id, "pass", f"connected to the {role} as {user} ({name})"))
    return conn


def _connect_fix(message: str) -> str:
    if "Access denied" in message:
        return "check the user, its host part and the password reference (see README: Grants)"
    return "check host, port, firewall and that the server runs; `austasync run` would exit 3 here"


# --- source -----------------------------------------------------------------------------------------------------


def check_settings(conn: Connection) -> Check:
    problems = check_source(conn)
    if problems:
        return Check(
            "source.settings",
            "fail",
            "the source is not set up for row-based replication",
            tuple(problems),
            "change these in the source's my.cnf and restart it (austasync never changes a source setting)",
        )
    return Check(
        "source.settings",
        "pass",
        "version and binlog settings: log_bin=ON, binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL",
    )


def check_compression(conn: Connection, side: str = "source") -> Check:
    """Compressed binlog events (MariaDB) and compressed transactions (MySQL 8.0.20+) cannot be decoded: on the
    source the stream would stop, on the target foreign writes could not be seen."""
    found = []
    for name in ("log_bin_compress", "binlog_transaction_compression"):
        value = variable(conn, name)
        if value is not None and value.upper() in ("ON", "1"):
            found.append(name)
    if found:
        why = (
            "the binlog reader cannot decode compressed events; `run` would stop with exit 12 at the first one"
            if side == "source"
            else "the target-write watcher cannot see the tables of compressed events: drift would go unnoticed"
        )
        return Check(
            f"{side}.compression",
            "fail",
            f"the {side} compresses its binlog: " + ", ".join(f"{n}=ON" for n in found),
            (why,),
            "set " + ", ".join(f"{n}=OFF" for n in found) + f" on the {side} (SET GLOBAL and in my.cnf)",
        )
    return Check(f"{side}.compression", "pass", "binlog events and transactions are not compressed")


def check_tls(conn: Connection, cfg: DatabaseConfig, side: str) -> Check:
    """Whether the connection is encrypted; unencrypted traffic between hosts carries the patients' data."""
    rows = query(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    cipher = rows[0][1] if rows else ""
    cipher = cipher.decode() if isinstance(cipher, bytes) else str(cipher or "")
    if cipher:
        return Check(f"{side}.tls", "pass", f"connections to the {side} are encrypted ({cipher}, tls = {cfg.tls})")
    if cfg.host in ("127.0.0.1", "localhost", "::1"):
        return Check(f"{side}.tls", "info", f"connections to the {side} are not encrypted (loopback)")
    return Check(
        f"{side}.tls",
        "warn",
        f"connections to the {side} ({cfg.host}) are not encrypted",
        ("rows, binlog events and passwords cross the network in clear",),
        f'enable TLS on the {side} server and set [{side}] tls = "verify_identity" with tls_ca',
    )


def check_partial_json(conn: Connection) -> Check:
    value = variable(conn, "binlog_row_value_options")
    if value is None:
        return Check("source.partial_json", "pass", "no partial JSON updates (the server has no such option)")
    if "PARTIAL_JSON" in value.upper():
        return Check(
            "source.partial_json",
            "fail",
            "binlog_row_value_options=PARTIAL_JSON: JSON updates are logged as diffs",
            ("a JSON diff cannot be applied exactly; `run` would stop with exit 12 at the first one",),
            "SET GLOBAL binlog_row_value_options='' on the source and remove it from my.cnf",
        )
    return Check("source.partial_json", "pass", "JSON updates are logged as full values")


def retention_seconds(conn: Connection) -> float | None:
    """How long the source keeps binlogs, or None when it never purges them by age."""
    if (variable(conn, "binlog_expire_logs_auto_purge") or "ON").upper() == "OFF":
        return None
    seconds = float(variable(conn, "binlog_expire_logs_seconds") or 0)
    if seconds <= 0:
        seconds = float(variable(conn, "expire_logs_days") or 0) * 86400
    return seconds if seconds > 0 else None


def estimate_copy_seconds(rows: int, config: Config) -> float:
    rate = float(ASSUMED_COPY_ROWS_PER_SECOND)
    if config.copy.max_rows_per_second > 0:
        rate = min(rate, float(config.copy.max_rows_per_second))
    return rows / rate


def _selected_rows(conn: Connection, config: Config) -> int:
    dbs = config.replication.databases
    rows = query(
        conn,
        "SELECT TABLE_SCHEMA, TABLE_NAME, COALESCE(TABLE_ROWS, 0) FROM information_schema.TABLES"
        # only base tables are copied: every other type is a view (no rows of its own) or refused by source.tables
        f" WHERE TABLE_SCHEMA IN ({','.join(['%s'] * len(dbs))}) AND TABLE_TYPE = 'BASE TABLE'",
        dbs,
    )
    return sum(int(r[2]) for r in rows if config.table_selected(str(r[0]), str(r[1])))


def check_retention(conn: Connection, config: Config) -> Check:
    rows = _selected_rows(conn, config)
    estimate = estimate_copy_seconds(rows, config)
    retention = retention_seconds(conn)
    basis = (
        f"~{rows} rows at {min(ASSUMED_COPY_ROWS_PER_SECOND, config.copy.max_rows_per_second or 10**12)} rows/s:"
        f" estimated copy {_duration(estimate)}"
    )
    if retention is None:
        return Check("source.retention", "pass", f"binlogs are not purged by age; {basis}")
    detail = (basis, f"the source keeps binlogs for {_duration(retention)}")
    fix = (
        f"raise binlog_expire_logs_seconds on the source to at least {max(int(2 * estimate), RETENTION_WARN_SECONDS)}"
        " (MariaDB 10.5: expire_logs_days)"
    )
    if retention < 2 * estimate:
        return Check(
            "source.retention",
            "fail",
            "binlog retention is shorter than twice the estimated copy time",
            (
                *detail,
                "a copy slowed by throttling, or a restart during it, would need binlogs already purged (exit 14)",
            ),
            fix,
        )
    if retention < RETENTION_WARN_SECONDS:
        return Check(
            "source.retention",
            "warn",
            f"binlog retention is {_duration(retention)}: a daemon outage longer than that forces a full re-copy",
            detail,
            fix,
        )
    return Check("source.retention", "pass", f"binlogs kept {_duration(retention)}; {basis}")


def check_server_id(conn: Connection, config: Config) -> Check:
    """Two binlog clients with one server_id make the source drop one of them, over and over."""
    wanted = config.replication.server_id
    own = int(variable(conn, "server_id") or 0)
    if own == wanted:
        return Check(
            "source.server_id",
            "fail",
            f"replication.server_id {wanted} is the source's own server_id",
            (),
            "choose another replication.server_id, unique among the source and its replicas",
        )
    replicas: list[tuple[Any, ...]] | None = None
    denied = ""
    for statement in ("SHOW REPLICAS", "SHOW REPLICA HOSTS", "SHOW SLAVE HOSTS"):
        try:
            replicas = query(conn, statement)
            break
        except pymysql.err.ProgrammingError:
            continue  # syntax this server does not know
        except (pymysql.err.OperationalError, pymysql.err.InternalError) as exc:
            if exc.args and exc.args[0] in ER_ACCESS_DENIED_NEED_PRIVILEGE:
                denied = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
                break
            raise
    if replicas is None:
        return Check(
            "source.server_id",
            "warn",
            f"cannot list the source's replicas to check that server_id {wanted} is unused",
            (denied,) if denied else (),
            "grant REPLICATION MASTER ADMIN (MariaDB) to the source user, or check SHOW REPLICA HOSTS by hand",
        )
    clash = [r for r in replicas if int(r[0]) == wanted]
    if clash:
        hosts = [f"{r[1] or '?'}:{r[2]}" for r in clash]
        return Check(
            "source.server_id",
            "fail",
            f"replication.server_id {wanted} is already used by a replica of the source ({', '.join(hosts)})",
            (),
            "choose a replication.server_id that no replica uses (SHOW REPLICA HOSTS on the source lists them)",
        )
    ids = sorted(int(r[0]) for r in replicas)
    return Check(
        "source.server_id",
        "pass",
        f"server_id {wanted} is unique (source {own}, registered replicas: {', '.join(map(str, ids)) or 'none'})",
        ("replicas that do not register (no report_host, other binlog readers) are not listed",),
    )


def check_tables(
    report: Report, conn: Connection, config: Config
) -> tuple[dict[TableId, Table] | None, list[ForeignKey]]:
    try:
        tables = load_tables(conn, config)
    except SetupError as exc:
        lines = str(exc).splitlines()
        report.add(Check("source.tables", "fail", lines[0], tuple(x.strip() for x in lines[1:]), "see the list"))
        return None, []
    if not tables:
        report.add(
            Check(
                "source.tables",
                "fail",
                f"no table selected in {', '.join(config.replication.databases)}",
                (),
                "check replication.databases and the include/exclude lists",
            )
        )
        return None, []
    report.add(Check("source.tables", "pass", f"{len(tables)} tables, all InnoDB with a usable key"))
    all_fks = load_foreign_keys(conn, tables)
    try:
        fks = check_foreign_keys(tables, all_fks)
    except SetupError as exc:
        lines = str(exc).splitlines()
        report.add(
            Check(
                "source.foreign_keys",
                "fail",
                "replicated tables cascade from tables that are not replicated",
                tuple(x.strip() for x in lines[1:]),
                lines[0],
            )
        )
        return tables, []
    report.add(Check("source.foreign_keys", "pass", "every cascading parent of a replicated table is replicated"))
    acting = [fk for fk in fks if fk.acts]
    report.add(
        Check(
            "source.cascades",
            "info",
            f"{len(acting)} foreign keys cascade; their effects are not in the binlog and are reproduced by austasync",
            tuple(_describe_fk(fk) for fk in acting),
        )
    )
    triggers = query(
        conn,
        "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME FROM information_schema.TRIGGERS"
        f" WHERE EVENT_OBJECT_SCHEMA IN ({','.join(['%s'] * len(config.replication.databases))})",
        config.replication.databases,
    )
    source_triggers = [f"{r[2]} on {r[0]}.{r[1]}" for r in triggers if (str(r[0]), str(r[1])) in tables]
    blind = blind_databases(conn, config.replication.databases)
    if blind:
        report.add(
            Check(
                "source.triggers",
                "info",
                f"the source user cannot see triggers in {', '.join(blind)} (no TRIGGER privilege; streaming does"
                " not need it)",
                tuple(source_triggers),
                "`austasync cutover` moves the source's triggers to the target and refuses without it: run it"
                " with a source user that has TRIGGER (and may set read_only), or GRANT TRIGGER ON <db>.*",
            )
        )
    elif source_triggers:
        report.add(
            Check(
                "source.triggers",
                "info",
                f"{len(source_triggers)} source triggers: their effects arrive as row events; `austasync cutover`"
                " creates them on the target at promotion (and saves and drops them on the source)",
                tuple(source_triggers),
            )
        )
    return tables, fks


def check_objects(conn: Connection, config: Config) -> Check:
    """Views, routines, events and triggers of the replicated databases, and what becomes of each; fails when
    the definitions `run` creates on the target cannot be read."""
    found = objects.inventory(conn, config)
    detail = [
        f"{label} ({len(names)}): {', '.join(names)}"
        for label, names in (
            ("views, created on the target at start", found.views),
            ("procedures, created on the target at start", found.procedures),
            ("functions, created on the target at start", found.functions),
            ("events, not created on the target (they would write there): create them after cutover", found.events),
            ("triggers, moved to the target by `austasync cutover`", found.triggers),
        )
        if names
    ]
    blind = blind_databases(conn, config.replication.databases, "EVENT")
    if blind:
        detail.append(
            f"the source user cannot see events in {', '.join(blind)} (no EVENT privilege; austasync does not need"
            " it): list them as a user that has it, and create them on the target after cutover"
        )
    title = (
        f"{len(found.views)} views, {len(found.procedures)} procedures, {len(found.functions)} functions,"
        f" {len(found.events)} events, {len(found.triggers)} triggers in the replicated databases"
    )
    try:
        objects.read_definitions(conn, config)
    except SetupError as exc:
        message = str(exc)
        return Check("source.objects", "fail", title, (*detail, message), message.rpartition("; ")[2])
    return Check("source.objects", "info", title, tuple(detail))


def _describe_fk(fk: ForeignKey) -> str:
    actions = []
    if fk.on_delete in ("CASCADE", "SET NULL"):
        actions.append(f"ON DELETE {fk.on_delete}")
    if fk.on_update in ("CASCADE", "SET NULL"):
        actions.append(f"ON UPDATE {fk.on_update}")
    return (
        f"{fk.child[0]}.{fk.child[1]}({', '.join(fk.child_columns)}) -> {fk.parent[0]}.{fk.parent[1]}"
        f"({', '.join(fk.parent_columns)}) {' '.join(actions)}"
    )


# --- grants -----------------------------------------------------------------------------------------------------

_GRANT = re.compile(
    r"^GRANT (?P<privs>.+?) ON (?P<db>\*|`(?:[^`]|``)+`)\.(?P<table>\*|`(?:[^`]|``)+`) TO ", re.IGNORECASE
)
_ROLE_GRANT = re.compile(r"^GRANT (`[^`]+`(@`[^`]*`)?(,\s*`[^`]+`(@`[^`]*`)?)*) TO ", re.IGNORECASE)
_ALIASES = {
    "REPLICATION CLIENT": "BINLOG MONITOR",  # MariaDB 10.5.2 renamed it; SHOW GRANTS prints either
    "REPLICA MONITOR": "SLAVE MONITOR",
    "REPLICATION REPLICA": "REPLICATION SLAVE",
}


@dataclass(frozen=True)
class Need:
    privilege: str
    db: str | None  # None: global (*.*)
    alternatives: tuple[str, ...] = ()  # any of these also satisfies it (SUPER for CONNECTION ADMIN)

    def __str__(self) -> str:
        return f"{self.privilege} ON {'*.*' if self.db is None else quote_ident(self.db) + '.*'}"


def _normal(privilege: str, flavor: str) -> str:
    name = " ".join(privilege.replace("_", " ").upper().split())
    name = re.sub(r"\s*\(.*\)$", "", name)  # column-level grants: SELECT (a, b)
    return _ALIASES.get(name, name) if flavor == "mariadb" else name


def _split_privileges(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _db_pattern(quoted: str) -> re.Pattern[str] | None:
    """A grant's database as a regex (grants use LIKE wildcards: `_` and `%`, with backslash escapes)."""
    if quoted == "*":
        return None
    name = quoted[1:-1].replace("``", "`")
    regex, i = "", 0
    while i < len(name):
        ch = name[i]
        if ch == "\\" and i + 1 < len(name):
            regex += re.escape(name[i + 1])
            i += 2
            continue
        regex += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    return re.compile(f"^{regex}$")


def parse_grants(lines: Iterable[str], flavor: str) -> tuple[list[tuple[re.Pattern[str] | None, set[str]]], bool]:
    """(database pattern or None for global, privileges) per grant line on a database or globally; has roles."""
    grants: list[tuple[re.Pattern[str] | None, set[str]]] = []
    roles = False
    for line in lines:
        match = _GRANT.match(line)
        if match is None:
            roles = roles or bool(_ROLE_GRANT.match(line))
            continue
        if match.group("table") != "*":
            continue  # table-level grants do not cover tables created later (or the state schema)
        privs = {_normal(p, flavor) for p in _split_privileges(match.group("privs"))}
        if "ALL" in privs:
            privs.add("ALL PRIVILEGES")
        grants.append((_db_pattern(match.group("db")), privs))
    return grants, roles


def missing_privileges(grants: Sequence[tuple[re.Pattern[str] | None, set[str]]], needs: Iterable[Need]) -> list[Need]:
    missing = []
    for need in needs:
        held: set[str] = set()
        for pattern, privs in grants:
            if pattern is None or (need.db is not None and pattern.match(need.db)):
                held |= privs
        if "ALL PRIVILEGES" in held or need.privilege in held or any(a in held for a in need.alternatives):
            continue
        missing.append(need)
    return missing


def source_needs(
    flavor: str, version: tuple[int, ...], databases: Sequence[str], watch_history: bool = True
) -> list[Need]:
    """README's source grants: read-only, never a global setting."""
    # PROCESS reads INNODB_METRICS (the throttle's history list length); without it the throttle stays active
    process = [Need("PROCESS", None)] if watch_history else []
    return _source_needs(flavor, version, databases) + process


def _source_needs(flavor: str, version: tuple[int, ...], databases: Sequence[str]) -> list[Need]:
    if flavor == "mariadb":
        needs = [Need("REPLICATION SLAVE", None), Need("BINLOG MONITOR", None)]
        if version >= (10, 5, 9):
            needs.append(Need("SLAVE MONITOR", None))
        # SHOW VIEW: views are read with SHOW CREATE VIEW to be created on the target (austasync.objects)
        return needs + [n for db in databases for n in (Need("SELECT", db), Need("SHOW VIEW", db))]
    # MySQL 8 copies under a brief LOCK TABLES ... READ to get an exact snapshot position
    return [Need("REPLICATION SLAVE", None), Need("REPLICATION CLIENT", None)] + [
        n for db in databases for n in (Need("SELECT", db), Need("SHOW VIEW", db), Need("LOCK TABLES", db))
    ]


def target_needs(config: Config, flavor: str = "mariadb") -> list[Need]:
    databases = sorted({config.replication.target_db(db) for db in config.replication.databases})
    needs = [Need("ALL PRIVILEGES", db) for db in [*databases, config.replication.state_schema]]
    # to read the target's own binlog, where writes that are not austasync's show up (foreign writes)
    monitor = Need("BINLOG MONITOR", None) if flavor == "mariadb" else Need("REPLICATION CLIENT", None)
    # to kill a stale daemon's sessions when taking over (fencing)
    return [*needs, Need("REPLICATION SLAVE", None), monitor, Need("CONNECTION ADMIN", None, ("SUPER",))]


def check_grants(conn: Connection, role: str, needs_for: Callable[[str, tuple[int, ...]], list[Need]]) -> Check:
    flavor, version = server_flavor(conn)
    current = str(query(conn, "SELECT CURRENT_USER()")[0][0])
    user, _, host = current.rpartition("@")
    lines = [str(r[0]) for r in query(conn, "SHOW GRANTS")]
    grants, has_roles = parse_grants(lines, flavor)
    missing = missing_privileges(grants, needs_for(flavor, version))
    if not missing:
        return Check(f"{role}.grants", "pass", f"{current} has every privilege austasync needs on the {role}")
    by_scope: dict[str, list[str]] = {}
    for need in missing:
        scope = "*.*" if need.db is None else f"{quote_ident(need.db)}.*"
        by_scope.setdefault(scope, []).append(need.privilege)
    fix = " ".join(f"GRANT {', '.join(p)} ON {s} TO '{user}'@'{host}';" for s, p in by_scope.items())
    detail = [f"missing: {need}" for need in missing]
    if has_roles:
        detail.append("the user has roles; privileges granted through roles are not counted here")
    return Check(
        f"{role}.grants",
        "warn" if has_roles else "fail",
        f"{current} lacks {len(missing)} privilege(s) on the {role}",
        tuple(detail),
        fix,
    )


# --- target -----------------------------------------------------------------------------------------------------


def check_target_server(conn: Connection) -> list[Check]:
    checks = []
    flavor, version = server_flavor(conn)
    too_old = (flavor == "mysql" and version < (8, 0, 14)) or (flavor == "mariadb" and version < (10, 5))
    if too_old:
        checks.append(
            Check(
                "target.version",
                "warn",
                f"the target runs {flavor} {'.'.join(map(str, version))}",
                ("reverse streaming after cutover needs MySQL 8.0.14+ or MariaDB 10.5+ (binlog_row_metadata)",),
                "upgrade the target",
            )
        )
    checks.append(check_compression(conn, "target"))
    log_bin = (variable(conn, "log_bin") or "OFF").upper()
    if log_bin != "ON":
        checks.append(
            Check(
                "target.binlog",
                "fail",
                "the target's binlog is off",
                (
                    "writes by anyone but austasync (drift) are detected from the target's binlog, and reverse"
                    " streaming after cutover reads it",
                ),
                "enable log_bin (and binlog_format=ROW) in the target's my.cnf and restart it",
            )
        )
    else:
        fmt = (variable(conn, "binlog_format") or "").upper()
        if fmt != "ROW":
            checks.append(
                Check(
                    "target.binlog",
                    "warn",
                    f"the target's binlog is on but binlog_format={fmt}",
                    ("reverse streaming after cutover needs ROW",),
                    "set binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL on the target",
                )
            )
        else:
            checks.append(Check("target.binlog", "pass", "the target's binlog is on (ROW)"))
    if (variable(conn, "read_only") or "OFF").upper() == "ON":
        checks.append(
            Check(
                "target.read_only",
                "warn",
                "the target is read_only",
                ("only a user with SUPER / READ_ONLY ADMIN can write to it",),
                "SET GLOBAL read_only = OFF on the target until cutover",
            )
        )
    return checks


def check_target_tables(conn: Connection, config: Config, tables: dict[TableId, Table], source: Connection) -> Check:
    """Empty or compatible: every existing target table has the source's shape; rows without a checkpoint warn."""
    has_state = _has_checkpoint(conn, config)
    mismatches, created, existing_with_rows = [], 0, []
    for table in tables.values():
        tdb = config.replication.target_db(table.db)
        have = _shape(conn, tdb, table.name)
        if not have:
            created += 1
            continue
        want = _shape(source, table.db, table.name)
        if have != want:
            mismatches.append(f"{tdb}.{table.name}: {_describe_diff(want, have)}")
        elif not has_state and query(conn, f"SELECT 1 FROM {qualified(tdb, table.name)} LIMIT 1"):
            existing_with_rows.append(f"{tdb}.{table.name}")
    if mismatches:
        return Check(
            "target.tables",
            "fail",
            "existing target tables have another shape than the source",
            tuple(mismatches),
            "drop them (austasync creates them) or alter them to match the source",
        )
    if existing_with_rows:
        return Check(
            "target.tables",
            "warn",
            f"{len(existing_with_rows)} target tables already hold rows but migration"
            f" {config.replication.name!r} has no checkpoint",
            tuple(existing_with_rows),
            "make sure this is the right target: the copy replaces those rows range by range",
        )
    state = "resumes from its checkpoint" if has_state else "starts from scratch"
    return Check(
        "target.tables",
        "pass",
        f"target compatible: {created} tables to create, {len(tables) - created} already match; the migration {state}",
    )


def _has_checkpoint(conn: Connection, config: Config) -> bool:
    try:
        rows = query(
            conn,
            f"SELECT 1 FROM {quote_ident(config.replication.state_schema)}.state WHERE migration = %s",
            (config.replication.name,),
        )
    except pymysql.err.MySQLError:
        return False  # no state schema yet
    return bool(rows)


def check_copy_binlog(conn: Connection, config: Config) -> Check:
    """``copy.target_binlog = false`` needs the right to turn the binlog off for a session; tried, then undone."""
    if config.copy.target_binlog:
        return Check("target.copy_binlog", "pass", "copied rows are written to the target's binlog (the default)")
    try:
        query(conn, "SET SESSION sql_log_bin = 0")
        query(conn, "SET SESSION sql_log_bin = 1")
    except pymysql.err.MySQLError as exc:
        return Check(
            "target.copy_binlog",
            "fail",
            "copy.target_binlog = false, but the target user cannot set sql_log_bin",
            (str(exc.args[-1]),),
            "grant BINLOG ADMIN (MariaDB 10.5+; SUPER before) or SYSTEM_VARIABLES_ADMIN (MySQL 8), or set"
            " copy.target_binlog = true",
        )
    return Check(
        "target.copy_binlog",
        "warn",
        "copy.target_binlog = false: copied rows skip the target's binlog",
        (),
        "replicas and binlog backups of the target will lack the copied rows; keep it true if the target has any",
    )


def check_target_triggers(conn: Connection, config: Config, tables: dict[TableId, Table]) -> Check:
    triggers = _target_triggers(conn, config, tables)
    if triggers:
        return Check(
            "target.triggers",
            "fail",
            "target tables have triggers, which would fire a second time on replicated rows",
            tuple(triggers),
            "drop them on the target (DROP TRIGGER ...): `austasync cutover` creates the source's triggers there"
            " at promotion",
        )
    return Check("target.triggers", "pass", "no triggers on the target tables")


# --- Redis and clocks -------------------------------------------------------------------------------------------


def check_redis(report: Report, config: Config) -> redis.Redis[str] | None:
    mirror = Mirror(config.redis, config.replication.name)
    try:
        mirror.ping()
        holder = mirror.lease_holder()
    except (UnavailableError, redis.RedisError) as exc:
        report.unreachable.append("redis")
        message = str(exc) if isinstance(exc, UnavailableError) else type(exc).__name__
        report.add(
            Check(
                "redis.connect",
                "fail",
                f"{config.redis.describe()}: cannot connect",
                (message,),
                "check [redis] url, username, password and tls_ca, and the server",
            )
        )
        return None
    report.add(Check("redis.connect", "pass", f"{config.redis.describe()} answers"))
    if holder:
        report.add(
            Check(
                "redis.lease",
                "info",
                f"a daemon holds migration {config.replication.name!r}: {holder.get('holder', '?')}",
                ("a second `run` would wait for it",),
            )
        )
    return mirror.client


def _mysql_epoch(conn: Connection) -> float:
    return float(query(conn, "SELECT UNIX_TIMESTAMP(NOW(6))")[0][0])


def _redis_epoch(client: redis.Redis[str]) -> float:
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def check_clocks(hosts: dict[str, Callable[[], float]], clock: Callable[[], float]) -> Check:
    """Each host's clock against this one, read halfway through the round trip."""
    skews: dict[str, float] = {}
    for name, read in hosts.items():
        before = clock()
        remote = read()
        after = clock()
        skews[name] = remote - (before + after) / 2
    detail = tuple(f"{name}: {skew:+.3f} s" for name, skew in skews.items())
    names = list(skews)
    pairs = [(a, b, abs(skews[a] - skews[b])) for i, a in enumerate(names) for b in names[i + 1 :]]
    pairs += [(name, "this host", abs(skew)) for name, skew in skews.items()]
    worst = max(pairs, key=lambda p: p[2], default=("", "", 0.0))
    if worst[2] >= CLOCK_SKEW_FAIL_SECONDS:
        status: Status = "fail"
    elif worst[2] >= CLOCK_SKEW_WARN_SECONDS:
        status = "warn"
    else:
        return Check("clock.skew", "pass", f"clocks agree within {CLOCK_SKEW_WARN_SECONDS:.0f} s", detail)
    return Check(
        "clock.skew",
        status,
        f"clock skew of {worst[2]:.1f} s between {worst[0]} and {worst[1]}",
        (*detail, "apply lag is measured with this host's clock against the source's binlog timestamps"),
        "run NTP (chrony or systemd-timesyncd) on every host",
    )


# --- the control plane -----------------------------------------------------------------------------------------


def check_control(config: Config) -> Check:
    """Who can steer the daemon through ``/control/*`` (the same rule ``run`` refuses to start on)."""
    http = config.http
    exposure = http.control_exposure()
    if exposure is not None:
        fix = (
            'set [http] control_token_file (`openssl rand -hex 32`), a loopback control_listen, or control = "disabled"'
        )
        return Check("http.control", "fail", "the control plane is open to the network", (exposure,), fix)
    if http.control == "disabled":
        detail = ("verify compares unaligned while the daemon runs; verify --repair needs the daemon stopped",)
        return Check("http.control", "info", "the control plane is disabled", detail)
    where = http.control_listen or http.listen
    if not http.control_token:
        detail = ("any process on this host can use it; a control_token restricts it further",)
        return Check("http.control", "pass", f"the control plane answers on loopback only ({where})", detail)
    try:
        problem = control_token_problem(http.control_token)
    except (ConfigError, UnavailableError) as exc:
        return Check("http.control", "fail", "the control token cannot be read", (str(exc),), "fix control_token")
    if problem is not None:
        fix = "make one with `openssl rand -hex 32`"
        return Check("http.control", "fail", "run would refuse the control token", (problem,), fix)
    return Check(
        "http.control", "pass", f"the control plane needs a token ({where})", (f"from {http.control_token.source}",)
    )


# --- the whole checklist ----------------------------------------------------------------------------------------


def run_preflight(config: Config, *, clock: Callable[[], float] = time.time) -> Report:
    """Every check, in order; never raises for a server problem (it becomes a failed check)."""
    report = Report()
    report.add(check_control(config))
    with _closing() as conns:
        source = _connect(report, config.source, "source")
        target = _connect(report, config.target, "target")
        conns.extend(c for c in (source, target) if c is not None)
        tables: dict[TableId, Table] | None = None
        if source is not None:
            report.add(check_settings(source))
            report.add(check_tls(source, config.source, "source"))
            report.add(check_compression(source))
            report.add(check_partial_json(source))
            report.add(check_retention(source, config))
            report.add(check_server_id(source, config))
            report.add(
                check_grants(
                    source,
                    "source",
                    lambda f, v: source_needs(
                        f, v, config.replication.databases, bool(config.throttle.max_history_list_length)
                    ),
                )
            )
            tables, _ = check_tables(report, source, config)
            report.add(check_objects(source, config))
        if target is not None:
            report.add(check_tls(target, config.target, "target"))
            for check in check_target_server(target):
                report.add(check)
            report.add(check_grants(target, "target", lambda f, _v: target_needs(config, f)))
            report.add(check_copy_binlog(target, config))
            if tables is not None and source is not None:
                report.add(check_target_tables(target, config, tables, source))
                report.add(check_target_triggers(target, config, tables))
        client = check_redis(report, config)
        hosts: dict[str, Callable[[], float]] = {}
        if source is not None:
            hosts["source"] = lambda: _mysql_epoch(source)
        if target is not None:
            hosts["target"] = lambda: _mysql_epoch(target)
        if client is not None:
            hosts["redis"] = lambda: _redis_epoch(client)
        if hosts:
            report.add(check_clocks(hosts, clock))
    return report


def refusals(config: Config, source: Connection, target: Connection) -> list[str]:
    """The failing subset `run` must refuse to start on, beyond what it checks itself (settings, keys, shape)."""
    checks = [
        check_compression(source),
        check_partial_json(source),
        check_server_id(source, config),
        *check_target_server(target),
        check_copy_binlog(target, config),
    ]
    return [f"{c.title}: {c.fix}" for c in checks if c.status == "fail"]


@contextlib.contextmanager
def _closing() -> Iterator[list[Connection]]:
    conns: list[Connection] = []
    try:
        yield conns
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):  # closing on the way out; the server cleans up
                conn.close()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render(report: Report) -> str:
    """The checklist for a terminal: one line per check, its details and its fix indented below."""
    lines = []
    for check in report.checks:
        lines.append(f"{check.status.upper():<5} {check.id:<20} {check.title}")
        lines.extend(f"        - {d}" for d in check.detail if d)
        if check.fix and check.status in ("fail", "warn"):
            lines.append(f"        fix: {check.fix}")
    counts = report.counts()
    verdict = {
        EXIT_OK: "ready to run",
        EXIT_FAILED: "fix the failed checks before `austasync run`",
        EXIT_USAGE: "fix the configuration",
        EXIT_UNREACHABLE: "cannot reach " + ", ".join(report.unreachable),
    }[report.exit_code]
    lines.append(
        f"preflight: {counts['fail']} fail, {counts['warn']} warn, {counts['pass']} pass, {counts['info']} info;"
        f" {verdict}"
    )
    return "\n".join(lines)
