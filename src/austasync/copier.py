"""Bulk copy: key-ordered chunks read in a consistent snapshot whose binlog position is known exactly.

The daemon runs the applier to exactly that position before the chunks are written, so the target's copied
ranges always equal the source at the stream's position (docs/DESIGN.md#rule-copy-barrier).

- MariaDB: ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` then ``Binlog_snapshot_file/_position`` in the same
  session, with no lock at all.
- MySQL 8 has no such status: ``LOCK TABLES ... READ`` on a second connection waits for in-flight writes to
  the tables of this round, the snapshot is opened and the position read, then the lock is released
  (milliseconds of blocked writes to those tables only). Not testable on MariaDB-only machines.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pymysql

from austasync import governor
from austasync.config import DatabaseConfig
from austasync.db import (
    CONNECTION_CHARSET,
    Connection,
    connect,
    query,
    server_flavor,
    setup_raw_copy_session,
    start_snapshot,
)
from austasync.errors import UnavailableError, UncarryableValueError
from austasync.position import Position
from austasync.schema import SPATIAL_TYPES, Column, Table
from austasync.sql import Kind, after_key, at_most_key, qualified, quote_ident, quoted, raw_literal, select_expr


@dataclass(frozen=True)
class Chunk:
    """A key range read at the snapshot: ready ``(v1,v2,...)`` row literals (bytes as latin1 text), one per row or
    several joined by commas, ``count`` rows in all."""

    literals: list[str]
    last_key: tuple[bytes, ...] | None
    is_last: bool
    rows: int | None = None  # when the literals are joined; else one literal per row
    data: bytes | None = None  # instead of literals: the rows as a LOAD DATA file (applier.load_statement)

    @property
    def count(self) -> int:
        return len(self.literals) if self.rows is None else self.rows


# a row literal the server could not build (bigger than its max_allowed_packet: CONCAT gives NULL) or holding
# the ENUM index 0 marker is re-read column by column, where the exact check and message live
_ENUM_ZERO = "!ENUM0!"
_TOO_BIG = "!TOOBIG!"
# a chunk joined on the source is written as one INSERT; a bigger one is read row by row and split (and the
# table's next chunks are made smaller), so no statement outgrows the target's max_allowed_packet
MAX_JOINED_BYTES = 4 * 1024 * 1024 - 65536


def _row_literal(
    table: Table,
    row: Sequence[bytes | None],
    columns: Sequence[Column],
    position: Position | None,
    *,
    own_charset: bool = False,
) -> str:
    """``own_charset``: text in the connection's charset goes without an introducer, as the source renders it
    (:func:`literal_expr`); else every text literal carries its column's."""
    out = []
    for value, column in zip(row, columns, strict=True):
        try:
            if own_charset and value is not None and column.kind is Kind.TEXT and column.charset == CONNECTION_CHARSET:
                out.append(quoted(value, ""))
                continue
            out.append(raw_literal(value, column.kind, column.charset))
        except UncarryableValueError as exc:
            raise UncarryableValueError(
                f"copy of {table} column {column.name} (chunk read at source position {position}): {exc};"
                " nothing of this chunk was written"
            ) from None
    return "(" + ",".join(out) + ")"


def literal_expr(column: Column, for_load: bool = False) -> str:
    """SQL that makes the *source* render the column's exact literal, so Python only joins text.

    Used with ``[copy] render = "source"``. Rendering in Python cost 2.2 s per 250k sysbench rows against 1.2 s
    for reading them (measured here, before the per-column renderers of :meth:`SnapshotReader.render_chunk`); the
    server does the same escaping in C, but on the source's CPU: 2.6x a plain SELECT's (benchmarks/README.md). Text is cast to binary before CONCAT, so no charset conversion can touch
    its bytes, and gets the column's charset introducer; binary strings get ``_binary``. ``for_load``: a field of
    a LOAD DATA file, whose bytes are taken as they are (CHARACTER SET binary) and which has no introducers.
    """
    c = quote_ident(column.name)
    kind = column.kind
    if kind is Kind.TEMPORAL:
        return f"QUOTE({c})"  # QUOTE(NULL) is the word NULL
    if kind in (Kind.INT, Kind.DECIMAL):
        value = f"CAST({c} AS CHAR)"
    elif kind in (Kind.FLOAT, Kind.DOUBLE):
        text = f"CAST({c}+0E0 AS CHAR)"
        # an exponent makes the target parse a DOUBLE, never an approximate DECIMAL conversion
        value = f"IF(LOCATE('e', {text}) > 0, {text}, CONCAT({text}, 'e0'))"
    elif kind in (Kind.BIT, Kind.SET):
        value = f"CAST({c}+0 AS CHAR)"
    elif kind is Kind.ENUM:
        value = f"IF({c}+0 = 0, '{_ENUM_ZERO}', CAST({c}+0 AS CHAR))"
    elif kind in (Kind.BINARY, Kind.TEXT) and for_load:
        value = f"QUOTE(CAST({c} AS BINARY))"
    elif kind is Kind.BINARY:
        value = f"CONCAT('_binary', QUOTE(CAST({c} AS BINARY)))"
    elif kind is Kind.TEXT and column.charset == CONNECTION_CHARSET:
        # the target session's own charset needs no introducer: 5% less target CPU per sysbench row (measured)
        value = f"QUOTE(CAST({c} AS BINARY))"
    elif kind is Kind.TEXT:
        value = f"CONCAT('_{column.charset}', QUOTE(CAST({c} AS BINARY)))"
    else:
        return f"QUOTE({c})"
    if not column.nullable:
        # 18% less source CPU per chunk (measured on sysbench rows). Should a NULL come anyway (the schema
        # changed under us), the row's literal is NULL, which sends the chunk to the checked row-by-row path
        return value
    return f"IF({c} IS NULL, 'NULL', {value})"


def _load_field(column: Column) -> Callable[[bytes | None], bytes]:
    """How one column's LOAD DATA field is written, as :func:`literal_expr` with ``for_load`` makes the source
    render it: NULL bare, numbers bare, temporal text and strings as ``QUOTE()`` writes them (backslash, quote, NUL
    and ^Z escaped by a backslash, in single quotes), bytes as they are. Chosen once per column, not per value."""
    kind = column.kind
    if kind in (Kind.INT, Kind.DECIMAL):
        return lambda v: b"NULL" if v is None else v
    if kind in (Kind.FLOAT, Kind.DOUBLE):
        return lambda v: b"NULL" if v is None else raw_literal(v, kind, column.charset).encode("ascii")
    if kind is Kind.TEMPORAL:
        return lambda v: b"NULL" if v is None else b"'" + v + b"'"  # digits, -, :, ., space: nothing to escape
    return _quote_bytes


def _quote_bytes(value: bytes | None) -> bytes:
    if value is None:
        return b"NULL"
    if b"\\" in value or b"\0" in value or b"\x1a" in value or b"'" in value:
        value = value.replace(b"\\", b"\\\\").replace(b"'", b"\\'").replace(b"\0", b"\\0").replace(b"\x1a", b"\\Z")
    return b"'" + value + b"'"


# kinds whose literal LOAD DATA reads exactly as INSERT does (the same string-to-value conversion of the same
# text). Not BIT (a LOAD field is never a number for it), ENUM/SET (their index would be read as a label), the
# fixed binary types (their text form would be taken as bytes), JSON (refuses binary text) and spatial types
_LOADABLE = {Kind.INT, Kind.DECIMAL, Kind.FLOAT, Kind.DOUBLE, Kind.TEMPORAL, Kind.TEXT, Kind.BINARY}
_NOT_LOADABLE_TYPES = {"json", *SPATIAL_TYPES}


def loadable(table: Table) -> bool:
    """Whether the table's chunks can go as LOAD DATA files."""
    return all(c.kind in _LOADABLE and c.data_type.lower() not in _NOT_LOADABLE_TYPES for c in table.writable)


class SnapshotReader:
    """One source session that opens short-lived snapshots and reads chunks from them."""

    def __init__(self, source: DatabaseConfig, render: str = "daemon") -> None:
        self.cfg = source
        # "source": the source renders each chunk's literals (CONCAT/QUOTE/GROUP_CONCAT); "daemon": it only SELECTs
        # the raw columns and this process renders them ([copy] render, chosen by benchmarks/source_impact.py)
        self.render = render
        self.conn: Connection = connect(source, "source", raw=True)
        setup_raw_copy_session(self.conn)
        governor.own_session(self.conn)  # a lock wait this session causes throttles the work (governor)
        # a longer joined chunk is cut with a warning, and read row by row instead
        query(self.conn, f"SET SESSION group_concat_max_len = {2 * MAX_JOINED_BYTES}")
        self.flavor, self.version = server_flavor(self.conn)
        self.open = False
        self.position: Position | None = None
        self._limits: dict[tuple[str, str], int] = {}  # per table, rows a chunk may have to be joined on the source
        # tables whose chunks go as INSERT statements (LOAD DATA refused for them); None in it: for every table
        self.insert_only: set[tuple[str, str] | None] = set()

    def open_snapshot(self, tables: Sequence[Table]) -> Position:
        """Open a consistent snapshot and return its exact binlog position."""
        if self.flavor == "mariadb":
            start_snapshot(self.conn)
            rows = dict(query(self.conn, "SHOW STATUS LIKE 'Binlog_snapshot_%'"))
            self.open = True
            self.position = Position(_text(rows[b"Binlog_snapshot_file"]), int(rows[b"Binlog_snapshot_position"]))
            return self.position
        return self._open_mysql(tables)

    def _open_mysql(self, tables: Sequence[Table]) -> Position:
        locker = connect(self.cfg, "source")
        try:
            query(locker, "SET SESSION lock_wait_timeout = 5")
            query(locker, "LOCK TABLES " + ", ".join(f"{qualified(t.db, t.name)} READ" for t in tables))
            start_snapshot(self.conn)
            status = query(locker, "SHOW MASTER STATUS")
            query(locker, "UNLOCK TABLES")
        finally:
            locker.close()
        if not status:
            raise UnavailableError("SHOW MASTER STATUS returned nothing: is the source's binlog on?")
        self.open = True
        self.position = Position(_text(status[0][0]), int(status[0][1]))
        return self.position

    def close_snapshot(self) -> None:
        if self.open:
            query(self.conn, "COMMIT")
            self.open = False

    def read_chunk(self, table: Table, cursor: tuple[bytes, ...] | None, limit: int) -> Chunk:
        """The next ``limit`` rows after ``cursor`` in key order; fewer means this is the table's last chunk.

        The source joins the chunk's row literals itself (GROUP_CONCAT), so one value crosses the wire instead of
        a row per row, which PyMySQL parses in Python: measured, that parsing was most of the copy's Python time.
        The chunk's key range is fixed first (its last key, read by offset in key order), so the joined rows are
        exactly those of (cursor, last key]. Anything the server flags (a truncated or NULL row literal, any
        warning) or a marker in the text sends the chunk to the row-by-row path, which checks each value.
        """
        if self.render == "daemon":
            return self.render_chunk(table, cursor, limit)
        limit = min(limit, self._limits.get(table.id, limit))
        keys = ",".join(select_expr(c.name, c.kind) for c in table.key_columns)
        upper = self._select(table, keys, cursor, 1, offset=limit - 1)
        last_key: tuple[bytes, ...] | None = tuple(upper[0]) if upper else None  # type: ignore[arg-type]
        load = loadable(table) and not ({None, table.id} & self.insert_only)
        fields = ", ',', ".join(literal_expr(c, for_load=load) for c in table.writable)
        row = f"IFNULL(CONCAT({fields}), '{_TOO_BIG}')" if load else f"IFNULL(CONCAT('(', {fields}, ')'), '{_TOO_BIG}')"
        # rows of a LOAD DATA file end with a newline, written as itself: a backslash escape in the SQL text would
        # depend on the source session's sql_mode
        joined, count, warnings = self._joined(table, row, cursor, last_key, "\n" if load else ",")
        if joined is not None and len(joined) > MAX_JOINED_BYTES:
            # wide rows (the text may also have been cut at group_concat_max_len): this chunk row by row, the
            # table's next ones small enough to be joined
            self._limits[table.id] = max(1, limit * MAX_JOINED_BYTES // (2 * len(joined)))
            return self._read_chunk_rows(table, cursor, limit)
        if warnings or (count and joined is None):
            return self._read_chunk_rows(table, cursor, limit)
        text = (joined or b"").decode("latin1")
        if _ENUM_ZERO in text or _TOO_BIG in text:
            return self._read_chunk_rows(table, cursor, limit)
        if last_key is None and count:
            # the table's last chunk: its cursor is its greatest key
            order = ",".join(f"{quote_ident(k)} DESC" for k in table.key)
            rows = self._query(
                f"SELECT {keys} FROM {qualified(table.db, table.name)}{self._after(table, cursor)} ORDER BY {order} LIMIT 1"
            )
            last_key = tuple(rows[0])  # type: ignore[arg-type]
        if load:
            data = (joined or b"") + b"\n" if count else b""
            return Chunk(literals=[], last_key=last_key, is_last=upper == [], rows=count, data=data)
        return Chunk(literals=[text] if count else [], last_key=last_key, is_last=upper == [], rows=count)

    def _joined(
        self,
        table: Table,
        row: str,
        cursor: tuple[bytes, ...] | None,
        last_key: tuple[bytes, ...] | None,
        separator: str,
    ) -> tuple[bytes | None, int, int]:
        """(the range's rows joined by ``separator`` (SQL text), its row count, the server's warning count)."""
        where = self._after(table, cursor)
        if last_key is not None:
            lits = [raw_literal(v, c.kind, c.charset) for v, c in zip(last_key, table.key_columns, strict=True)]
            where += (" AND " if where else " WHERE ") + at_most_key(table.key, lits)
        sql = f"SELECT GROUP_CONCAT({row} SEPARATOR '{separator}'), COUNT(*) FROM {qualified(table.db, table.name)}{where}"
        with self.conn.cursor() as cur:
            cur.execute(sql.encode("latin1"))
            result = cur.fetchone()
            warnings = int(getattr(getattr(cur, "_result", None), "warning_count", 0) or 0)
        assert result is not None  # noqa: S101 (an aggregate always returns a row)
        return result[0], int(result[1]), warnings

    def _read_chunk_rows(self, table: Table, cursor: tuple[bytes, ...] | None, limit: int) -> Chunk:
        """The same chunk with one literal per row, rendered by the source; row by row where that fails."""
        row = "CONCAT('(', " + ", ',', ".join(literal_expr(c) for c in table.writable) + ", ')')"
        keys = ",".join(select_expr(c.name, c.kind) for c in table.key_columns)
        rows = self._select(table, f"{row}, {keys}", cursor, limit)
        if not rows:
            return Chunk(literals=[], last_key=None, is_last=True)
        literals = [r[0].decode("latin1") if r[0] is not None else None for r in rows]
        if any(lit is None or _ENUM_ZERO in lit for lit in literals):
            return self._read_chunk_by_column(table, cursor, limit)
        return Chunk(literals=literals, last_key=tuple(rows[-1][1:]), is_last=len(rows) < limit)  # type: ignore[arg-type]

    def _read_chunk_by_column(self, table: Table, cursor: tuple[bytes, ...] | None, limit: int) -> Chunk:
        """The same chunk with each column read raw and rendered in Python (huge rows, exact error messages)."""
        writable = table.writable
        rows = self._select(table, ",".join(select_expr(c.name, c.kind) for c in writable), cursor, limit)
        names = [c.name for c in writable]
        key_idx = [names.index(k) for k in table.key]
        literals = [_row_literal(table, row, writable, self.position) for row in rows]
        last_key = tuple(rows[-1][i] for i in key_idx)
        return Chunk(literals=literals, last_key=last_key, is_last=len(rows) < limit)  # type: ignore[arg-type]

    def render_chunk(self, table: Table, cursor: tuple[bytes, ...] | None, limit: int) -> Chunk:
        """The same chunk from one plain SELECT of the raw columns, rendered here: one index range read on the
        source and nothing else (the source-rendered path reads the range twice, the second time through CONCAT,
        QUOTE and GROUP_CONCAT). A LOAD DATA file for loadable tables, else one INSERT literal per row."""
        writable = table.writable
        rows = self._select(table, ",".join(select_expr(c.name, c.kind) for c in writable), cursor, limit)
        if not rows:
            return Chunk(literals=[], last_key=None, is_last=True)
        names = [c.name for c in writable]
        key_idx = [names.index(k) for k in table.key]
        last_key = tuple(rows[-1][i] for i in key_idx)
        is_last = len(rows) < limit
        if loadable(table) and not ({None, table.id} & self.insert_only):
            fields = [_load_field(c) for c in writable]
            data = b"\n".join(b",".join([f(v) for f, v in zip(fields, row, strict=True)]) for row in rows)
            return Chunk(literals=[], last_key=last_key, is_last=is_last, rows=len(rows), data=data + b"\n")  # type: ignore[arg-type]
        literals = [_row_literal(table, row, writable, self.position, own_charset=True) for row in rows]
        return Chunk(literals=literals, last_key=last_key, is_last=is_last)  # type: ignore[arg-type]

    def read_rows(self, table: Table, cursor: tuple[bytes, ...] | None, limit: int) -> list[tuple[bytes | None, ...]]:
        """Raw column values (as the server renders them) of the next rows after ``cursor``."""
        return self._select(table, ",".join(select_expr(c.name, c.kind) for c in table.writable), cursor, limit)

    def _select(
        self, table: Table, columns: str, cursor: tuple[bytes, ...] | None, limit: int, offset: int = 0
    ) -> list[tuple[bytes | None, ...]]:
        order = ",".join(quote_ident(k) for k in table.key)
        skip = f" OFFSET {offset}" if offset else ""
        where = self._after(table, cursor)
        return self._query(
            f"SELECT {columns} FROM {qualified(table.db, table.name)}{where} ORDER BY {order} LIMIT {limit}{skip}"
        )

    @staticmethod
    def _after(table: Table, cursor: tuple[bytes, ...] | None) -> str:
        if cursor is None:
            return ""
        lits = [raw_literal(v, c.kind, c.charset) for v, c in zip(cursor, table.key_columns, strict=True)]
        return f" WHERE {after_key(table.key, lits)}"

    def _query(self, sql: str) -> list[tuple[bytes | None, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.encode("latin1"))
            return list(cur.fetchall())

    def close(self) -> None:
        governor.forget_session(self.conn)
        with contextlib.suppress(Exception):  # already closed or broken: nothing left to release
            self.conn.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_DONE = object()


class ChunkPrefetcher:
    """Reads chunks ahead in a thread, round-robin over the tables, so the source is read while the target writes.

    Chunks of one table come out in key order, each starting after the previous one's last key, so writing them in
    the order received keeps every cursor exact. Chunks read but not written when the round ends are dropped;
    their cursors were never saved, so the next round reads them again.
    """

    def __init__(
        self,
        snapshot: SnapshotReader,
        work: Sequence[tuple[Table, tuple[bytes, ...] | None]],
        limit: int,
        depth: int = 2,
        enough: Callable[[], bool] = lambda: False,
    ) -> None:
        self.snapshot = snapshot
        self.work = list(work)
        self.limit = limit
        # asked before each read: True ends the round after the chunks already read, which are still handed out
        # (a chunk read and then dropped would cost the source its reading twice)
        self.enough = enough
        self.chunks: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunk-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rotation = list(self.work)
        try:
            while rotation and not self._stop.is_set() and not self.enough():
                table, cursor = rotation.pop(0)
                try:
                    chunk = self.snapshot.read_chunk(table, cursor, self.limit)
                except pymysql.err.ProgrammingError as exc:
                    if exc.args[0] != 1146:
                        raise
                    # dropped or renamed on the source by DDL the stream has not reached: nothing to copy now;
                    # the stream's DDL decides its cursor (done when dropped, carried over when renamed)
                    continue
                if not chunk.is_last:
                    rotation.append((table, chunk.last_key))
                self._put((table, cursor, chunk))
            self._put(_DONE)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the consuming thread)
            self._put(exc)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[Table, tuple[bytes, ...] | None, Chunk]]:
        while True:
            item = self.chunks.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def close(self) -> None:
        """Stop reading and wait for the thread: the snapshot session must be idle before it is closed."""
        self._stop.set()
        self._thread.join()
