"""The truth about what was applied, kept in the target (docs/DESIGN.md#rule-target-truth).

Tables in the state schema (default ``_austasync``), one row per migration name:

- ``fence``: the writer generation (docs/DESIGN.md#rule-fencing). Every austasync write transaction first reads
  it with a *shared* lock and checks it is still its own and that the target is not promoted; a new daemon kills
  the previous holder's recorded connections and bumps the generation under an exclusive lock. A frozen old
  daemon that wakes up cannot write a row.
- ``state``: stream position (a transaction boundary, plus the count of rows events already applied of the next
  transaction when a big one was split), P0, phase, pending stop, last verification.
- ``copy_cursor``: per table, the last key copied, committed inside the chunk's own transaction.
- ``own_ddl``: DDL austasync ran on the target, by target binlog positions, for the target-write watcher.
- ``foreign_write``: writes on the target that austasync did not make, open until a covering verification comes
  out clean or an operator acknowledges them, with who and when (:mod:`austasync.foreign`).

The same schema on both servers also holds ``triggers``, the definitions cutover and rollback saved before
dropping them there (:mod:`austasync.triggers`).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from austasync.db import Connection, query, status
from austasync.errors import FencedError, UnavailableError
from austasync.position import Position
from austasync.sql import quote_ident

_DDL = (
    """CREATE TABLE IF NOT EXISTS {s}.fence (
        migration VARCHAR(64) NOT NULL PRIMARY KEY,
        generation BIGINT UNSIGNED NOT NULL DEFAULT 0,
        promoted TINYINT NOT NULL DEFAULT 0,
        holder VARCHAR(255) NOT NULL DEFAULT '',
        connections VARCHAR(2048) NOT NULL DEFAULT '',
        updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS {s}.state (
        migration VARCHAR(64) NOT NULL PRIMARY KEY,
        p0_file VARCHAR(255) NOT NULL,
        p0_pos BIGINT UNSIGNED NOT NULL,
        file VARCHAR(255) NOT NULL,
        pos BIGINT UNSIGNED NOT NULL,
        skip_events BIGINT UNSIGNED NOT NULL DEFAULT 0,
        phase VARCHAR(32) NOT NULL DEFAULT 'copying',
        pending_stop TEXT NULL,
        last_verify TEXT NULL,
        updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS {s}.copy_cursor (
        migration VARCHAR(64) NOT NULL,
        db VARCHAR(64) NOT NULL,
        tbl VARCHAR(64) NOT NULL,
        cursor_hex TEXT NULL,
        done TINYINT NOT NULL DEFAULT 0,
        rows_copied BIGINT UNSIGNED NOT NULL DEFAULT 0,
        rows_estimated BIGINT UNSIGNED NOT NULL DEFAULT 0,
        PRIMARY KEY (migration, db, tbl)
    ) ENGINE=InnoDB""",
    # DDL austasync ran on the target (on_ddl = "exec", `austasync ddl --exec`), by the target binlog positions it
    # was logged between: the target-write watcher tells them from someone else's, across restarts too
    """CREATE TABLE IF NOT EXISTS {s}.own_ddl (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        migration VARCHAR(64) NOT NULL,
        from_file VARCHAR(255) NOT NULL,
        from_pos BIGINT UNSIGNED NOT NULL,
        to_file VARCHAR(255) NOT NULL,
        to_pos BIGINT UNSIGNED NOT NULL,
        statement TEXT NOT NULL,
        at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        KEY (migration, id)
    ) ENGINE=InnoDB""",
    # writes on the target that austasync did not make (austasync.foreign), by the target binlog position they
    # ended at: a watcher reading the same binlog again after a restart finds them recorded already
    """CREATE TABLE IF NOT EXISTS {s}.foreign_write (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        migration VARCHAR(64) NOT NULL,
        file VARCHAR(255) NOT NULL,
        pos BIGINT UNSIGNED NOT NULL,
        kind VARCHAR(16) NOT NULL,
        scope VARCHAR(16) NOT NULL,
        objects TEXT NOT NULL,
        verb VARCHAR(64) NOT NULL DEFAULT '',
        statement TEXT NOT NULL,
        row_events TEXT NOT NULL,
        detail VARCHAR(1000) NOT NULL DEFAULT '',
        seen_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        cleared_at TIMESTAMP(6) NULL DEFAULT NULL,
        cleared_by VARCHAR(255) NULL,
        cleared_how VARCHAR(1000) NULL,
        UNIQUE KEY (migration, file, pos),
        KEY (migration, cleared_at)
    ) ENGINE=InnoDB""",
)


@dataclass(frozen=True)
class Checkpoint:
    position: Position
    skip_events: int
    p0: Position
    phase: str
    pending_stop: dict[str, Any] | None


@dataclass(frozen=True)
class CopyCursor:
    db: str
    table: str
    cursor: tuple[bytes, ...] | None
    done: bool
    rows_copied: int
    rows_estimated: int


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TargetState:
    """Reads and writes the state rows of one migration, always inside the caller's target transaction."""

    def __init__(self, schema: str, migration: str) -> None:
        self.schema = quote_ident(schema)
        self.schema_name = schema
        self.migration = migration
        self.generation: int | None = None

    def ensure_schema(self, conn: Connection) -> None:
        query(conn, f"CREATE DATABASE IF NOT EXISTS {self.schema}")
        for ddl in _DDL:
            query(conn, ddl.format(s=self.schema))
        query(conn, f"INSERT IGNORE INTO {self.schema}.fence (migration) VALUES (%s)", (self.migration,))
        query(conn, "COMMIT")

    # --- fencing, docs/DESIGN.md#rule-fencing --------------------------------------------------------------

    def take_over(self, conn: Connection, my_connections: list[int]) -> int:
        """Become the writer: kill the previous holder's sessions, bump the generation, record ours.

        Sessions recorded before the target last started are not killed: they died with it, and their ids are
        handed out again from 1 (a daemon reconnecting after a target restart would otherwise kill whoever holds
        them now: another client, its own watcher).
        """
        uptime = int(status(conn, "Uptime") or 0)
        rows = query(
            conn,
            # one second more than the uptime: the server started no later than that (the uptime is rounded down)
            f"SELECT connections, promoted, updated_at < NOW(6) - INTERVAL %s SECOND FROM {self.schema}.fence"
            " WHERE migration = %s",
            (uptime + 1, self.migration),
        )
        query(conn, "COMMIT")
        if rows and int(rows[0][1]):
            raise FencedError(
                f"the target is promoted for migration {self.migration!r}: austasync no longer writes to it"
            )
        before_start = bool(rows and int(rows[0][2] or 0))
        previous = [int(c) for c in str(rows[0][0]).split(",") if c] if rows and not before_start else []
        for conn_id in previous:
            if conn_id in my_connections:
                continue
            try:
                query(conn, f"KILL {conn_id}")
            except Exception:  # noqa: BLE001, S112 (the old session is usually gone already: unknown thread id)
                continue
        query(conn, "SET SESSION innodb_lock_wait_timeout = 30")
        query(
            conn,
            f"UPDATE {self.schema}.fence SET generation = generation + 1, holder = %s, connections = %s,"
            " updated_at = CURRENT_TIMESTAMP(6) WHERE migration = %s",
            (holder_name(), ",".join(str(c) for c in my_connections), self.migration),
        )
        gen = int(
            query(conn, f"SELECT generation FROM {self.schema}.fence WHERE migration = %s", (self.migration,))[0][0]
        )
        query(conn, "COMMIT")
        self.generation = gen
        return gen

    def add_connections(self, conn: Connection, connections: list[int]) -> None:
        """Record more of our sessions (extra copy writers), so that a takeover kills them too; fenced."""
        self.check_fence(conn)
        query(
            conn,
            f"UPDATE {self.schema}.fence SET connections = CONCAT_WS(',', NULLIF(connections, ''), %s),"
            " updated_at = CURRENT_TIMESTAMP(6) WHERE migration = %s AND generation = %s",
            (",".join(str(c) for c in connections), self.migration, self.generation),
        )
        query(conn, "COMMIT")

    def check_fence(self, conn: Connection) -> None:
        """First statement of every write transaction: a shared lock on the fence row, then the check."""
        rows = query(
            conn,
            f"SELECT generation, promoted FROM {self.schema}.fence WHERE migration = %s LOCK IN SHARE MODE",
            (self.migration,),
        )
        if not rows:
            raise FencedError(f"fence row for migration {self.migration!r} is missing from the target")
        generation, promoted = int(rows[0][0]), int(rows[0][1])
        if promoted:
            raise FencedError(f"the target was promoted (migration {self.migration!r}); refusing to write")
        if generation != self.generation:
            raise FencedError(
                f"another austasync took over migration {self.migration!r} (generation {generation}, ours"
                f" {self.generation}); this process stops without writing"
            )

    # --- checkpoint, docs/DESIGN.md#rule-checkpoint -----------------------------------------------------------

    def load(self, conn: Connection) -> Checkpoint | None:
        rows = query(
            conn,
            f"SELECT file, pos, skip_events, p0_file, p0_pos, phase, pending_stop FROM {self.schema}.state"
            " WHERE migration = %s",
            (self.migration,),
        )
        query(conn, "COMMIT")
        if not rows:
            return None
        file, pos, skip, p0f, p0p, phase, pending = rows[0]
        return Checkpoint(
            position=Position(str(file), int(pos)),
            skip_events=int(skip),
            p0=Position(str(p0f), int(p0p)),
            phase=str(phase),
            pending_stop=json.loads(pending) if pending else None,
        )

    def init(self, conn: Connection, p0: Position, tables: list[tuple[str, str, int]]) -> None:
        """Persist P0 and an empty copy cursor per table, in one transaction, before anything is copied."""
        self.check_fence(conn)
        query(
            conn,
            f"INSERT INTO {self.schema}.state (migration, p0_file, p0_pos, file, pos) VALUES (%s, %s, %s, %s, %s)",
            (self.migration, p0.file, p0.pos, p0.file, p0.pos),
        )
        for db, table, estimate in tables:
            query(
                conn,
                f"INSERT INTO {self.schema}.copy_cursor (migration, db, tbl, rows_estimated) VALUES (%s, %s, %s, %s)",
                (self.migration, db, table, estimate),
            )
        query(conn, "COMMIT")

    def add_tables(self, conn: Connection, tables: list[tuple[str, str, int]]) -> None:
        """Copy cursors for tables that appeared in the selection since the state was created."""
        self.check_fence(conn)
        for db, table, estimate in tables:
            query(
                conn,
                f"INSERT IGNORE INTO {self.schema}.copy_cursor (migration, db, tbl, rows_estimated)"
                " VALUES (%s, %s, %s, %s)",
                (self.migration, db, table, estimate),
            )
        query(conn, "COMMIT")

    def save_position(self, conn: Connection, position: Position, skip_events: int, phase: str) -> None:
        query(
            conn,
            f"UPDATE {self.schema}.state SET file = %s, pos = %s, skip_events = %s, phase = %s,"
            " updated_at = CURRENT_TIMESTAMP(6) WHERE migration = %s",
            (position.file, position.pos, skip_events, phase, self.migration),
        )

    def mark_own_write(self, conn: Connection) -> None:
        """Change this migration's state row (its ``updated_at`` only) in the caller's open transaction.

        The target's write watcher knows austasync's transactions by a changed state row
        (docs/DESIGN.md#rule-foreign-writes). A write that moves no checkpoint or cursor (a repair run with no
        daemon) calls this, or the next daemon would report it as a foreign write. The new value is always later
        than the old, so the row really changes and is in the binlog even within one microsecond.
        """
        with conn.cursor() as cur:
            changed = cur.execute(
                f"UPDATE {self.schema}.state SET updated_at ="
                " GREATEST(CURRENT_TIMESTAMP(6), updated_at + INTERVAL 1 MICROSECOND) WHERE migration = %s",
                (self.migration,),
            )
        if changed != 1:
            raise FencedError(
                f"the state row of migration {self.migration!r} is missing from the target: refusing to write"
                " what the next daemon could not tell from a foreign write"
            )

    def save_stop(self, conn: Connection, stop: dict[str, Any] | None) -> None:
        query(
            conn,
            f"UPDATE {self.schema}.state SET pending_stop = %s WHERE migration = %s",
            (json.dumps(stop) if stop else None, self.migration),
        )

    def save_verification(self, conn: Connection, doc: dict[str, Any]) -> None:
        """The last verification's summary, kept in the target so a Redis restart does not forget it."""
        query(
            conn,
            f"UPDATE {self.schema}.state SET last_verify = %s WHERE migration = %s",
            (json.dumps(doc, default=str), self.migration),
        )

    def last_verification(self, conn: Connection) -> dict[str, Any] | None:
        rows = query(conn, f"SELECT last_verify FROM {self.schema}.state WHERE migration = %s", (self.migration,))
        query(conn, "COMMIT")
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def cursors(self, conn: Connection) -> list[CopyCursor]:
        rows = query(
            conn,
            f"SELECT db, tbl, cursor_hex, done, rows_copied, rows_estimated FROM {self.schema}.copy_cursor"
            " WHERE migration = %s ORDER BY db, tbl",
            (self.migration,),
        )
        query(conn, "COMMIT")
        return [
            CopyCursor(
                db=str(r[0]),
                table=str(r[1]),
                cursor=tuple(bytes.fromhex(h) for h in json.loads(r[2])) if r[2] else None,
                done=bool(r[3]),
                rows_copied=int(r[4]),
                rows_estimated=int(r[5]),
            )
            for r in rows
        ]

    def save_cursor(self, conn: Connection, cursor: CopyCursor) -> None:
        query(
            conn,
            f"UPDATE {self.schema}.copy_cursor SET cursor_hex = %s, done = %s, rows_copied = %s"
            " WHERE migration = %s AND db = %s AND tbl = %s",
            (
                json.dumps([c.hex() for c in cursor.cursor]) if cursor.cursor is not None else None,
                int(cursor.done),
                cursor.rows_copied,
                self.migration,
                cursor.db,
                cursor.table,
            ),
        )

    def set_stream_owned(self, conn: Connection, db: str, table: str, done: bool) -> None:
        """A table the stream created (done: every row it will hold comes from the stream) or renamed into being
        (``done`` as the old name's copy was); its copy cursor starts afresh."""
        query(
            conn,
            f"INSERT INTO {self.schema}.copy_cursor (migration, db, tbl, done) VALUES (%s, %s, %s, %s)"
            " ON DUPLICATE KEY UPDATE done = VALUES(done), cursor_hex = NULL, rows_copied = 0",
            (self.migration, db, table, int(done)),
        )

    def record_own_ddl(self, conn: Connection, start: Position, end: Position, statement: str) -> None:
        """Note a DDL austasync ran on the target, logged in the target's binlog between ``start`` and ``end``."""
        query(
            conn,
            f"INSERT INTO {self.schema}.own_ddl (migration, from_file, from_pos, to_file, to_pos, statement)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (self.migration, start.file, start.pos, end.file, end.pos, statement[:4000]),
        )
        # the last thousand are plenty: the watcher resumes at most from where the last daemon stopped
        query(
            conn,
            f"DELETE FROM {self.schema}.own_ddl WHERE migration = %s AND id <= (SELECT id FROM (SELECT id FROM"
            f" {self.schema}.own_ddl WHERE migration = %s ORDER BY id DESC LIMIT 1 OFFSET 1000) AS old)",
            (self.migration, self.migration),
        )

    def begin_own_ddl(self, conn: Connection, start: Position, thread: int, what: str) -> int:
        """Note, before it runs, DDL that connection ``thread`` is about to run from ``start`` on: a kill before
        :meth:`end_own_ddl` leaves the row open, and the next start closes it from the target's binlog
        (:func:`austasync.ddl_resume.close_open_own_ddl`). An open row covers nothing for the watcher."""
        query(
            conn,
            f"INSERT INTO {self.schema}.own_ddl (migration, from_file, from_pos, to_file, to_pos, statement)"
            " VALUES (%s, %s, %s, '', 0, %s)",
            (self.migration, start.file, start.pos, f"{_OPEN_PREFIX}{thread}: {what}"[:4000]),
        )
        return int(query(conn, "SELECT LAST_INSERT_ID()")[0][0])

    def end_own_ddl(self, conn: Connection, row: int, end: Position, statement: str) -> None:
        query(
            conn,
            f"UPDATE {self.schema}.own_ddl SET to_file = %s, to_pos = %s, statement = %s WHERE id = %s",
            (end.file, end.pos, statement[:4000], row),
        )

    def drop_own_ddl(self, conn: Connection, row: int) -> None:
        query(conn, f"DELETE FROM {self.schema}.own_ddl WHERE id = %s", (row,))

    def open_own_ddl(self, conn: Connection) -> list[tuple[int, Position, int, str]]:
        """(row, start, thread, what) of the DDL records a kill left open."""
        rows = query(
            conn,
            f"SELECT id, from_file, from_pos, statement FROM {self.schema}.own_ddl WHERE migration = %s"
            " AND to_file = '' ORDER BY id",
            (self.migration,),
        )
        out = []
        for row, file, pos, text in rows:
            thread, _, what = str(text).removeprefix(_OPEN_PREFIX).partition(": ")
            out.append((int(row), Position(str(file), int(pos)), int(thread), what))
        return out

    def own_ddl(self, conn: Connection) -> list[tuple[Position, Position, str]]:
        rows = query(
            conn,
            f"SELECT from_file, from_pos, to_file, to_pos, statement FROM {self.schema}.own_ddl WHERE migration = %s"
            " AND to_file <> '' ORDER BY id",
            (self.migration,),
        )
        return [(Position(str(r[0]), int(r[1])), Position(str(r[2]), int(r[3])), str(r[4])) for r in rows]

    def mark_copied(self, conn: Connection) -> None:
        """Every table counts as copied (a reverse stream: both sides were proven equal at its start)."""
        self.check_fence(conn)
        query(conn, f"UPDATE {self.schema}.copy_cursor SET done = 1 WHERE migration = %s", (self.migration,))
        query(conn, "COMMIT")

    def reset(self, conn: Connection) -> None:
        """Forget the migration's progress (a re-copy starts from a new P0); the fence generation stays."""
        query(conn, f"DELETE FROM {self.schema}.state WHERE migration = %s", (self.migration,))
        query(conn, f"DELETE FROM {self.schema}.copy_cursor WHERE migration = %s", (self.migration,))
        query(conn, "COMMIT")


_OPEN_PREFIX = "open, connection "


def connection_id(conn: Connection) -> int:
    rows = query(conn, "SELECT CONNECTION_ID()")
    if not rows:
        raise UnavailableError("cannot read CONNECTION_ID() on the target")
    return int(rows[0][0])
