"""Triggers move with the direction of the stream (issue 8, docs/DESIGN.md#rule-triggers).

A trigger's effects on the side taking the application's writes are already row events in its binlog; the same
trigger on the replica of that stream would fire a second time on every replicated row. So only the primary has
the triggers: at cutover they are created on the new side and saved, then dropped, on the legacy host (the replica
of the reverse stream); a rollback moves them back, the legacy host getting its own saved definitions again.

A definition is everything needed to recreate a trigger exactly: SHOW CREATE TRIGGER's statement as the bytes the
server stores (read with ``character_set_results = binary``, so nothing is re-encoded on the way), which carries
the DEFINER; the sql_mode, character_set_client and collation_connection it was created under; its database
collation; and its ACTION_ORDER among the triggers of the same table, timing and event. The server keeps no
FOLLOWS/PRECEDES clause in the statement (measured on MariaDB 10.11: it strips it), so the order is reproduced by
creating the triggers in ACTION_ORDER on tables that have no other trigger (checked): each one is appended after
the previous, and no FOLLOWS is needed. Every created trigger is read back and must come out identical.

The side losing its triggers keeps their definitions in ``<state_schema>.triggers`` on that server (saved before
anything is dropped; saving again replaces the row; the side, the migration and the times are recorded). DDL
cannot be rolled back, so a move undoes its own steps when one fails: the triggers it created are dropped, the
ones it dropped are created again from the saved definitions, and anything that could not be undone is named in
the error. A move interrupted by a kill in between leaves the saved rows saying what was dropped from where.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

import pymysql

from austasync.config import Config, DatabaseConfig
from austasync.db import Connection, connect, query
from austasync.errors import TriggerError
from austasync.sql import qualified, quote_ident

ER_DEFINER_MISSING = 1449  # a note, not an error: the trigger is created and fails each time it fires
# CREATE/DROP TRIGGER wait for an exclusive metadata lock on the table: an idle transaction that once read it
# holds one, and the default wait is a year, while the application's writes are refused
LOCK_WAIT_SECONDS = 10
ER_LOCK_WAIT_TIMEOUT = 1205
ER_NO_SUCH_TABLE = 1146
ER_BAD_DB = 1049

_DDL = """CREATE TABLE IF NOT EXISTS {s}.triggers (
    db VARCHAR(64) NOT NULL,
    name VARCHAR(64) NOT NULL,
    tbl VARCHAR(64) NOT NULL,
    timing VARCHAR(6) NOT NULL,
    event VARCHAR(6) NOT NULL,
    action_order INT UNSIGNED NOT NULL,
    definer VARCHAR(400) NOT NULL,
    sql_mode VARCHAR(1024) NOT NULL,
    character_set_client VARCHAR(64) NOT NULL,
    collation_connection VARCHAR(64) NOT NULL,
    database_collation VARCHAR(64) NOT NULL,
    statement LONGBLOB NOT NULL,
    migration VARCHAR(64) NOT NULL,
    side VARCHAR(16) NOT NULL,
    saved_by VARCHAR(16) NOT NULL,
    saved_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    dropped TINYINT NOT NULL DEFAULT 0,
    dropped_at TIMESTAMP(6) NULL DEFAULT NULL,
    restored_at TIMESTAMP(6) NULL DEFAULT NULL,
    PRIMARY KEY (db, name)
) ENGINE=InnoDB"""

_COLUMNS = (
    "db, tbl, name, timing, event, action_order, definer, sql_mode, character_set_client, collation_connection,"
    " database_collation, statement"
)


@dataclass(frozen=True)
class Trigger:
    """One trigger's exact definition; equal definitions recreate equal triggers."""

    db: str
    table: str
    name: str
    timing: str
    event: str
    order: int
    definer: str
    sql_mode: str
    character_set_client: str
    collation_connection: str
    database_collation: str
    statement: bytes  # SHOW CREATE TRIGGER's statement, in character_set_client

    @property
    def label(self) -> str:
        return f"{self.name} on {self.db}.{self.table}"

    @property
    def group(self) -> tuple[str, str, str, str]:
        """Triggers of one group fire in ACTION_ORDER."""
        return (self.db, self.table, self.timing, self.event)


@dataclass(frozen=True)
class Side:
    """One server of a move: how to reach it and what to call it in messages and in the saved rows."""

    key: str  # "legacy" or "new": stored with the saved definitions
    server: DatabaseConfig

    @property
    def name(self) -> str:
        return "legacy host" if self.key == "legacy" else "new side"

    @property
    def describe(self) -> str:
        return f"the {self.name} ({self.server.describe()})"


@dataclass(frozen=True)
class MovePlan:
    """What a move will do: ``owned`` leave ``origin``; ``wanted`` (the same, schema names mapped) arrive."""

    origin: Side
    destination: Side
    owned: tuple[Trigger, ...]
    wanted: tuple[Trigger, ...]
    restoring: tuple[Trigger, ...]  # the destination's own saved definitions these bring back (a rollback)

    @property
    def names(self) -> list[str]:
        return [t.label for t in self.wanted]


@dataclass
class Moved:
    """What a move has done so far, so that it can be undone."""

    plan: MovePlan
    created: list[Trigger] = field(default_factory=list)
    dropped: list[Trigger] = field(default_factory=list)
    restored: bool = False  # the destination's saved definitions were marked restored


# --- reading ---------------------------------------------------------------------------------------------------


def read_triggers(conn: Connection, databases: tuple[str, ...], selected: Callable[[str, str], bool]) -> list[Trigger]:
    """The triggers of the selected tables of ``databases``, in creation order (group, then ACTION_ORDER)."""
    if not databases:
        return []
    rows = query(
        conn,
        "SELECT EVENT_OBJECT_SCHEMA, EVENT_OBJECT_TABLE, TRIGGER_NAME, ACTION_TIMING, EVENT_MANIPULATION,"
        " ACTION_ORDER, DEFINER FROM information_schema.TRIGGERS"
        f" WHERE EVENT_OBJECT_SCHEMA IN ({','.join(['%s'] * len(databases))})",
        databases,
    )
    found = []
    # the statement's bytes exactly as stored, in its own character_set_client
    query(conn, "SET SESSION character_set_results = binary")
    try:
        for db, table, name, timing, event, order, definer in rows:
            if not selected(str(db), str(table)):
                continue
            show = query(conn, f"SHOW CREATE TRIGGER {qualified(str(db), str(name))}")[0]
            found.append(
                Trigger(
                    db=str(db),
                    table=str(table),
                    name=str(name),
                    timing=str(timing),
                    event=str(event),
                    order=int(order),
                    definer=str(definer),
                    sql_mode=_text(show[1]),
                    statement=bytes(show[2]),
                    character_set_client=_text(show[3]),
                    collation_connection=_text(show[4]),
                    database_collation=_text(show[5]),
                )
            )
    finally:
        query(conn, "SET SESSION character_set_results = utf8mb4")
    return _in_order(found)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- schema names mapped (replication.rename) -------------------------------------------------------------------

_TOKEN = re.compile(
    rb"(?P<space>\s+|/\*.*?\*/|(?:--\s|\#)[^\n]*\n?)|(?P<ident>`(?:[^`]|``)*`|\"(?:[^\"]|\"\")*\")"
    rb"|(?P<word>[A-Za-z0-9_$\x80-\xff]+)|(?P<other>.)",
    re.DOTALL,
)


def retarget(trigger: Trigger, db: str) -> Trigger:
    """The definition for database ``db``: qualified names in the statement's head (trigger and table) mapped.

    The body is not rewritten (a parser of every statement would be needed): a body that names the database
    refuses, so that no trigger ever writes into the old schema name.
    """
    if db == trigger.db:
        return trigger
    head, spans = _head_qualifiers(trigger)
    statement = trigger.statement
    for start, end in reversed(spans):
        if _unquote(statement[start:end]) == trigger.db:
            statement = statement[:start] + quote_ident(db).encode() + statement[end:]
    body = trigger.statement[head:]
    name = re.escape(trigger.db.encode())
    if re.search(rb"(?<![A-Za-z0-9_$`])[`\"]?" + name + rb"[`\"]?\s*\.", body, re.IGNORECASE):
        raise TriggerError(
            f"trigger {trigger.label} names the database {trigger.db} in its body, which the configuration renames"
            f" to {db}; austasync does not rewrite trigger bodies. Remove the schema name from the body on the"
            " source (CREATE OR REPLACE TRIGGER), or drop the trigger there and create it on the other side by hand"
        )
    return replace(trigger, db=db, statement=statement)


def _head_qualifiers(trigger: Trigger) -> tuple[int, list[tuple[int, int]]]:
    """(where FOR EACH ROW ends, byte spans of the database qualifiers of the trigger's and the table's names)."""
    tokens = [(m.lastgroup, m.start(), m.end()) for m in _TOKEN.finditer(trigger.statement)]
    tokens = [t for t in tokens if t[0] != "space"]
    text = [trigger.statement[s:e].upper() for _, s, e in tokens]
    spans: list[tuple[int, int]] = []
    try:
        i = text.index(b"TRIGGER")
        i += 1
        if text[i] == b"IF":  # IF NOT EXISTS
            i += 3
        if text[i + 1] == b".":
            spans.append(tokens[i][1:])
            i += 2
        on = text.index(b"ON", i)
        if text[on + 2] == b".":
            spans.append(tokens[on + 1][1:])
        row = text.index(b"ROW", on)
    except (ValueError, IndexError):
        raise TriggerError(
            f"cannot find the table name in trigger {trigger.label}'s statement to map its schema name;"
            " create it on the other side by hand"
        ) from None
    return tokens[row][2], spans


def _unquote(raw: bytes) -> str:
    text = raw.decode()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in '`"':
        return text[1:-1].replace(text[0] * 2, text[0])
    return text


# --- the saved definitions ---------------------------------------------------------------------------------------


class SavedTriggers:
    """``<state_schema>.triggers`` on one server: the definitions austasync dropped there, or may drop."""

    def __init__(self, schema: str) -> None:
        self.schema = quote_ident(schema)

    def ensure(self, conn: Connection) -> None:
        query(conn, f"CREATE DATABASE IF NOT EXISTS {self.schema}")
        query(conn, _DDL.format(s=self.schema))

    def save(self, conn: Connection, triggers: tuple[Trigger, ...], *, migration: str, side: str, by: str) -> None:
        """Record the definitions before anything is dropped; saving again replaces a row (idempotent)."""
        self.ensure(conn)
        query(conn, "BEGIN")
        for t in triggers:
            query(conn, f"DELETE FROM {self.schema}.triggers WHERE db = %s AND name = %s", (t.db, t.name))
            query(
                conn,
                f"INSERT INTO {self.schema}.triggers ({_COLUMNS}, migration, side, saved_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (*_values(t), migration, side, by),
            )
        query(conn, "COMMIT")

    def parked(
        self, conn: Connection, databases: tuple[str, ...], selected: Callable[[str, str], bool]
    ) -> list[Trigger]:
        """Definitions austasync dropped from this server and has not restored, in creation order."""
        if not databases:
            return []
        try:
            rows = query(
                conn,
                f"SELECT {_COLUMNS} FROM {self.schema}.triggers WHERE dropped = 1"
                f" AND db IN ({','.join(['%s'] * len(databases))})",
                databases,
            )
        except pymysql.err.ProgrammingError as exc:
            if exc.args[0] in (ER_NO_SUCH_TABLE, ER_BAD_DB):
                return []
            raise
        return _in_order(t for t in map(_from_row, rows) if selected(t.db, t.table))

    def mark(self, conn: Connection, triggers: list[Trigger], *, dropped: bool) -> None:
        if not triggers:
            return
        column = "dropped_at" if dropped else "restored_at"
        for t in triggers:
            query(
                conn,
                f"UPDATE {self.schema}.triggers SET dropped = %s, {column} = CURRENT_TIMESTAMP(6)"
                " WHERE db = %s AND name = %s",
                (int(dropped), t.db, t.name),
            )


def _values(t: Trigger) -> tuple[object, ...]:
    return (
        t.db,
        t.table,
        t.name,
        t.timing,
        t.event,
        t.order,
        t.definer,
        t.sql_mode,
        t.character_set_client,
        t.collation_connection,
        t.database_collation,
        t.statement,
    )


def _from_row(row: tuple[object, ...]) -> Trigger:
    return Trigger(
        db=str(row[0]),
        table=str(row[1]),
        name=str(row[2]),
        timing=str(row[3]),
        event=str(row[4]),
        order=int(str(row[5])),
        definer=str(row[6]),
        sql_mode=str(row[7]),
        character_set_client=str(row[8]),
        collation_connection=str(row[9]),
        database_collation=str(row[10]),
        statement=bytes(row[11]) if isinstance(row[11], bytes | bytearray) else str(row[11]).encode(),
    )


# --- creating and dropping ----------------------------------------------------------------------------------------


def create(conn: Connection, trigger: Trigger) -> None:
    """Create one trigger with the session settings it was defined under, in its database's collation."""
    warnings = run_as_defined(
        conn,
        trigger.db,
        trigger.statement,
        sql_mode=trigger.sql_mode,
        character_set_client=trigger.character_set_client,
        collation_connection=trigger.collation_connection,
        database_collation=trigger.database_collation,
    )
    missing = [str(w[2]) for w in warnings if int(w[1]) == ER_DEFINER_MISSING]
    if missing:
        query(conn, f"DROP TRIGGER IF EXISTS {qualified(trigger.db, trigger.name)}")
        raise TriggerError(f"{missing[0]}: create that account (with its grants) where the trigger goes")


def run_as_defined(
    conn: Connection,
    db: str,
    statement: bytes,
    *,
    sql_mode: str,
    character_set_client: str,
    collation_connection: str,
    database_collation: str,
) -> list[tuple[Any, ...]]:
    """Run a stored object's CREATE statement (trigger, routine, view) in ``db`` with the session settings it was
    defined under, and its database collation where one is given (mysqldump does the same); the warnings."""
    query(conn, f"USE {quote_ident(db)}")
    with _database_collation(conn, db, database_collation):
        saved_mode = str(query(conn, "SELECT @@SESSION.sql_mode")[0][0])
        query(conn, "SET SESSION sql_mode = %s", (sql_mode,))
        try:
            query(
                conn,
                "SET SESSION character_set_client = %s, collation_connection = %s",
                (character_set_client, collation_connection),
            )
            query(conn, statement)  # the stored bytes, in the client charset just set
            return query(conn, "SHOW WARNINGS")
        finally:
            query(conn, "SET NAMES utf8mb4")
            query(conn, "SET SESSION sql_mode = %s", (saved_mode,))


@contextmanager
def _database_collation(conn: Connection, db: str, collation: str) -> Iterator[None]:
    """The database's default collation as it was where the trigger was defined (mysqldump does the same)."""
    rows = query(
        conn,
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA"
        " WHERE SCHEMA_NAME = %s",
        (db,),
    )
    if not collation or not rows or str(rows[0][1]) == collation:
        yield
        return
    query(conn, f"ALTER DATABASE {quote_ident(db)} COLLATE {collation}")
    try:
        yield
    finally:
        query(conn, f"ALTER DATABASE {quote_ident(db)} CHARACTER SET {rows[0][0]} COLLATE {rows[0][1]}")


def drop(conn: Connection, trigger: Trigger) -> None:
    query(conn, f"DROP TRIGGER {qualified(trigger.db, trigger.name)}")


# --- a move -------------------------------------------------------------------------------------------------------


class TriggerMove:
    """Moves the triggers of the replicated tables from the side a stream leaves to the side it makes primary.

    ``config`` is the configuration of the stream being promoted away from: its source loses the triggers, its
    target (the side being promoted) gets them, with database names mapped by ``replication.rename``. Opens its
    own connections (none with a replicated default database where the state schema is written: a stream reading
    that binlog must see its DDL as outside the replicated schemas); :meth:`close` closes them.
    """

    def __init__(self, config: Config, origin: Side, destination: Side, *, migration: str, by: str) -> None:
        self.config = config
        self.origin = origin
        self.destination = destination
        self.migration = migration
        self.by = by
        self.saved = SavedTriggers(config.replication.state_schema)
        self._conns: dict[tuple[str, str], Connection] = {}

    def close(self) -> None:
        for conn in self._conns.values():
            with suppress(Exception):  # already gone: nothing to close
                conn.close()
        self._conns.clear()

    def _conn(self, side: Side, use: str) -> Connection:
        """``admin``: reads, drops and the state schema; ``create``: CREATE TRIGGER (it changes databases)."""
        key = (side.key, use)
        if key not in self._conns:
            conn = connect(side.server, side.name)
            query(conn, f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}")
            self._conns[key] = conn
        return self._conns[key]

    # --- plan: everything checked before anything changes ---------------------------------------------------

    def plan(self) -> MovePlan:
        rep = self.config.replication
        origin, destination = self._conn(self.origin, "admin"), self._conn(self.destination, "admin")
        to_dbs = tuple(rep.target_db(db) for db in rep.databases)
        self._check_visible(origin, self.origin, rep.databases)
        self._check_visible(destination, self.destination, to_dbs)
        owned = read_triggers(origin, rep.databases, self.config.table_selected)
        wanted = tuple(retarget(t, rep.target_db(t.db)) for t in owned)
        self._check_destination(destination, wanted, to_dbs)
        restoring = self.saved.parked(destination, to_dbs, self._destination_selected)
        if restoring and list(restoring) != list(wanted):
            raise TriggerError(self._differs(restoring, wanted))
        return MovePlan(self.origin, self.destination, tuple(owned), wanted, tuple(restoring))

    def _destination_selected(self, db: str, table: str) -> bool:
        back = {v: k for k, v in self.config.replication.rename.items()}
        return self.config.table_selected(back.get(db, db), table)

    def _check_visible(self, conn: Connection, side: Side, databases: tuple[str, ...]) -> None:
        blind = blind_databases(conn, databases)
        if blind:
            raise TriggerError(
                f"the user {current_user(conn)} on {side.describe} lacks the TRIGGER privilege on {', '.join(blind)}:"
                " it cannot see the triggers there, so none would be moved. GRANT TRIGGER ON <db>.* TO that user"
            )

    def _check_destination(self, conn: Connection, wanted: tuple[Trigger, ...], to_dbs: tuple[str, ...]) -> None:
        present = read_triggers(conn, to_dbs, lambda _db, _table: True)
        names = {(t.db, t.name) for t in wanted}
        clash = [t.label for t in present if self._destination_selected(t.db, t.table) or (t.db, t.name) in names]
        if clash:
            raise TriggerError(
                f"{self.destination.describe} already has triggers on replicated tables or with the names of the"
                f" triggers to move: {', '.join(clash)}. Drop them there (they would fire a second time on"
                " replicated rows), then run again"
            )

    def _differs(self, restoring: list[Trigger], wanted: tuple[Trigger, ...]) -> str:
        saved = {t.label: t for t in restoring}
        live = {t.label: t for t in wanted}
        lines = [
            f"{n}: saved on {self.destination.describe}, missing on {self.origin.describe}"
            for n in saved
            if n not in live
        ]
        lines += [f"{n}: on {self.origin.describe}, not among the saved definitions" for n in live if n not in saved]
        lines += [f"{n}: definition changed since it was saved" for n in saved if n in live and saved[n] != live[n]]
        return (
            f"the triggers {self.destination.describe} had when austasync dropped them differ from the ones on"
            f" {self.origin.describe} now:\n  " + "\n  ".join(lines or ["their order differs"]) + "\n"
            f"Make the triggers on {self.origin.describe} match the saved ones, or discard the saved ones"
            f" (DELETE FROM {self.saved.schema}.triggers WHERE dropped = 1 on {self.destination.describe})"
            " to take the current ones; then run again"
        )

    def probe(self, plan: MovePlan) -> None:
        """Each DEFINER can be given on the destination (the account exists, our user may name it)."""
        conn = self._conn(self.destination, "admin")
        self.saved.ensure(conn)
        table = f"{self.saved.schema}.trigger_probe"
        probe = f"{self.saved.schema}.austasync_definer_probe"
        query(conn, f"CREATE TABLE IF NOT EXISTS {table} (id INT PRIMARY KEY) ENGINE=InnoDB")
        try:
            for definer in sorted({t.definer for t in plan.wanted}):
                users = [t.label for t in plan.wanted if t.definer == definer]
                try:
                    query(conn, f"DROP TRIGGER IF EXISTS {probe}")
                    query(
                        conn,
                        f"CREATE DEFINER={_definer(definer)} TRIGGER {probe} BEFORE INSERT ON {table}"
                        " FOR EACH ROW SET @austasync_probe = 1",
                    )
                    warnings = query(conn, "SHOW WARNINGS")
                except pymysql.err.MySQLError as exc:
                    raise TriggerError(
                        f"cannot create a trigger with DEFINER {definer} on {self.destination.describe}"
                        f" ({_error(exc)}), needed for {', '.join(users)}: give the user SET USER (MariaDB),"
                        " SET_USER_ID (MySQL) or SUPER there"
                    ) from None
                if any(int(w[1]) == ER_DEFINER_MISSING for w in warnings):
                    raise TriggerError(
                        f"the account {definer}, DEFINER of {', '.join(users)}, does not exist on"
                        f" {self.destination.describe}: create it there with the grants the triggers need"
                    )
        finally:
            query(conn, f"DROP TRIGGER IF EXISTS {probe}")
            query(conn, f"DROP TABLE IF EXISTS {table}")

    # --- apply: save, create, check, drop; undone on failure ------------------------------------------------

    def apply(self, plan: MovePlan) -> Moved:
        """Save on the origin, create on the destination (read back), then drop on the origin."""
        moved = Moved(plan)
        if not plan.owned:
            return moved
        origin = self._conn(self.origin, "admin")
        self.saved.save(origin, plan.owned, migration=self.migration, side=self.origin.key, by=self.by)
        try:
            self._create_all(moved)
            self._drop_all(moved)
            self.saved.mark(self._conn(self.destination, "admin"), list(plan.restoring), dropped=False)
            moved.restored = True
        except BaseException as exc:
            problems = self.undo(moved)
            if problems:
                raise TriggerError(f"{exc}\nand undoing the move failed:\n  " + "\n  ".join(problems)) from exc
            raise
        return moved

    def _create_all(self, moved: Moved) -> None:
        conn = self._conn(self.destination, "create")
        for trigger in moved.plan.wanted:
            try:
                create(conn, trigger)
            except pymysql.err.MySQLError as exc:
                raise TriggerError(
                    f"creating trigger {trigger.label} on {self.destination.describe} failed: {_error(exc)};"
                    f" nothing was moved ({self.origin.describe} keeps its triggers). Fix that and run again"
                ) from None
            except TriggerError as exc:
                raise TriggerError(
                    f"trigger {trigger.label} on {self.destination.describe}: {exc}; nothing was moved"
                    f" ({self.origin.describe} keeps its triggers). Then run again"
                ) from None
            moved.created.append(trigger)
        dbs = tuple(sorted({t.db for t in moved.plan.wanted}))
        names = {(t.db, t.name) for t in moved.plan.wanted}
        present = read_triggers(self._conn(self.destination, "admin"), dbs, lambda _d, _t: True)
        back = [t for t in present if (t.db, t.name) in names]
        if _in_order(back) != _in_order(moved.plan.wanted):
            wrong = [w.label for w in moved.plan.wanted if w not in back]
            raise TriggerError(
                f"triggers created on {self.destination.describe} do not read back identical (definition or order):"
                f" {', '.join(wrong) or 'their order'}; nothing was moved ({self.origin.describe} keeps its"
                " triggers). Report this: the server normalized something austasync does not carry"
            )

    def _drop_all(self, moved: Moved) -> None:
        conn = self._conn(self.origin, "admin")
        for trigger in moved.plan.owned:
            try:
                drop(conn, trigger)
            except pymysql.err.MySQLError as exc:
                raise TriggerError(
                    f"dropping trigger {trigger.label} on {self.origin.describe} failed: {_error(exc)};"
                    " the move was undone. Fix that and run again"
                ) from None
            moved.dropped.append(trigger)
            self.saved.mark(conn, [trigger], dropped=True)

    def undo(self, moved: Moved) -> list[str]:
        """Back to where the move started: the origin has its triggers (in order), the destination none of them.

        Returns what could not be undone (empty when everything was).
        """
        problems: list[str] = []
        for trigger in reversed(moved.created):
            try:
                drop(self._conn(self.destination, "admin"), trigger)
            except Exception as exc:  # noqa: BLE001 (collected: every step of the undo is tried)
                problems.append(f"trigger {trigger.label} is still on {self.destination.describe}: {_error(exc)}")
        moved.created.clear()
        if moved.dropped:
            problems += self._restore_origin(moved)
        if moved.restored:
            try:
                self.saved.mark(self._conn(self.destination, "admin"), list(moved.plan.restoring), dropped=True)
                moved.restored = False
            except Exception as exc:  # noqa: BLE001
                problems.append(
                    f"the saved definitions on {self.destination.describe} still say restored: {_error(exc)}"
                )
        return problems

    def _restore_origin(self, moved: Moved) -> list[str]:
        """Re-create the whole of each group that lost a trigger, so the order comes out as it was."""
        groups = {t.group for t in moved.dropped}
        affected = [t for t in moved.plan.owned if t.group in groups]
        admin, creator = self._conn(self.origin, "admin"), self._conn(self.origin, "create")
        problems: list[str] = []
        for trigger in affected:
            if trigger not in moved.dropped:
                try:
                    drop(admin, trigger)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"trigger {trigger.label} on {self.origin.describe}: {_error(exc)}")
        for trigger in affected:
            try:
                create(creator, trigger)
                self.saved.mark(admin, [trigger], dropped=False)
            except Exception as exc:  # noqa: BLE001
                problems.append(
                    f"trigger {trigger.label} is missing on {self.origin.describe} ({_error(exc)}): its definition is"
                    f" saved in {self.saved.schema}.triggers there"
                )
        moved.dropped.clear()
        return problems


@contextmanager
def trigger_move(config: Config, origin: Side, destination: Side, *, migration: str, by: str) -> Iterator[TriggerMove]:
    move = TriggerMove(config, origin, destination, migration=migration, by=by)
    try:
        yield move
    finally:
        move.close()


def current_user(conn: Connection) -> str:
    return str(query(conn, "SELECT CURRENT_USER()")[0][0])


def blind_databases(conn: Connection, databases: Iterable[str], privilege: str = "TRIGGER") -> list[str]:
    """Databases whose triggers this session cannot see: information_schema.TRIGGERS shows a trigger only to a user
    with the TRIGGER privilege on its table, so without it a move would silently move nothing. The same holds for
    events and the EVENT privilege (``privilege``)."""
    name, _, host = current_user(conn).rpartition("@")
    grantee = f"'{name}'@'{host}'"
    if query(
        conn,
        "SELECT 1 FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s AND PRIVILEGE_TYPE = %s",
        (grantee, privilege),
    ):
        return []
    patterns = query(
        conn,
        "SELECT TABLE_SCHEMA FROM information_schema.SCHEMA_PRIVILEGES WHERE GRANTEE = %s AND PRIVILEGE_TYPE = %s",
        (grantee, privilege),
    )
    return [db for db in databases if not any(_like(str(p[0]), db) for p in patterns)]


def _in_order(triggers: Iterable[Trigger]) -> list[Trigger]:
    return sorted(triggers, key=lambda t: (*t.group, t.order))


def _definer(definer: str) -> str:
    """``user@host`` as information_schema shows it, quoted for DEFINER=; a role has no host."""
    user, _, host = definer.rpartition("@")
    return f"{quote_ident(user)}@{quote_ident(host)}" if user and host else quote_ident(definer.rstrip("@"))


def _like(pattern: str, name: str) -> bool:
    """A SCHEMA_PRIVILEGES database pattern (``%``, ``_``, backslash escapes) against a database name."""
    regex = ""
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if ch == "%" else "." if ch == "_" else re.escape(ch)
        i += 1
    return re.fullmatch(regex, name) is not None


def _error(exc: BaseException) -> str:
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    if len(args) < 2:
        return str(exc)
    hint = " (a transaction holds the table: find it in SHOW PROCESSLIST)" if args[0] == ER_LOCK_WAIT_TIMEOUT else ""
    return f"error {args[0]}: {args[1]}{hint}"
