"""Applies the stream (and copied chunks) to the target in batched, idempotent, fenced transactions.

A batch takes whole source transactions and keeps, per key, the net effect: the last after-image or a delete.
It is written per table as ``DELETE ... WHERE key IN (touched keys)`` then one multi-row ``INSERT`` of the final
images, never REPLACE or ON DUPLICATE KEY UPDATE, which act on *any* unique key and silently overwrite another
row (docs/DESIGN.md#rule-net-images). The batch, its cascade steps and the new checkpoint commit in one target
transaction, so nothing is ever applied twice. A duplicate-key error is drift and stops the daemon.

Foreign-key cascades are not in the binlog (docs/DESIGN.md#rule-cascades): before a row event that deletes a parent
or changes a referenced column, the images so far are flushed into the open transaction and :mod:`austasync.cascade`
reproduces the CASCADE / SET NULL effects as InnoDB ran them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pymysql

from austasync.cascade import Cascade, referenced_changed
from austasync.cascade import TablePlan as CascadePlan
from austasync.db import ER_DUP_ENTRY, Connection, DriverConnection, execute_raw, query
from austasync.errors import DriftError, UncarryableValueError
from austasync.events import Key, LiteralRows, Row, Rows, TxnImages
from austasync.position import Position
from austasync.schema import ForeignKey, Table, TableId
from austasync.sql import Kind, after_key, at_most_key, in_list, qualified, quote_ident, raw_literal, value_literal
from austasync.state import CopyCursor, TargetState
from austasync.touched import TouchedKeys

DELETED = None  # marker of a net image that is a delete
# out of range, data truncated, data too long, incorrect value, invalid JSON (MySQL), CHECK failed (MariaDB's
# JSON is a CHECK), bad geometry
_VALUE_REFUSED = {1264, 1265, 1292, 1366, 1367, 1406, 3140, 4025, 1416}
MAX_STATEMENT_BYTES = 4 * 1024 * 1024
MAX_KEYS_PER_DELETE = 2000


@dataclass
class _TablePlan:
    """Everything about one table that the hot path needs, computed once."""

    table: Table
    target: str  # qualified target name
    key_idx: tuple[int, ...]
    write_idx: tuple[int, ...]
    write_cols: str
    kinds: tuple[tuple[Kind, str], ...]  # per column of the table: (kind, charset)
    on_delete: tuple[ForeignKey, ...] = ()
    on_update: tuple[ForeignKey, ...] = ()

    def key(self, row: Row) -> tuple[object, ...]:
        return tuple(row[i] for i in self.key_idx)

    def key_literal(self, key: Sequence[object]) -> tuple[str, ...]:
        return tuple(
            value_literal(v, self.kinds[i][0], self.kinds[i][1]) for v, i in zip(key, self.key_idx, strict=True)
        )

    def row_literal(self, row: Row) -> str:
        kinds = self.kinds
        try:
            return "(" + ",".join(value_literal(row[i], kinds[i][0], kinds[i][1]) for i in self.write_idx) + ")"
        except UncarryableValueError as exc:
            raise UncarryableValueError(f"{self.table}.{_failing_column(self, row)}: {exc}") from None


def _failing_column(plan: _TablePlan, row: Sequence[object]) -> str:
    """The first column whose value has no exact literal, to name it in the stop message."""
    for i in plan.write_idx:
        try:
            value_literal(row[i], plan.kinds[i][0], plan.kinds[i][1])
        except UncarryableValueError:
            return plan.table.columns[i].name
    return "?"


LOAD_FILE_NAME = "austasync-chunk"  # the only name DriverConnection serves: the data is in memory


def load_statement(target: str, columns: str) -> str:
    """LOAD DATA for rows as the source renders them for it: fields as SQL literals (numbers bare, strings in
    single quotes with backslash escapes, the word NULL bare) separated by commas, rows by newlines; bytes taken
    as they are (CHARACTER SET binary), as the INSERT path's introducers do."""
    return (
        f"LOAD DATA LOCAL INFILE '{LOAD_FILE_NAME}' INTO TABLE {target} CHARACTER SET binary"
        " FIELDS TERMINATED BY ',' ENCLOSED BY \"'\" ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'"
        f" ({columns})"
    )


class LoadRefused(Exception):
    """A chunk could not be loaded exactly with LOAD DATA: nothing of it was committed, and the copy goes on
    with INSERT for this table (or, ``everywhere``, for all)."""

    def __init__(self, message: str, table: TableId, *, everywhere: bool = False) -> None:
        super().__init__(message)
        self.table = table
        self.everywhere = everywhere


class ChunkWriter:
    """Another target connection writing copy chunks beside the applier's: each chunk is a fenced target
    transaction of its own with its table's cursor, exactly as the applier writes them, without the stream's
    checkpoint (the applier stands at the chunks' position meanwhile and owns it)."""

    def __init__(
        self,
        conn: Connection,
        state: TargetState,
        tables: Mapping[TableId, Table],
        foreign_keys: Sequence[ForeignKey],
        target_db: Mapping[str, str],
    ) -> None:
        self.conn = conn
        self._applier = Applier(conn, state, tables, foreign_keys, target_db, Position("", 0))

    def write_chunk(
        self,
        table: Table,
        cursor: CopyCursor,
        literals: Sequence[str],
        last_key: tuple[bytes, ...] | None,
        is_last: bool,
        rows: int | None = None,
        data: bytes | None = None,
    ) -> CopyCursor:
        applier = self._applier
        try:
            new = applier.write_chunk(table, cursor, literals, last_key, is_last, rows, data)
            query(self.conn, "COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # the failure is what the daemon reports
                query(self.conn, "ROLLBACK")
            raise
        finally:
            applier._txn_open = False
        return new


class _Job(threading.Thread):
    """One batch written by a thread of its own (a daemon thread: a hung target must not hold up the exit)."""

    def __init__(self, write: Callable[..., None], args: tuple[object, ...]) -> None:
        super().__init__(name="target-writer", daemon=True)
        self._write = write
        self._args = args
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._write(*self._args)
        except BaseException as exc:  # noqa: BLE001 (raised in the daemon's thread by result())
            self.error = exc

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


@dataclass
class BatchStats:
    rows: int = 0
    bytes: int = 0
    transactions: int = 0
    started: float = field(default_factory=time.monotonic)
    oldest_timestamp: int | None = None


class Applier:
    """Owns the target write connection; every write goes through a fenced transaction opened here."""

    def __init__(
        self,
        conn: Connection,
        state: TargetState,
        tables: Mapping[TableId, Table],
        foreign_keys: Sequence[ForeignKey],
        target_db: Mapping[str, str],
        position: Position,
        skip_events: int = 0,
        touched: TouchedKeys | None = None,
    ) -> None:
        self.conn = conn
        self.state = state
        self.target_db = target_db
        self.touched = touched  # keys written, for the daemon's checks between full verifications
        self.plans_tables = dict(tables)  # what a ChunkWriter beside this applier is built from
        self.foreign_keys = list(foreign_keys)
        self.plans = {tid: self._plan(t, foreign_keys) for tid, t in tables.items()}
        self.cascade = Cascade(self.plans, self._cascade_execute, self._select, touched)
        self.position = position  # last boundary consumed (committed or pending in the open batch)
        self.committed = position
        self.images: dict[TableId, dict[tuple[object, ...], Row | None]] = {}
        # images of tables no cascade starts from, keyed by key literals, holding row literals (LiteralRows)
        self.literal_images: dict[TableId, dict[Key, str | None]] = {}
        self.stats = BatchStats()
        self.in_txn = False  # inside a source transaction
        self.txn_start = position
        self.txn_seq = 0  # rows events of the current source transaction consumed
        self.resume_skip = skip_events  # rows events of the first transaction applied before a restart
        self.skip_events = skip_events
        self._txn_open = False  # a target transaction is open on this thread's side
        # the batch the writer thread is committing (commit_async); at most one, so batches commit in order
        self._inflight: _Job | None = None
        self._writing: Position | None = None  # the source position a write in progress belongs to (messages)
        self.phase = "copying"
        self.applied_rows: dict[tuple[str, str], int] = {}
        self._literal_counts: dict[tuple[TableId, str], int] = {}  # named like applied_rows in take_counts

    @property
    def value_tables(self) -> frozenset[TableId]:
        """Tables whose rows must arrive as values (:class:`Rows`): a cascade starts from them, and the cascade
        code compares and matches their values; every other table can arrive as literals (:class:`LiteralRows`)."""
        return frozenset(tid for tid, plan in self.plans.items() if plan.on_delete or plan.on_update)

    def _plan(self, table: Table, fks: Sequence[ForeignKey]) -> _TablePlan:
        names = [c.name for c in table.columns]
        write_idx = tuple(i for i, c in enumerate(table.columns) if not c.generated)
        return _TablePlan(
            table=table,
            target=qualified(self.target_db.get(table.db, table.db), table.name),
            key_idx=tuple(names.index(k) for k in table.key),
            write_idx=write_idx,
            write_cols=",".join(quote_ident(table.columns[i].name) for i in write_idx),
            kinds=tuple((c.kind, c.charset) for c in table.columns),
            on_delete=tuple(f for f in fks if f.parent == table.id and f.on_delete in ("CASCADE", "SET NULL")),
            on_update=tuple(f for f in fks if f.parent == table.id and f.on_update in ("CASCADE", "SET NULL")),
        )

    # --- consuming the stream ---------------------------------------------------------------------------------

    def begin(self, start: Position) -> None:
        self.in_txn = True
        self.txn_start = start
        self.txn_seq = 0

    def rows(self, event: Rows) -> None:
        self.txn_seq = event.seq
        if self.resume_skip and event.seq <= self.resume_skip:
            return  # applied before the restart that split this transaction (docs/DESIGN.md#rule-checkpoint)
        plan = self.plans[(event.db, event.table)]
        if self.stats.oldest_timestamp is None:
            self.stats.oldest_timestamp = event.timestamp
        if plan.table.id in self.literal_images:
            self.flush()  # the same table's earlier rows came as literals: keep their order
        cascading = self._needs_cascade(plan, event)
        if cascading:
            self.flush()
        images = self.images.setdefault(plan.table.id, {})
        for before, after in event.rows:
            if cascading:
                if plan.table.id in self.cascade.cyclic:
                    # the cascade can come back to this table: it must see the rows before this one applied
                    self.flush()
                    images = self.images.setdefault(plan.table.id, {})
                self._cascade_row(plan, event.kind, before, after)
            if before is not None and (after is None or plan.key(before) != plan.key(after)):
                images[plan.key(before)] = DELETED
            if after is not None:
                images[plan.key(after)] = after
                self.stats.bytes += _row_size(after)
            self.stats.rows += 1
        counter = (f"{plan.table.db}.{plan.table.name}", event.kind)
        self.applied_rows[counter] = self.applied_rows.get(counter, 0) + len(event.rows)

    def literal_rows(self, event: LiteralRows) -> None:
        """The same net images as :meth:`rows`, for rows the reader already rendered as literals.

        Called once per rows event at catch-up speed: the checks that only depend on the table run when its first
        rows of the batch arrive.
        """
        db, table, kind, rows, seq, timestamp = event
        self.txn_seq = seq
        if self.resume_skip and seq <= self.resume_skip:
            return  # applied before the restart that split this transaction (docs/DESIGN.md#rule-checkpoint)
        tid = (db, table)
        images = self.literal_images.get(tid)
        if images is None:
            plan = self.plans[tid]
            if plan.on_delete or plan.on_update:
                raise UncarryableValueError(
                    f"internal error: rows of {plan.table} arrived as literals, but cascades start from it and need"
                    " values"
                )
            if tid in self.images:
                self.flush()  # the same table's earlier rows came as values: keep their order
            images = self.literal_images[tid] = {}
        stats = self.stats
        if stats.oldest_timestamp is None:
            stats.oldest_timestamp = timestamp
        size = 0
        for old, new, row in rows:
            if old is not None and old != new:
                images[old] = DELETED
            if new is not None:
                images[new] = row
                size += len(row)  # type: ignore[arg-type]  # a new key always comes with its row
        stats.bytes += size
        stats.rows += len(rows)
        counter = (tid, kind)
        self._literal_counts[counter] = self._literal_counts.get(counter, 0) + len(rows)

    def literal_part(self, part: TxnImages) -> None:
        """A transaction's rows merged by the reader (:class:`TxnImages`): its images go over the batch's."""
        self.txn_seq = part.seq
        if self.resume_skip:
            # the reader merges nothing of the first transaction it reads, the only one a resume skips into
            raise UncarryableValueError("internal error: merged rows arrived while a split transaction is resumed")
        literal_images = self.literal_images
        for tid, images in part.images.items():
            target = literal_images.get(tid)
            if target is None:
                plan = self.plans[tid]
                if plan.on_delete or plan.on_update:
                    raise UncarryableValueError(
                        f"internal error: rows of {plan.table} arrived as literals, but cascades start from it"
                    )
                if tid in self.images:
                    self.flush()  # the same table's earlier rows came as values: keep their order
                    literal_images = self.literal_images
                literal_images[tid] = images  # the part is not used after this: no copy
            else:
                target.update(images)
        stats = self.stats
        if stats.oldest_timestamp is None:
            stats.oldest_timestamp = part.oldest
        stats.rows += part.rows
        stats.bytes += part.bytes
        counts = self._literal_counts
        for counter, count in part.counts.items():
            counts[counter] = counts.get(counter, 0) + count

    def take_counts(self) -> dict[tuple[str, str], int]:
        """Rows applied per (table, operation) since the last call, for the metrics."""
        for ((db, table), kind), count in self._literal_counts.items():
            key = (f"{db}.{table}", kind)
            self.applied_rows[key] = self.applied_rows.get(key, 0) + count
        self._literal_counts = {}
        counts, self.applied_rows = self.applied_rows, {}
        return counts

    def skipped(self, seq: int) -> None:
        self.txn_seq = seq

    def commit_seen(self, position: Position, timestamp: int) -> None:
        """The source transaction committed: its end is the new boundary."""
        self.in_txn = False
        self.resume_skip = 0
        self.position = position
        self.stats.transactions += 1
        if self.stats.oldest_timestamp is None:
            self.stats.oldest_timestamp = timestamp

    def boundary(self, position: Position) -> None:
        if not self.in_txn:
            self.position = position

    @property
    def pending(self) -> bool:
        return bool(self.images or self.literal_images) or self.target_open or self.position != self.committed

    @property
    def target_open(self) -> bool:
        """The target connection is in a transaction: open here, or a batch the writer thread is committing."""
        return self._txn_open or self._inflight is not None

    # --- writing ----------------------------------------------------------------------------------------------

    def wait(self) -> None:
        """Wait until the writer thread has committed the batch handed to it; its failure is raised here."""
        inflight = self._inflight
        if inflight is not None:
            self._inflight = None
            inflight.result()

    def _open(self) -> None:
        if not self._txn_open:
            self.state.check_fence(self.conn)
            self._txn_open = True

    def flush(self) -> None:
        """Write the net images so far into the open target transaction."""
        self.wait()
        if not self.images and not self.literal_images:
            return
        self._open()
        images, literal_images = self.images, self.literal_images
        self.images, self.literal_images = {}, {}
        self._write(images, literal_images)

    def _write(
        self,
        images: dict[TableId, dict[tuple[object, ...], Row | None]],
        literal_images: dict[TableId, dict[Key, str | None]],
    ) -> None:
        for tid, table_images in images.items():
            if table_images:
                self._write_images(self.plans[tid], table_images)
        for tid, table_literal_images in literal_images.items():
            if table_literal_images:
                self._write_literal_images(self.plans[tid], table_literal_images)

    def _write_images(self, plan: _TablePlan, images: dict[tuple[object, ...], Row | None]) -> None:
        keys = list(images)
        for i in range(0, len(keys), MAX_KEYS_PER_DELETE):
            part = [plan.key_literal(k) for k in keys[i : i + MAX_KEYS_PER_DELETE]]
            self._execute(f"DELETE FROM {plan.target} WHERE {in_list(plan.table.key, part)}", plan)
            if self.touched is not None:
                self.touched.add(plan.table.id, part)

        def literal(row: Row) -> str:
            try:
                return plan.row_literal(row)
            except UncarryableValueError as exc:
                raise UncarryableValueError(
                    f"stream up to source position {self._writing or self.position}: {exc}; nothing of this batch"
                    " was committed"
                ) from None

        self._insert(plan, (literal(r) for r in images.values() if r is not DELETED))

    def _write_literal_images(self, plan: _TablePlan, images: dict[Key, str | None]) -> None:
        keys = list(images)
        if self.touched is not None:
            self.touched.add(plan.table.id, keys)
        for i in range(0, len(keys), MAX_KEYS_PER_DELETE):
            self._execute(
                f"DELETE FROM {plan.target} WHERE {in_list(plan.table.key, keys[i : i + MAX_KEYS_PER_DELETE])}", plan
            )
        self._insert(plan, [row for row in images.values() if row is not None])

    def _insert(self, plan: _TablePlan, literals: Iterable[str]) -> None:
        head = f"INSERT INTO {plan.target} ({plan.write_cols}) VALUES "
        parts: list[str] = []
        size = len(head)
        for lit in literals:
            if parts and size + len(lit) > MAX_STATEMENT_BYTES:
                self._execute(head + ",".join(parts), plan)
                parts, size = [], len(head)
            parts.append(lit)
            size += len(lit) + 1
        if parts:
            self._execute(head + ",".join(parts), plan)

    def _execute(self, sql: str, plan: CascadePlan) -> int:
        try:
            return execute_raw(self.conn, sql)
        except pymysql.err.IntegrityError as exc:
            if exc.args and exc.args[0] == ER_DUP_ENTRY:
                raise DriftError(
                    f"unique-key collision writing {plan.table} at source position {self._writing or self.position}:"
                    f" {exc.args[1]}."
                    " The target holds a row the source does not explain (drift); run `austasync verify` and"
                    " repair or re-copy the table"
                ) from None
            raise
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            if code in _VALUE_REFUSED:
                # the literal was exact but the target will not store it (a strict session, another column
                # type): a stop at the checkpoint, not a connection failure to retry
                raise UncarryableValueError(
                    f"the target refused a value of {plan.table} written at source position"
                    f" {self._writing or self.position}:"
                    f" error {code}: {exc.args[1]}. Nothing of this target transaction was committed"
                ) from None
            raise

    def _checkpoint(self) -> tuple[Position, int]:
        """The checkpoint a commit now records: a boundary, and how many rows events of the next transaction."""
        if self.in_txn:
            # a big source transaction split across target transactions: resume skips what is applied, and
            # while a resume is still re-reading the applied prefix, never less than that prefix
            # (docs/DESIGN.md#rule-checkpoint)
            return self.txn_start, max(self.txn_seq, self.resume_skip)
        if self.resume_skip:
            # resumed inside a split transaction whose first event has not arrived yet: nothing moved
            return self.committed, self.resume_skip
        return self.position, 0

    def commit(self, phase: str | None = None) -> Position:
        """Flush and commit the batch with the new checkpoint in the same target transaction."""
        self.wait()
        if phase is not None and phase != self.phase:
            self.phase = phase
            self._open()  # a phase change alone is worth a commit: operators and the gate read it
        if not self.pending:
            return self.committed
        self.flush()
        self._open()
        position, skip = self._checkpoint()
        self.state.save_position(self.conn, position, skip, self.phase)
        query(self.conn, "COMMIT")
        self._txn_open = False
        self.committed = position if not self.in_txn else self.committed
        self.skip_events = skip
        self.stats = BatchStats()
        return position

    def commit_async(self) -> None:
        """Like :meth:`commit`, but the batch is written and committed by the writer thread, so the next batch is
        assembled while the target works on this one (the target would otherwise sit idle meanwhile).

        The batch is the same target transaction with the same fence check, images and checkpoint; ``committed``
        moves when it is done. Everything that uses the connection waits for it first (:meth:`wait`), and its
        failure is raised there, before anything else is written.
        """
        self.wait()
        if not self.pending:
            return
        position, skip = self._checkpoint()
        job = (self.images, self.literal_images, self._txn_open, position, skip, self.in_txn, self.phase)
        self.images, self.literal_images = {}, {}
        self._txn_open = False
        self.stats = BatchStats()
        self._inflight = _Job(self._write_batch, job)

    def _write_batch(
        self,
        images: dict[TableId, dict[tuple[object, ...], Row | None]],
        literal_images: dict[TableId, dict[Key, str | None]],
        was_open: bool,
        position: Position,
        skip: int,
        in_txn: bool,
        phase: str,
    ) -> None:
        """The writer thread's side of :meth:`commit_async`."""
        self._writing = position
        try:
            if not was_open:
                self.state.check_fence(self.conn)
            self._write(images, literal_images)
            self.state.save_position(self.conn, position, skip, phase)
            query(self.conn, "COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # the failure itself is what the daemon reports
                query(self.conn, "ROLLBACK")
            raise
        finally:
            self._writing = None
        if not in_txn:
            self.committed = position
        self.skip_events = skip

    def rollback(self) -> None:
        with contextlib.suppress(Exception):  # a failed batch of the writer thread rolled itself back
            self.wait()
        try:
            query(self.conn, "ROLLBACK")
        finally:
            self._txn_open = False
            self.images = {}
            self.literal_images = {}

    # --- bulk copy chunks, docs/DESIGN.md#rule-copy-barrier ---------------------------------------------------

    def write_chunk(
        self,
        table: Table,
        cursor: CopyCursor,
        literals: Sequence[str],
        last_key: tuple[bytes, ...] | None,
        is_last: bool,
        rows: int | None = None,
        data: bytes | None = None,
    ) -> CopyCursor:
        """Replace the key range (cursor, last_key] (open-ended for the last chunk) by the rows read at P.

        ``literals`` are one per row, or (``rows`` given) several rows' joined by commas; or ``data`` holds the
        ``rows`` rows as a LOAD DATA file (see :func:`load_statement`).

        The applier stands at exactly P, so the range becomes equal to the source at the stream's position.
        """
        plan = self.plans[table.id]
        key_cols = table.key_columns
        self.flush()
        self._open()
        conds = []
        if cursor.cursor is not None:
            lits = [raw_literal(v, c.kind, c.charset) for v, c in zip(cursor.cursor, key_cols, strict=True)]
            conds.append(after_key(table.key, lits))
        if not is_last and last_key is not None:
            lits = [raw_literal(v, c.kind, c.charset) for v, c in zip(last_key, key_cols, strict=True)]
            conds.append(at_most_key(table.key, lits))
        where = " AND ".join(conds) if conds else "1=1"
        self._execute(f"DELETE FROM {plan.target} WHERE {where}", plan)
        if data is not None:
            if rows:
                self._load(plan, data, rows)
        else:
            self._insert(plan, literals)
        new = CopyCursor(
            db=cursor.db,
            table=cursor.table,
            cursor=last_key if last_key is not None else cursor.cursor,
            done=is_last,
            rows_copied=cursor.rows_copied + (len(literals) if rows is None else rows),
            rows_estimated=cursor.rows_estimated,
        )
        self.state.save_cursor(self.conn, new)
        return new

    def replace_keys(
        self, table: Table, keys: Sequence[tuple[bytes, ...]], rows: Sequence[Sequence[bytes | None]]
    ) -> int:
        """Delete ``keys`` of ``table`` and insert ``rows`` (its writable columns, read from the source at exactly
        this applier's position) in the open, fenced target transaction, which the next :meth:`commit` commits
        with the checkpoint. Returns the rows deleted."""
        plan = self.plans[table.id]
        self.flush()
        self._open()
        deleted = 0
        key_cols = table.key_columns
        for start in range(0, len(keys), MAX_KEYS_PER_DELETE):
            batch = [
                [raw_literal(v, c.kind, c.charset) for v, c in zip(key, key_cols, strict=True)]
                for key in keys[start : start + MAX_KEYS_PER_DELETE]
            ]
            deleted += self._execute(f"DELETE FROM {plan.target} WHERE {in_list(table.key, batch)}", plan)
            if self.touched is not None:
                self.touched.add(table.id, [tuple(k) for k in batch])  # checked again like the stream's writes
        writable = table.writable
        self._insert(
            plan,
            [
                "(" + ",".join(raw_literal(v, c.kind, c.charset) for v, c in zip(row, writable, strict=True)) + ")"
                for row in rows
            ],
        )
        return deleted

    def _load(self, plan: _TablePlan, data: bytes, rows: int) -> None:
        """The chunk's rows by LOAD DATA: a fifth less target CPU than the same rows as an INSERT (measured).

        LOCAL turns the server's data errors into warnings and skips duplicate keys, so anything but exactly
        ``rows`` rows loaded without a warning is refused (:class:`LoadRefused`): the chunk is then read and
        written again as an INSERT, where the server's strict checks apply.
        """
        if not isinstance(self.conn, DriverConnection):
            raise LoadRefused(
                f"{plan.table}: this connection cannot serve LOAD DATA LOCAL", plan.table.id, everywhere=True
            )
        try:
            loaded, warnings = self.conn.load_local(LOAD_FILE_NAME, data, load_statement(plan.target, plan.write_cols))
        except pymysql.err.MySQLError as exc:
            # LOCAL disabled on the server (MySQL 8's default), or refused for this user: no table can use it
            raise LoadRefused(
                f"{plan.table}: LOAD DATA LOCAL refused: {exc.args[-1]}", plan.table.id, everywhere=True
            ) from None
        if loaded != rows or warnings:
            raise LoadRefused(
                f"{plan.table}: LOAD DATA loaded {loaded} of {rows} rows with {warnings} warnings", plan.table.id
            )

    # --- foreign-key cascades, docs/DESIGN.md#rule-cascades: cascade.py ----------------------------------------

    def _needs_cascade(self, plan: _TablePlan, event: Rows) -> bool:
        if event.kind == "delete":
            return bool(plan.on_delete)
        if event.kind == "update" and plan.on_update:
            return any(
                before is not None and after is not None and referenced_changed(plan, fk, before, after)
                for fk in plan.on_update
                for before, after in event.rows
            )
        return False

    def _cascade_row(self, plan: _TablePlan, kind: str, before: Row | None, after: Row | None) -> None:
        if kind == "delete" and before is not None:
            self.cascade.deleted(plan, before)
        elif kind == "update" and before is not None and after is not None:
            self.cascade.updated(plan, before, after)

    def _cascade_execute(self, sql: str, plan: CascadePlan) -> int:
        self._open()  # the fence is checked before the cascade reads or writes anything
        return self._execute(sql, plan)

    def _select(self, plan: CascadePlan, where: str) -> list[tuple[object, ...]]:
        self._open()  # the fence is checked before the cascade reads or writes anything
        cols = ",".join(quote_ident(c.name) for c in plan.table.columns)
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT {cols} FROM {plan.target} WHERE {where} FOR UPDATE".encode("latin1"))
            return list(cur.fetchall())


def _row_size(row: Row) -> int:
    return 8 * len(row) + sum(len(v) for v in row if isinstance(v, str | bytes))
