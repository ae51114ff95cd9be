"""Rows events decoded straight from the binlog bytes, one compiled decoder per distinct table map.

python-mysql-replication decodes rows through a per-column ``if/elif`` dispatcher, a dict per row and a
``none_sources`` dict per row: measured here, catching up a sysbench backlog spent far more time there and in
re-parsing identical table maps than applying it. :mod:`austasync.binlog.adapter` keeps the library for the
connection, the protocol and the rare events, and hands rows events to this module, which does not import the
library.

For each table map a Python function is generated and compiled once: the columns are unrolled, fixed-width values
are read with ``struct``, and a row of a table that no cascade starts from is rendered directly as the SQL
literals the applier writes (its key literals and its ``(v1,v2,...)`` row literal), so no per-value Python object
travels further than this module. A table that cascades keeps Python values, which the applier's cascade code
compares and matches (:class:`RowsDecoder` ``literal=False``).

Exactness (docs/DESIGN.md#rule-values) is that of the decoders this replaces: each value is read as the server
packed it (sql/field.cc, mysys/my_time.c, strings/decimal.c) and rendered by the same rules as
:func:`austasync.sql.value_literal`:

- temporal values become the text the server prints, zero and partial-zero dates included; TIME is one signed
  fixed-point number (the fraction shares the sign); TIMESTAMP 0 without a fraction is the zero TIMESTAMP;
- strings, BLOBs and MariaDB JSON stay raw bytes, written with the column's charset introducer (or ``_binary``);
  BINARY(n) and MariaDB's UUID/INET types are padded back to n (the binlog strips trailing zero bytes);
- ENUM and SET are carried by index / bit mask; ENUM index 0 stops;
- YEAR 0 is 0000; BIT is the unsigned big-endian number; DECIMAL is built from its digits; FLOAT and DOUBLE are
  read with ``struct`` and written with ``repr()`` + ``e0``; MySQL binary JSON becomes JSON text that parses back
  to the same document, and what has no such text stops.

A failure of the fast function is diagnosed by running the same snippets column by column, so the stop names the
column and says whether decoding, adaptation or rendering refused the value.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from austasync.errors import UncarryableValueError
from austasync.schema import Column
from austasync.sql import SPECIAL_BYTES, Kind, quoted, value_literal

# binlog column types (include/mysql_com.h enum_field_types)
DECIMAL, TINY, SHORT, LONG, FLOAT, DOUBLE, NULL, TIMESTAMP, LONGLONG, INT24 = range(10)
DATE, TIME, DATETIME, YEAR, NEWDATE, VARCHAR, BIT, TIMESTAMP2, DATETIME2, TIME2 = range(10, 20)
JSON, NEWDECIMAL, ENUM, SET = 245, 246, 247, 248
BLOB, VAR_STRING, STRING, GEOMETRY = 252, 253, 254, 255

# rows event types: v1 (MariaDB, MySQL 5.1-5.5 style) and v2 (MySQL 5.6+)
WRITE_ROWS = {23: "insert", 30: "insert"}
UPDATE_ROWS = {24: "update", 31: "update"}
DELETE_ROWS = {25: "delete", 32: "delete"}
ROWS_EVENTS = {**WRITE_ROWS, **UPDATE_ROWS, **DELETE_ROWS}
ROWS_V2 = {30, 31, 32}


@dataclass(frozen=True)
class ColumnSpec:
    """One column as the table map describes it (type and the metadata its binlog form depends on)."""

    name: str
    type: int
    unsigned: bool = False
    max_length: int = 0  # VARCHAR / STRING: a length prefix of 2 bytes above 255
    length_size: int = 0  # BLOB, GEOMETRY, JSON: bytes of the length prefix
    fsp: int = 0  # TIME2, DATETIME2, TIMESTAMP2
    precision: int = 0  # NEWDECIMAL
    decimals: int = 0
    size: int = 0  # ENUM / SET: bytes of the index / mask; BIT: bytes of the value


class ValueStop(Exception):
    """A value this module refuses; the reader adds the table and the binlog position to ``message``."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(f"column {column}: {message}")
        self.column = column
        self.message = message


# --- value helpers (each mirrors the server's packing) ------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1)
_DATETIMEF_INT_OFS = 0x8000000000
_TIMEF_INT_OFS = 0x800000
_s16 = struct.Struct("<h").unpack_from
_u16 = struct.Struct("<H").unpack_from
_s32 = struct.Struct("<i").unpack_from
_u32 = struct.Struct("<I").unpack_from
_s64 = struct.Struct("<q").unpack_from
_u64 = struct.Struct("<Q").unpack_from
_f32 = struct.Struct("<f").unpack_from
_f64 = struct.Struct("<d").unpack_from
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def _frac(b: bytes, p: int, size: int) -> int:
    """The unsigned big-endian fractional part of ``size`` bytes, in microseconds."""
    if size == 0:
        return 0
    micro: int = int.from_bytes(b[p : p + size], "big") * 10 ** (6 - 2 * size)
    if micro >= 1_000_000:
        raise ValueError(f"fractional part {micro} out of range")
    return micro


def _hms(packed: int) -> str:
    return f"{(packed >> 12) & 0x3FF:02d}:{(packed >> 6) & 0x3F:02d}:{packed & 0x3F:02d}"


def _datetime2(b: bytes, p: int, size: int) -> str:
    # 1 bit sign (always set), 17 bits year*13+month, 5 day, 5 hour, 6 minute, 6 second; then the fraction
    intpart = int.from_bytes(b[p : p + 5], "big") - _DATETIMEF_INT_OFS
    micro = _frac(b, p + 5, size)
    if intpart < 0:
        raise ValueError("negative DATETIME")
    ymd, year_month = intpart >> 17, intpart >> 22
    return f"{year_month // 13:04d}-{year_month % 13:02d}-{ymd & 0x1F:02d} {_hms(intpart & 0x1FFFF)}.{micro:06d}"


def _time2(b: bytes, p: int, size: int) -> str:
    # The integer and fractional parts form one big-endian fixed-point number offset by 0x800000 << frac bits
    # (my_time_packed_to_binary): a negative value is the negation of the whole, fraction included. The library
    # read the fraction as a separate signed number, so -00:00:01.25 came out as -1.75 s.
    bits = 8 * size
    value = int.from_bytes(b[p : p + 3 + size], "big") - (_TIMEF_INT_OFS << bits)
    sign = "-" if value < 0 else ""
    value = abs(value)
    micro = (value & ((1 << bits) - 1)) * 10 ** (6 - 2 * size) if size else 0
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


def _timestamp2(b: bytes, p: int, size: int) -> str:
    # unsigned: MariaDB 11.5+ extends TIMESTAMP to 2106
    return _timestamp_text(int.from_bytes(b[p : p + 4], "big"), _frac(b, p + 4, size))


def _datetime_old(value: int) -> str:
    date, time = divmod(value, 1_000_000)  # YYYYMMDDhhmmss as a decimal number
    return (
        f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d}"
        f" {time // 10000:02d}:{time // 100 % 100:02d}:{time % 100:02d}"
    )


def _time_old(b: bytes, p: int) -> str:
    value = int.from_bytes(b[p : p + 3], "little", signed=True)  # +-HHMMSS as a decimal number
    sign = "-" if value < 0 else ""
    value = abs(value)
    return f"{sign}{value // 10000:02d}:{value // 100 % 100:02d}:{value % 100:02d}"


def decimal_size(precision: int, decimals: int) -> int:
    integral = precision - decimals
    return _DIG2BYTES[integral % 9] + 4 * (integral // 9) + 4 * (decimals // 9) + _DIG2BYTES[decimals % 9]


def _decimal(b: bytes, p: int, precision: int, decimals: int) -> decimal.Decimal:
    """strings/decimal.c bin2decimal: groups of 9 digits in 4 big-endian bytes, the leading and trailing partial
    groups in fewer; the first bit is the sign, and a negative number is stored with every bit inverted."""
    integral = precision - decimals
    lead, full_int, full_frac, trail = integral % 9, integral // 9, decimals // 9, decimals % 9
    raw = bytearray(b[p : p + decimal_size(precision, decimals)])
    negative = not raw[0] & 0x80
    raw[0] ^= 0x80
    if negative:
        raw = bytearray(x ^ 0xFF for x in raw)
    pos = 0
    size = _DIG2BYTES[lead]
    parts = ["-"] if negative else []
    if size:
        parts.append(str(int.from_bytes(raw[pos : pos + size], "big")))
        pos += size
    for _ in range(full_int):
        parts.append(f"{int.from_bytes(raw[pos : pos + 4], 'big'):09d}")
        pos += 4
    parts.append(".")
    for _ in range(full_frac):
        parts.append(f"{int.from_bytes(raw[pos : pos + 4], 'big'):09d}")
        pos += 4
    size = _DIG2BYTES[trail]
    if size:
        parts.append(f"{int.from_bytes(raw[pos : pos + size], 'big'):0{trail}d}")
    # "123." and ".5" are what the library built too; Decimal reads both, and format(..., "f") prints 123 and 0.5
    return decimal.Decimal("".join(parts))


# --- MySQL binary JSON -------------------------------------------------------------------------------------------


def json_text(raw: bytes) -> str:
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


# --- literals (the rules of sql.value_literal, for the Python type each binlog type decodes to) ------------------

# the bytes sql.quoted rewrites; a non-empty value without any (most values) is its latin1 text as is. Checked by
# deleting them and comparing lengths: 0.3 us for 120 bytes, against 0.9 us for a regex search (measured here)
_SPECIAL = SPECIAL_BYTES


def _float_literal(value: float) -> str:
    return value_literal(value, Kind.DOUBLE, "")


class _Enum0(ValueError):
    pass


_ENUM0_MESSAGE = (
    "ENUM holds the invalid-value index 0 (''), which a strict session cannot write; fix the row on the source"
    " (UPDATE it to a valid label or NULL)"
)


# --- code generation ---------------------------------------------------------------------------------------------

_INT_TYPES = {TINY, SHORT, INT24, LONG, LONGLONG, YEAR, ENUM, SET, BIT}
_BYTES_TYPES = {VARCHAR, STRING, BLOB, GEOMETRY}
_TEMPORAL_TYPES = {DATE, TIME2, DATETIME2, TIMESTAMP2, TIMESTAMP, DATETIME, TIME}


def _length_prefix(size: int) -> list[str]:
    if size == 1:
        return ["n = b[p]"]
    if size == 2:
        return ["n = b[p] | b[p + 1] << 8"]
    if size == 3:
        return ["n = b[p] | b[p + 1] << 8 | b[p + 2] << 16"]
    return [f"n = int.from_bytes(b[p:p + {size}], 'little')"]


def _decode_lines(spec: ColumnSpec, v: str) -> list[str]:
    """Statements that read one non-NULL value at ``b[p]`` into ``v`` and advance ``p``."""
    t = spec.type
    if t == TINY:
        return [f"{v} = b[p]" if spec.unsigned else f"{v} = (b[p] ^ 128) - 128", "p += 1"]
    if t == SHORT:
        return [f"{v} = {'_u16' if spec.unsigned else '_s16'}(b, p)[0]", "p += 2"]
    if t == INT24:
        raw = "(b[p] | b[p + 1] << 8 | b[p + 2] << 16)"
        return [f"{v} = {raw}" if spec.unsigned else f"{v} = ({raw} ^ 0x800000) - 0x800000", "p += 3"]
    if t == LONG:
        return [f"{v} = {'_u32' if spec.unsigned else '_s32'}(b, p)[0]", "p += 4"]
    if t == LONGLONG:
        return [f"{v} = {'_u64' if spec.unsigned else '_s64'}(b, p)[0]", "p += 8"]
    if t == FLOAT:
        return [f"{v} = _f32(b, p)[0]", "p += 4"]
    if t == DOUBLE:
        return [f"{v} = _f64(b, p)[0]", "p += 8"]
    if t == YEAR:
        # 0 is YEAR 0000, not 1900 (which YEAR cannot hold)
        return [f"{v} = b[p]", f"{v} = {v} + 1900 if {v} else 0", "p += 1"]
    if t == NEWDECIMAL:
        size = decimal_size(spec.precision, spec.decimals)
        return [f"{v} = _decimal(b, p, {spec.precision}, {spec.decimals})", f"p += {size}"]
    if t in (VARCHAR, STRING):
        prefix = 2 if spec.max_length > 255 else 1
        return [*_length_prefix(prefix), f"{v} = b[p + {prefix}:p + {prefix} + n]", f"p += {prefix} + n"]
    if t in (BLOB, GEOMETRY, JSON):
        ls = spec.length_size
        if not 1 <= ls <= 4:
            return [f"raise ValueError('length prefix of {ls} bytes')"]
        return [*_length_prefix(ls), f"{v} = b[p + {ls}:p + {ls} + n]", f"p += {ls} + n"]
    if t == DATE:
        return [
            "n = b[p] | b[p + 1] << 8 | b[p + 2] << 16",
            f"{v} = f'{{n >> 9:04d}}-{{(n >> 5) & 15:02d}}-{{n & 31:02d}}'",
            "p += 3",
        ]
    if t in (DATETIME2, TIME2, TIMESTAMP2):
        size = (spec.fsp + 1) // 2
        func, width = {DATETIME2: ("_datetime2", 5), TIME2: ("_time2", 3), TIMESTAMP2: ("_timestamp2", 4)}[t]
        return [f"{v} = {func}(b, p, {size})", f"p += {width + size}"]
    if t == TIMESTAMP:
        return [f"{v} = _timestamp_text(_u32(b, p)[0], 0)", "p += 4"]
    if t == DATETIME:
        return [f"{v} = _datetime_old(_u64(b, p)[0])", "p += 8"]
    if t == TIME:
        return [f"{v} = _time_old(b, p)", "p += 3"]
    if t in (ENUM, SET):
        if spec.size == 1:
            return [f"{v} = b[p]", "p += 1"]
        if spec.size == 2:
            return [f"{v} = _u16(b, p)[0]", "p += 2"]
        return [f"{v} = int.from_bytes(b[p:p + {spec.size}], 'little')", f"p += {spec.size}"]
    if t == BIT:
        return [f"{v} = int.from_bytes(b[p:p + {spec.size}], 'big')", f"p += {spec.size}"]
    return [f"raise ValueError('unknown MySQL column type {t}')"]


_FIXED_WIDTH = {
    TINY: 1,
    SHORT: 2,
    INT24: 3,
    LONG: 4,
    LONGLONG: 8,
    FLOAT: 4,
    DOUBLE: 8,
    YEAR: 1,
    DATE: 3,
    TIMESTAMP: 4,
    DATETIME: 8,
    TIME: 3,
}


def _skip_lines(spec: ColumnSpec, column: Column) -> list[str] | None:
    """Statements stepping over a non-NULL value whose decoding and adaptation cannot fail, or None.

    Temporal types with fractions, DECIMAL, JSON and ENUM (index 0) can refuse a value, so they are always
    decoded: a before image stops the stream exactly as before.
    """
    if column.kind is Kind.ENUM:
        return None
    t = spec.type
    if t in _FIXED_WIDTH:
        return [f"p += {_FIXED_WIDTH[t]}"]
    if t in (SET, BIT):
        return [f"p += {spec.size}"]
    if t in (VARCHAR, STRING):
        prefix = 2 if spec.max_length > 255 else 1
        return [*_length_prefix(prefix), f"p += {prefix} + n"]
    if t in (BLOB, GEOMETRY) and 1 <= spec.length_size <= 4:
        return [*_length_prefix(spec.length_size), f"p += {spec.length_size} + n"]
    return None


def _adapt_lines(spec: ColumnSpec, column: Column, v: str) -> list[str]:
    """Statements turning a decoded value into the one written: the checks and fixes of the binlog's form."""
    if column.kind is Kind.ENUM:
        # index 0 is the '' a non-strict source stores for an invalid value; a strict target refuses it
        return [f"if {v} == 0: raise _Enum0()"]
    length = column.binary_length
    if length is not None and spec.type in _BYTES_TYPES:
        # the binlog strips BINARY(n)'s trailing zero bytes; the column always holds n bytes
        return [f"{v} = {v}.ljust({length}, b'\\x00')"]
    if spec.type == JSON:
        return [f"{v} = _json_text({v})"]
    return []


def _literal_expr(spec: ColumnSpec, column: Column, v: str) -> str:
    """The literal of the (adapted) value, as :func:`austasync.sql.value_literal` writes it."""
    t, kind = spec.type, column.kind
    if t in _INT_TYPES:
        return f"str({v})"  # ENUM index 0 never gets here
    if t == NEWDECIMAL:
        return f"format({v}, 'f')"  # plain notation: an exponent would make the server parse a DOUBLE
    if t in (FLOAT, DOUBLE):
        return f"_float_literal({v})"
    if t in _BYTES_TYPES:
        introducer = f"_{column.charset}" if kind is Kind.TEXT else "_binary"
        plain = f"{introducer!r} + \"'\" + {v}.decode('latin1') + \"'\""
        return f"({plain} if {v} and len({v}.translate(None, _SPECIAL)) == len({v}) else _quoted({v}, {introducer!r}))"
    if t in _TEMPORAL_TYPES and kind is Kind.TEMPORAL:
        return f'"\'" + {v} + "\'"'  # the decoders' text has only digits, '-', ':', '.' and ' '
    return f"_value_literal({v}, _KIND_{kind.name}, {column.charset!r})"


class _Truncated(ValueError):
    pass


_NAMESPACE: dict[str, Any] = {
    "_Truncated": _Truncated,
    "_s16": _s16,
    "_u16": _u16,
    "_s32": _s32,
    "_u32": _u32,
    "_s64": _s64,
    "_u64": _u64,
    "_f32": _f32,
    "_f64": _f64,
    "_decimal": _decimal,
    "_datetime2": _datetime2,
    "_time2": _time2,
    "_timestamp2": _timestamp2,
    "_timestamp_text": _timestamp_text,
    "_datetime_old": _datetime_old,
    "_time_old": _time_old,
    "_json_text": json_text,
    "_SPECIAL": _SPECIAL,
    "_quoted": quoted,
    "_float_literal": _float_literal,
    "_value_literal": value_literal,
    "_Enum0": _Enum0,
    **{f"_KIND_{k.name}": k for k in Kind},
}


class RowsDecoder:
    """Decodes the rows of one table map's events into what the applier consumes.

    ``literal=True``: each row is ``(old key, new key, new row literal)``, the keys as tuples of key-column literals
    (None where the event has no such image), the row literal over the writable columns. ``literal=False``: each
    row is ``(before, after)``, tuples of values in the table's column order, as :mod:`austasync.events` ``Rows``.
    """

    def __init__(self, specs: Sequence[ColumnSpec], columns: Sequence[Column], key: Sequence[str], *, literal: bool):
        if len(specs) != len(columns):
            raise ValueError("table map and schema differ in their number of columns")
        names = [c.name for c in columns]
        self.specs = tuple(specs)
        self.columns = tuple(columns)
        self.literal = literal
        self.ncols = len(specs)
        self.null_bytes = (self.ncols + 7) // 8
        self.full_bitmap = _full_bitmap(self.ncols)
        self.key_idx = tuple(names.index(k) for k in key)
        self.write_idx = tuple(i for i, c in enumerate(columns) if not c.generated)
        namespace = dict(_NAMESPACE)
        exec(compile(self._source(), f"<rows decoder {','.join(names)[:80]}>", "exec"), namespace)  # noqa: S102 (source built above from column metadata only)
        # the reader calls these directly in its hot loop, and :meth:`decode` only to name a failing column
        self.functions: dict[str, Callable[[bytes, int, int], list[Any]]] = {
            "insert": namespace["rows_insert"],
            "delete": namespace["rows_delete"],
            "update": namespace["rows_update"],
        }
        # merging into a transaction's images mutates them as it goes: a failure leaves them unusable, and the
        # caller must stop (it does: the diagnosis raises)
        self.into: dict[str, Callable[[bytes, int, int, dict[Any, Any]], tuple[int, int]]] = (
            {k: namespace[f"into_{k}"] for k in ("insert", "delete", "update")} if literal else {}
        )
        self._steps: list[tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = [
            (namespace[f"d{i}"], namespace[f"a{i}"], namespace[f"l{i}"]) for i in range(self.ncols)
        ]

    # --- generated source --------------------------------------------------------------------------------------

    def _image(self, indent: str, *, render: str) -> list[str]:
        """Statements decoding one row image at ``b[p]``; ``render``: "row" (key + row literal), "key", "values"."""
        nb = self.null_bytes
        nulls = "b[p]" if nb == 1 else f"int.from_bytes(b[p:p + {nb}], 'little')"
        out = [f"nulls = {nulls}", f"p += {nb}"]
        wanted = set(range(self.ncols))
        if render == "key":
            wanted = set(self.key_idx)
        elif render == "row":
            wanted = set(self.key_idx) | set(self.write_idx)
        fast, slow = [], []
        for i, (spec, column) in enumerate(zip(self.specs, self.columns, strict=True)):
            skip = _skip_lines(spec, column) if render == "key" and i not in wanted else None
            if skip is not None:
                # a before image needs its key only; a value that cannot fail to decode is stepped over
                fast += skip
                slow.append(f"if not nulls & {1 << i}:")
                slow += ["    " + line for line in skip]
                continue
            body = _decode_lines(spec, f"v{i}") + _adapt_lines(spec, column, f"v{i}")
            lit = [f"l{i} = {_literal_expr(spec, column, f'v{i}')}"] if render != "values" and i in wanted else []
            fast += body + lit
            slow.append(f"if nulls & {1 << i}:")
            slow.append(f"    v{i} = None" + ("; l" + str(i) + " = 'NULL'" if lit else ""))
            slow.append("else:")
            slow += ["    " + line for line in body + lit]
        out.append("if nulls == 0:")
        out += ["    " + line for line in fast]
        out.append("else:")
        out += ["    " + line for line in slow]
        out.append("if p > end: raise _Truncated()")
        return [indent + line for line in out]

    def _key(self) -> str:
        return "(" + "".join(f"l{i}, " for i in self.key_idx) + ")"

    def _row(self) -> str:
        return 'f"(' + ",".join(f"{{l{i}}}" for i in self.write_idx) + ')"'

    def _values(self) -> str:
        return "(" + "".join(f"v{i}, " for i in range(self.ncols)) + ")"

    def _source(self) -> str:
        ind = "        "
        lines: list[str] = []
        for kind in ("insert", "delete", "update"):
            lines += [f"def rows_{kind}(b, p, end):", "    out = []", "    append = out.append", "    while p < end:"]
            if self.literal:
                if kind in ("delete", "update"):
                    lines += self._image(ind, render="key")
                    lines.append(f"{ind}old = {self._key()}")
                if kind in ("insert", "update"):
                    lines += self._image(ind, render="row")
                    lines.append(f"{ind}new = {self._key()}")
                    lines.append(f"{ind}row = {self._row()}")
                lines.append(
                    {
                        "insert": f"{ind}append((None, new, row))",
                        "delete": f"{ind}append((old, None, None))",
                        "update": f"{ind}append((old, new, row))",
                    }[kind]
                )
            else:
                if kind in ("delete", "update"):
                    lines += self._image(ind, render="values")
                    lines.append(f"{ind}before = {self._values()}")
                if kind in ("insert", "update"):
                    lines += self._image(ind, render="values")
                    lines.append(f"{ind}after = {self._values()}")
                lines.append(
                    {
                        "insert": f"{ind}append((None, after))",
                        "delete": f"{ind}append((before, None))",
                        "update": f"{ind}append((before, after))",
                    }[kind]
                )
            lines += ["    if p != end: raise _Truncated()", "    return out", ""]
        if self.literal:
            # the same rows merged straight into a transaction's net images: (rows, bytes of row literals)
            for kind in ("insert", "delete", "update"):
                lines += [f"def into_{kind}(b, p, end, images):", "    rows = size = 0", "    while p < end:"]
                if kind in ("delete", "update"):
                    lines += self._image(ind, render="key")
                    lines.append(f"{ind}old = {self._key()}")
                if kind in ("insert", "update"):
                    lines += self._image(ind, render="row")
                    lines.append(f"{ind}new = {self._key()}")
                    lines.append(f"{ind}row = {self._row()}")
                if kind == "update":
                    lines.append(f"{ind}if old != new: images[old] = None")
                if kind == "delete":
                    lines.append(f"{ind}images[old] = None")
                else:
                    lines += [f"{ind}images[new] = row", f"{ind}size += len(row)"]
                lines.append(f"{ind}rows += 1")
                lines += ["    if p != end: raise _Truncated()", "    return rows, size", ""]
        # one function per column and step, for naming the column when the fast path fails
        for i, (spec, column) in enumerate(zip(self.specs, self.columns, strict=True)):
            lines += [f"def d{i}(b, p):", *("    " + s for s in _decode_lines(spec, "v")), "    return v, p", ""]
            lines += [f"def a{i}(v):", *("    " + s for s in _adapt_lines(spec, column, "v")), "    return v", ""]
            lines += [f"def l{i}(v):", f"    return {_literal_expr(spec, column, 'v')}", ""]
        return "\n".join(lines)

    # --- decoding ------------------------------------------------------------------------------------------------

    def decode(self, kind: str, b: bytes, p: int, end: int) -> list[Any]:
        """The rows of an event whose row data is ``b[p:end]``; raises :class:`ValueStop` naming the column."""
        try:
            return self.functions[kind](b, p, end)
        except Exception as exc:  # noqa: BLE001 (diagnosed below, column by column)
            self._diagnose(kind, b, p, end)
            raise ValueStop("?", f"the rows event cannot be decoded exactly ({type(exc).__name__}: {exc})") from None

    def _diagnose(self, kind: str, b: bytes, p: int, end: int) -> None:
        images = {"insert": ("row",), "delete": ("key",), "update": ("key", "row")}[kind]
        while p < end:
            for render in images:
                p = self._diagnose_image(b, p, render)
        if p != end:
            raise ValueStop("?", f"the rows event cannot be decoded exactly (its rows end at {p}, not {end})")

    def _diagnose_image(self, b: bytes, p: int, render: str) -> int:
        nulls = int.from_bytes(b[p : p + self.null_bytes], "little")
        p += self.null_bytes
        for i, (decode, adapt, literal) in enumerate(self._steps):
            if nulls & (1 << i):
                continue
            name = self.columns[i].name
            try:
                value, p = decode(b, p)
            except Exception as exc:  # noqa: BLE001 (named and re-raised as a stop)
                raise ValueStop(
                    name, f"the binlog value cannot be decoded exactly ({type(exc).__name__}: {exc})"
                ) from None
            try:
                value = adapt(value)
            except _Enum0:
                raise ValueStop(name, _ENUM0_MESSAGE) from None
            except ValueError as exc:
                raise ValueStop(name, str(exc)) from None
            if self.literal and (i in self.key_idx or (render == "row" and i in self.write_idx)):
                try:
                    literal(value)
                except UncarryableValueError as exc:
                    raise ValueStop(name, str(exc)) from None
        return p


def _full_bitmap(ncols: int) -> bytes:
    full = bytearray(b"\xff" * ((ncols + 7) // 8))
    if ncols % 8:
        full[-1] = (1 << (ncols % 8)) - 1
    return bytes(full)


def read_lenenc(b: bytes, p: int) -> tuple[int, int]:
    """A length-encoded integer (the rows event's column count)."""
    first = b[p]
    if first < 251:
        return first, p + 1
    if first == 252:
        return b[p + 1] | b[p + 2] << 8, p + 3
    if first == 253:
        return b[p + 1] | b[p + 2] << 8 | b[p + 3] << 16, p + 4
    if first == 254:
        return int.from_bytes(b[p + 1 : p + 9], "little"), p + 9
    raise ValueError(f"bad length-encoded integer {first}")


def first_absent(bitmap: bytes, ncols: int) -> int | None:
    """The first column a columns-present bitmap leaves out (binlog_row_image MINIMAL or NOBLOB), or None."""
    for i in range(ncols):
        if not bitmap[i >> 3] & (1 << (i & 7)):
            return i
    return None
