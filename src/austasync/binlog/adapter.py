"""The one module that imports python-mysql-replication; it turns its untyped events into :mod:`austasync.events`.

Traps of the library handled here (docs/DESIGN.md#binlog-library):

- its reconnect resumes mid-transaction: disabled; a dropped stream is restarted from our own checkpoint;
- unknown event types are dropped by default: we take them and stop on anything not known to be harmless
  (compressed transactions, partial JSON updates, incidents);
- ``log_pos`` is ignored without ``resume_stream`` and ``is_mariadb`` starts at the oldest binlog: we use the
  MySQL dump path with file/pos on both flavours;
- its value decoders lose or corrupt values (zero and partial-zero dates become None, negative TIME with a
  fraction is mis-signed, latin1 is decoded as cp1252 and raises on 0x81, YEAR 0 becomes 1900, the zero
  TIMESTAMP the epoch, ENUM/SET labels that are not UTF-8 become '', BIT a string of digits, JSON null and SQL
  NULL are both None), and its rows decoding and table-map parsing are slow: rows events are decoded by
  :mod:`austasync.binlog.rowcodec` from the packet bytes, exactly (a column absent from the image stops the
  stream instead of becoming a None), and each distinct table map is parsed once. The library keeps the
  connection, the replica protocol and the rare events.
"""

from __future__ import annotations

import contextlib
import io
import queue
import re
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pymysql
import pymysqlreplication.binlogstream as _binlogstream
from pymysql.protocol import MysqlPacket
from pymysqlreplication import BinLogStreamReader
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
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import (
    TableMapEvent,
)

from austasync import foreign
from austasync.binlog import outcomes, statements
from austasync.binlog import query as query_event
from austasync.binlog.rowcodec import ROWS_EVENTS as _ROWS_EVENTS
from austasync.binlog.rowcodec import ROWS_V2 as _ROWS_V2
from austasync.binlog.rowcodec import ColumnSpec, RowsDecoder, ValueStop, first_absent, read_lenenc
from austasync.binlog.txn import Chunk as _Chunk
from austasync.binlog.txn import TxnState as _TxnState
from austasync.config import DatabaseConfig
from austasync.db import DriverConnection, describe_error, tls_options
from austasync.errors import UnavailableError, UncarryableValueError
from austasync.events import (
    Begin,
    Boundary,
    Commit,
    Event,
    Heartbeat,
    LiteralRows,
    ReaderFailed,
    Rows,
    SkippedRows,
    Statement,
    UnknownRows,
)
from austasync.foreign import ForeignWrite
from austasync.position import Position
from austasync.schema import Table, TableId

# The library's own reconnect resumes from the last event read, possibly mid-transaction: turn it off
# (docs/DESIGN.md#rule-checkpoint).
_binlogstream.MYSQL_EXPECTED_ERROR_CODES = []

# Event types the library does not implement but that carry nothing to apply, and the rule that skips them:
# 34 ANONYMOUS_GTID (MySQL without GTIDs) and 42 GTID_TAGGED (MySQL 8.4+): a transaction's identity, like GTID (33);
# 36 TRANSACTION_CONTEXT and 37 VIEW_CHANGE: group replication's certification and membership bookkeeping.
# (38 is XA_PREPARE, which the library parses and the reader models.)
_HARMLESS_UNKNOWN = {
    34: "transaction_control",
    42: "transaction_control",
    36: "group_replication",
    37: "group_replication",
}
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
_FL_PREPARED_XA = 64  # MariaDB GTID flag: the group is an XA transaction's XA START ... XA PREPARE

# events that carry nothing to apply, by the rule that skips them
_IGNORED: dict[type, str] = {
    FormatDescriptionEvent: outcomes.METADATA,
    PreviousGtidsEvent: outcomes.METADATA,
    MariadbGtidListEvent: outcomes.METADATA,
    MariadbBinLogCheckPointEvent: outcomes.METADATA,
    MariadbStartEncryptionEvent: outcomes.METADATA,
    StopEvent: outcomes.METADATA,
    MariadbAnnotateRowsEvent: outcomes.ANNOTATION,
    RowsQueryLogEvent: outcomes.ANNOTATION,
    # a statement's session values; in ROW format they only precede statements logged as text, judged on their own
    IntvarEvent: outcomes.ANNOTATION,
    RandEvent: outcomes.ANNOTATION,
    UserVarEvent: outcomes.ANNOTATION,
    TableMapEvent: outcomes.TABLE_MAP,
}


# --- table maps and rows events ---------------------------------------------------------------------------------
#
# Rows events are decoded by austasync.binlog.rowcodec from the packet bytes, not by the library: its per-column
# dispatcher and its re-parsing of every table map took most of the catch-up time
# (docs/DESIGN.md#binlog-library), and several of its value decoders lose values (see rowcodec). A table map is
# parsed by the library once per distinct content, keyed by its bytes rather than its table id (the server reuses
# ids after a rotate and gives an altered table a new one), and compiled into a decoder on its first rows event.

# DATETIME(n)/TIME(n)/TIMESTAMP(n), n > 0, created with mysql56_temporal_format=OFF: logged as the old types with
# a metadata byte the library does not read, so every later column of the row would be misread. With n = 0 they
# are the pre-5.6 formats, which rowcodec decodes.
_MARIADB53_HIRES = re.compile(r"\([1-6]\)\s*/\*\s*mariadb-5\.3\s*\*/", re.IGNORECASE)
_SWITCH_INTERVAL = 0.001
_PART_EVENTS = 2000  # rows events merged into one TxnImages at most: a big transaction is split in parts
_BATCH_EVENTS = 1000  # events per list handed to the consumer; bounds memory and latency together
_READ_SIZE = 1 << 20  # bytes asked of the socket per read while catching up
_MAX_PACKET = 0xFFFFFF  # a payload this long continues in the next packet
_TABLE_MAP, _XID, _QUERY, _ROTATE, _FORMAT_DESCRIPTION, _MARIADB_GTID = 19, 16, 2, 4, 15, 162
_PARTIAL_UPDATE_ROWS = 39
_INTVAR = 5
_PREVIOUS_GTIDS = 35
_LOG_EVENT_IGNORABLE_F = 0x80  # header flag: a replica that does not know the event may drop it
_XA_PREPARE = 38
_GTID_EVENTS = {33, 34, 162}  # MySQL GTID and anonymous GTID, MariaDB GTID: each starts a transaction group
_UNREADABLE = {40, 165, 166, 167, 168, 169, 170, 171}  # compressed events: the watcher cannot name their tables
_HEADER = struct.Struct("<IBIII").unpack_from  # timestamp, type, server id, event size, next position
_U16 = struct.Struct("<H").unpack_from
_TABLE_ID = struct.Struct("<IH").unpack_from  # 6 bytes, little-endian
# a packet's header (3-byte length, sequence), the OK byte, the event header (timestamp, type, server id, size,
# next position, flags) and the first 6 bytes of the body (the table id of table maps and rows events)
_FRAME = struct.Struct("<IBIBIIIHIH").unpack_from
_FRAME_SIZE = 30
_K_ROWS, _K_ALREADY, _K_NOT_SELECTED = outcomes.ROWS, outcomes.ALREADY_APPLIED, outcomes.NOT_SELECTED
_K_TABLE_MAP, _K_TRANSACTION, _K_ARTIFICIAL = outcomes.TABLE_MAP, outcomes.TRANSACTION, outcomes.ARTIFICIAL
_K_IGNORABLE = outcomes.key("ignorable")
_new_tuple = tuple.__new__  # builds a LiteralRows without its generated __new__ (one Python call less per event)


class _TableCodec:
    """Per table map of a replicated table: column names checked against our schema, and the compiled decoder."""

    def __init__(self, table: Table, specs: tuple[ColumnSpec, ...], where: str, *, literal: bool) -> None:
        names = tuple(s.name for s in specs)
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
        self.db, self.name = table.db, table.name
        self.decoder = RowsDecoder(specs, table.columns, table.key, literal=literal)
        self.literal = literal
        self.functions = self.decoder.functions
        self.into = self.decoder.into
        self.tid = table.id
        self.full = self.decoder.full_bitmap
        self.nfull = len(self.full)
        self.ncols = self.decoder.ncols
        # per rows event type, what merge() needs, looked up once: the merging function, the metrics key, update?
        self.by_type = {
            etype: (self.into[kind], (table.id, kind), kind == "update")
            for etype, kind in _ROWS_EVENTS.items()
            if literal
        }

    def literal_rows(self, b: bytes, body: int, body_end: int, etype: int, ts: int, seq: int, lib: _Library) -> Any:
        """The fast path: a rows event of this table with FULL images, rendered as literals (a named tuple built
        without its generated ``__new__``, one Python call less per event); None for anything unusual (column count,
        a partial image, a value refused), which the general path then explains."""
        p = body + lib.rows_post_header[etype]
        if etype in _ROWS_V2:
            p += _U16(b, body + 8)[0] - 2  # extra data (NDB, partition ids): its length counts its own 2 bytes
        full = self.full
        if b[p] != self.ncols or not b.startswith(full, p + 1):
            return None
        p += 1 + len(full)
        kind = _ROWS_EVENTS[etype]
        if kind == "update":
            if not b.startswith(full, p):
                return None
            p += len(full)
        try:
            rows = self.functions[kind](b, p, body_end)
        except Exception:  # noqa: BLE001 (decoded again on the general path, which names the column)
            return None
        return _new_tuple(LiteralRows, (self.db, self.name, kind, rows, seq, ts))

    def merge(
        self,
        b: bytes,
        body: int,
        body_end: int,
        etype: int,
        ts: int,
        lib: _Library,
        chunk: _Chunk,
        log_file: str,
        log_pos: int,
    ) -> bool:
        """Merge a rows event of this table with FULL images into a transaction's net images; False for anything
        unusual (column count, a partial image), which the general path then explains."""
        p = body + lib.rows_post_header[etype]
        if etype in _ROWS_V2:
            p += _U16(b, body + 8)[0] - 2  # extra data (NDB, partition ids): its length counts its own 2 bytes
        full = self.full
        if b[p] != self.ncols or not b.startswith(full, p + 1):
            return False
        p += self.nfull + 1
        into, counter, update = self.by_type[etype]
        if update:
            if not b.startswith(full, p):
                return False
            p += self.nfull
        images = chunk.images.get(self.tid)
        if images is None:
            images = chunk.images[self.tid] = {}
        try:
            rows, size = into(b, p, body_end, images)
        except Exception:  # the merged images are unusable now: stop, naming the column
            self.decode(b, body, body_end, etype, lib, f"binlog {log_file}:{log_pos} ({self.db}.{self.name})")
            raise
        chunk.rows += rows
        chunk.bytes += size
        chunk.events += 1
        counts = chunk.counts
        counts[counter] = counts.get(counter, 0) + rows
        if chunk.oldest is None:
            chunk.oldest = ts
        return True

    def decode(
        self, b: bytes, body: int, body_end: int, etype: int, lib: _Library, where: str
    ) -> tuple[str, list[Any], int]:
        """The rows of an event, checked step by step: (kind, rows, position after them)."""
        kind = _ROWS_EVENTS[etype]
        p = body + lib.rows_post_header[etype]
        if etype in _ROWS_V2:
            p += _U16(b, body + 8)[0] - 2
        ncols, p = read_lenenc(b, p)
        if ncols != self.ncols:
            raise UncarryableValueError(f"{where}: the rows event has {ncols} columns, its table map {self.ncols}")
        nbytes = len(self.full)
        for image in range(2 if kind == "update" else 1):
            absent = first_absent(b[p + image * nbytes : p + (image + 1) * nbytes], ncols)
            if absent is not None:
                # FULL row images have every column: this one's value is simply not in the event
                raise UncarryableValueError(
                    f"{where} column {self.names[absent]}: the binlog value is not NULL but is not in the event"
                    " (cols bitmap); a session on the source runs with binlog_row_image other than FULL. Refusing to"
                    " write a guess"
                )
        p += nbytes * (2 if kind == "update" else 1)
        try:
            rows = self.decoder.decode(kind, b, p, body_end)
        except ValueStop as exc:
            column = f" column {exc.column}" if exc.column != "?" else ""
            raise UncarryableValueError(f"{where}{column}: {exc.message}") from None
        return kind, rows, body_end


class _TableMap:
    """One table map's content as the library parsed it, shared by every later table map with the same bytes."""

    __slots__ = ("codec", "content", "label", "name", "named", "schema", "specs", "table", "unknown")

    def __init__(
        self, event: Any, tables: Mapping[TableId, Table], content: bytes, selected: Callable[[str, str], bool]
    ) -> None:
        self.content = content  # the map's bytes after the table id
        self.schema, self.name = str(event.schema), str(event.table)
        self.label = f"{self.schema}.{self.name}"
        self.table = tables.get((self.schema, self.name))
        # a table the selection covers that was not loaded (created after start): its rows stop the stream
        self.unknown = self.table is None and selected(self.schema, self.name)
        self.specs = tuple(_spec(c) for c in event.columns)
        # names, signedness and charsets come only from binlog_row_metadata=FULL (checked per table map)
        self.named = bool(getattr(event.get_table(), "column_name_flag", True)) and all(
            c.name is not None and not str(c.name).startswith("UNKNOWN_COL") for c in event.columns
        )
        self.codec: _TableCodec | None = None

    @classmethod
    def outside(cls, schema: str, name: str, content: bytes) -> _TableMap:
        """The map of a table outside the selection: its rows are only counted, so its columns are never parsed
        (the library cannot parse every map: MySQL 9's VECTOR metadata makes it raise)."""
        entry = cls.__new__(cls)
        entry.content, entry.schema, entry.name = content, schema, name
        entry.label = f"{schema}.{name}"
        entry.table, entry.unknown, entry.specs, entry.named, entry.codec = None, False, (), False, None
        return entry


def _spec(column: Any) -> ColumnSpec:
    ctype = int(column.type)
    return ColumnSpec(
        name=str(column.name),
        type=ctype,
        unsigned=bool(getattr(column, "unsigned", False)),
        max_length=int(getattr(column, "max_length", 0) or 0),
        length_size=int(getattr(column, "length_size", 0) or 0),
        fsp=int(getattr(column, "fsp", 0) or 0),
        precision=int(getattr(column, "precision", 0) or 0),
        decimals=int(getattr(column, "decimals", 0) or 0),
        size=int((getattr(column, "bytes", 0) if ctype == FIELD_TYPE.BIT else getattr(column, "size", 0)) or 0),
    )


def _private(stream: Any, name: str) -> Any:
    """A setting the library keeps in a name-mangled attribute (mysql-replication is pinned below 1.1)."""
    try:
        return getattr(stream, f"_BinLogStreamReader__{name}")
    except AttributeError:
        raise RuntimeError(f"python-mysql-replication changed: BinLogStreamReader has no {name}") from None


class _PostHeaders(dict[int, int]):
    """Post-header lengths of the rows event types the format description declares readable.

    MySQL 8.4 and 9.x declare 0 bytes for the version-1 rows events they no longer write: such a file is read, and
    only a rows event of a type so declared, should one arrive, is refused.
    """

    def __missing__(self, event_type: int) -> int:
        raise UncarryableValueError(
            f"binlog rows event of type {event_type}, which the binlog's format description declares too short to"
            " read: austasync cannot decode it"
        )


class _Library:
    """Parses the events austasync does not decode itself with the library, as its own read loop would."""

    def __init__(self, stream: Any) -> None:
        self.ctl = stream._ctl_connection
        self.version = stream.mysql_version
        self.use_checksum = bool(_private(stream, "use_checksum"))
        self.allowed = _private(stream, "allowed_events_in_packet")
        self.optional_meta = _private(stream, "optional_meta_data")
        self.table_map: dict[int, Any] = {}
        self.set_post_header_lengths(_private(stream, "post_header_lengths"))

    def set_post_header_lengths(self, lengths: list[int] | None) -> None:
        self.post_header_lengths = lengths
        usable = {}
        for event_type in _ROWS_EVENTS:
            with contextlib.suppress(UncarryableValueError):
                usable[event_type] = self.post_header(event_type, 10 if event_type in _ROWS_V2 else 8)
        self.rows_post_header = _PostHeaders(usable)

    def event(self, payload: bytes) -> Any:
        """The library's event for one packet (None for types it is told to skip, as its reader would)."""
        wrapper = BinLogPacketWrapper(
            MysqlPacket(payload, "utf8"),
            self.table_map,
            self.ctl,
            self.version,
            self.use_checksum,
            self.allowed,
            None,
            None,
            None,
            None,
            False,
            False,
            False,
            self.optional_meta,
            False,
            use_column_name_cache=False,
            post_header_lengths=self.post_header_lengths,
        )
        return wrapper.event

    def post_header(self, event_type: int, default: int) -> int:
        lengths = self.post_header_lengths
        if not lengths or not 0 < event_type <= len(lengths):
            return default
        declared = int(lengths[event_type - 1])
        if declared < default:
            raise UncarryableValueError(f"binlog event type {event_type} declares a post-header of {declared} bytes")
        return declared


def _connection_settings(db: DatabaseConfig, read_timeout: float) -> dict[str, Any]:
    """The library's connection settings for a server (the password revealed only into them)."""
    return {
        "host": db.host,
        "port": db.port,
        "user": db.user,
        "passwd": db.password.reveal(),
        "connect_timeout": db.connect_timeout_seconds,
        "read_timeout": read_timeout,
        **tls_options(db),
    }


@dataclass(frozen=True, slots=True)
class LoggedStatement:
    """A statement a server logged as text: the session that ran it (the Query event's thread id), its default
    database, its ``sql_mode`` bits and where its event ends."""

    thread: int
    text: str
    schema: str
    sql_mode: int | None
    end: Position


def logged_statements(
    server: DatabaseConfig, server_id: int, start: Position, until: Position | None = None
) -> list[LoggedStatement]:
    """Every statement ``server`` logged as text from ``start`` to its binlog's end (or to ``until``).

    How a restart tells whether a DDL of its own, interrupted by a kill, ran (:mod:`austasync.ddl_resume`), and
    whether DDL ran on the source while the start-up read its schema (the thread id tells the sessions apart).
    Query events are decoded by :mod:`austasync.binlog.query`, as the stream's are; the rest is stepped over.
    """
    stream = BinLogStreamReader(
        connection_settings=_connection_settings(server, 30.0),
        server_id=server_id,
        resume_stream=True,
        blocking=False,
        log_file=start.file,
        log_pos=start.pos,
        filter_non_implemented_events=False,
        freeze_schema=True,
        is_mariadb=False,  # with True the dump ignores file/pos and starts at the oldest binlog
        enable_logging=False,
        pymysql_wrapper=DriverConnection,
    )
    try:
        if stream.fetchone() is None:  # connects, registers, starts the dump and reads its first (rotate) event
            return []
        return _statements_of(stream, _Library(stream), until)
    finally:
        stream.close()


def _statements_of(stream: Any, lib: _Library, until: Position | None) -> list[LoggedStatement]:
    conn = stream._stream_connection
    rfile, seq = conn._rfile, conn._next_seq_id
    checksum = 4 if lib.use_checksum else 0
    found: list[LoggedStatement] = []
    buf, pos = b"", 0
    while True:
        b, buf, pos, seq = _read_packet(rfile, buf, pos, seq)
        if b[0] != 0:
            if _dump_ended(b):
                return found
            continue
        _, etype, _, _, log_pos = _HEADER(b, 1)
        end = Position(stream.log_file, log_pos)
        if log_pos and until is not None and end > until:
            return found
        if etype == _QUERY and log_pos:
            fields = query_event.decode(b, 20, len(b) - checksum, lib.post_header(_QUERY, 13), f"binlog {end}")
            found.append(LoggedStatement(fields.thread, fields.text, fields.schema, fields.sql_mode, end))
        elif etype == _ROTATE:
            event = lib.event(b)
            if event is not None:
                stream.log_file = event.next_binlog
        elif etype == _FORMAT_DESCRIPTION:
            event = lib.event(b)
            if event is not None:
                lib.set_post_header_lengths(event.post_header_len)


def _lost(detail: str) -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(2013, f"Lost connection to MySQL server during binlog streaming ({detail})")


class BinlogReader:
    """Reads the source binlog from a checkpoint in a background thread into a bounded queue.

    The consumer sees only :mod:`austasync.events`, through :meth:`get`; a failure arrives as :class:`ReaderFailed`.
    The library connects, registers as a replica and reads the first event; from then on this class reads the
    packets itself and decodes the events that make up almost all of a binlog (table maps, rows, GTID, XID),
    handing the others to the library. Events travel in lists: one queue put/get pair per list, not per event
    (the pair costs about as much as decoding a small rows event). A list is handed over before every socket read
    and at :data:`_BATCH_EVENTS` events, so an idle stream delays nothing.
    """

    def __init__(
        self,
        source: DatabaseConfig | None,
        server_id: int,
        tables: Mapping[TableId, Table],
        start: Position,
        *,
        queue_size: int = 20000,
        heartbeat_seconds: float = 1.0,
        read_timeout_seconds: float = 30.0,
        value_tables: Collection[TableId] = (),
        applied_events: int = 0,
        selected: Callable[[str, str], bool] = lambda db, table: False,
        hold_bytes: int | None = None,
    ) -> None:
        self.tables = dict(tables)
        # tables whose rows the applier needs as values (a cascade starts from them); the others arrive as literals
        self.value_tables = frozenset(value_tables)
        self.start_position = start
        # rows events of the first transaction already on the target (a big one split before a restart)
        self.applied_events = applied_events
        self._selected = selected
        self._hold_bytes = hold_bytes
        # every event read, by outcome and rule (austasync.binlog.outcomes); statements are counted by the consumer
        self.tally = outcomes.new_tally()
        # XA transactions prepared while read here that changed no replicated table: their XA COMMIT is harmless
        self._harmless_xa: set[str] = set()
        self.events: queue.Queue[list[Event]] = queue.Queue(maxsize=max(2, queue_size // _BATCH_EVENTS))
        self._stop = threading.Event()
        self._out: list[Event] = []
        self._batch: list[Event] = []  # the list the consumer is taking events from, and how far it got
        self._index = 0
        self._maps: dict[bytes, _TableMap] = {}
        self._maps_by_id: dict[int, _TableMap] = {}
        # no source: a reader for :meth:`replay` only
        self._settings = {} if source is None else _connection_settings(source, read_timeout_seconds)
        self._server_id = server_id
        self._heartbeat = heartbeat_seconds
        self._thread = threading.Thread(target=self._run, name="binlog-reader", daemon=True)
        self._stream: BinLogStreamReader | None = None
        self.last_event_wall = time.time()

    def start(self) -> None:
        # This thread decodes while the applier's thread waits on the target; each answer from the target then
        # waits for the GIL up to the switch interval (5 ms by default) before the applier can send the next
        # statement. Measured on the catch-up benchmark: 12.2 s at 5 ms, 8.4 s at 1 ms, 8.6 s at 0.2 ms.
        sys.setswitchinterval(_SWITCH_INTERVAL)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _interrupt(self._stream)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # --- the consumer's side (the daemon's main thread) ----------------------------------------------------------

    def get(self, timeout: float) -> Event | None:
        """The next event, or None when none arrived within ``timeout`` seconds."""
        index = self._index
        if index < len(self._batch):
            self._index = index + 1
            return self._batch[index]
        try:
            batch = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        self._batch, self._index = batch, 1
        return batch[0]

    def oldest_waiting_timestamp(self) -> float | None:
        """Timestamp of the oldest event read but not yet taken by the consumer (read from any thread)."""
        batch, index = self._batch, self._index
        for event in batch[index:]:
            ts = getattr(event, "timestamp", None)
            if ts:
                return float(ts)
        with self.events.mutex:
            for waiting in self.events.queue:
                for event in waiting:
                    ts = getattr(event, "timestamp", None)
                    if ts:
                        return float(ts)
        return None

    # --- the reader thread ---------------------------------------------------------------------------------------

    def _put(self, event: Event) -> None:
        self._out.append(event)
        self._flush()

    def _flush(self) -> list[Event]:
        """Hand the events read so far to the consumer (blocking while its queue is full); the new pending list."""
        batch, self._out = self._out, []
        if batch:
            self.last_event_wall = time.time()  # liveness of the stream, for the lag computed at scrape time
            while not self._stop.is_set():
                try:
                    self.events.put(batch, timeout=0.2)
                    break
                except queue.Full:
                    continue
        return self._out

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which decides)
            if not self._stop.is_set():
                address = f"{self._settings.get('host')}:{self._settings.get('port')}"
                self._put(ReaderFailed(_translate(exc, self.start_position, address)))

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
            pymysql_wrapper=DriverConnection,
        )
        self._stream = stream
        state = _TxnState(self.start_position, self.tally, self.applied_events)
        if self._hold_bytes is not None:
            state.hold_limit = self._hold_bytes
        try:
            first = stream.fetchone()  # connects, registers, starts the dump and reads its first (rotate) event
            if first is None or self._stop.is_set():
                return
            self._out.extend(self._convert(first, stream, state))
            self._packets(stream, state)
        finally:
            stream.close()

    def replay(self, data: bytes) -> list[Event]:
        """The events of a binlog file's bytes, read offline by the same packet loop as a live dump's.

        For tests with bytes real servers wrote (MySQL's among them, where no MySQL server runs): each event is
        framed as the dump would send it and the loop runs to the end of the file; a stop raises as it would live.
        ``tally`` counts the outcomes as it does live.
        """
        if not data.startswith(b"\xfebin"):
            raise ValueError("not a binlog file (no magic number)")
        stream = BinLogStreamReader(connection_settings={}, server_id=1, filter_non_implemented_events=False)
        events, framed, pos, seq = [], [], 4, 1
        while pos + 19 <= len(data):
            size = int.from_bytes(data[pos + 9 : pos + 13], "little")
            events.append(data[pos : pos + size])
            pos += size
        for event in events:
            framed.append(len(event + b"\0").to_bytes(3, "little") + bytes([seq]) + b"\0" + event)
            seq = (seq + 1) & 0xFF
        framed.append(b"\x05\x00\x00" + bytes([seq]) + b"\xfe\x00\x00\x02\x00")  # the dump's end (EOF)
        dbms = "mysql"
        if events and events[0][4] == _FORMAT_DESCRIPTION:
            fde = events[0]
            # a checksummed file ends each event in a CRC32 of the rest, the format description included
            stream._BinLogStreamReader__use_checksum = zlib.crc32(fde[:-4]) == int.from_bytes(fde[-4:], "little")
            dbms = "mariadb" if b"MariaDB" in fde[21:71] else "mysql"
        stream._stream_connection = SimpleNamespace(_rfile=io.BytesIO(b"".join(framed)), _next_seq_id=1)
        # what the library asks of its control connection while parsing; nothing is queried
        stream._ctl_connection = SimpleNamespace(charset="utf8mb4", _get_dbms=lambda: dbms)
        stream.log_file, stream.log_pos = self.start_position.file, self.start_position.pos
        self.events = queue.Queue()  # nobody consumes while the file is read: unbounded
        state = _TxnState(self.start_position, self.tally, self.applied_events)
        self._packets(stream, state)
        out = [event for batch in self.events.queue for event in batch]
        return [*out, *self._out]

    def _packets(self, stream: Any, state: _TxnState) -> None:  # noqa: PLR0915 (one inlined hot loop)
        """Read the dump's packets from the library's connection and turn them into events until stopped.

        The hot loop of a catch-up: one iteration per binlog event, so the frequent types are handled inline and a
        whole packet's framing and event header are read with one ``struct`` call.
        """
        conn = stream._stream_connection
        rfile, seq = conn._rfile, conn._next_seq_id
        lib = _Library(stream)
        checksum = 4 if lib.use_checksum else 0
        maps_by_id = self._maps_by_id
        frame, rows_kinds, batch = _FRAME, _ROWS_EVENTS, _BATCH_EVENTS
        buf, pos = b"", 0
        out = self._out
        counts = self.tally
        while True:
            if len(buf) - pos >= _FRAME_SIZE:
                header, ok, ts, etype, _, size, log_pos, _, id_low, id_high = frame(buf, pos)
                length = header & 0xFFFFFF
                whole = ok == 0 and length < _MAX_PACKET and pos + 4 + length <= len(buf)
            else:
                whole = False
            if whole:
                if header >> 24 != seq:
                    raise _lost(f"packet sequence number {header >> 24}, expected {seq}")
                seq = (seq + 1) & 0xFF
                b, s = buf, pos + 4
                pos = e = s + length
            else:
                # not all here, or not an event: hand over what is decoded before a read that may block
                out = self._flush()
                if self._stop.is_set():
                    return
                b, buf, pos, seq = _read_packet(rfile, buf, pos, seq)
                s, e = 0, len(b)
                if b[0] != 0:
                    if _dump_ended(b):
                        return
                    continue
                ts, etype, _, size, log_pos = _HEADER(b, 1)
                id_low, id_high = _TABLE_ID(b, 20) if len(b) >= 26 else (0, 0)
            if s + 1 + size != e:
                raise _lost(f"event of {size} bytes in a packet of {e - s - 1}")
            body, body_end = s + 20, e - checksum
            if etype == _TABLE_MAP:
                entry = maps_by_id.get(id_low | id_high << 32)
                # the same table map as last time for this id (the usual case): no parsing, no hashing
                if (
                    entry is None
                    or body_end - body - 6 != len(entry.content)
                    or not b.startswith(entry.content, body + 6)
                ):
                    entry = self._table_map(b, s, e, body, body_end, lib, id_low | id_high << 32)
                if log_pos:  # artificial events (log_pos 0) carry no position
                    counts[_K_TABLE_MAP] += 1
                    state.last_table = entry.label
                    if not state.in_txn and not state.standalone:
                        state.boundary = Position(stream.log_file, log_pos)
                        out.append(Boundary(state.boundary))
                else:
                    counts[_K_ARTIFICIAL] += 1
            elif etype in rows_kinds:
                if log_pos:
                    state.seq += 1
                    entry = maps_by_id.get(id_low | id_high << 32)
                    codec = entry.codec if entry is not None else None
                    if entry is not None and (entry.table is not None or entry.unknown):
                        # the transaction changes a replicated table: what a rollback or an XA PREPARE must know
                        state.replicated += 1
                        state.last_replicated_seq = state.seq
                        counts[_K_ALREADY if state.seq <= state.skip_upto else _K_ROWS] += 1
                    else:
                        counts[_K_NOT_SELECTED] += 1
                    held = state.held
                    if held is not None:
                        state.held_bytes += e - s
                        if state.held_bytes > state.hold_limit:
                            state.spill(out)  # too big to hold: handed over as it comes from now on
                            held = None
                    dest = out if held is None else held
                    chunk = state.chunk
                    if chunk is not None and entry is not None:
                        # inside a transaction: merged into its net images, or (not replicated) only counted
                        if codec is not None and codec.literal:
                            if codec.merge(b, body, body_end, etype, ts, lib, chunk, stream.log_file, log_pos):
                                # a big transaction goes in parts (docs/DESIGN.md#rule-checkpoint)
                                if chunk.events >= _PART_EVENTS:
                                    dest.append(state.part(None, ts))
                                    state.chunk = _Chunk(None, state.seq)
                                continue
                        elif entry.table is None and not entry.unknown:
                            continue
                    event = None
                    if codec is not None and codec.literal:
                        event = codec.literal_rows(b, body, body_end, etype, ts, state.seq, lib)
                    if chunk is not None:
                        # an event that cannot be merged: what is merged so far goes first, then the event on its own
                        dest.append(state.part(None, ts, state.seq - 1))
                        state.chunk = _Chunk(None, state.seq)
                    dest.append(event or self._rows(b, body, body_end, etype, log_pos, ts, stream, state, lib))
                    if not state.in_txn and not state.standalone:
                        state.boundary = Position(stream.log_file, log_pos)
                else:
                    counts[_K_ARTIFICIAL] += 1
            elif etype == _XID:
                if log_pos:
                    counts[_K_TRANSACTION] += 1
                    state.in_txn = False
                    end = Position(stream.log_file, log_pos)
                    state.release(out)
                    out.append(Commit(end, ts) if state.chunk is None else state.part(end, ts))
                    state.chunk, state.merging = None, True
                    if not state.standalone:
                        state.boundary = end
                else:
                    counts[_K_ARTIFICIAL] += 1
            elif etype == _MARIADB_GTID:
                if log_pos:
                    counts[_K_TRANSACTION] += 1
                    if state.in_txn:
                        raise _unended(state, Position(stream.log_file, log_pos))
                    flags = b[body + 12]
                    state.standalone = bool(flags & _FL_STANDALONE)
                    if not state.standalone:
                        self._begin(state)
                        state.xa = bool(flags & _FL_PREPARED_XA)
                else:
                    counts[_K_ARTIFICIAL] += 1
            elif etype == _QUERY and log_pos and _query_text(b, body, body_end, lib) == b"BEGIN":
                counts[_K_TRANSACTION] += 1
                if not state.in_txn:  # MySQL's BEGIN of each transaction; any other statement goes to the library
                    self._begin(state)
            else:
                if state.chunk is not None:
                    state.sink(out).append(state.part(None, ts))
                    state.chunk = None
                self._other(b, s, e, etype, ts, log_pos, stream, state, lib)
                if state.in_txn and state.merging:
                    state.chunk = _Chunk(None, state.seq)
            if len(out) >= batch:
                out = self._flush()

    def _other(
        self, b: bytes, s: int, e: int, etype: int, ts: int, log_pos: int, stream: Any, state: _TxnState, lib: _Library
    ) -> None:
        """An event austasync does not decode itself: the library parses it, :meth:`_convert` classifies it."""
        if etype == _PARTIAL_UPDATE_ROWS:
            self._refuse(etype, Position(stream.log_file, log_pos), state)
        if etype == _PREVIOUS_GTIDS and log_pos:
            # binlog metadata austasync needs nothing of; the library misreads MySQL 9's tagged form, so not parsed
            self._skipped(outcomes.METADATA, Position(stream.log_file, log_pos), state)
            return
        if etype == _QUERY and log_pos:
            # decoded here, not by the library (binlog/query.py says why); BEGIN never gets here (_packets)
            end = Position(stream.log_file, log_pos)
            fields = query_event.decode(b, s + 20, e - (4 if lib.use_checksum else 0), lib.post_header(_QUERY, 13),
                                        f"binlog {end}")  # fmt: skip
            self._out.extend(self._query(fields, end, state, ts))
            state.position = end
            if not state.in_txn and not state.standalone:
                state.boundary = end
            return
        event = lib.event(b[s:e])
        if event is None:
            if etype != _INTVAR:  # the only type the library is told to leave out
                self._refuse(etype, Position(stream.log_file, log_pos), state, "skipped by the binlog library")
            # the auto-increment value of a statement logged as text, which is judged on its own
            self.tally[outcomes.ANNOTATION if log_pos else outcomes.ARTIFICIAL] += 1
            return
        if etype == _ROTATE:
            stream.log_file, stream.log_pos = event.next_binlog, int(event.position)
            if ts != 0:  # a real rotate: the server may reuse table ids in the new file
                self._maps_by_id.clear()
                lib.table_map.clear()
        elif etype == _FORMAT_DESCRIPTION:
            lib.version = event.mysql_version
            lib.set_post_header_lengths(event.post_header_len)
        elif (
            isinstance(event, NotImplementedEvent)
            and etype not in _HARMLESS_UNKNOWN
            and _U16(b, s + 18)[0] & _LOG_EVENT_IGNORABLE_F
            and log_pos
        ):
            self._skipped(_K_IGNORABLE, Position(stream.log_file, log_pos), state)
            return
        self._out.extend(self._convert(event, stream, state))

    def _skipped(self, rule: str, end: Position, state: _TxnState) -> None:
        """An event skipped by ``rule`` without the library's parsing; outside a transaction its end is a boundary."""
        self.tally[rule] += 1
        state.position = end
        if not state.in_txn and not state.standalone:
            state.boundary = end
            self._out.append(Boundary(end))

    def _table_map(self, b: bytes, s: int, e: int, body: int, body_end: int, lib: _Library, table_id: int) -> _TableMap:
        content = b[body + 6 : body_end]  # everything after the table id
        entry = self._maps.get(content)
        if entry is None:
            names = _map_names(b, body + lib.post_header(_TABLE_MAP, 8))
            if names not in self.tables and not self._selected(*names):
                entry = _TableMap.outside(*names, content)
                self._maps_by_id[table_id] = entry
                return entry
            event = lib.event(b[s:e])
            if event is None:
                raise UncarryableValueError("the binlog library skipped a table map; austasync cannot go on")
            entry = _TableMap(event, self.tables, content, self._selected)
            if len(self._maps) > 4096:
                self._maps.clear()  # table maps of long-gone table versions; the current ones come back
            self._maps[content] = entry
        self._maps_by_id[table_id] = entry
        return entry

    def _rows(
        self,
        b: bytes,
        body: int,
        body_end: int,
        etype: int,
        log_pos: int,
        ts: int,
        stream: Any,
        state: _TxnState,
        lib: _Library,
    ) -> Rows | LiteralRows | SkippedRows | UnknownRows:
        """A rows event on the general path: a table's first rows, a table whose rows go as values, a table that
        is not replicated, or a refusal. ``state.seq`` already counts it."""
        low, high = _TABLE_ID(b, body)
        entry = self._maps_by_id.get(low | high << 32)
        if entry is None:
            raise UncarryableValueError(
                f"binlog rows event ending at {stream.log_file}:{log_pos} refers to table id {low | high << 32},"
                " whose table map was not read; austasync cannot tell which table it changes"
            )
        if entry.unknown:
            return UnknownRows(entry.schema, entry.name, state.seq, Position(stream.log_file, log_pos))
        if entry.table is None:
            return SkippedRows(state.seq)  # not replicated: counted, never decoded
        where = f"binlog {stream.log_file}:{log_pos} ({entry.label})"
        codec = entry.codec or self._codec(entry, where)
        kind, rows, _ = codec.decode(b, body, body_end, etype, lib, where)
        if codec.literal:
            return _new_tuple(LiteralRows, (codec.db, codec.name, kind, rows, state.seq, ts))
        end = Position(stream.log_file, log_pos)
        return Rows(codec.db, codec.name, kind, codec.names, tuple(rows), state.seq, end, ts)  # type: ignore[arg-type]

    def _codec(self, entry: _TableMap, where: str) -> _TableCodec:
        """The decoder of a replicated table's map, built on its first rows event (which names it on a refusal)."""
        table = entry.table
        assert table is not None  # noqa: S101 (the caller checked)
        if not entry.named:
            raise UncarryableValueError(
                f"{where}: the table map has no column names; the source needs binlog_row_metadata=FULL"
            )
        entry.codec = _TableCodec(table, entry.specs, where, literal=table.id not in self.value_tables)
        return entry.codec

    def _begin(self, state: _TxnState) -> None:
        """A transaction starts: held from here until it ends."""
        state.begin()
        if state.merging:
            state.chunk = _Chunk(state.boundary, 0)
        else:
            state.sink(self._out).append(Begin(state.boundary))

    def _convert(self, event: Any, stream: Any, state: _TxnState) -> list[Event]:
        end = Position(stream.log_file, int(event.packet.log_pos or 0))
        tally = self.tally
        if isinstance(event, RotateEvent):
            tally[outcomes.METADATA if event.timestamp else outcomes.ARTIFICIAL] += 1
            state.position = Position(event.next_binlog, int(event.position))
            if state.in_txn or state.standalone:
                return []
            state.boundary = state.position
            return [Boundary(state.position)]
        if isinstance(event, HeartbeatLogEvent):
            tally[outcomes.HEARTBEAT] += 1
            return (
                []
                if state.in_txn or state.standalone
                else [Heartbeat(Position(event.ident, int(event.packet.log_pos)))]
            )
        if event.packet.log_pos == 0:
            tally[outcomes.ARTIFICIAL] += 1
            return []  # artificial events (format description on connect) carry no position
        out = self._convert_positioned(event, end, state)
        state.position = end
        if not state.in_txn and not state.standalone:
            state.boundary = end
        return out

    def _convert_positioned(self, event: Any, end: Position, state: _TxnState) -> list[Event]:
        # rows events never get here: _packets decodes them (or refuses partial JSON updates) itself, and XID,
        # MariaDB GTID and BEGIN only come here as the first event of a connection
        ts = int(event.timestamp)
        tally = self.tally
        if isinstance(event, QueryEvent):
            data = event.packet.packet.get_all_data()  # the payload: OK byte, event header, body (event_size)
            fields = query_event.decode(data, 20, 20 + int(event.event_size), 13, f"binlog {end}")
            return self._query(fields, end, state, ts)
        if isinstance(event, XAPrepareEvent):
            return self._xa_prepare(event, end, state, ts)
        if isinstance(event, XidEvent):
            tally[outcomes.TRANSACTION] += 1
            state.in_txn = False
            out: list[Event] = []
            state.release(out)
            return [*out, Commit(end, ts)]
        if isinstance(event, MariadbGtidEvent):
            tally[outcomes.TRANSACTION] += 1
            if state.in_txn:
                raise _unended(state, end)
            state.standalone = bool(event.flags & _FL_STANDALONE)
            if not state.standalone:
                self._begin(state)
                state.xa = bool(event.flags & _FL_PREPARED_XA)
            return []
        if isinstance(event, GtidEvent):
            tally[outcomes.TRANSACTION] += 1
            return []
        rule = _IGNORED.get(type(event))
        if rule is not None:
            tally[rule] += 1
            if isinstance(event, TableMapEvent):
                state.last_table = f"{event.schema}.{event.table}"
            return [] if state.in_txn or state.standalone else [Boundary(end)]
        if isinstance(event, BeginLoadQueryEvent | ExecuteLoadQueryEvent):
            tally[outcomes.STOP] += 1
            raise UncarryableValueError(f"LOAD DATA logged as a statement at {end}: cannot be applied exactly")
        if isinstance(event, NotImplementedEvent) and event.event_type in _HARMLESS_UNKNOWN:
            tally[outcomes.key(_HARMLESS_UNKNOWN[event.event_type])] += 1
            return [] if state.in_txn or state.standalone else [Boundary(end)]
        self._refuse(event.event_type, end, state, type(event).__name__)
        return []  # not reached

    def _refuse(self, event_type: int, end: Position, state: _TxnState, fallback: str = "") -> None:
        self.tally[outcomes.STOP] += 1
        name = _EVENT_NAMES.get(event_type, fallback or f"type {event_type}")
        # the event itself is not decoded; the table map just before it names the table it most likely changes
        table = f" (after the table map of {state.last_table})" if state.in_txn and state.last_table else ""
        raise UncarryableValueError(
            f"binlog event {name} (type {event_type}) ending at {end}{table}: austasync cannot apply it"
            " exactly. Turn off binlog compression (MariaDB log_bin_compress, MySQL binlog_transaction_compression)"
            " and partial JSON updates (binlog_row_value_options) on the source"
        )

    # --- statements logged as text: transaction control is modelled here, the rest judged by the consumer ------

    def _query(self, fields: query_event.QueryFields, end: Position, state: _TxnState, ts: int) -> list[Event]:
        text = fields.text
        sql_mode = fields.sql_mode
        parsed = statements.parse(text, sql_mode)
        if parsed.transaction_control:
            self.tally[outcomes.TRANSACTION] += 1
            out = self._transaction_statement(parsed, text, end, state, ts)
        else:
            statement = Statement(
                query=text.strip(),
                schema=fields.schema,
                start=state.boundary,
                position=end,
                timestamp=ts,
                in_transaction=state.in_txn and not state.standalone,
                sql_mode=sql_mode,
                time_zone=fields.time_zone,
                parsed=parsed,
                exact=fields.exact,
                auto_increment=fields.auto_increment,
                lc_time_names=fields.lc_time_names,
                alter_phase=fields.alter_phase,
                explicit_defaults_for_timestamp=fields.explicit_defaults_for_timestamp,
                default_collation_for_utf8mb4=fields.default_collation_for_utf8mb4,
            )
            if statement.in_transaction:
                state.sink(self._out).append(statement)  # held with the rest of its transaction
                return []
            out = [statement]
        if state.standalone or not state.in_txn:
            state.in_txn = False
            state.standalone = False
        return out

    def _transaction_statement(
        self, parsed: statements.Parsed, text: str, end: Position, state: _TxnState, ts: int
    ) -> list[Event]:
        """BEGIN, COMMIT, ROLLBACK, savepoints and XA, as the server logged them."""
        verb, where = parsed.verb, f"binlog {end}"
        out: list[Event] = []
        if verb in ("BEGIN", "XA START"):
            if not state.in_txn:
                self._begin(state)
            state.xa = state.xa or verb == "XA START"
        elif verb == "COMMIT" or (verb == "XA COMMIT" and state.in_txn):
            # COMMIT ends a transaction that changed a non-transactional table; XA COMMIT ... ONE PHASE inside the
            # transaction's own group is its commit
            state.in_txn = False
            state.release(out)
            out.append(Commit(end, ts))
        elif verb == "ROLLBACK":
            # the source undid the transaction's rows (what stays: non-transactional changes, never replicated)
            state.rollback_to("", where)
            state.in_txn = False
            state.release(out)
            out.append(Commit(end, ts))
        elif not state.in_txn and verb in ("XA COMMIT", "XA ROLLBACK"):
            self._xa_outcome(parsed, text, end)
        elif not state.in_txn:
            raise UncarryableValueError(f"{where}: {text[:200]!r} outside a transaction; austasync cannot model it")
        elif verb == "SAVEPOINT":
            state.savepoint(parsed.savepoint, self._out, ts)
        elif verb == "ROLLBACK TO":
            state.rollback_to(parsed.savepoint, where)
        elif verb == "RELEASE SAVEPOINT":
            state.release_savepoint(parsed.savepoint)
        elif verb != "XA END":  # XA END only closes the XA START ... part; XA PREPARE follows
            raise UncarryableValueError(f"{where}: {text[:200]!r} inside a transaction; austasync cannot model it")
        return out

    def _xa_prepare(self, event: Any, end: Position, state: _TxnState, ts: int) -> list[Event]:
        """An XA transaction's XA PREPARE (or MySQL's XA COMMIT ... ONE PHASE): refused if it changed a replicated
        table, else skipped; nothing of it was handed over, so the checkpoint stays before it."""
        xid = statements.xid_text(bytes(event.xid_gtrid), bytes(event.xid_bqual), int(event.xid_format_id))
        out: list[Event] = []
        if event.one_phase:
            self.tally[outcomes.TRANSACTION] += 1
            state.in_txn = False
            state.release(out)
            return [*out, Commit(end, ts)]
        released = state.held is None or state.released_replicated_seq > 0
        if state.replicated or state.holds_statements() or released:
            self.tally[outcomes.STOP] += 1
            table = f" (it changes {state.last_table})" if state.last_table else ""
            raise UncarryableValueError(
                f"XA transaction {xid} prepared at binlog {end}{table}: austasync does not carry XA transactions on"
                " replicated tables (their rows would have to outlive a restart until XA COMMIT). Nothing of it was"
                " written to the target; the checkpoint is before it. Stop using XA on the replicated tables, then"
                " re-copy with `austasync reset --config FILE --yes` and `austasync run`"
            )
        self.tally[outcomes.key("xa_not_replicated")] += 1
        self._harmless_xa.add(xid)
        state.held = None  # only rows of tables outside the selection: nothing to hand over
        state.release(out)
        state.in_txn = False
        return [Boundary(end)]

    def _xa_outcome(self, parsed: statements.Parsed, text: str, end: Position) -> None:
        """XA COMMIT / XA ROLLBACK of a prepared transaction, logged as a transaction of its own."""
        known = parsed.xid in self._harmless_xa
        self._harmless_xa.discard(parsed.xid)
        if parsed.verb == "XA ROLLBACK" or known:
            return  # its rows were never applied: refused at XA PREPARE, or outside the selection
        self.tally[outcomes.TRANSACTION] -= 1
        self.tally[outcomes.STOP] += 1
        raise UncarryableValueError(
            f"binlog {end}: {text[:200]!r} commits an XA transaction whose XA PREPARE this reader did not see (it was"
            " prepared before the stream's start or before a restart), so its rows may be missing on the target."
            " Verify the tables it changed (`austasync verify`); if it changed replicated tables, re-copy"
        )


def _unended(state: _TxnState, at: Position) -> UncarryableValueError:
    return UncarryableValueError(
        f"the source transaction after {state.boundary} has no end (no COMMIT, XID or XA PREPARE) before the next"
        f" transaction at binlog {at}; austasync cannot tell whether its rows were committed"
    )


def _query_text(b: bytes, body: int, body_end: int, lib: _Library) -> bytes:
    """A query event's statement: after the post-header, the status variables and the default database."""
    db_length = b[body + 8]
    status_length = _U16(b, body + 11)[0]
    return b[body + lib.post_header(_QUERY, 13) + status_length + db_length + 1 : body_end]


def _query_schema(b: bytes, body: int, lib: _Library) -> str:
    """A query event's default database."""
    db_length = b[body + 8]
    start = body + lib.post_header(_QUERY, 13) + _U16(b, body + 11)[0]
    return b[start : start + db_length].decode("utf-8", "replace")


def _map_names(b: bytes, at: int) -> tuple[str, str]:
    """A table map's (schema, table), from its payload at ``at``: a length byte, the name and a NUL, twice."""
    schema_end = at + 1 + b[at]
    table_at = schema_end + 1
    table_end = table_at + 1 + b[table_at]
    return b[at + 1 : schema_end].decode("utf-8", "replace"), b[table_at + 1 : table_end].decode("utf-8", "replace")


def _ensure(rfile: Any, buf: bytes, pos: int, need: int) -> tuple[bytes, int]:
    """``buf[pos:]`` extended by socket reads to at least ``need`` bytes."""
    have = len(buf) - pos
    if have >= need:
        return buf, pos
    parts = [buf[pos:]]
    while have < need:
        try:
            chunk = rfile.read1(max(need - have, _READ_SIZE))
        except OSError as exc:  # a read timeout or a reset: the library's reader raised the same
            raise _lost(str(exc)) from None
        if not chunk:
            raise _lost("the server closed the connection")
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts), 0


def _dump_ended(b: bytes) -> bool:
    """A dump packet that holds no event: the server's error is raised; True at the end of the dump (the server
    closed the stream), False for anything else, which is skipped."""
    if b[0] == 0xFF:
        pymysql.err.raise_mysql_exception(b)
    return b[0] == 0xFE and len(b) < 9


def _read_packet(rfile: Any, buf: bytes, pos: int, seq: int) -> tuple[bytes, bytes, int, int]:
    """One whole packet's payload (joined across 16 MB continuation packets); the buffer, position and sequence."""
    parts = []
    while True:
        buf, pos = _ensure(rfile, buf, pos, 4)
        length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
        if buf[pos + 3] != seq:
            raise _lost(f"packet sequence number {buf[pos + 3]}, expected {seq}")
        seq = (seq + 1) & 0xFF
        buf, pos = _ensure(rfile, buf, pos + 4, length)
        parts.append(buf[pos : pos + length])
        pos += length
        if length < _MAX_PACKET:
            return b"".join(parts), buf, pos, seq


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


def _translate(exc: BaseException, start: Position, address: str | None = None) -> BaseException:
    """Library and driver errors as austasync errors with what to do (``address``: the source's host:port)."""
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
    where = {"server": "source", "address": address, "operation": "binlog stream", "detail": describe_error(exc)}
    if code is not None:
        return UnavailableError(
            f"binlog stream from the source failed: error {code}: {args[1] if len(args) > 1 else ''}", **where
        )
    return UnavailableError(f"binlog stream from the source failed: {type(exc).__name__}: {exc}", **where)


# statements on the target that change no replicated object: not foreign writes (trigger and event DDL are:
# the target must have none before cutover)
# --- target write watcher ---------------------------------------------------------------------------------------


class TargetWriteWatcher:
    """Reads the *target's* binlog and reports what austasync did not write there, as :class:`ForeignWrite`.

    Every austasync write transaction also changes a row of its state schema (the checkpoint or a copy cursor,
    with a fresh ``updated_at``), so a target transaction that changes selected tables without touching the
    state schema was made by someone else: drift by definition (docs/DESIGN.md#rule-foreign-writes). Statements are
    judged by the stream's own classifier (:func:`austasync.foreign.statement_write`), unless austasync itself ran
    that statement (``on_ddl = "exec"``, start-up DDL). ``on_foreign`` is called before the watcher moves past what
    it reports, so a write it saw is recorded before the position it resumes from passes it.

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
        on_foreign: Callable[[ForeignWrite], None],
        *,
        heartbeat_seconds: float = 5.0,
        selected: Callable[[str, str], bool] = lambda db, table: True,
        own_ddl: list[tuple[Position, Position]] | None = None,
    ) -> None:
        self._settings = _connection_settings(target, max(30.0, heartbeat_seconds * 4))
        self._server_id = server_id
        self.position = start
        self.replicated = dict(replicated_dbs)  # database on the target -> source name
        self.state_schema = state_schema
        self.on_foreign = on_foreign
        # DDL austasync ran on the target, by the binlog positions it was logged between (kept in the state)
        # (the end is None while austasync runs one: the watcher may read it before the run returns)
        self.own_ddl: list[tuple[Position, Position | None]] = list(own_ddl or ())
        self._selection = statements.Selection(self.replicated, selected)
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
            filter_non_implemented_events=False,
            freeze_schema=True,
            slave_heartbeat=self._heartbeat,
            is_mariadb=False,  # with True the dump ignores file/pos and starts at the oldest binlog
            enable_logging=False,
            pymysql_wrapper=DriverConnection,
        )
        self._stream = stream
        try:
            first = stream.fetchone()  # connects, registers, starts the dump and reads its first (rotate) event
            if first is None or self._stop.is_set():
                return
            self._packets(stream, _Library(stream))
        finally:
            stream.close()

    def _packets(self, stream: Any, lib: _Library) -> None:
        """Read the dump's packets, looking only at event headers, table names and statements.

        During the copy the target's binlog holds every copied row: parsed by the library, those events cost the
        daemon 1.6 s of CPU per million sysbench rows (measured), taken from the servers on a shared host.
        Here a rows event costs a header read and a dict lookup.
        """
        conn = stream._stream_connection
        rfile, seq = conn._rfile, conn._next_seq_id
        checksum = 4 if lib.use_checksum else 0
        names: dict[int, tuple[str, str]] = {}  # table id -> (schema, table)
        touched: dict[str, int] = {}
        marked = False
        buf, pos = b"", 0
        while not self._stop.is_set():
            b, buf, pos, seq = _read_packet(rfile, buf, pos, seq)
            if b[0] != 0:
                if _dump_ended(b):
                    return
                continue
            ts, etype, _, _, log_pos = _HEADER(b, 1)
            body, body_end = 20, len(b) - checksum
            if etype in _ROWS_EVENTS or etype == _PARTIAL_UPDATE_ROWS:
                low, high = _TABLE_ID(b, body)
                schema, table = names.get(low | high << 32, ("", ""))
                if schema == self.state_schema:
                    marked = True
                elif schema in self.replicated and self._selection.table(schema, table):
                    name = f"{self.replicated[schema]}.{table}"
                    touched[name] = touched.get(name, 0) + 1
            elif etype == _TABLE_MAP:
                low, high = _TABLE_ID(b, body)
                names[low | high << 32] = _map_names(b, body + lib.post_header(_TABLE_MAP, 8))
            elif etype in (_XID, _XA_PREPARE) or (etype in _GTID_EVENTS and touched):
                # a prepared XA transaction ends its rows here; a new transaction's GTID ends whatever came before
                # without an end this loop knows (so it cannot ride along with austasync's next transaction)
                self._transaction_end(touched, marked, Position(stream.log_file, log_pos))
                touched, marked = {}, False
            elif etype in _UNREADABLE:
                raise UncarryableValueError(
                    f"the target's binlog holds {_EVENT_NAMES.get(etype, etype)} events, whose rows this watcher"
                    " cannot see, so foreign writes cannot be ruled out: turn binlog compression off on the target"
                    " (MariaDB log_bin_compress, MySQL binlog_transaction_compression)"
                )
            elif etype == _QUERY:
                text = _query_text(b, body, body_end, lib).decode("utf-8", "replace").strip()
                if text.upper() == "COMMIT":
                    self._transaction_end(touched, marked, Position(stream.log_file, log_pos))
                    touched, marked = {}, False
                else:
                    self._statement(text, _query_schema(b, body, lib), Position(stream.log_file, log_pos))
            elif etype == _ROTATE:
                event = lib.event(b)
                if event is not None:
                    stream.log_file = event.next_binlog
                if ts != 0:
                    names.clear()  # a real rotate: the server may reuse table ids in the new file
            elif etype == _FORMAT_DESCRIPTION:
                event = lib.event(b)
                if event is not None:
                    lib.set_post_header_lengths(event.post_header_len)

    def _transaction_end(self, touched: dict[str, int], marked: bool, end: Position) -> None:
        if touched and not marked:
            self.on_foreign(foreign.rows_write(end, touched))
        self.position = end

    def _statement(self, text: str, schema: str, end: Position) -> None:
        """A statement on the target, judged as the stream judges the source's: reported unless it provably
        touches no selected object or austasync ran it."""
        if not any(first < end and (last is None or end <= last) for first, last in list(self.own_ddl)):
            write = foreign.statement_write(text, schema, self._selection, self.replicated, end)
            if write is not None:
                self.on_foreign(write)
        # the position stays at the last transaction end: a resume re-reads the statement, and the record of a
        # foreign write is keyed by its position, so it is not counted twice

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
