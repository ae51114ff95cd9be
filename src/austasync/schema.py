"""Table metadata (columns, keys, foreign keys) read from ``information_schema``, and the target schema set-up.

A table is replicated only if it is InnoDB with a primary key or a NOT NULL unique key
(docs/DESIGN.md#rule-replicated-tables); the key's columns are what chunks are ordered by and what net images are
keyed by.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pymysql

from austasync.config import Config
from austasync.db import Connection, query
from austasync.errors import SetupError
from austasync.sql import Kind, qualified, quote_ident

TableId = tuple[str, str]  # (database, table) on the source

_INT_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}
_TEMPORAL = {"date", "datetime", "timestamp", "time", "year"}
_FIXEDBIN = {"uuid": 16, "inet6": 16, "inet4": 4}  # MariaDB types stored as fixed-length binary
SPATIAL_TYPES = frozenset(
    {
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
        "geomcollection",
    }
)
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", *SPATIAL_TYPES}


def column_kind(data_type: str, charset: str | None) -> Kind:
    """The literal kind for an ``information_schema.COLUMNS.DATA_TYPE``."""
    dtype = data_type.lower()
    if dtype in _INT_TYPES:
        return Kind.INT
    if dtype == "decimal":
        return Kind.DECIMAL
    if dtype == "float":
        return Kind.FLOAT
    if dtype in ("double", "real"):
        return Kind.DOUBLE
    if dtype == "bit":
        return Kind.BIT
    if dtype == "enum":
        return Kind.ENUM
    if dtype == "set":
        return Kind.SET
    if dtype in _FIXEDBIN:
        return Kind.FIXEDBIN
    if dtype in _TEMPORAL:
        return Kind.TEMPORAL
    if dtype in _BINARY:
        return Kind.BINARY
    if dtype in ("char", "varchar") and charset == "binary":
        return Kind.BINARY
    return Kind.TEXT


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str
    column_type: str
    kind: Kind
    charset: str
    nullable: bool
    generated: bool
    on_update_timestamp: bool
    collation: str = ""  # "" for columns without one (numbers, dates, binary strings)

    @property
    def binary_length(self) -> int | None:
        """n for BINARY(n) (and MariaDB's UUID, INET6, INET4): the binlog drops trailing zero bytes, so images are
        padded back to n."""
        if self.data_type.lower() in _FIXEDBIN:
            return _FIXEDBIN[self.data_type.lower()]
        if self.data_type.lower() != "binary":
            return None
        match = re.match(r"binary\((\d+)\)", self.column_type.lower())
        return int(match.group(1)) if match else 1


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key as InnoDB enforces it: what happens to ``child`` rows when ``parent`` rows change."""

    name: str
    child: TableId
    child_columns: tuple[str, ...]
    parent: TableId
    parent_columns: tuple[str, ...]
    on_delete: str  # CASCADE, SET NULL, RESTRICT, NO ACTION, SET DEFAULT
    on_update: str

    @property
    def acts(self) -> bool:
        return self.on_delete in ("CASCADE", "SET NULL") or self.on_update in ("CASCADE", "SET NULL")


@dataclass(frozen=True)
class Table:
    db: str
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    unique_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    engine: str = "InnoDB"
    rows_estimate: int = 0

    @property
    def id(self) -> TableId:
        return (self.db, self.name)

    @property
    def writable(self) -> tuple[Column, ...]:
        """Columns the target accepts values for: generated columns are computed there, never written."""
        return tuple(c for c in self.columns if not c.generated)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(self.column(k) for k in self.key)

    def __str__(self) -> str:
        return f"{self.db}.{self.name}"


#: what discovery does with each ``information_schema.TABLES.TABLE_TYPE``: ``BASE TABLE`` is replicated (when
#: InnoDB with a usable key), ``VIEW`` is created on the target (:mod:`austasync.objects`), and every other type is
#: refused with the reason and the fix (docs/DESIGN.md#rule-replicated-tables): never skipped, since a skipped
#: table is one that ``verify`` would also never look at
REPLICATED_TYPE = "BASE TABLE"
VIEW_TYPE = "VIEW"
_REFUSED_TYPES = {
    "SYSTEM VERSIONED": (
        "system-versioned (WITH SYSTEM VERSIONING): its history rows and their invisible row_start/row_end"
        " columns are set by each server's own clock, so they cannot be carried exactly through row events;"
        " exclude it (replication.exclude_tables) or drop the versioning on the source"
        " (ALTER TABLE ... DROP SYSTEM VERSIONING)"
    ),
    "SEQUENCE": (
        "a SEQUENCE: its next value moves by NEXTVAL/SETVAL and the server's cache, not by rows austasync can copy"
        " and apply exactly; exclude it (replication.exclude_tables) and create it on the target at cutover"
        " (SHOW CREATE SEQUENCE, then SELECT SETVAL(seq, <the source's next value>))"
    ),
}


def table_type_refusal(table_type: str) -> str | None:
    """Why a table of this ``TABLE_TYPE`` is refused, with the fix; None for base tables and views."""
    if table_type in (REPLICATED_TYPE, VIEW_TYPE):
        return None
    return _REFUSED_TYPES.get(
        table_type,
        f"TABLE_TYPE {table_type!r} is not one austasync knows how to carry exactly;"
        " exclude it (replication.exclude_tables)",
    )


def _selected_tables(
    conn: Connection, config: Config, names: Mapping[str, str]
) -> list[tuple[str, str, str, str, int]]:
    """(database on this server, table, TABLE_TYPE, engine, row estimate) of the selected tables, every type."""
    dbs = list(names)
    marks = ",".join(["%s"] * len(dbs))
    rows = query(
        conn,
        "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, COALESCE(ENGINE, ''), COALESCE(TABLE_ROWS, 0)"
        f" FROM information_schema.TABLES WHERE TABLE_SCHEMA IN ({marks}) ORDER BY TABLE_SCHEMA, TABLE_NAME",
        dbs,
    )
    return [
        (str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]))
        for r in rows
        if config.table_selected(names[str(r[0])], str(r[1]))
    ]


def _columns(conn: Connection, db: str) -> dict[str, list[Column]]:
    rows = query(
        conn,
        "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COALESCE(CHARACTER_SET_NAME, ''), IS_NULLABLE,"
        " EXTRA, COALESCE(COLLATION_NAME, '') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
        " ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (db,),
    )
    out: dict[str, list[Column]] = {}
    for table, name, dtype, ctype, charset, nullable, extra, collation in rows:
        extra_l = str(extra).lower()
        cs = str(charset) or ("utf8mb4" if str(dtype).lower() == "json" else "binary")
        out.setdefault(str(table), []).append(
            Column(
                name=str(name),
                data_type=str(dtype).lower(),
                column_type=str(ctype),
                kind=column_kind(str(dtype), cs),
                charset=cs,
                nullable=nullable == "YES",
                # MySQL 8 marks DEFAULT (expr) columns "DEFAULT_GENERATED": those are ordinary, written columns
                generated="virtual" in extra_l or "stored generated" in extra_l or "persistent" in extra_l,
                on_update_timestamp="on update" in extra_l,
                collation=str(collation),
            )
        )
    return out


def _no_pad_collations(conn: Connection) -> set[str]:
    """The server's NO PAD collations: MySQL 8 says so in PAD_ATTRIBUTE; MariaDB, which has no such column, names
    every one of them ``*_nopad_*``."""
    try:
        rows = query(conn, "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE PAD_ATTRIBUTE = 'NO PAD'")
    except pymysql.err.MySQLError:
        like = "%\\_nopad\\_%"
        rows = query(
            conn, "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME LIKE %s", (like,)
        )
    return {str(r[0]) for r in rows}


def _char_no_pad_key_problems(conn: Connection, tables: Mapping[TableId, Table]) -> list[str]:
    """CHAR key columns with a NO PAD collation, which cannot be copied in key-ordered chunks exactly.

    CHAR stores its value padded with spaces and returns it stripped; under a NO PAD collation MariaDB 10.11 then
    orders the index by the padded value but compares a range bound without the padding: measured, with keys
    '', 'a\\x01', 'a\\t', 'a', 'b' (that ORDER BY), ``k <= 'a'`` finds '' and 'a' only and ``k > 'a'`` finds 'b'
    only, so a chunk's range misses rows its ORDER BY read, and the copy and the verifier lose them.
    """
    chars = [(t, c) for t in tables.values() for c in t.key_columns if c.data_type == "char" and c.collation]
    if not chars:
        return []
    no_pad = _no_pad_collations(conn)
    return [
        f"{t}: key column {c.name} is CHAR with the NO PAD collation {c.collation}, whose range comparisons disagree"
        f" with its index order (rows would be lost); on the source, ALTER it to a VARCHAR of the same length or to a"
        " PAD SPACE collation, or exclude the table"
        for t, c in chars
        if c.collation in no_pad
    ]


def _unique_keys(conn: Connection, db: str) -> dict[str, dict[str, list[tuple[str, str]]]]:
    rows = query(
        conn,
        "SELECT TABLE_NAME, INDEX_NAME, COLUMN_NAME, NULLABLE FROM information_schema.STATISTICS"
        " WHERE TABLE_SCHEMA = %s AND NON_UNIQUE = 0 ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
        (db,),
    )
    out: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for table, index, column, nullable in rows:
        out.setdefault(str(table), {}).setdefault(str(index), []).append((str(column), str(nullable)))
    return out


_FK = re.compile(
    r"CONSTRAINT\s+`((?:[^`]|``)+)`\s+FOREIGN KEY\s+\(([^)]*)\)\s+REFERENCES\s+"
    r"(?:`((?:[^`]|``)+)`\.)?`((?:[^`]|``)+)`\s*\(([^)]*)\)((?:\s+ON\s+(?:DELETE|UPDATE)\s+"
    r"(?:CASCADE|SET NULL|SET DEFAULT|RESTRICT|NO ACTION))*)",
    re.IGNORECASE,
)
_FK_ACTION = re.compile(r"ON\s+(DELETE|UPDATE)\s+(CASCADE|SET NULL|SET DEFAULT|RESTRICT|NO ACTION)", re.IGNORECASE)


def _idents(text: str) -> tuple[str, ...]:
    return tuple(m.replace("``", "`") for m in re.findall(r"`((?:[^`]|``)+)`", text))


def parse_foreign_keys(db: str, table: str, create_sql: str) -> list[ForeignKey]:
    """The foreign keys of a ``SHOW CREATE TABLE`` text.

    ``SHOW CREATE TABLE`` is read instead of ``information_schema.REFERENTIAL_CONSTRAINTS`` because the latter
    silently shows nothing to a user with only SELECT on MariaDB: missing FKs would mean silently missed cascades.
    """
    out = []
    for match in _FK.finditer(create_sql):
        name, cols, pdb, ptable, pcols, actions = match.groups()
        rules = {"DELETE": "RESTRICT", "UPDATE": "RESTRICT"}
        for when, action in _FK_ACTION.findall(actions or ""):
            rules[when.upper()] = action.upper()
        out.append(
            ForeignKey(
                name=name.replace("``", "`"),
                child=(db, table),
                child_columns=_idents(cols),
                parent=((pdb or db).replace("``", "`"), ptable.replace("``", "`")),
                parent_columns=_idents(pcols),
                on_delete=rules["DELETE"],
                on_update=rules["UPDATE"],
            )
        )
    return out


def load_foreign_keys(
    conn: Connection, tables: Iterable[TableId], names: Mapping[str, str] | None = None
) -> list[ForeignKey]:
    """Every foreign key whose child is one of ``tables`` (source names; ``names`` as for :func:`load_tables`)."""
    server_db = {source_db: db for db, source_db in (names or {}).items()}
    fks: list[ForeignKey] = []
    for db, table in tables:
        create = str(query(conn, f"SHOW CREATE TABLE {qualified(server_db.get(db, db), table)}")[0][1])
        for fk in parse_foreign_keys(db, table, create):
            parent_db = (names or {}).get(fk.parent[0], fk.parent[0])
            fks.append(dataclasses.replace(fk, parent=(parent_db, fk.parent[1])))
    return fks


def _choose_key(
    table: str, uniques: Mapping[str, list[tuple[str, str]]], nullable: Mapping[str, bool]
) -> tuple[str, ...] | None:
    if "PRIMARY" in uniques:
        return tuple(c for c, _ in uniques["PRIMARY"])
    for index in sorted(uniques):
        cols = uniques[index]
        if all(not nullable.get(c, True) for c, _ in cols):
            return tuple(c for c, _ in cols)
    del table
    return None


def load_tables(conn: Connection, config: Config, names: Mapping[str, str] | None = None) -> dict[TableId, Table]:
    """The replicated tables, validated: InnoDB and a usable key.

    By default read from the source. With ``names`` (database on this server → source database) the definitions
    are read from another server, the target, and keyed by their source names: once a checkpoint exists, the
    target holds the schema *as of the checkpoint*, while the source's may already be ahead of the stream.
    Raises :class:`SetupError` listing every offending table, so the operator can fix or exclude them at once.
    """
    tables, problems = discover_tables(conn, config, names)
    problems += _char_no_pad_key_problems(conn, tables)
    if problems:
        raise SetupError(
            "these tables cannot be replicated exactly (docs/DESIGN.md#rule-replicated-tables); add them to"
            " replication.exclude_tables or fix them on the source:\n  " + "\n  ".join(problems)
        )
    return tables


def discover_tables(
    conn: Connection, config: Config, names: Mapping[str, str] | None = None
) -> tuple[dict[TableId, Table], list[str]]:
    """The replicable selected tables and, for every other selected table (views aside), why it is refused.

    :func:`load_tables` refuses on the second list; ``verify`` reports it instead (a refused table is never
    verified, so it can never pass as consistent).
    """
    names = names or {db: db for db in config.replication.databases}
    server_db = {source_db: db for db, source_db in names.items()}
    tables: dict[TableId, Table] = {}
    problems: list[str] = []
    by_db: dict[str, list[tuple[str, str, int]]] = {}
    for db, name, table_type, engine, estimate in _selected_tables(conn, config, names):
        refusal = table_type_refusal(table_type)
        if refusal is not None:
            problems.append(f"{names[db]}.{name}: {refusal}")
        elif table_type == REPLICATED_TYPE:
            by_db.setdefault(names[db], []).append((name, engine, estimate))
    for db, entries in by_db.items():
        columns = _columns(conn, server_db[db])
        uniques = _unique_keys(conn, server_db[db])
        for name, engine, estimate in entries:
            table, why = _table(db, name, engine, estimate, columns.get(name, []), uniques.get(name, {}))
            if table is None:
                problems.extend(why)
            else:
                tables[table.id] = table
    return tables, problems


def _table(
    db: str,
    name: str,
    engine: str,
    estimate: int,
    cols: list[Column],
    uniques: Mapping[str, list[tuple[str, str]]],
) -> tuple[Table | None, list[str]]:
    """A base table, or the reasons it cannot be replicated."""
    if engine.lower() != "innodb":
        return None, [f"{db}.{name}: engine {engine or 'unknown'} is not InnoDB"]
    nullable = {c.name: c.nullable for c in cols}
    key = _choose_key(name, uniques, nullable)
    if key is None:
        return None, [f"{db}.{name}: no primary key and no NOT NULL unique key"]
    kinds = {c.name: c for c in cols}
    bad = [
        f"{db}.{name}: key column {k} is {kinds[k].data_type.upper()} (sorts by position)"
        for k in key
        if kinds[k].data_type in ("enum", "set")
    ]
    if bad:
        return None, bad
    table = Table(
        db=db,
        name=name,
        columns=tuple(cols),
        key=key,
        unique_keys={i: tuple(c for c, _ in v) for i, v in uniques.items()},
        engine=engine,
        rows_estimate=estimate,
    )
    return table, []


def check_foreign_keys(tables: Mapping[TableId, Table], fks: Sequence[ForeignKey]) -> list[ForeignKey]:
    """The FKs between replicated tables; refuse a replicated child whose acting parent is not replicated."""
    kept: list[ForeignKey] = []
    problems: list[str] = []
    for fk in fks:
        if fk.child not in tables:
            continue
        if fk.parent not in tables:
            if fk.acts:
                problems.append(
                    f"{fk.child[0]}.{fk.child[1]} (constraint {fk.name}) cascades from {fk.parent[0]}.{fk.parent[1]},"
                    " which is not replicated: its cascades would be missed"
                )
            continue
        kept.append(fk)
    if problems:
        raise SetupError("replicate the parent tables too, or exclude the children:\n  " + "\n  ".join(problems))
    return kept


def _shape(conn: Connection, db: str, table: str) -> list[tuple[str, str, str, str]]:
    rows = query(
        conn,
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COALESCE(GENERATION_EXPRESSION, '')"
        " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        (db, table),
    )
    return [(str(a), str(b).lower(), str(c), str(d)) for a, b, c, d in rows]


def ensure_target(
    source: Connection,
    target: Connection,
    config: Config,
    tables: Mapping[TableId, Table],
    *,
    compare: bool = True,
    creates: Mapping[TableId, str] | None = None,
) -> int:
    """Create missing target databases and tables from the source's definitions; refuse other shapes.

    ``compare`` is off once a checkpoint exists: from then on the target's definitions are the stream's truth
    and the source's may legitimately be ahead of it. Returns the number of tables created. Triggers are not
    copied (docs/DESIGN.md#rule-triggers; :mod:`austasync.triggers` moves them at cutover) and target tables that
    have triggers are refused. ``creates`` holds ``SHOW CREATE TABLE`` texts read earlier (those of P0, read by
    :mod:`austasync.startup_schema`); tables it lacks are read from the source now.
    """
    created = 0
    mismatches: list[str] = []
    for db in sorted({t.db for t in tables.values()}):
        tdb = config.replication.target_db(db)
        charset = query(
            source,
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA"
            " WHERE SCHEMA_NAME = %s",
            (db,),
        )
        cs, coll = (str(charset[0][0]), str(charset[0][1])) if charset else ("utf8mb4", "utf8mb4_general_ci")
        # only when missing: the statement is logged even when the database exists, and the target-write watcher
        # resuming where the last daemon stopped would count it as someone else's DDL
        if not query(target, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (tdb,)):
            query(target, f"CREATE DATABASE {quote_ident(tdb)} CHARACTER SET {cs} COLLATE {coll}")
    for table in tables.values():
        tdb = config.replication.target_db(table.db)
        existing = _shape(target, tdb, table.name)
        if not existing:
            ddl = (creates or {}).get(table.id) or show_create(source, table.id)
            if ddl is None:
                continue  # dropped on the source since it was listed: the stream says what becomes of it

            query(target, f"USE {quote_ident(tdb)}")
            query(target, "SET SESSION foreign_key_checks = 0")
            query(target, ddl)
            created += 1
            continue
        wanted = _shape(source, table.db, table.name)
        if compare and existing != wanted:
            mismatches.append(f"{tdb}.{table.name}: {_describe_diff(wanted, existing)}")
    if mismatches:
        raise SetupError(
            "existing target tables have another shape than the source; drop them or alter them to match:\n  "
            + "\n  ".join(mismatches)
        )
    triggers = _target_triggers(target, config, tables)
    if triggers:
        raise SetupError(
            "target tables have triggers, which would fire a second time on replicated rows"
            " (docs/DESIGN.md#rule-triggers);"
            " drop them (austasync cutover creates the source's triggers there at promotion, austasync rollback"
            " moves them back; their definitions are saved in the state schema's triggers table on the side that"
            " lost them): " + ", ".join(triggers)
        )
    return created


def show_create(source: Connection, key: TableId) -> str | None:
    """``SHOW CREATE TABLE`` of ``key``, or None when the table is gone (dropped or renamed since it was listed)."""
    try:
        return str(query(source, f"SHOW CREATE TABLE {qualified(*key)}")[0][1])
    except pymysql.err.ProgrammingError as exc:
        if exc.args[0] != 1146:
            raise
        return None


def _describe_diff(wanted: list[tuple[str, str, str, str]], existing: list[tuple[str, str, str, str]]) -> str:
    want = {c[0]: c for c in wanted}
    have = {c[0]: c for c in existing}
    parts = []
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing:
        parts.append("missing columns " + ", ".join(missing))
    if extra:
        parts.append("extra columns " + ", ".join(extra))
    for name, spec in want.items():
        if name in have and spec != have[name]:
            parts.append(f"column {name} is {have[name][1]} {have[name][2]}, source has {spec[1]} {spec[2]}")
    if not parts:
        parts.append("column order differs: " + ", ".join(c[0] for c in existing))
    return "; ".join(parts)


def _target_triggers(target: Connection, config: Config, tables: Mapping[TableId, Table]) -> list[str]:
    wanted = {(config.replication.target_db(t.db), t.name) for t in tables.values()}
    rows = query(
        target, "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME FROM information_schema.TRIGGERS"
    )
    return [f"{r[2]} on {r[0]}.{r[1]}" for r in rows if (str(r[0]), str(r[1])) in wanted]
