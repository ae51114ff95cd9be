"""The one module that imports python-mysql-replication; it turns its untyped events into :mod:`austasync.events`.

Traps of the library handled here (DESIGN.md, notes/binlog-library.md):

- its reconnect resumes mid-transaction: disabled; a dropped stream is restarted from our own checkpoint;
- unknown event types are dropped by default: we take them and stop on anything not known to be harmless
  (compressed transactions, partial JSON updates, incidents);
- ``log_pos`` is ignored without ``resume_stream`` and ``is_mariadb`` starts at the oldest binlog: we use the
  MySQL dump path with file/pos on both flavours;
- a ``None`` is SQL NULL only when ``none_sources`` says so; any other ``None`` stops the stream;
- BINARY(n) loses trailing zero bytes, YEAR 0 comes as 1900, the zero TIMESTAMP as the epoch, BIT as a string of
  digits, SET as a Python set, MySQL JSON as a structure with bytes keys: each is adapted back exactly.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pymysqlreplication.binlogstream as _binlogstream
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    BeginLoadQueryEvent,
    ExecuteLoadQueryEvent,
    FormatDescriptionEvent,
    GtidEvent,
    HeartbeatLogEvent,
    IntvarEvent,
    MariadbAnnotateRowsEvent,
    MariadbBinLogCheckPointEvent,
    MariadbGtidEvent,
    MariadbGtidListEvent,
    MariadbStartEncryptionEvent,
    NotImplementedEvent,
    PreviousGtidsEvent,
    QueryEvent,
    RandEvent,
    RotateEvent,
    RowsQueryLogEvent,
    StopEvent,
    UserVarEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from austasync.config import DatabaseConfig
from austasync.errors import UnavailableError, UncarryableValueError
from austasync.events import (
    Begin,
    Boundary,
    Commit,
    Event,
    Heartbeat,
    ReaderFailed,
    Row,
    Rows,
    SkippedRows,
    Statement,
)
from austasync.position import Position
from austasync.schema import Column, Table, TableId
from austasync.sql import Kind

# The library's own reconnect resumes from the last event read, possibly mid-transaction (rule 1): turn it off.
_binlogstream.MYSQL_EXPECTED_ERROR_CODES = []

# Event types the library does not implement but that carry nothing to apply:
# 34 ANONYMOUS_GTID (MySQL without GTIDs), 35 PREVIOUS_GTIDS, 38 VIEW_CHANGE (group replication bookkeeping).
_HARMLESS_UNKNOWN = {34, 35, 38}
_EVENT_NAMES = {
    26: "INCIDENT",
    39: "PARTIAL_UPDATE_ROWS",
    40: "TRANSACTION_PAYLOAD (binlog_transaction_compression)",
    165: "MariaDB compressed QUERY",
    166: "MariaDB compressed WRITE_ROWS",
    167: "MariaDB compressed UPDATE_ROWS",
    168: "MariaDB compressed DELETE_ROWS",
    169: "MariaDB compressed WRITE_ROWS",
    170: "MariaDB compressed UPDATE_ROWS",
    171: "MariaDB compressed DELETE_ROWS",
}
_FL_STANDALONE = 1  # MariaDB GTID flag: the group is one statement (DDL) with no COMMIT
_ZERO_TIMESTAMP = dt.datetime(1970, 1, 1)

_IGNORED = (
    FormatDescriptionEvent,
    PreviousGtidsEvent,
    MariadbGtidListEvent,
    MariadbBinLogCheckPointEvent,
    MariadbStartEncryptionEvent,
    MariadbAnnotateRowsEvent,
    RowsQueryLogEvent,
    StopEvent,
    TableMapEvent,
    IntvarEvent,
    RandEvent,
    UserVarEvent,
)


def _json_text(value: Any, where: str) -> str:
    """MySQL binary JSON decoded by the library back to JSON text (keys and strings arrive as bytes)."""

    def norm(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return obj.decode("utf-8")
        if isinstance(obj, dict):
            return {norm(k): norm(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [norm(v) for v in obj]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise UncarryableValueError(f"{where}: JSON holds an opaque {type(obj).__name__} value; cannot carry it")

    return json.dumps(norm(value), ensure_ascii=False, separators=(", ", ": "))


def _adapter(column: Column, where: str) -> Callable[[Any], Any]:
    """A function turning the library's value for this column into one :func:`sql.value_literal` writes exactly."""
    dtype = column.data_type
    if column.kind is Kind.BIT:
        return lambda v: int(v, 2) if isinstance(v, str) else v
    if dtype == "set":
        return lambda v: ",".join(sorted(v)) if isinstance(v, set) else v
    if dtype == "year":
        return lambda v: 0 if v == 1900 else v
    if dtype == "timestamp":
        return lambda v: "0000-00-00 00:00:00" if v == _ZERO_TIMESTAMP else v
    if dtype == "time":

        def time_value(v: Any) -> Any:
            if isinstance(v, dt.timedelta) and v < dt.timedelta(0) and v.microseconds:
                # the library decodes negative TIME with a fraction wrongly (notes/binlog-library.md §2)
                raise UncarryableValueError(f"{where}: negative TIME with fractional seconds cannot be decoded exactly")
            return v

        return time_value
    length = column.binary_length
    if length is not None:
        return lambda v: v.ljust(length, b"\0") if isinstance(v, bytes) else v
    if dtype == "json":
        return lambda v: v if isinstance(v, str | bytes) or v is None else _json_text(v, where)
    return lambda v: v


class _TableCodec:
    """Per table map: column names checked against our schema and one adapter per column."""

    def __init__(self, table: Table, names: tuple[str, ...], where: str) -> None:
        known = [c.name for c in table.columns]
        if list(names) != known:
            raise UncarryableValueError(
                f"{where}: the binlog's columns for {table} ({', '.join(names)}) differ from the schema austasync"
                f" loaded ({', '.join(known)}); a DDL was applied that austasync did not replay. Re-copy the table"
            )
        self.names = names
        self.adapters = [_adapter(c, f"{where} {table}.{c.name}") for c in table.columns]


class BinlogReader:
    """Reads the source binlog from a checkpoint in a background thread into a bounded queue.

    The consumer sees only :mod:`austasync.events`; a failure arrives as :class:`ReaderFailed`.
    """

    def __init__(
        self,
        source: DatabaseConfig,
        server_id: int,
        tables: Mapping[TableId, Table],
        start: Position,
        *,
        queue_size: int = 20000,
        heartbeat_seconds: float = 1.0,
        read_timeout_seconds: float = 30.0,
    ) -> None:
        self.tables = dict(tables)
        self.start_position = start
        self.events: queue.Queue[Event] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._codecs: dict[tuple[int, TableId, tuple[str, ...]], _TableCodec] = {}
        self._settings = {
            "host": source.host,
            "port": source.port,
            "user": source.user,
            "passwd": source.password.reveal(),
            "connect_timeout": source.connect_timeout_seconds,
            "read_timeout": read_timeout_seconds,
        }
        self._server_id = server_id
        self._heartbeat = heartbeat_seconds
        self._thread = threading.Thread(target=self._run, name="binlog-reader", daemon=True)
        self._stream: BinLogStreamReader | None = None
        self.last_event_wall = time.time()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # closing a socket another thread reads from may fail; we exit anyway
                stream.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _put(self, event: Event) -> None:
        self.last_event_wall = time.time()  # liveness of the stream, for the lag computed at scrape time
        while not self._stop.is_set():
            try:
                self.events.put(event, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which decides)
            if not self._stop.is_set():
                self._put(ReaderFailed(_translate(exc, self.start_position)))

    def _read(self) -> None:
        stream = BinLogStreamReader(
            connection_settings=dict(self._settings),
            server_id=self._server_id,
            resume_stream=True,
            blocking=True,
            log_file=self.start_position.file,
            log_pos=self.start_position.pos,
            filter_non_implemented_events=False,
            slave_heartbeat=self._heartbeat,
            is_mariadb=False,  # with True the dump ignores file/pos and starts at the oldest binlog
            enable_logging=False,
        )
        self._stream = stream
        state = _TxnState(self.start_position)
        try:
            for event in stream:
                if self._stop.is_set():
                    return
                for out in self._convert(event, stream, state):
                    self._put(out)
        finally:
            stream.close()

    def _convert(self, event: Any, stream: Any, state: _TxnState) -> list[Event]:
        end = Position(stream.log_file, int(event.packet.log_pos or 0))
        if isinstance(event, RotateEvent):
            state.position = Position(event.next_binlog, int(event.position))
            if state.in_txn or state.standalone:
                return []
            state.boundary = state.position
            return [Boundary(state.position)]
        if isinstance(event, HeartbeatLogEvent):
            return (
                []
                if state.in_txn or state.standalone
                else [Heartbeat(Position(event.ident, int(event.packet.log_pos)))]
            )
        if event.packet.log_pos == 0:
            return []  # artificial events (format description on connect) carry no position
        out = self._convert_positioned(event, end, state)
        state.position = end
        if not state.in_txn and not state.standalone:
            state.boundary = end
        return out

    def _convert_positioned(self, event: Any, end: Position, state: _TxnState) -> list[Event]:
        ts = int(event.timestamp)
        if isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent) and not isinstance(
            event, PartialUpdateRowsEvent
        ):
            state.seq += 1
            return [self._rows(event, end, state.seq, ts)]
        if isinstance(event, XidEvent):
            state.in_txn = False
            return [Commit(end, ts)]
        if isinstance(event, MariadbGtidEvent):
            state.standalone = bool(event.flags & _FL_STANDALONE)
            if not state.standalone:
                state.begin()
                return [Begin(state.boundary)]
            return []
        if isinstance(event, GtidEvent):
            return []
        if isinstance(event, QueryEvent):
            return self._query(event, end, state, ts)
        if isinstance(event, _IGNORED):
            return [] if state.in_txn or state.standalone else [Boundary(end)]
        if isinstance(event, XAPrepareEvent):
            raise UncarryableValueError(f"XA transaction at {end}: XA PREPARE/COMMIT is not supported")
        if isinstance(event, BeginLoadQueryEvent | ExecuteLoadQueryEvent):
            raise UncarryableValueError(f"LOAD DATA logged as a statement at {end}: cannot be applied exactly")
        if isinstance(event, NotImplementedEvent) and event.event_type in _HARMLESS_UNKNOWN:
            return [] if state.in_txn or state.standalone else [Boundary(end)]
        name = _EVENT_NAMES.get(event.event_type, type(event).__name__)
        raise UncarryableValueError(
            f"binlog event {name} (type {event.event_type}) at {end}: austasync cannot apply it exactly."
            " Turn off binlog/transaction compression and partial JSON updates on the source"
        )

    def _query(self, event: Any, end: Position, state: _TxnState, ts: int) -> list[Event]:
        text = event.query.strip()
        upper = text.upper()
        if upper == "BEGIN" or upper.startswith("XA START"):
            if not state.in_txn:
                state.begin()
                return [Begin(state.boundary)]
            return []
        if upper in ("COMMIT", "ROLLBACK") or upper.startswith("XA END"):
            state.in_txn = False
            return [Commit(end, ts)]
        schema = event.schema.decode("utf-8", "replace") if isinstance(event.schema, bytes) else str(event.schema)
        start = state.boundary
        out: list[Event] = [
            Statement(
                query=text,
                schema=schema,
                start=start,
                position=end,
                timestamp=ts,
                in_transaction=state.in_txn and not state.standalone,
                sql_mode=getattr(event, "sql_mode", None),
                charset=None,
            )
        ]
        if state.standalone or not state.in_txn:
            state.in_txn = False
            state.standalone = False
        return out

    def _rows(self, event: Any, end: Position, seq: int, ts: int) -> Rows | SkippedRows:
        key = (str(event.schema), str(event.table))
        table = self.tables.get(key)
        if table is None:
            return SkippedRows(seq)
        where = f"binlog {end} ({key[0]}.{key[1]})"
        names = tuple(str(c.name) for c in event.columns)
        if not getattr(event.table_map[event.table_id], "column_name_flag", True) or any(
            n is None or n.startswith("UNKNOWN_COL") for n in names
        ):
            raise UncarryableValueError(
                f"{where}: the table map has no column names; the source needs binlog_row_metadata=FULL"
            )
        codec = self._codec(event.table_id, table, names, where)
        try:
            raw_rows = event.rows
        except UnicodeDecodeError as exc:
            raise UncarryableValueError(
                f"{where}: a string value is not valid in its column charset ({exc.reason})"
            ) from None
        kind = (
            "insert"
            if isinstance(event, WriteRowsEvent)
            else "delete"
            if isinstance(event, DeleteRowsEvent)
            else "update"
        )
        rows: list[tuple[Row | None, Row | None]] = []
        for raw in raw_rows:
            if kind == "update":
                before = _adapt(codec, raw["before_values"], raw["before_none_sources"], where)
                after = _adapt(codec, raw["after_values"], raw["after_none_sources"], where)
                rows.append((before, after))
            elif kind == "insert":
                rows.append((None, _adapt(codec, raw["values"], raw["none_sources"], where)))
            else:
                rows.append((_adapt(codec, raw["values"], raw["none_sources"], where), None))
        return Rows(key[0], key[1], kind, codec.names, tuple(rows), seq, end, ts)  # type: ignore[arg-type]

    def _codec(self, table_id: int, table: Table, names: tuple[str, ...], where: str) -> _TableCodec:
        cache_key = (table_id, table.id, names)
        codec = self._codecs.get(cache_key)
        if codec is None:
            codec = _TableCodec(table, names, where)
            self._codecs[cache_key] = codec
        return codec


def _adapt(codec: _TableCodec, values: Mapping[str, Any], nones: Mapping[str, str], where: str) -> Row:
    out: list[Any] = []
    for name, adapt in zip(codec.names, codec.adapters, strict=True):
        value = values.get(name)
        if value is None:
            source = nones.get(name, "null")
            if source == "empty set":
                out.append("")
                continue
            if source != "null":
                raise UncarryableValueError(
                    f"{where} column {name}: the binlog value is not NULL but could not be decoded ({source});"
                    " refusing to write a guess"
                )
            out.append(None)
            continue
        out.append(adapt(value))
    return tuple(out)


class _TxnState:
    def __init__(self, position: Position) -> None:
        self.position = position
        self.boundary = position  # the last transaction boundary: where a resume may start
        self.in_txn = False
        self.standalone = False
        self.seq = 0

    def begin(self) -> None:
        self.in_txn = True
        self.seq = 0


def _translate(exc: BaseException, start: Position) -> BaseException:
    """Library and driver errors as austasync errors with what to do."""
    from austasync.errors import AustasyncError, BinlogPurgedError  # noqa: PLC0415 (keeps the import graph flat)

    if isinstance(exc, AustasyncError):
        return exc
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    code = args[0] if args and isinstance(args[0], int) else None
    if code == 1236:
        return BinlogPurgedError(
            f"the source cannot stream from {start}: {args[1] if len(args) > 1 else exc}. The binlog the checkpoint"
            " needs is gone; start a re-copy with `austasync reset --config FILE` and then `austasync run`"
        )
    if code is not None:
        return UnavailableError(
            f"binlog stream from the source failed: error {code}: {args[1] if len(args) > 1 else ''}"
        )
    return UnavailableError(f"binlog stream from the source failed: {type(exc).__name__}: {exc}")
