"""SQL text: quoted identifiers and exact value literals.

austasync builds its own statements instead of letting the driver escape parameters, because the driver cannot
carry every MySQL type exactly (BIT strings, Python sets, negative TIME, binary strings in text columns). Each
column has a :class:`Kind` that says how its literal is written; values come either as the raw bytes the server
sent over the text protocol (bulk copy, ``character_set_results=binary``) or as Python values decoded from the
binlog (stream), and both end as the same literal forms.

String literals read the same under every ``sql_mode`` (the sessions are pinned too, :mod:`austasync.db`, but a
key bound must not depend on that): a quote is doubled (``''`` is a quote in every mode, where ``\\'`` is not
under ``NO_BACKSLASH_ESCAPES``), every other byte goes as itself (NUL, newline, CR and ^Z included), and a value
holding a backslash, or an empty one (``EMPTY_STRING_IS_NULL`` makes ``''`` a NULL), is written in hex with its
charset introducer, ``_utf8mb4 X'...'``. An introduced literal keeps the coercibility of a quoted one, so it
compares under the column's collation, as the key order does; a bare ``X'...'`` would compare as binary.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
from collections.abc import Iterable, Sequence

from austasync.errors import UncarryableValueError

# the bytes whose meaning in a quoted literal depends on the sql_mode or needs care: the quote (doubled) and the
# backslash (the whole value goes in hex)
SPECIAL_BYTES = b"'\\"
# the introducer of the connections' own charset (db.CONNECTION_CHARSET), for a hex literal of connection text
_CONNECTION_INTRODUCER = "_utf8mb4"


class Kind(enum.Enum):
    """How a column's values are written as SQL literals."""

    INT = "int"  # integers of every width: bare digits
    DECIMAL = "decimal"  # exact decimal text: bare
    FLOAT = "float"  # read as col+0E0 (a DOUBLE holding the float32 exactly), written as that double
    DOUBLE = "double"  # shortest round-trip text: bare
    BIT = "bit"  # read as col+0 (an unsigned integer), written as that integer
    TEMPORAL = "temporal"  # DATE, DATETIME, TIMESTAMP, TIME, YEAR: quoted text
    TEXT = "text"  # character strings, JSON: quoted with the column's charset introducer
    BINARY = "binary"  # BINARY, VARBINARY, BLOB, GEOMETRY: _binary'...'
    # read as col+0 and written as that number: a label can be lost in decoding (the binlog library drops
    # non-UTF-8 labels) or be ambiguous ('' is both a possible label and the invalid value of index 0), an index
    # cannot. ENUM index 0 (the invalid value a non-strict session stored) is refused: a strict target rejects it
    ENUM = "enum"
    SET = "set"  # bit mask
    # MariaDB's UUID, INET6, INET4: read as their text, written back as text with no introducer (a _binary
    # string of exactly the type's length is taken as the binary form: a 16-character INET6 text would be
    # misread); on the stream the binlog holds the in-memory bytes, written as _binary
    FIXEDBIN = "fixedbin"


def quote_ident(name: str) -> str:
    """A MySQL identifier in backquotes, with embedded backquotes doubled."""
    return "`" + name.replace("`", "``") + "`"


def qualified(db: str, table: str) -> str:
    return f"{quote_ident(db)}.{quote_ident(table)}"


def quoted(raw: bytes, introducer: str) -> str:
    """A string literal of these bytes that reads the same under every sql_mode (see the module's docstring).

    ``introducer``: ``_binary``, ``_<charset>``, or "" for text in the connection's charset. The result holds the
    bytes as latin1 characters (one per byte).
    """
    if not raw or b"\\" in raw:
        return f"{introducer or _CONNECTION_INTRODUCER} X'{raw.hex()}'"
    text = raw.decode("latin1")
    if "'" in text:
        text = text.replace("'", "''")
    return f"{introducer}'{text}'"


def raw_literal(raw: bytes | None, kind: Kind, charset: str) -> str:
    """Literal for a value as the server rendered it on the text protocol (bulk copy path).

    The returned ``str`` holds the literal's bytes as latin1 characters; statements are encoded back with
    latin1 before they are sent, so arbitrary bytes pass through unchanged.
    """
    if raw is None:
        return "NULL"
    if kind in (Kind.FLOAT, Kind.DOUBLE):
        text = raw.decode("ascii")
        # the server prints the shortest text that round-trips; without an exponent it would parse it as DECIMAL
        return text if "e" in text.lower() else text + "e0"
    if kind in (Kind.INT, Kind.DECIMAL, Kind.BIT, Kind.SET):
        return raw.decode("ascii")
    if kind is Kind.ENUM:
        return _enum_literal(int(raw))
    if kind is Kind.BINARY:
        return quoted(raw, "_binary")
    if kind is Kind.TEXT:
        return quoted(raw, "_" + charset)
    return quoted(raw, "")  # TEMPORAL, FIXEDBIN: ASCII text in the connection's charset


def select_expr(column: str, kind: Kind) -> str:
    """The SELECT expression that renders a column exactly over the text protocol."""
    ident = quote_ident(column)
    if kind is Kind.FLOAT:
        # FLOAT renders with ~6 significant digits; as a DOUBLE it is exact (docs/DESIGN.md#rule-values)
        return f"{ident}+0E0"
    if kind in (Kind.BIT, Kind.ENUM, Kind.SET):
        return f"{ident}+0"
    return ident


def _enum_literal(index: int) -> str:
    if index == 0:
        raise UncarryableValueError(
            "ENUM holds the invalid-value index 0 (''), which a strict session cannot write; fix the row on the"
            " source (UPDATE it to a valid label or NULL)"
        )
    return str(index)


def _time_literal(value: dt.timedelta) -> str:
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    seconds, frac = divmod(micros, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"'{sign}{hours:02d}:{minutes:02d}:{secs:02d}.{frac:06d}'"


def value_literal(value: object, kind: Kind, charset: str) -> str:
    """Literal for a Python value decoded from the binlog (stream path), already adapted by the binlog adapter.

    Accepted: None, int (ENUM index, SET mask, BIT, YEAR included), Decimal, float, bytes (in the column's
    charset for text columns), ``str`` (the literal text of a temporal value; for text columns, Unicode), and
    date, datetime, timedelta (values read back from the target). Anything else is refused: never guess.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return _enum_literal(value) if kind is Kind.ENUM else str(value)
    if isinstance(value, decimal.Decimal):
        # plain notation: an exponent would make the server parse an approximate DOUBLE
        return format(value, "f")
    if isinstance(value, float):
        # repr round-trips a double exactly; for a FLOAT column the double holds the float32 exactly
        text = repr(value)
        if text in ("inf", "-inf", "nan"):
            raise UncarryableValueError(f"non-finite float {text} has no MySQL literal")
        # an exponent makes the server parse a DOUBLE (correctly rounded), not a DECIMAL
        return text if "e" in text else text + "e0"
    if isinstance(value, bytes):
        if kind is Kind.TEXT:
            return quoted(value, "_" + charset)
        return quoted(value, "_binary")
    if isinstance(value, str):
        if kind is Kind.BINARY:
            raise UncarryableValueError(f"text value for binary column ({kind.value})")
        if kind is Kind.TEMPORAL:
            # the server's own text form, zero and partial-zero dates included, read in time_zone '+00:00'
            return quoted(value.encode("ascii"), "")
        return quoted(value.encode("utf-8"), "_utf8mb4")
    if isinstance(value, dt.datetime):
        return f"'{value:%Y-%m-%d %H:%M:%S}.{value.microsecond:06d}'"
    if isinstance(value, dt.date):
        return f"'{value:%Y-%m-%d}'"
    if isinstance(value, dt.timedelta):
        return _time_literal(value)
    raise UncarryableValueError(f"no exact literal for a {type(value).__name__} value")


def in_list(columns: Sequence[str], keys: Iterable[Sequence[str]]) -> str:
    """``col IN (...)`` or ``(a,b) IN ((..),(..))`` for already rendered key literals."""
    if len(columns) == 1:
        return f"{quote_ident(columns[0])} IN ({','.join(k[0] for k in keys)})"
    cols = ",".join(quote_ident(c) for c in columns)
    return f"({cols}) IN ({','.join('(' + ','.join(k) + ')' for k in keys)})"


def _expanded(columns: Sequence[str], literals: Sequence[str], op: str, or_equal: bool) -> str:
    terms = []
    for i in range(len(columns)):
        eqs = [f"{quote_ident(columns[j])} = {literals[j]}" for j in range(i)]
        eqs.append(f"{quote_ident(columns[i])} {op} {literals[i]}")
        terms.append("(" + " AND ".join(eqs) + ")")
    if or_equal:
        terms.append(
            "(" + " AND ".join(f"{quote_ident(c)} = {v}" for c, v in zip(columns, literals, strict=True)) + ")"
        )
    return "(" + " OR ".join(terms) + ")"


def after_key(columns: Sequence[str], literals: Sequence[str]) -> str:
    """Predicate for keys strictly greater than the given key, written so the optimizer range-scans.

    ``a > x OR (a = x AND b > y) ...``: a row-value comparison ``(a,b) > (x,y)`` made MariaDB scan and lock far
    more rows than the chunk (docs/DESIGN.md#copy-keys).
    """
    return _expanded(columns, literals, ">", or_equal=False)


def at_most_key(columns: Sequence[str], literals: Sequence[str]) -> str:
    """Predicate for keys less than or equal to the given key (the upper bound of a chunk)."""
    return _expanded(columns, literals, "<", or_equal=True)
