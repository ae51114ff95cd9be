"""Query events decoded from their bytes: the statement's own bytes and every status variable, or a refusal.

The binlog library decodes a Query event's statement as UTF-8 with ``backslashreplace`` whatever the session's
``character_set_client`` was, drops most of the session state a DDL depends on, and raises on a status variable
it does not know (MariaDB's ``Q_GTID_FLAGS3`` of ``binlog_alter_two_phase``), which ended the stream with an
unrelated "unavailable" exit. Here each status variable is read by its known length or refused by its key: one
whose length is unknown cannot be stepped over, and one whose meaning is unknown could change what the statement
does (docs/DESIGN.md#rule-ddl).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pymysql

from austasync.errors import UncarryableValueError

_U16, _U32 = struct.Struct("<H").unpack_from, struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from

# MariaDB's Q_GTID_FLAGS3 bits: binlog_alter_two_phase's phases, and a statement on more than one engine
_MULTI_ENGINE, _START_ALTER, _COMMIT_ALTER, _ROLLBACK_ALTER = 1, 2, 4, 8
_PHASES = {_START_ALTER: "start", _COMMIT_ALTER: "commit", _ROLLBACK_ALTER: "rollback"}
_UTF8_CHARSETS = frozenset({"utf8", "utf8mb3", "utf8mb4"})


@dataclass(frozen=True, slots=True)
class QueryFields:
    """A Query event: who ran the statement, where, its bytes and the session state it carries."""

    thread: int
    schema: str
    statement: bytes
    sql_mode: int | None = None
    auto_increment: tuple[int, int] | None = None  # auto_increment_increment, auto_increment_offset
    client_collation: int | None = None  # character_set_client, as a collation id
    time_zone: str | None = None
    lc_time_names: int | None = None  # a locale number; 0 is en_US
    explicit_defaults_for_timestamp: int | None = None  # MySQL 8 logs it
    default_collation_for_utf8mb4: int | None = None  # MySQL 8, when the session's is not utf8mb4_0900_ai_ci
    alter_phase: str | None = None  # MariaDB binlog_alter_two_phase: "start", "commit" or "rollback"

    @property
    def text(self) -> str:
        """The statement as text for classification: the library's decoding, so judgements are unchanged."""
        return self.statement.decode("utf-8", "backslashreplace")

    @property
    def exact(self) -> bool:
        """Whether :attr:`text` is the statement the source ran: ASCII (the same bytes in every client character
        set), or UTF-8 bytes from a UTF-8 client. A ``latin1`` session's ``DEFAULT 'ção'`` is neither."""
        if self.statement.isascii():
            return True
        if charset_of(self.client_collation) not in _UTF8_CHARSETS:
            return False
        try:
            self.statement.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True


def collation_names(collation: int | None) -> tuple[str, str] | None:
    """(character set, collation) of a collation id, or None when the id is None or unknown to the driver's table
    (MariaDB 11's uca1400 ids): then what it means cannot be told."""
    if collation is None:
        return None
    try:
        found = pymysql.charset.charset_by_id(collation)
    except KeyError:
        return None
    # the driver's stubs lack the attributes
    return str(getattr(found, "name", "")), str(getattr(found, "collation", ""))


def charset_of(collation: int | None) -> str | None:
    names = collation_names(collation)
    return names[0] if names else None


def decode(b: bytes, body: int, body_end: int, post_header: int, where: str) -> QueryFields:
    """The Query event whose body is ``b[body:body_end]`` (checksum excluded); ``post_header`` is its declared
    post-header length (13 on every server austasync knows)."""
    thread = _U32(b, body)[0]
    schema_length = b[body + 8]
    status_length = _U16(b, body + 11)[0]
    at = body + post_header
    fields = _status(b, at, at + status_length, where)
    schema_at = at + status_length
    schema = b[schema_at : schema_at + schema_length].decode("utf-8", "replace")
    statement = b[schema_at + schema_length + 1 : body_end]
    return QueryFields(thread, schema, statement, **fields)  # type: ignore[arg-type]


# status variables austasync steps over, by key: their fixed length
_SKIPPED = {
    0x00: 4,  # Q_FLAGS2_CODE: autocommit, foreign_key_checks, unique_checks, sql_auto_is_null
    0x08: 2,  # Q_CHARSET_DATABASE_CODE
    0x09: 8,  # Q_TABLE_MAP_FOR_UPDATE_CODE
    0x0A: 4,  # Q_MASTER_DATA_WRITTEN_CODE
    0x0D: 3,  # Q_MICROSECONDS
    0x11: 8,  # Q_DDL_LOGGED_WITH_XID
    0x13: 1,  # Q_SQL_REQUIRE_PRIMARY_KEY
    0x14: 1,  # Q_DEFAULT_TABLE_ENCRYPTION
    0x80: 3,  # MariaDB's Q_HRNOW
    0x81: 8,  # MariaDB's Q_XID
}


def _status(b: bytes, at: int, end: int, where: str) -> dict[str, object]:
    """The status variables between ``at`` and ``end``, by key; an unknown key is refused."""
    out: dict[str, object] = {}
    while at < end:
        key = b[at]
        at += 1
        if key in _SKIPPED:
            at += _SKIPPED[key]
            continue
        reader = _READERS.get(key)
        if reader is None:
            raise UncarryableValueError(
                f"{where}: a Query event with status variable {key} (0x{key:02x}), which austasync does not know;"
                " it cannot tell the statement's session state, so it cannot judge or run it"
            )
        if at >= end:  # its value is missing
            raise _overrun(where)
        at = reader(b, at, end, out, where)
    if at != end:
        raise _overrun(where)
    return out


def _overrun(where: str) -> UncarryableValueError:
    return UncarryableValueError(f"{where}: a Query event's status variables overrun their length (corrupt?)")


def _sql_mode(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    out["sql_mode"] = _U64(b, at)[0]
    return at + 8


def _auto_increment(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    out["auto_increment"] = (_U16(b, at)[0], _U16(b, at + 2)[0])
    return at + 4


def _charset(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    out["client_collation"] = _U16(b, at)[0]  # then collation_connection and collation_server
    return at + 6


def _time_zone(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    out["time_zone"] = b[at + 1 : at + 1 + b[at]].decode("ascii", "replace")
    return at + 1 + b[at]


def _catalog(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    return at + 1 + b[at] + 1  # MySQL 5.0's Q_CATALOG_CODE: length, name, NUL


def _counted(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    return at + 1 + b[at]  # Q_CATALOG_NZ_CODE: length, name


def _lc_time_names(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    out["lc_time_names"] = _U16(b, at)[0]
    return at + 2


def _invoker(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    at += 1 + b[at]  # user
    return at + 1 + b[at]  # host


def _updated_dbs(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    count = b[at]  # then NUL-ended names; 254 means none are listed
    at += 1
    for _ in range(count if count != 254 else 0):
        at = b.index(b"\0", at, end) + 1
    return at


def _explicit_defaults(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    out["explicit_defaults_for_timestamp"] = b[at]  # MySQL 8 logs the session's value
    return at + 1


def _utf8mb4_collation(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    out["default_collation_for_utf8mb4"] = _U16(b, at)[0]  # what CHARSET utf8mb4 without COLLATE means
    return at + 2


def _flags3(b: bytes, at: int, end: int, out: dict[str, object], where: str) -> int:
    # MariaDB's Q_GTID_FLAGS3; after a COMMIT or ROLLBACK ALTER, the START ALTER's sequence number
    out["alter_phase"] = _phase(b[at], where)
    return at + 1 + (8 if b[at] & (_COMMIT_ALTER | _ROLLBACK_ALTER) else 0)


_READERS = {
    0x01: _sql_mode,
    0x02: _catalog,
    0x03: _auto_increment,
    0x04: _charset,
    0x05: _time_zone,
    0x06: _counted,
    0x07: _lc_time_names,
    0x0B: _invoker,
    0x0C: _updated_dbs,
    0x10: _explicit_defaults,
    0x12: _utf8mb4_collation,
    0x82: _flags3,
}


def _phase(flags: int, where: str) -> str | None:
    phases = [phase for bit, phase in _PHASES.items() if flags & bit]
    if flags & ~(_MULTI_ENGINE | _START_ALTER | _COMMIT_ALTER | _ROLLBACK_ALTER) or len(phases) > 1:
        raise UncarryableValueError(
            f"{where}: a Query event with MariaDB GTID flags 0x{flags:02x}, which austasync does not know; it cannot"
            " tell whether the statement changed the source"
        )
    return phases[0] if phases else None
