"""The source's schema as of the first start's P0: read between two binlog positions with no DDL logged between.

See docs/DESIGN.md#rule-startup-schema.

A first start creates the target tables from the source's definitions and streams from P0, the source's binlog
end. Both must describe the same moment: a DDL that runs on the source after the definitions are read but before
P0 is in neither (the target keeps the old shape, the stream starts after the change), and one that runs after
P0 but is already in the definitions is in both (the stream applies it a second time). Either way the target is
wrong: rows of a renamed table go nowhere, rows with a new column do not fit.

So the definitions are read between two reads of the binlog end, ``before`` and ``after``, and the source's binlog
between them is scanned for statements that touch the selected objects. None: every definition read is the one in
force at ``after`` (a DDL's event is logged before it releases the metadata lock that a definition read waits for,
so a read that sees a change comes after the change's event), and ``after`` is P0. Some: read again, a few times,
then refuse with the statement that kept changing the schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymysql

from austasync import objects
from austasync.binlog import statements
from austasync.binlog.adapter import LoggedStatement, logged_statements
from austasync.config import Config
from austasync.db import Connection, binlog_end
from austasync.errors import SetupError
from austasync.position import Position
from austasync.schema import (
    ForeignKey,
    Table,
    TableId,
    check_foreign_keys,
    load_foreign_keys,
    load_tables,
    show_create,
)

ATTEMPTS = 5


@dataclass(frozen=True)
class SourceSchema:
    """The selected tables, their foreign keys, ``SHOW CREATE TABLE`` texts and views/routines, as of ``position``."""

    tables: dict[TableId, Table]
    fks: list[ForeignKey]
    creates: dict[TableId, str]
    definitions: list[objects.Definition]
    position: Position


class _Changed(Exception):
    """The schema changed while it was read (a table listed a moment ago is gone, or a DDL was logged)."""


def read_tables(source: Connection, config: Config) -> tuple[dict[TableId, Table], list[ForeignKey]]:
    """The selected tables and their foreign keys, read again when DDL between the catalog's queries tore the read."""
    for attempt in range(ATTEMPTS):
        try:
            tables = load_tables(source, config)
            return tables, check_foreign_keys(tables, load_foreign_keys(source, tables))
        except (pymysql.err.ProgrammingError, SetupError) as exc:
            # the catalog is read in several queries: DDL running on the source between them drops a table
            # listed a moment ago, or shows a new one before its keys; read again before calling it a refusal
            transient = isinstance(exc, SetupError) or exc.args[0] == 1146
            if not transient or attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")  # pragma: no cover


def read_at_p0(
    source: Connection,
    config: Config,
    selection: statements.Selection,
    log: Any,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> SourceSchema:
    """The source's selected schema and the binlog position it is the schema of (see the module docstring).

    Raises :class:`SetupError` when DDL on the selected objects was logged during each of :data:`ATTEMPTS` reads.
    """
    last = ""
    for attempt in range(ATTEMPTS):
        before = binlog_end(source)
        try:
            tables, fks = read_tables(source, config)
            creates = {key: _show_create(source, key) for key in tables}
            definitions = objects.read_definitions(source, config)
        except _Changed as exc:
            last = str(exc)
        else:
            after = binlog_end(source)
            changes = [] if after == before else _schema_changes(config, selection, before, after)
            if not changes:
                return SourceSchema(tables, fks, creates, definitions, after)
            change = changes[0]
            last = f"{change.text[:300]!r} (logged at {change.end})"
        log.info("DDL ran on the source while its schema was read; reading it again", change=last, attempt=attempt + 1)
        sleep(0.5 * (attempt + 1))
    raise SetupError(
        f"DDL kept changing the selected tables on the source while austasync read their definitions ({ATTEMPTS}"
        f" tries; the last: {last}). Nothing was created on the target. Start again once the schema change is done"
    )


def _show_create(source: Connection, key: TableId) -> str:
    ddl = show_create(source, key)
    if ddl is None:
        raise _Changed(f"table {key[0]}.{key[1]} was dropped or renamed after it was listed")
    return ddl


def _schema_changes(
    config: Config, selection: statements.Selection, before: Position, after: Position
) -> list[LoggedStatement]:
    """The statements logged in (before, after] that the stream would hand to the DDL policy: DDL on selected
    objects, and anything it cannot classify (counted as a change: fail closed)."""
    logged = logged_statements(config.source, config.replication.server_id, before, until=after)
    return [s for s in logged if _touches_selection(s, selection)]


def _touches_selection(logged: LoggedStatement, selection: statements.Selection) -> bool:
    # parse() never raises: a statement it cannot read is "unknown", which judge() sends to the DDL policy.
    # DML logged as a statement changes rows, not definitions: the stream stops at it when it comes after P0
    verdict = statements.judge(statements.parse(logged.text, logged.sql_mode), logged.schema, selection)
    return verdict.action not in ("skip", "stop_dml")
