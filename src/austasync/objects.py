"""The objects of the replicated databases that are not replicated tables, and what austasync does with each.

Tables of every ``TABLE_TYPE`` are sorted by :func:`austasync.schema.discover_tables` (base tables replicated,
system-versioned tables and sequences refused). The rest:

- **views and stored routines** (procedures, functions) are created on the target at the first start, once the
  target's tables exist, from the source's ``SHOW CREATE`` statement with its DEFINER and the sql_mode,
  character set and collation they were defined under (routines; a view's stored text is canonical and needs
  none), and recorded as austasync's own DDL so the target-write watcher does not report them. They run nothing by
  themselves, so they are safe on a replica. After that, their DDL in the stream follows ``on_ddl``.
- **events** are never created on the target: an enabled event would write there before cutover
  (docs/DESIGN.md#rule-foreign-writes). Preflight lists them; create them on the new primary after cutover.
- **triggers** move at cutover (:mod:`austasync.triggers`); preflight lists them.

``verify`` compares the tables, views and routines of both sides (:func:`compare`): one present on one side only,
or defined differently, is a difference. Events and triggers are not compared (the target has none before
cutover, by design). Every object list honours ``include_tables`` / ``exclude_tables``: a view or routine is
selected by its name as a table would be.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pymysql

from austasync.config import Config
from austasync.db import Connection, query
from austasync.errors import SetupError
from austasync.sql import qualified, quote_ident
from austasync.triggers import ER_DEFINER_MISSING, run_as_defined

ER_NO_SUCH_TABLE = 1146
ER_TABLEACCESS_DENIED = 1142
ER_SPECIFIC_ACCESS_DENIED = 1227
ER_VIEW_INVALID = 1356
#: a view's text is canonical (backticks, backslash escapes in strings): parsed back under this neutral mode
VIEW_SQL_MODE = "NO_AUTO_VALUE_ON_ZERO"
ROUTINE_KINDS = ("PROCEDURE", "FUNCTION")


@dataclass(frozen=True)
class Definition:
    """A view's or routine's CREATE statement as the source stores it, and the settings to run it under."""

    kind: str  # VIEW, PROCEDURE, FUNCTION
    db: str
    name: str
    statement: bytes
    sql_mode: str
    character_set_client: str
    collation_connection: str
    database_collation: str  # "" for a view

    @property
    def label(self) -> str:
        return f"{self.kind.lower()} {self.db}.{self.name}"


@dataclass(frozen=True)
class Inventory:
    """The selected objects of the replicated databases, as ``db.name`` per kind."""

    views: tuple[str, ...]
    procedures: tuple[str, ...]
    functions: tuple[str, ...]
    events: tuple[str, ...]
    triggers: tuple[str, ...]


def _dbs(config: Config) -> tuple[str, ...]:
    return tuple(config.replication.databases)


def _marks(items: Sequence[object]) -> str:
    return ",".join(["%s"] * len(items))


def views(conn: Connection, config: Config, dbs: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(database, view) of the selected views; ``dbs`` are this server's names of the replicated databases."""
    dbs = list(dbs or _dbs(config))
    source_db = dict(zip(dbs, _dbs(config), strict=True))
    rows = query(
        conn,
        "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES"
        f" WHERE TABLE_SCHEMA IN ({_marks(dbs)}) AND TABLE_TYPE = 'VIEW' ORDER BY 1, 2",
        dbs,
    )
    return [(str(db), str(n)) for db, n in rows if config.table_selected(source_db[str(db)], str(n))]


def routines(conn: Connection, config: Config, dbs: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(database, routine, PROCEDURE or FUNCTION) of the selected stored routines."""
    dbs = list(dbs or _dbs(config))
    source_db = dict(zip(dbs, _dbs(config), strict=True))
    rows = query(
        conn,
        "SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES"
        f" WHERE ROUTINE_SCHEMA IN ({_marks(dbs)}) AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION') ORDER BY 1, 2, 3",
        dbs,
    )
    return [(str(db), str(n), str(k)) for db, n, k in rows if config.table_selected(source_db[str(db)], str(n))]


def inventory(conn: Connection, config: Config) -> Inventory:
    """What preflight lists: views, routines, events and triggers of the replicated databases (on the source)."""
    dbs = _dbs(config)
    found = routines(conn, config)
    events = query(
        conn,
        f"SELECT EVENT_SCHEMA, EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA IN ({_marks(dbs)})"
        " ORDER BY 1, 2",
        dbs,
    )
    triggers = query(
        conn,
        "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME FROM information_schema.TRIGGERS"
        f" WHERE EVENT_OBJECT_SCHEMA IN ({_marks(dbs)}) ORDER BY 1, 2, 3",
        dbs,
    )
    return Inventory(
        views=tuple(f"{db}.{n}" for db, n in views(conn, config)),
        procedures=tuple(f"{db}.{n}" for db, n, k in found if k == "PROCEDURE"),
        functions=tuple(f"{db}.{n}" for db, n, k in found if k == "FUNCTION"),
        events=tuple(f"{r[0]}.{r[1]}" for r in events if config.table_selected(str(r[0]), str(r[1]))),
        triggers=tuple(f"{r[2]} on {r[0]}.{r[1]}" for r in triggers if config.table_selected(str(r[0]), str(r[1]))),
    )


# --- reading the definitions -----------------------------------------------------------------------------------


def read_definitions(conn: Connection, config: Config) -> list[Definition]:
    """The selected routines' and views' statements, as the source stores them (bytes, no re-encoding).

    Raises :class:`SetupError` when the source user may not read them (SHOW VIEW for views; SELECT on
    ``mysql.proc``, which the global SELECT of README's grants includes, for routines): a view or routine that
    cannot be read cannot be created, and a silently missing one is what this module exists to prevent.
    """
    found: list[Definition] = []
    denied: list[str] = []
    listed = [*routines(conn, config), *((db, name, "VIEW") for db, name in views(conn, config))]
    query(conn, "SET SESSION character_set_results = binary")  # names listed first: they are text
    try:
        for db, name, kind in listed:
            query(conn, f"USE {quote_ident(db)}")  # a view's names in its own database come unqualified
            found.extend(_read(conn, kind, db, name, denied))
    finally:
        query(conn, "SET SESSION character_set_results = utf8mb4")
    if denied:
        raise SetupError(
            "the source user cannot read these definitions, so they cannot be created on the target: "
            + ", ".join(denied)
            + "; GRANT SHOW VIEW ON <db>.* (views) and SELECT ON mysql.proc (routines) to the source user,"
            " or exclude them (replication.exclude_tables)"
        )
    return found


def _read(conn: Connection, kind: str, db: str, name: str, denied: list[str]) -> list[Definition]:
    try:
        row = query(conn, f"SHOW CREATE {kind} {qualified(db, name)}")[0]
    except pymysql.err.MySQLError as exc:
        if exc.args and exc.args[0] in (ER_TABLEACCESS_DENIED, ER_SPECIFIC_ACCESS_DENIED, 1044, 1305):
            denied.append(f"{kind.lower()} {db}.{name}")
            return []
        raise
    if kind == "VIEW":
        # (View, Create View, character_set_client, collation_connection)
        return [Definition(kind, db, name, bytes(row[1]), VIEW_SQL_MODE, _text(row[2]), _text(row[3]), "")]
    statement = row[2]
    if statement is None:  # MariaDB shows NULL to a user that may not see the body
        denied.append(f"{kind.lower()} {db}.{name}")
        return []
    # (Name, sql_mode, Create ..., character_set_client, collation_connection, Database Collation)
    return [Definition(kind, db, name, bytes(statement), _text(row[1]), _text(row[3]), _text(row[4]), _text(row[5]))]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- creating them on the target ---------------------------------------------------------------------------------


def create_on_target(target: Connection, config: Config, definitions: Sequence[Definition], created: list[str]) -> None:
    """Create the views and routines the target lacks, appending each label to ``created`` as it is made.

    Routines first (a view may call a function), then views, each round creating those whose tables and views
    exist, until a round creates none. Anything that cannot be created is refused with the reason and the fix,
    after everything else was tried; what was created stays (created again only when missing).
    """
    existing = _existing(target, config)
    pending = [d for d in definitions if (d.kind, config.replication.target_db(d.db), d.name) not in existing]
    problems: list[str] = []
    for definition in [d for d in pending if d.kind != "VIEW"]:
        _create_one(target, config, definition, created, problems)
    waiting = [d for d in pending if d.kind == "VIEW"]
    while waiting:
        missing: list[tuple[Definition, str]] = []
        for definition in waiting:
            why = _create_one(target, config, definition, created, problems)
            if why is not None:
                missing.append((definition, why))
        if len(missing) == len(waiting):
            problems += [
                f"{d.label}: {why}; replicate the tables it reads, or exclude it (replication.exclude_tables)"
                for d, why in missing
            ]
            break
        waiting = [d for d, _ in missing]
    if problems:
        raise SetupError("these views and routines cannot be created on the target:\n  " + "\n  ".join(problems))


def _existing(target: Connection, config: Config) -> set[tuple[str, str, str]]:
    dbs = [config.replication.target_db(db) for db in _dbs(config)]
    found = {("VIEW", db, name) for db, name in views(target, config, dbs)}
    return found | {(kind, db, name) for db, name, kind in routines(target, config, dbs)}


def _create_one(
    target: Connection, config: Config, definition: Definition, created: list[str], problems: list[str]
) -> str | None:
    """Create one object; a reason when a view's table or view is missing (tried again next round)."""
    db = config.replication.target_db(definition.db)
    renamed = _names_renamed_database(definition, config)
    if renamed:
        problems.append(
            f"{definition.label} names the database {renamed}, which replication.rename maps to"
            f" {config.replication.target_db(renamed)}; austasync does not rewrite view or routine bodies: create"
            " it on the target by hand and exclude it (replication.exclude_tables)"
        )
        return None
    try:
        warnings = run_as_defined(
            target,
            db,
            definition.statement,
            sql_mode=definition.sql_mode,
            character_set_client=definition.character_set_client,
            collation_connection=definition.collation_connection,
            database_collation=definition.database_collation,
        )
    except pymysql.err.MySQLError as exc:
        code = exc.args[0] if exc.args else 0
        message = str(exc.args[-1]) if exc.args else str(exc)
        if definition.kind == "VIEW" and code in (ER_NO_SUCH_TABLE, ER_VIEW_INVALID):
            return message
        problems.append(f"{definition.label}: the target refused it ({code}: {message})")
        return None
    definer = [str(w[2]) for w in warnings if int(str(w[1])) == ER_DEFINER_MISSING]
    if definer:
        query(target, f"DROP {definition.kind} IF EXISTS {qualified(db, definition.name)}")
        problems.append(f"{definition.label}: {definer[0]}: create that account (with its grants) on the target")
        return None
    created.append(definition.label)
    return None


def _names_renamed_database(definition: Definition, config: Config) -> str | None:
    """A renamed source database the statement names as a qualifier (``db.`` quoted or not), if any."""
    for source_db in _dbs(config):
        if config.replication.target_db(source_db) == source_db:
            continue
        name = re.escape(source_db.encode())
        if re.search(rb"(?<![A-Za-z0-9_$`])[`\"]?" + name + rb"[`\"]?\s*\.", definition.statement, re.IGNORECASE):
            return source_db
    return None


# --- comparing both sides ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectDifference:
    """A table, view or routine that is on one side only or defined differently (``object``: source name)."""

    object: str
    kind: str  # table, view, procedure, function
    difference: str

    def __str__(self) -> str:
        return f"{self.kind} {self.object}: {self.difference}"


def compare(source: Connection, target: Connection, config: Config) -> list[ObjectDifference]:
    """Tables (of any type), views and routines of the replicated databases present on one side only or of
    another type or definition; the state schema is never among them. Columns and keys of replicated tables are
    compared per table by :func:`austasync.verifier.schema_differences`."""
    out: list[ObjectDifference] = []
    for db in _dbs(config):
        tdb = config.replication.target_db(db)
        if tdb == config.replication.state_schema:
            continue
        want, have = _catalog(source, config, db, db), _catalog(target, config, tdb, db)
        for (kind, name), spec in want.items():
            label = f"{db}.{name}"
            if (kind, name) not in have:
                out.append(ObjectDifference(label, kind, f"missing on the target ({tdb}.{name})"))
            elif _mapped(spec, db, tdb) != have[(kind, name)]:
                out.append(ObjectDifference(label, kind, _explain(kind, _mapped(spec, db, tdb), have[(kind, name)])))
        out += [
            ObjectDifference(f"{db}.{name}", kind, f"exists only on the target ({tdb}.{name})")
            for kind, name in have
            if (kind, name) not in want
        ]
    return sorted(out, key=lambda d: (d.object, d.kind))


def _catalog(conn: Connection, config: Config, db: str, source_db: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """(kind, name) → what must be equal on both sides, for the selected objects of one database."""
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    tables = query(
        conn,
        "SELECT t.TABLE_NAME, t.TABLE_TYPE, COALESCE(v.VIEW_DEFINITION, ''), COALESCE(v.CHECK_OPTION, ''),"
        " COALESCE(v.SECURITY_TYPE, ''), COALESCE(v.DEFINER, '') FROM information_schema.TABLES t"
        " LEFT JOIN information_schema.VIEWS v ON v.TABLE_SCHEMA = t.TABLE_SCHEMA AND v.TABLE_NAME = t.TABLE_NAME"
        " WHERE t.TABLE_SCHEMA = %s",
        (db,),
    )
    for name, table_type, *view in tables:
        if not config.table_selected(source_db, str(name)):
            continue
        if str(table_type) == "VIEW":
            out[("view", str(name))] = tuple(str(v) for v in view)
        else:
            out[("table", str(name))] = (str(table_type),)
    for name, kind in _routines_of(conn, config, db, source_db):
        out[(kind.lower(), name)] = _routine_spec(conn, kind, db, name)
    return out


def _routines_of(conn: Connection, config: Config, db: str, source_db: str) -> Iterable[tuple[str, str]]:
    """(name, PROCEDURE or FUNCTION) of the selected routines of one database (``source_db``: its source name)."""
    rows = query(
        conn,
        "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES"
        " WHERE ROUTINE_SCHEMA = %s AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION')",
        (db,),
    )
    return [(str(r[0]), str(r[1])) for r in rows if config.table_selected(source_db, str(r[0]))]


def _routine_spec(conn: Connection, kind: str, db: str, name: str) -> tuple[str, ...]:
    """The whole CREATE statement (parameters, return type, characteristics, body, DEFINER) and its sql_mode."""
    row = query(conn, f"SHOW CREATE {kind} {qualified(db, name)}")[0]
    return (_text(row[2]) if row[2] is not None else "(body not visible)", _text(row[1]))


def _mapped(spec: tuple[str, ...], db: str, tdb: str) -> tuple[str, ...]:
    """A source definition as it reads in the target's database: qualifiers ``db``. become ``tdb``."""
    if db == tdb:
        return spec
    return tuple(s.replace(f"{quote_ident(db)}.", f"{quote_ident(tdb)}.") for s in spec)


def _explain(kind: str, want: tuple[str, ...], have: tuple[str, ...]) -> str:
    if kind == "table":
        return f"is {have[0]} on the target, {want[0]} on the source"
    fields = ("definition", "check option", "security", "definer") if kind == "view" else ("definition", "sql_mode")
    differing = [f for f, w, h in zip(fields, want, have, strict=True) if w != h]
    return f"{' and '.join(differing)} differ{'s' if len(differing) == 1 else ''} between source and target"
