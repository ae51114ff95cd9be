"""Bulk copy: key-ordered chunks read in a consistent snapshot whose binlog position is known exactly.

The daemon runs the applier to exactly that position before the chunks are written (DESIGN.md rule 7), so the
target's copied ranges always equal the source at the stream's position.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from austasync.config import DatabaseConfig
from austasync.db import Connection, connect, query, server_flavor, setup_raw_copy_session, start_snapshot
from austasync.errors import UnavailableError
from austasync.position import Position
from austasync.schema import Table
from austasync.sql import after_key, qualified, raw_literal, select_expr


@dataclass(frozen=True)
class Chunk:
    rows: list[tuple[bytes | None, ...]]
    last_key: tuple[bytes, ...] | None
    is_last: bool


class SnapshotReader:
    """One source session that opens short-lived snapshots and reads chunks from them."""

    def __init__(self, source: DatabaseConfig) -> None:
        self.cfg = source
        self.conn: Connection = connect(source, "source", raw=True)
        setup_raw_copy_session(self.conn)
        self.flavor, self.version = server_flavor(self.conn)
        self.open = False

    def open_snapshot(self, tables: Sequence[Table]) -> Position:
        """Open a consistent snapshot and return its exact binlog position."""
        if self.flavor == "mariadb":
            start_snapshot(self.conn)
            rows = dict(query(self.conn, "SHOW STATUS LIKE 'Binlog_snapshot_%'"))
            self.open = True
            return Position(_text(rows[b"Binlog_snapshot_file"]), int(rows[b"Binlog_snapshot_position"]))
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
        return Position(_text(status[0][0]), int(status[0][1]))

    def close_snapshot(self) -> None:
        if self.open:
            query(self.conn, "COMMIT")
            self.open = False

    def read_chunk(self, table: Table, cursor: tuple[bytes, ...] | None, limit: int) -> Chunk:
        """The next ``limit`` rows after ``cursor`` in key order; fewer means this is the table's last chunk."""
        writable = table.writable
        cols = ",".join(select_expr(c.name, c.kind) for c in writable)
        order = ",".join(f"`{k}`" for k in table.key)
        where = ""
        if cursor is not None:
            lits = [raw_literal(v, c.kind, c.charset) for v, c in zip(cursor, table.key_columns, strict=True)]
            where = f" WHERE {after_key(table.key, lits)}"
        sql = f"SELECT {cols} FROM {qualified(table.db, table.name)}{where} ORDER BY {order} LIMIT {limit}"
        with self.conn.cursor() as cur:
            cur.execute(sql.encode("latin1"))
            rows = list(cur.fetchall())
        if not rows:
            return Chunk(rows=[], last_key=None, is_last=True)
        names = [c.name for c in writable]
        key_idx = [names.index(k) for k in table.key]
        last = rows[-1]
        last_key = tuple(last[i] for i in key_idx)
        return Chunk(rows=rows, last_key=last_key, is_last=len(rows) < limit)

    def close(self) -> None:
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
    ) -> None:
        self.snapshot = snapshot
        self.work = list(work)
        self.limit = limit
        self.chunks: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunk-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rotation = list(self.work)
        try:
            while rotation and not self._stop.is_set():
                table, cursor = rotation.pop(0)
                chunk = self.snapshot.read_chunk(table, cursor, self.limit)
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
