"""Row and chunk checksums, computed by the servers themselves (docs/DESIGN.md#rule-row-hash).

**Encoding.** The server serializes each row into one byte string ``E(row)``: one field per column, in a fixed
order, joined by the byte 0xFF (``CONCAT_WS`` with a binary separator, so every field keeps its own bytes, whatever
its charset). The encoding is injective because each field can be read back unambiguously:

- numbers and temporals as text, which never holds 0xFE or 0xFF: integers and DECIMAL as is, DOUBLE in the
  server's shortest round-trip form, FLOAT as ``col+0E0`` (the float32 exactly, as a DOUBLE: its own rendering
  keeps ~6 digits), BIT as ``col+0``, TIMESTAMP as ``UNIX_TIMESTAMP(col)`` (the stored epoch; sessions also run
  in ``time_zone='+00:00'``);
- text in utf8mb4, utf8mb3 or ascii (ENUM and SET by label) as its own bytes: well-formed UTF-8 never holds 0xFE
  or 0xFF, and the servers store nothing else in such a column (tested on MariaDB: a 0xFF byte arriving by
  INSERT, LOAD DATA or ALTER from VARBINARY is stored as ``?``); ``'a'``, ``'A'`` and ``'a '`` are different
  bytes whatever the collation says;
- every other string (binary strings, latin1 and other charsets, which can hold any byte) as a netstring
  ``<byte length>:<bytes>``, whose length says where it ends;
- large objects (TEXT, BLOB, JSON, geometry) as ``<byte length>:<64-bit digest of the bytes>,`` so a row never
  exceeds ``max_allowed_packet`` (a too long ``CONCAT_WS`` is NULL, which the chunk query detects and refuses);
- NULL as the single byte 0xFE, decided on the raw column: no text field holds it and no netstring starts with
  it.

Generated columns are not hashed: each server computes them (docs/DESIGN.md#rule-row-hash); reports list them.

**Row hash.** ``x = CRC32(E)·2^32 + CRC32C(E)``, 64 bits. The CRC-32 and CRC-32C generator polynomials are
coprime (their GF(2) gcd is 1), so ``x`` is, up to a fixed affine map, ``E mod P1·P2``: a 64-bit CRC. Two
encodings of the same length collide only when their XOR difference is a multiple of that degree-64
polynomial, which a non-zero difference confined to a 64-bit window never is; other changes collide with
probability 2^-64 for data not crafted against CRC. ``E`` is built once per row (a user variable read by the
second CRC of the same expression; a probe checks the server evaluates it in that order, else ``E`` is built
twice).

**Chunk aggregate.** ``COUNT(*)``, ``Σx`` and ``Σx²``, exact (DECIMAL). A CRC is linear, so the XOR or the sum of
row CRCs alone cancels when two rows receive the same change or swap a value (pt-table-checksum's miss): the
second power sum is the non-linear part. Claim: a chunk whose rows changed in at most two places is always
detected. If ``{x1, x2}`` became ``{y1, y2}`` with equal ``Σx`` and ``Σx²``, then ``x1+x2 = y1+y2`` and
``x1²+x2² = y1²+y2²``, hence ``x1·x2 = y1·y2``: both pairs are the roots of the same quadratic, the same
multiset. So only a row whose 64-bit hash did not change (``y1 = x1``: a CRC-64 collision of the row with
itself changed) or a row that took over another's whole hash, key included (``y1 = x2``) can hide a change, and
both are the CRC-64 collisions above. A missing or extra row changes ``COUNT``. Changes to three or more rows
of one chunk cancel only by an exact coincidence of a 64-bit and a 128-bit integer sum, with no linear structure
to force it. The pitfalls of docs/DESIGN.md#verify-pitfalls that need this — the same change on two rows, a
value swapped between two rows — are the two-row case, proven above and shown by tests/test_verify.py (which also
shows CRC32 + BIT_XOR missing them on the same data).

MySQL 8 has no ``CRC32C``: when either server lacks it, ``x`` is the first 64 bits of ``MD5(E)`` (slower, same
aggregate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from austasync.errors import SetupError
from austasync.schema import SPATIAL_TYPES, Column, Table
from austasync.sql import Kind, at_most_key, quote_ident, select_expr

CRC = "crc32+crc32c"  # E built once, read back from a user variable
CRC_TWICE = "crc32+crc32c/twice"  # same hash, E built twice: where the probe shows another evaluation order
MD5 = "md5"
_ALL = "LIMIT 18446744073709551615"  # a derived table with a LIMIT is materialized: x is computed once per row
_LARGE = {
    "tinytext",
    "text",
    "mediumtext",
    "longtext",
    "json",
    "tinyblob",
    "blob",
    "mediumblob",
    "longblob",
    *SPATIAL_TYPES,
}
_STRINGS = {"enum", "set"}  # hashed by label: an index would hide a reordered definition
_UTF8 = {"utf8mb4", "utf8mb3", "utf8", "ascii"}  # charsets whose bytes never include 0xFE or 0xFF
# binary with implicit coercibility: the result stays binary, so no field is converted to another charset
_SEPARATOR = "CAST(X'FF' AS BINARY)"
_NULL = "CAST(X'FE' AS BINARY)"


@dataclass(frozen=True)
class ChunkSum:
    """COUNT, Σx and Σx² of one key range on one side; equal sums mean equal ranges (module docstring)."""

    count: int
    sum_x: int
    sum_x2: int


def hashed_columns(table: Table) -> tuple[Column, ...]:
    return tuple(c for c in table.columns if not c.generated)


def _is_string(column: Column) -> bool:
    return column.kind in (Kind.TEXT, Kind.BINARY) or column.data_type in _STRINGS


def _digest(raw: str, flavor: str) -> str:
    if flavor == MD5:
        return f"MD5({raw})"
    return f"CRC32({raw}), ',', CRC32C({raw})"


def column_code(column: Column, flavor: str) -> str:
    """The SQL expression of one column's field (module docstring)."""
    ident = quote_ident(column.name)
    if column.data_type in _LARGE:
        raw = f"CAST({ident} AS BINARY)"
        code = f"CONCAT(LENGTH({raw}), ':', {_digest(raw, flavor)}, ',')"
    elif _is_string(column):
        code = ident if column.charset in _UTF8 else f"CONCAT(LENGTH({ident}), ':', {ident})"
    elif column.data_type == "timestamp":
        code = f"UNIX_TIMESTAMP({ident})"
    else:
        code = select_expr(column.name, column.kind)
    if column.nullable:
        return f"IF({ident} IS NULL, {_NULL}, {code})"
    return code


def row_encoding(table: Table, flavor: str) -> str:
    return f"CONCAT_WS({_SEPARATOR}, {', '.join(column_code(c, flavor) for c in hashed_columns(table))})"


def _hash_of(encoding: str, flavor: str) -> str:
    if flavor == CRC:
        # one expression, left operand first: E is built once and its second CRC reads it back
        return f"((CRC32(@austasync_e := {encoding}) << 32) | CRC32C(@austasync_e))"
    if flavor == CRC_TWICE:
        return f"((CRC32({encoding}) << 32) | CRC32C({encoding}))"
    return f"CAST(CONV(LEFT(MD5({encoding}), 16), 16, 10) AS UNSIGNED)"


def row_hash(table: Table, flavor: str) -> str:
    """The expression of a row's 64-bit hash ``x`` (NULL only if the encoding overflowed)."""
    return _hash_of(row_encoding(table, flavor), flavor)


def probe_sql() -> str:
    """True when the server evaluates the one-pass expression as intended (E built once, read back after)."""
    rows = " UNION ALL ".join(f"SELECT {i} AS n" for i in range(1, 4))
    encoding = "CONCAT('probe-', n)"
    return (
        f"SELECT MIN(a = b) FROM (SELECT {_hash_of(encoding, CRC)} AS a, {_hash_of(encoding, CRC_TWICE)} AS b"
        f" FROM ({rows}) AS t {_ALL}) AS p"
    )


def chunk_sql(table: Table, name: str, where: str, flavor: str) -> str:
    """COUNT(*), COUNT(x), Σx, Σx² of the rows of ``name`` matching ``where``."""
    return (
        "SELECT COUNT(*), COUNT(x), SUM(x), SUM(CAST(x AS DECIMAL(20,0)) * x)"
        f" FROM (SELECT {row_hash(table, flavor)} AS x FROM {name} WHERE {where} {_ALL}) AS h"
    )


def leading_chunk_sql(table: Table, name: str, after: str, limit: int, flavor: str) -> str:
    """The sums of the first ``limit`` rows matching ``after`` in key order, and their last key (single-column keys):
    one pass over the rows gives both the chunk's sums and its bound."""
    order = quote_ident(table.key[0])
    return (
        "SELECT COUNT(*), COUNT(x), SUM(x), SUM(CAST(x AS DECIMAL(20,0)) * x), MAX(_k0)"
        f" FROM (SELECT {key_exprs(table)[0]} AS _k0, {row_hash(table, flavor)} AS x FROM {name} WHERE {after}"
        f" ORDER BY {order} LIMIT {limit}) AS h"
    )


def key_exprs(table: Table) -> list[str]:
    """Key columns rendered as the copier renders them (FLOAT and BIT exactly)."""
    return [select_expr(c.name, c.kind) for c in table.key_columns]


def rows_sql(table: Table, name: str, where: str, flavor: str) -> str:
    """Key columns and ``x`` of every row matching ``where``, in key order."""
    order = ", ".join(quote_ident(k) for k in table.key)
    return f"SELECT {', '.join(key_exprs(table))}, {row_hash(table, flavor)} FROM {name} WHERE {where} ORDER BY {order}"


def split_sql(table: Table, name: str, where: str, step: int) -> str:
    """Every ``step``-th key of the range, in key order: the bounds that split a mismatched range."""
    aliases = [f"_k{i}" for i in range(len(table.key))]
    inner = ", ".join(f"{e} AS {a}" for e, a in zip(key_exprs(table), aliases, strict=True))
    order = ", ".join(quote_ident(k) for k in table.key)
    return (
        f"SELECT {', '.join(aliases)} FROM (SELECT {inner}, ROW_NUMBER() OVER (ORDER BY {order}) AS _rn"
        f" FROM {name} WHERE {where}) AS q WHERE _rn % {step} = 0 ORDER BY _rn"
    )


def parts_sql(table: Table, name: str, where: str, bounds: Sequence[Sequence[str]], flavor: str) -> str:
    """Per part of the range between ``bounds`` (key literals, ascending): part number, then the chunk sums."""
    cases = " ".join(f"WHEN {at_most_key(table.key, b)} THEN {i}" for i, b in enumerate(bounds))
    part = f"CASE {cases} ELSE {len(bounds)} END" if bounds else "0"
    return (
        "SELECT p, COUNT(*), COUNT(x), SUM(x), SUM(CAST(x AS DECIMAL(20,0)) * x)"
        f" FROM (SELECT {part} AS p, {row_hash(table, flavor)} AS x FROM {name} WHERE {where} {_ALL}) AS h GROUP BY p"
    )


def parse_chunk(row: Sequence[object], what: str) -> ChunkSum:
    """The chunk query's answer; a row whose encoding came out NULL (over max_allowed_packet) is refused."""
    count, hashed = _int(row[0]), _int(row[1])
    if hashed != count:
        raise SetupError(
            f"{count - hashed} rows of {what} could not be encoded for hashing (a row longer than"
            " max_allowed_packet?); raise max_allowed_packet on that server"
        )
    return ChunkSum(count=count, sum_x=_int(row[2]), sum_x2=_int(row[3]))


def _int(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bytes | str | int):
        return int(value)
    raise TypeError(f"unexpected {type(value).__name__} from a checksum query")
