"""Foreign writes on the target: what the target-write watcher found, and how each one ends.

Why a write by anyone else is drift before cutover: docs/DESIGN.md#rule-foreign-writes.

The watcher (:class:`austasync.binlog.adapter.TargetWriteWatcher`) turns what it reads in the target's binlog into
:class:`ForeignWrite` values, judging statements with the stream's own fail-closed classifier
(:mod:`austasync.binlog.statements`):

- a transaction that changed rows of selected tables without touching the state schema: ``rows``, named by table;
- DDL naming selected tables: ``ddl`` of those tables; DDL of a replicated database itself (or naming no object
  austasync can place): ``ddl`` that only a full pass can judge;
- DDL of a view, routine, trigger or event of a replicated database: ``schema`` drift of that object, never row
  drift of a table. Views and routines are judged by a full verification's schema comparison; triggers, events
  and packages are compared by nothing, so only an operator's acknowledgement ends them;
- DML logged as a statement: ``statement`` (the rows it changed are not named);
- a statement the classifier cannot read completely: ``unparsed``, with the reason.

A statement touching only unselected objects, transaction control, account and server administration and
temporary tables are no foreign write at all.

Each write is kept in the target's state schema (``foreign_write``), keyed by its target binlog position, so a
watcher that reads the same binlog again after a restart neither forgets nor double-counts it. It stays open, and
the gate not ready, until a verification that covers it comes out clean or an operator acknowledges it
(``austasync foreign-writes --ack``). Covering means: the verification started after the write (its target binlog
position at start is at or past the write's) and, by the write's *scope*, compared each table it named whole
(``tables``), compared the schemas of every object with none of the named ones differing (``objects``: a full
pass), or was a full pass that came out clean (``full``); scope ``ack`` is ended by an acknowledgement only.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import pymysql

from austasync.binlog import statements
from austasync.config import Config
from austasync.db import Connection, connect, query
from austasync.position import Position
from austasync.sql import quote_ident

if TYPE_CHECKING:
    from austasync.verifier import Result

Kind = Literal["rows", "ddl", "schema", "statement", "unparsed"]
Scope = Literal["tables", "objects", "full", "ack"]

# skip rules of the stream's classifier that are no foreign write on the target either
IGNORED_RULES = frozenset(
    {
        "transaction_control",
        "account_management",
        "table_maintenance",
        "server_admin",
        "temporary_table",
        "not_replicated",
    }
)
_COMPARED_OBJECTS = frozenset({"view", "procedure", "function"})  # what verify's schema comparison looks at
_SCHEMA_OBJECTS = frozenset({"view", "procedure", "function", "package", "trigger", "event"})
MAX_PUBLISHED = 20  # open writes listed in the status document (the count is always complete)
_ER_NO_SUCH_TABLE = 1146
_ER_BAD_DB = 1049


@dataclass(frozen=True)
class ForeignWrite:
    """One transaction or statement on the target that austasync did not make, ending at ``position``."""

    position: Position  # the target binlog position just after it: its identity across restarts
    kind: Kind
    scope: Scope
    objects: tuple[str, ...]  # tables as "db.t" (source names); other objects as "view db.v", "database db"
    verb: str = ""  # the statement's verb ("CREATE VIEW"), for statements
    statement: str = ""  # the statement's text (cut), for statements
    row_events: tuple[int, ...] = ()  # for rows: the rows events per table, parallel to ``objects``
    detail: str = ""  # why an unparsed statement could not be classified

    @property
    def where(self) -> str:
        return ", ".join(self.objects) or "(no database)"

    def series(self) -> list[tuple[str, int]]:
        """(label, count) of the metric it counts in: ``austasync_foreign_writes_total{table}`` for everything but
        schema drift, ``austasync_foreign_schema_changes_total{object}`` for that."""
        if self.kind == "rows":
            return list(zip(self.objects, self.row_events or (1,) * len(self.objects), strict=True))
        if self.kind == "schema":
            return [(obj, 1) for obj in self.objects]
        return [(f"{self.where} (statement: {self.verb or '?'})", 1)]

    def describe(self) -> str:
        if self.kind == "rows":
            return f"row changes to {self.where} ({sum(self.row_events)} rows events)"
        if self.kind == "unparsed":
            return f"a statement austasync cannot classify, in {self.where} ({self.detail})"
        if self.kind == "statement":
            return f"rows changed by a {self.verb} logged as a statement, in {self.where}"
        if self.kind == "schema":
            return f"schema change {self.verb} of {self.where}"
        return f"DDL {self.verb} of {self.where}"

    def ends_with(self) -> str:
        """What ends it, for people."""
        return {
            "tables": f"a clean verification of {self.where} started after it, or an acknowledgement",
            "objects": "a full verification started after it that finds these objects equal, or an acknowledgement",
            "full": "a clean full verification started after it, or an acknowledgement",
            "ack": "an acknowledgement (austasync foreign-writes --ack): verify does not compare these objects",
        }[self.scope]


def rows_write(position: Position, events: Mapping[str, int]) -> ForeignWrite:
    """A transaction's row changes to selected tables (source names), by rows events per table."""
    names = tuple(sorted(events))
    return ForeignWrite(position, "rows", "tables", names, row_events=tuple(events[n] for n in names))


def statement_write(
    text: str,
    default_db: str,
    selection: statements.Selection,
    source_names: Mapping[str, str],
    position: Position,
) -> ForeignWrite | None:
    """A statement on the target judged by the stream's classifier; None when it is no foreign write."""
    parsed = statements.parse(text)
    verdict = statements.judge(parsed, default_db, selection)
    if verdict.action == "skip" and verdict.rule in IGNORED_RULES:
        return None
    cut = text[:2000]

    def source(db: str) -> str:
        return source_names.get(db, db)

    if parsed.category == "unknown":
        where = (source(default_db),) if default_db else ()
        return ForeignWrite(position, "unparsed", "full", where, parsed.verb, cut, detail=parsed.reason)
    if verdict.action == "stop_dml":
        dbs = sorted({db for db in (default_db, *parsed.qualifiers) if db and selection.database(db)})
        return ForeignWrite(
            position, "statement", "full", tuple(f"database {source(d)}" for d in dbs), parsed.verb, cut
        )
    return _ddl_write(parsed, verdict, default_db, selection, source, position, cut)


def _ddl_write(
    parsed: statements.Parsed,
    verdict: statements.Verdict,
    default_db: str,
    selection: statements.Selection,
    source: Callable[[str], str],
    position: Position,
    cut: str,
) -> ForeignWrite:
    """DDL that names replicated objects: of tables (judged by a pass over them), of databases (a full pass),
    or of views, routines, triggers and events (schema drift of that object)."""
    tables = [f"{source(db)}.{name}" for db, name in verdict.tables]
    others: list[tuple[str, str]] = []  # (kind, "db.name")
    databases: list[str] = []
    for ref in parsed.objects:
        db = ref.db if ref.db is not None else default_db
        if ref.kind == "database":
            name = ref.name or default_db
            if not name or selection.database(name):
                databases.append(f"database {source(name) or '(default)'}")
        elif ref.kind in _SCHEMA_OBJECTS and db and selection.database(db):
            others.append((ref.kind, f"{source(db)}.{ref.name}"))
    named = tuple(dict.fromkeys([*tables, *databases, *(f"{kind} {name}" for kind, name in others)]))
    if not tables and not databases and others:
        compared = all(kind in _COMPARED_OBJECTS for kind, _ in others)
        return ForeignWrite(position, "schema", "objects" if compared else "ack", named, parsed.verb, cut)
    scope: Scope = "tables" if tables and not databases and not others else "full"
    return ForeignWrite(position, "ddl", scope, named, parsed.verb, cut)


# --- covered by a verification --------------------------------------------------------------------------------


def covered(write: ForeignWrite, result: Result) -> str | None:
    """How ``result`` proves ``write`` harmless, or None when it does not cover it."""
    start = result.target_start
    if start is None or write.position > start:
        return None  # started before the write (or the target's binlog position is unknown)
    started = f"verification started at target binlog {start}"
    if write.scope == "tables":
        whole = {str(t.table): t for t in result.tables if str(t.table) not in result.keyed}
        if all(name in whole and whole[name].consistent for name in write.objects):
            return f"{started} found {write.where} equal"
        return None
    if not result.full:
        return None
    if write.scope == "objects":
        differing = {f"{d.kind} {d.object}" for d in result.objects}
        if not differing.intersection(write.objects):
            return f"{started} (full) found {write.where} equal"
        return None
    if write.scope == "full" and result.consistent:
        return f"{started} (full) found everything equal"
    return None


# --- the record in the target -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """A foreign write as the target's state keeps it."""

    id: int
    write: ForeignWrite
    seen_at: str
    cleared_at: str | None = None
    cleared_by: str | None = None
    cleared_how: str | None = None

    def as_dict(self) -> dict[str, Any]:
        w = self.write
        doc: dict[str, Any] = {
            "id": self.id,
            "target_position": str(w.position),
            "kind": w.kind,
            "objects": list(w.objects),
            "what": w.describe(),
            "seen_at": self.seen_at,
            "ends_with": w.ends_with(),
        }
        if w.statement:
            doc["statement"] = w.statement[:500]
        if self.cleared_at:
            doc.update(cleared_at=self.cleared_at, cleared_by=self.cleared_by, cleared_how=self.cleared_how)
        return doc


def who(by: str | None = None) -> str:
    """Who clears: the ``--by`` name, else the OS user, with the host."""
    if by:
        return by
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's numeric uid)
        user = "unknown user"
    return f"{user}@{socket.gethostname()}"


class ForeignWriteLog:
    """The ``foreign_write`` rows of one migration (the table is created with the rest of the state schema)."""

    def __init__(self, schema: str, migration: str) -> None:
        self.table = f"{quote_ident(schema)}.foreign_write"
        self.migration = migration

    def record(self, conn: Connection, write: ForeignWrite) -> bool:
        """Keep ``write``; False when its position is recorded already (a watcher reading the binlog again)."""
        query(
            conn,
            f"INSERT IGNORE INTO {self.table} (migration, file, pos, kind, scope, objects, verb, statement,"
            " row_events, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self.migration,
                write.position.file,
                write.position.pos,
                write.kind,
                write.scope,
                json.dumps(list(write.objects)),
                write.verb[:64],
                write.statement,
                json.dumps(list(write.row_events)),
                write.detail[:1000],
            ),
        )
        added = int(query(conn, "SELECT ROW_COUNT()")[0][0]) == 1
        query(conn, "COMMIT")
        return added

    def listing(self, conn: Connection, *, cleared: bool = False) -> list[Recorded]:
        """The open writes (with ``cleared``, every one), oldest first; none when the table does not exist yet."""
        where = "" if cleared else " AND cleared_at IS NULL"
        try:
            rows = query(
                conn,
                f"SELECT id, file, pos, kind, scope, objects, verb, statement, row_events, detail, seen_at,"
                f" cleared_at, cleared_by, cleared_how FROM {self.table} WHERE migration = %s{where} ORDER BY id",
                (self.migration,),
            )
        except pymysql.err.MySQLError as exc:
            if exc.args and exc.args[0] in (_ER_NO_SUCH_TABLE, _ER_BAD_DB):
                return []
            raise
        finally:
            query(conn, "COMMIT")
        return [_recorded(row) for row in rows]

    def clear(self, conn: Connection, ids: list[int], by: str, how: str) -> list[Recorded]:
        """Close the open ones among ``ids``, saying who and how; returns those it closed."""
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))
        query(
            conn,
            f"UPDATE {self.table} SET cleared_at = CURRENT_TIMESTAMP(6), cleared_by = %s, cleared_how = %s"
            f" WHERE migration = %s AND cleared_at IS NULL AND id IN ({marks})",
            (by[:255], how[:1000], self.migration, *ids),
        )
        query(conn, "COMMIT")
        wanted = set(ids)
        return [r for r in self.listing(conn, cleared=True) if r.id in wanted and r.cleared_by == by[:255]]

    def clear_covered(self, conn: Connection, result: Result, by: str) -> list[Recorded]:
        """Close every open write that ``result`` covers (:func:`covered`)."""
        closed: list[Recorded] = []
        for rec in self.listing(conn):
            how = covered(rec.write, result)
            if how is not None:
                closed += self.clear(conn, [rec.id], by, how)
        return closed


def _recorded(row: tuple[Any, ...]) -> Recorded:
    rid, file, pos, kind, scope, objs, verb, text, events, detail, seen, cleared_at, cleared_by, how = row
    write = ForeignWrite(
        Position(str(file), int(pos)),
        kind,
        scope,
        tuple(json.loads(objs or "[]")),
        str(verb or ""),
        str(text or ""),
        tuple(json.loads(events or "[]")),
        str(detail or ""),
    )
    return Recorded(
        int(rid),
        write,
        _time(seen),
        _time(cleared_at) if cleared_at else None,
        str(cleared_by) if cleared_by is not None else None,
        str(how) if how is not None else None,
    )


def _time(value: Any) -> str:
    return value.isoformat(sep=" ") if hasattr(value, "isoformat") else str(value)


class Recorder:
    """The daemon's side: one target connection, shared under a lock by the watcher thread (recording what it
    finds, before it moves past it) and the loop (reading what verifications and acknowledgements closed)."""

    def __init__(self, connect: Callable[[], Connection], log: ForeignWriteLog) -> None:
        self._connect = connect
        self.log = log
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def _call(self, work: Callable[[Connection], Any]) -> Any:
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None:
                    self._conn = self._connect()
                try:
                    return work(self._conn)
                except (pymysql.err.OperationalError, pymysql.err.InterfaceError):
                    self.close_locked()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def record(self, write: ForeignWrite) -> bool:
        return bool(self._call(lambda conn: self.log.record(conn, write)))

    def open(self) -> list[Recorded]:
        return list(self._call(self.log.listing))

    def clear_covered(self, result: Result, by: str) -> list[Recorded]:
        return list(self._call(lambda conn: self.log.clear_covered(conn, result, by)))

    def close_locked(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self.close_locked()


# --- the command line's side (no daemon needed) -----------------------------------------------------------------


def _target(config: Config) -> Connection:
    return connect(config.target, "target")


def listing(config: Config, *, cleared: bool = False) -> list[Recorded]:
    """The recorded foreign writes of the configured migration (open ones only, unless ``cleared``)."""
    conn = _target(config)
    try:
        return ForeignWriteLog(config.replication.state_schema, config.replication.name).listing(conn, cleared=cleared)
    finally:
        conn.close()


def acknowledge(config: Config, which: str, by: str | None) -> list[Recorded]:
    """An operator takes responsibility for open foreign writes (``which``: an id or ``all``); returns them."""
    conn = _target(config)
    log = ForeignWriteLog(config.replication.state_schema, config.replication.name)
    try:
        ids = [r.id for r in log.listing(conn)] if which == "all" else [int(which)]
        return log.clear(conn, ids, who(by), "acknowledged by an operator (austasync foreign-writes --ack)")
    finally:
        conn.close()


def clear_verified(config: Config, result: Result, by: str | None = None) -> list[Recorded]:
    """After a verification from the command line: close the foreign writes it covers (:func:`covered`)."""
    conn = _target(config)
    try:
        log = ForeignWriteLog(config.replication.state_schema, config.replication.name)
        return log.clear_covered(conn, result, f"austasync verify by {who(by)}")
    finally:
        conn.close()
