"""The one module that imports python-mysql-replication; it turns its untyped events into :mod:`austasync.events`.

Traps of the library handled here (DESIGN.md, notes/binlog-library.md):

- its reconnect resumes mid-transaction: disabled; a dropped stream is restarted from our own checkpoint;
- unknown event types are dropped by default: we take them and stop on anything not known to be harmless
  (compressed transactions, partial JSON updates, incidents);
- ``log_pos`` is ignored without ``resume_stream`` and ``is_mariadb`` starts at the oldest binlog: we use the
  MySQL dump path with file/pos on both flavours;
- a ``None`` is SQL NULL only when ``none_sources`` says so; any other ``None`` stops the stream;
- its value decoders lose or corrupt values (zero and partial-zero dates become None, negative TIME with a
  fraction is mis-signed, latin1 is decoded as cp1252 and raises on 0x81, YEAR 0 becomes 1900, the zero
  TIMESTAMP the epoch, ENUM/SET labels that are not UTF-8 become '', BIT a string of digits, JSON null and SQL
  NULL are both None). Its per-column dispatcher is replaced below for those types by decoders that read the
  binlog bytes exactly, following the server's own packing (sql/field.cc, mysys/my_time.c); the other types
  (integers, DECIMAL, FLOAT, DOUBLE, GEOMETRY) keep the library's decoders, which are exact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import queue
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pymysqlreplication.binlogstream as _binlogstream
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.bitmap import BitGet
from pymysqlreplication.constants import FIELD_TYPE
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
    RowsEvent,
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


# --- exact value decoders ---------------------------------------------------------------------------------------
#
# Each reads one non-NULL column value from the rows event's packet, as the server packed it. Temporal values come
# back as the literal text the server would print (zero and partial-zero dates included, which no Python type can
# hold); strings, BLOBs and MariaDB JSON as their raw bytes in the column's charset (written back with that
# charset's introducer, so no codec can disagree with the server's); ENUM and SET as their index / bit mask
# (labels that are not UTF-8 are lost by the library, and a number is how the server itself stores them).


class BinaryJson(bytes):
    """A MySQL binary JSON document exactly as logged; :func:`_json_text` turns it into JSON text."""


class _DecodeError(Exception):
    """A column value the decoders refuse; the reader adds table and binlog position."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"column {column}: {reason}")
        self.column = column
        self.reason = reason


_EPOCH = dt.datetime(1970, 1, 1)
_DATETIMEF_INT_OFS = 0x8000000000
_TIMEF_INT_OFS = 0x800000


def _frac_size(column: Any) -> int:
    """Bytes of the fractional part: 1 for fsp 1-2, 2 for 3-4, 3 for 5-6 (my_time.c)."""
    return (int(column.fsp) + 1) // 2


def _read_frac(packet: Any, size: int) -> int:
    """The unsigned fractional part, in microseconds."""
    if size == 0:
        return 0
    micro: int = int.from_bytes(packet.read(size), "big") * 10 ** (6 - 2 * size)
    if micro >= 1_000_000:
        raise ValueError(f"fractional part {micro} out of range")
    return micro


def _hms(packed: int) -> str:
    return f"{(packed >> 12) & 0x3FF:02d}:{(packed >> 6) & 0x3F:02d}:{packed & 0x3F:02d}"


def _decode_date(packet: Any, column: Any) -> str:
    del column
    value = int.from_bytes(packet.read(3), "little")
    return f"{value >> 9:04d}-{(value >> 5) & 0x0F:02d}-{value & 0x1F:02d}"


def _decode_datetime2(packet: Any, column: Any) -> str:
    # 1 bit sign (always set), 17 bits year*13+month, 5 day, 5 hour, 6 minute, 6 second; then the fraction
    intpart = int.from_bytes(packet.read(5), "big") - _DATETIMEF_INT_OFS
    micro = _read_frac(packet, _frac_size(column))
    if intpart < 0:
        raise ValueError("negative DATETIME")
    ymd, year_month = intpart >> 17, intpart >> 22
    return f"{year_month // 13:04d}-{year_month % 13:02d}-{ymd & 0x1F:02d} {_hms(intpart & 0x1FFFF)}.{micro:06d}"


def _decode_time2(packet: Any, column: Any) -> str:
    # The integer and fractional parts form one big-endian fixed-point number offset by 0x800000 << frac bits
    # (my_time_packed_to_binary): a negative value is the negation of the whole, fraction included. The library
    # reads the fraction as a separate signed number, so -00:00:01.25 comes out as -1.75 s.
    size = _frac_size(column)
    bits = 8 * size
    value = int.from_bytes(packet.read(3 + size), "big") - (_TIMEF_INT_OFS << bits)
    sign = "-" if value < 0 else ""
    value = abs(value)
    frac = value & ((1 << bits) - 1)
    micro = frac * 10 ** (6 - 2 * size) if size else 0
    if micro >= 1_000_000:
        raise ValueError(f"fractional part {micro} out of range")
    return f"{sign}{_hms(value >> bits)}.{micro:06d}"


def _timestamp_text(seconds: int, micro: int) -> str:
    if seconds == 0 and micro == 0:
        # the zero TIMESTAMP, never the epoch. MariaDB does store 0 s with a fraction (an out-of-range value
        # written in a non-strict session keeps its fraction) and prints it, and accepts it back, as 1970-01-01
        # 00:00:00.f UTC
        return "0000-00-00 00:00:00"
    return f"{_EPOCH + dt.timedelta(seconds=seconds):%Y-%m-%d %H:%M:%S}.{micro:06d}"


def _decode_timestamp2(packet: Any, column: Any) -> str:
    # unsigned: MariaDB 11.5+ extends TIMESTAMP to 2106
    seconds = int.from_bytes(packet.read(4), "big")
    return _timestamp_text(seconds, _read_frac(packet, _frac_size(column)))


def _decode_timestamp_old(packet: Any, column: Any) -> str:
    del column
    return _timestamp_text(int.from_bytes(packet.read(4), "little"), 0)


def _decode_datetime_old(packet: Any, column: Any) -> str:
    del column
    value = int.from_bytes(packet.read(8), "little")  # YYYYMMDDhhmmss as a decimal number
    date, time = divmod(value, 1_000_000)
    return f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d} {time // 10000:02d}:{time // 100 % 100:02d}:{time % 100:02d}"


def _decode_time_old(packet: Any, column: Any) -> str:
    del column
    value = int.from_bytes(packet.read(3), "little", signed=True)  # +-HHMMSS as a decimal number
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}{value // 10000:02d}:{value // 100 % 100:02d}:{value % 100:02d}"


def _decode_year(packet: Any, column: Any) -> int:
    del column
    value = int(packet.read(1)[0])
    return 0 if value == 0 else 1900 + value  # 0 is YEAR 0000, not 1900 (which YEAR cannot hold)


def _decode_int_le(packet: Any, column: Any) -> int:
    return int.from_bytes(packet.read(int(column.size)), "little")


def _decode_bit(packet: Any, column: Any) -> int:
    return int.from_bytes(packet.read(int(column.bytes)), "big")


def _decode_varchar(packet: Any, column: Any) -> bytes:
    size = 2 if int(column.max_length) > 255 else 1
    return bytes(packet.read(int.from_bytes(packet.read(size), "little")))


def _decode_blob(packet: Any, column: Any) -> bytes:
    return bytes(packet.read(int.from_bytes(packet.read(int(column.length_size)), "little")))


def _decode_json(packet: Any, column: Any) -> BinaryJson:
    return BinaryJson(packet.read(int.from_bytes(packet.read(int(column.length_size)), "little")))


_DECODERS: dict[int, Callable[[Any, Any], object]] = {
    FIELD_TYPE.DATE: _decode_date,
    FIELD_TYPE.DATETIME2: _decode_datetime2,
    FIELD_TYPE.TIME2: _decode_time2,
    FIELD_TYPE.TIMESTAMP2: _decode_timestamp2,
    FIELD_TYPE.TIMESTAMP: _decode_timestamp_old,
    FIELD_TYPE.DATETIME: _decode_datetime_old,
    FIELD_TYPE.TIME: _decode_time_old,
    FIELD_TYPE.YEAR: _decode_year,
    FIELD_TYPE.ENUM: _decode_int_le,
    FIELD_TYPE.SET: _decode_int_le,
    FIELD_TYPE.BIT: _decode_bit,
    FIELD_TYPE.VARCHAR: _decode_varchar,
    FIELD_TYPE.STRING: _decode_varchar,
    FIELD_TYPE.BLOB: _decode_blob,
    FIELD_TYPE.JSON: _decode_json,
}
# a private, name-mangled method (mysql-replication pinned <1.1): reading it here makes a renamed method fail the
# import instead of silently bypassing our decoders; tests/test_types.py fails if the library stops calling it
_library_read_value = RowsEvent._RowsEvent__read_values_name
# DATETIME(n)/TIME(n)/TIMESTAMP(n), n > 0, created with mysql56_temporal_format=OFF: logged as the old types with
# a metadata byte the library does not read, so every later column of the row is misread. With n = 0 they are
# the pre-5.6 formats, decoded above.
_MARIADB53_HIRES = re.compile(r"\([1-6]\)\s*/\*\s*mariadb-5\.3\s*\*/", re.IGNORECASE)


def _read_value(
    self: Any,
    column: Any,
    null_bitmap: bytes,
    null_bitmap_index: int,
    is_partial: bool,
    cols_bitmap: bytes,
    unsigned: bool,
    i: int,
) -> object:
    """Replaces ``RowsEvent.__read_values_name``: our decoders for the types above, the library's for the rest.

    Absent and NULL columns (and partial JSON, refused before its rows are read) stay with the library, which
    records their ``none_sources``.
    """
    try:
        decode = _DECODERS.get(column.type)
        if decode is None or is_partial or not BitGet(cols_bitmap, i) or self._is_null(null_bitmap, null_bitmap_index):
            return _library_read_value(
                self, column, null_bitmap, null_bitmap_index, is_partial, cols_bitmap, unsigned, i
            )
        return decode(self.packet, column)
    except Exception as exc:  # noqa: BLE001 (the packet is in memory: any failure here is a decoding one)
        raise _DecodeError(str(column.name), f"{type(exc).__name__}: {exc}") from None


RowsEvent._RowsEvent__read_values_name = _read_value


def _json_text(raw: bytes) -> str:
    """MySQL binary JSON as JSON text that the server parses back to the same document.

    The library's parser turns JSON null into None (indistinguishable from SQL NULL), returns None for a
    truncated object and decodes unknown opaque values with ``errors="ignore"``: this one refuses instead.
    """
    if not raw:
        # what MySQL itself reads for an empty JSON value (e.g. rows that existed when a NOT NULL JSON column
        # was added; MySQL bug 98496): a JSON null
        return "null"
    try:
        return _json_value(raw[0], raw, 1)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"JSON value cannot be carried exactly: {exc}") from None


_JSON_INLINE_SMALL = {0x04, 0x05, 0x06}
_JSON_INLINE_LARGE = {0x04, 0x05, 0x06, 0x07, 0x08}
_JSON_INTS = {0x05: (2, True), 0x06: (2, False), 0x07: (4, True), 0x08: (4, False), 0x09: (8, True), 0x0A: (8, False)}


def _json_varlen(buf: bytes, pos: int) -> tuple[int, int]:
    """A length in 7-bit groups, low group first (json_binary.cc read_variable_length)."""
    length = 0
    for i in range(5):
        byte = buf[pos + i]
        length |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return length, pos + i + 1
    raise ValueError("variable length too long")


def _json_value(jtype: int, buf: bytes, pos: int) -> str:
    """The JSON text of the value of type ``jtype`` whose data starts at ``buf[pos]``."""
    if jtype in (0x00, 0x01, 0x02, 0x03):
        return _json_container(buf, pos, large=jtype in (0x01, 0x03), is_object=jtype in (0x00, 0x01))
    if jtype == 0x04:
        literal = buf[pos]
        if literal > 2:
            raise ValueError(f"unknown JSON literal {literal}")
        return ("null", "true", "false")[literal]
    if jtype in _JSON_INTS:
        size, signed = _JSON_INTS[jtype]
        return str(int.from_bytes(buf[pos : pos + size], "little", signed=signed))
    if jtype == 0x0B:
        (value,) = struct.unpack_from("<d", buf, pos)
        if not math.isfinite(value):
            raise ValueError("non-finite double in JSON")
        return repr(value)  # shortest text that parses back to the same double
    if jtype == 0x0C:
        length, start = _json_varlen(buf, pos)
        if start + length > len(buf):
            raise ValueError("truncated JSON string")
        return json.dumps(buf[start : start + length].decode("utf-8"), ensure_ascii=False)
    if jtype == 0x0F:
        raise ValueError(
            f"opaque JSON value of MySQL type {buf[pos]} (DECIMAL, DATE, TIME, BLOB... inside JSON) has no JSON text"
            " that parses back to the same type"
        )
    raise ValueError(f"unknown JSON type {jtype}")


def _json_container(buf: bytes, start: int, *, large: bool, is_object: bool) -> str:
    # offsets inside an object or array count from its first byte (the element count)
    width = 4 if large else 2
    inline = _JSON_INLINE_LARGE if large else _JSON_INLINE_SMALL
    count = int.from_bytes(buf[start : start + width], "little")
    size = int.from_bytes(buf[start + width : start + 2 * width], "little")
    if start + size > len(buf):
        raise ValueError("truncated JSON container")
    key_entry = width + 2
    value_entry = 1 + width
    values_at = start + 2 * width + (count * key_entry if is_object else 0)
    parts = []
    for i in range(count):
        entry = values_at + i * value_entry
        jtype = buf[entry]
        if jtype in inline:
            text = _json_value(jtype, buf, entry + 1)
        else:
            text = _json_value(jtype, buf, start + int.from_bytes(buf[entry + 1 : entry + 1 + width], "little"))
        if is_object:
            key_at = start + 2 * width + i * key_entry
            key_offset = int.from_bytes(buf[key_at : key_at + width], "little")
            key_length = int.from_bytes(buf[key_at + width : key_at + width + 2], "little")
            key = buf[start + key_offset : start + key_offset + key_length].decode("utf-8")
            parts.append(json.dumps(key, ensure_ascii=False) + ": " + text)
        else:
            parts.append(text)
    return ("{" + ", ".join(parts) + "}") if is_object else ("[" + ", ".join(parts) + "]")


def _adapter(column: Column) -> Callable[[Any], Any]:
    """A function turning a decoded value for this column into one :func:`sql.value_literal` writes exactly.

    It raises ValueError for a value that cannot be carried; the caller names the table, column and position
    (codecs are cached across events, so they must not hold a position).
    """
    if column.kind is Kind.ENUM:

        def enum_value(v: Any) -> Any:
            if v == 0:
                # index 0 is the '' a non-strict source stores for an invalid value; a strict target refuses it
                raise ValueError(
                    "ENUM holds the invalid-value index 0 (''), which a strict session cannot write; fix the row"
                    " on the source (UPDATE it to a valid label or NULL)"
                )
            return v

        return enum_value
    length = column.binary_length
    if length is not None:
        # the binlog strips BINARY(n)'s trailing zero bytes; the column always holds n bytes
        return lambda v: v.ljust(length, b"\0") if isinstance(v, bytes) else v
    return lambda v: _json_text(v) if isinstance(v, BinaryJson) else v


class _TableCodec:
    """Per table map: column names checked against our schema and one adapter per column."""

    def __init__(self, table: Table, names: tuple[str, ...], where: str) -> None:
        known = [c.name for c in table.columns]
        if list(names) != known:
            raise UncarryableValueError(
                f"{where}: the binlog's columns for {table} ({', '.join(names)}) differ from the schema austasync"
                f" loaded ({', '.join(known)}); a DDL was applied that austasync did not replay. Re-copy the table"
            )
        for column in table.columns:
            if _MARIADB53_HIRES.search(column.column_type):
                raise UncarryableValueError(
                    f"{where} column {column.name}: {column.column_type} is MariaDB 5.3's temporal format with"
                    " fractional seconds, whose binlog form austasync cannot decode exactly. On the source, with"
                    f" mysql56_temporal_format=ON, run ALTER TABLE {table} FORCE"
                )
        self.names = names
        self.adapters = [_adapter(c) for c in table.columns]


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
        _interrupt(self._stream)

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
        if isinstance(event, TableMapEvent):
            state.last_table = f"{event.schema}.{event.table}"
        if isinstance(event, _IGNORED):
            return [] if state.in_txn or state.standalone else [Boundary(end)]
        if isinstance(event, XAPrepareEvent):
            raise UncarryableValueError(f"XA transaction at {end}: XA PREPARE/COMMIT is not supported")
        if isinstance(event, BeginLoadQueryEvent | ExecuteLoadQueryEvent):
            raise UncarryableValueError(f"LOAD DATA logged as a statement at {end}: cannot be applied exactly")
        if isinstance(event, NotImplementedEvent) and event.event_type in _HARMLESS_UNKNOWN:
            return [] if state.in_txn or state.standalone else [Boundary(end)]
        name = _EVENT_NAMES.get(event.event_type, type(event).__name__)
        # the event itself is not decoded; the table map just before it names the table it most likely changes
        table = f" (after the table map of {state.last_table})" if state.in_txn and state.last_table else ""
        raise UncarryableValueError(
            f"binlog event {name} (type {event.event_type}) ending at {end}{table}: austasync cannot apply it"
            " exactly. Turn off binlog compression (MariaDB log_bin_compress, MySQL binlog_transaction_compression)"
            " and partial JSON updates (binlog_row_value_options) on the source"
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
                time_zone=_text_or_none(getattr(event, "time_zone", None)),
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
        except _DecodeError as exc:
            raise UncarryableValueError(
                f"{where} {exc.column}: the binlog value cannot be decoded exactly ({exc.reason})"
            ) from None
        except Exception as exc:  # noqa: BLE001 (the packet is in memory: any failure here is a decoding one)
            raise UncarryableValueError(
                f"{where}: the rows event cannot be decoded exactly ({type(exc).__name__}: {exc})"
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


def _text_or_none(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value) if value else None


def _interrupt(stream: BinLogStreamReader | None) -> None:
    """Wake the thread blocked reading ``stream``, which then closes it itself.

    Closing from this thread would block: the socket's buffered reader is locked by the blocked read until the next
    heartbeat. Shutting the socket down makes that read return at once.
    """
    if stream is None:
        return
    sock = getattr(getattr(stream, "_stream_connection", None), "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the reading thread
            sock.shutdown(socket.SHUT_RDWR)


def _adapt(codec: _TableCodec, values: Mapping[str, Any], nones: Mapping[str, str], where: str) -> Row:
    out: list[Any] = []
    for name, adapt in zip(codec.names, codec.adapters, strict=True):
        if name not in values:
            raise UncarryableValueError(f"{where} column {name}: missing from the row image; refusing to guess")
        value = values[name]
        if value is None:
            # our decoders never return None: any other reason than NULL (a column absent from a MINIMAL or
            # NOBLOB image, an unchanged partial JSON) means the value is simply not there
            source = nones.get(name, "null")
            if source != "null":
                hint = (
                    "; a session on the source runs with binlog_row_image other than FULL"
                    if source == "cols bitmap"
                    else ""
                )
                raise UncarryableValueError(
                    f"{where} column {name}: the binlog value is not NULL but is not in the event ({source}){hint}."
                    " Refusing to write a guess"
                )
            out.append(None)
            continue
        try:
            out.append(adapt(value))
        except ValueError as exc:
            raise UncarryableValueError(f"{where} column {name}: {exc}") from None
    return tuple(out)


class _TxnState:
    def __init__(self, position: Position) -> None:
        self.position = position
        self.boundary = position  # the last transaction boundary: where a resume may start
        self.in_txn = False
        self.standalone = False
        self.seq = 0
        self.last_table = ""

    def begin(self) -> None:
        self.in_txn = True
        self.seq = 0
        self.last_table = ""


def _translate(exc: BaseException, start: Position) -> BaseException:
    """Library and driver errors as austasync errors with what to do."""
    from austasync.errors import AustasyncError, BinlogPurgedError  # noqa: PLC0415 (keeps the import graph flat)

    if isinstance(exc, UncarryableValueError):
        # restarting reads the same event again: only a re-copy gets past it
        return UncarryableValueError(
            f"{exc}. The event stays in the source's binlog: once the cause is fixed on the source, re-copy with"
            " `austasync reset --config FILE --yes` and `austasync run`"
        )
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


# --- target write watcher ---------------------------------------------------------------------------------------


class TargetWriteWatcher:
    """Reads the *target's* binlog and reports transactions on replicated tables that austasync did not make.

    Every austasync write transaction also changes a row of its state schema (the checkpoint or a copy cursor,
    with a fresh ``updated_at``), so a target transaction that changes replicated tables without touching the
    state schema was made by someone else: drift by definition (DESIGN.md rule 13). DDL on replicated databases
    counts too, unless austasync itself ran that statement (``on_ddl = "exec"``).

    Rows are never decoded, and known table maps are not re-parsed (``freeze_schema``): only schema and table names
    are needed, so the watcher costs little beside the applier.
    """

    def __init__(
        self,
        target: DatabaseConfig,
        server_id: int,
        start: Position,
        replicated_dbs: Mapping[str, str],
        state_schema: str,
        on_foreign: Callable[[str, int, Position], None],
        *,
        heartbeat_seconds: float = 5.0,
    ) -> None:
        self._settings = {
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "passwd": target.password.reveal(),
            "connect_timeout": target.connect_timeout_seconds,
            "read_timeout": max(30.0, heartbeat_seconds * 4),
        }
        self._server_id = server_id
        self.position = start
        self.replicated = dict(replicated_dbs)  # database on the target -> source name
        self.state_schema = state_schema
        self.on_foreign = on_foreign
        self.own_statements: set[str] = set()
        self.error: BaseException | None = None
        self._heartbeat = heartbeat_seconds
        self._stop = threading.Event()
        self._stream: BinLogStreamReader | None = None
        self._thread = threading.Thread(target=self._run, name="target-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _interrupt(self._stream)

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # noqa: BLE001 (reported through health; detection stops, replication not)
            if not self._stop.is_set():
                self.error = exc

    def _read(self) -> None:
        stream = BinLogStreamReader(
            connection_settings=dict(self._settings),
            server_id=self._server_id,
            resume_stream=True,
            blocking=True,
            log_file=self.position.file,
            log_pos=self.position.pos,
            only_events=[QueryEvent, XidEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, RotateEvent],
            freeze_schema=True,
            slave_heartbeat=self._heartbeat,
            enable_logging=False,
        )
        self._stream = stream
        touched: dict[str, int] = {}
        marked = False
        try:
            for event in stream:
                if self._stop.is_set():
                    return
                if isinstance(event, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                    schema = str(getattr(event, "schema", "") or "")
                    if schema == self.state_schema:
                        marked = True
                    elif schema in self.replicated:
                        name = f"{self.replicated[schema]}.{event.table}"
                        touched[name] = touched.get(name, 0) + 1
                elif isinstance(event, XidEvent) or (
                    isinstance(event, QueryEvent) and event.query.strip().upper() == "COMMIT"
                ):
                    self._transaction_end(touched, marked, stream)
                    touched, marked = {}, False
                elif isinstance(event, QueryEvent):
                    self._statement(event, stream)
        finally:
            stream.close()

    def _transaction_end(self, touched: dict[str, int], marked: bool, stream: Any) -> None:
        self.position = Position(stream.log_file, int(stream.log_pos))
        if marked:
            return
        for table, events in touched.items():
            self.on_foreign(table, events, self.position)

    def _statement(self, event: Any, stream: Any) -> None:
        text = event.query.strip()
        if text.upper() in ("BEGIN", "COMMIT", "ROLLBACK") or text in self.own_statements:
            return
        schema = event.schema.decode("utf-8", "replace") if isinstance(event.schema, bytes) else str(event.schema)
        lowered = text.lower()
        mentions = schema in self.replicated or any(
            f"{db.lower()}." in lowered or f"`{db.lower()}`" in lowered for db in self.replicated
        )
        if mentions and not lowered.startswith(("savepoint", "release", "rollback to", "flush", "analyze", "optimize")):
            db = self.replicated.get(schema, schema)
            self.on_foreign(f"{db} (statement)", 1, Position(stream.log_file, int(stream.log_pos)))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
