"""What the binlog reader hands to the applier: plain frozen values, independent of the binlog library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from austasync.binlog.statements import Parsed
from austasync.position import Position

RowKind = Literal["insert", "update", "delete"]
Row = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    """A source transaction starts; ``start`` is the boundary just before it."""

    start: Position


@dataclass(frozen=True, slots=True)
class Rows:
    """One rows event of a replicated table, values adapted for exact writing, in ``columns`` order.

    ``seq`` counts rows events (of every table) from 1 within the source transaction, so a resume inside a big
    transaction can skip exactly the events already applied.
    """

    db: str
    table: str
    kind: RowKind
    columns: tuple[str, ...]
    rows: tuple[tuple[Row | None, Row | None], ...]  # (before, after)
    seq: int
    position: Position
    timestamp: int


Key = tuple[str, ...]


class LiteralRows(NamedTuple):
    """One rows event of a replicated table that no cascade starts from, already rendered as SQL literals.

    Per row ``(old key, new key, new row)``: the key-column literals of the before image (None for an insert), of
    the after image (None for a delete), and the after image's ``(v1,v2,...)`` literal over the writable columns.
    The applier needs nothing else for net images, so the values never exist as Python objects past the decoder.
    A named tuple, not a frozen dataclass: one is built per rows event, and a frozen dataclass costs several times
    more to construct.
    """

    db: str
    table: str
    kind: RowKind
    rows: list[tuple[Key | None, Key | None, str | None]]
    seq: int
    timestamp: int


class TxnImages(NamedTuple):
    """The rows of a source transaction (or of a part of a big one), already merged by the reader into net images
    per table: exactly what its run of Begin, LiteralRows and Commit events would leave in the applier.

    At catch-up speed the applier's thread would otherwise spend as much time taking and dispatching events one by
    one as the reader spends decoding them; merged, a transaction costs it a ``dict.update`` per table. Only tables
    that arrive as literals are merged; any other event inside the transaction ends the part, and arrives on its own
    after it.
    """

    start: Position | None  # the boundary before the transaction, on its first part (what Begin carries)
    end: Position | None  # the end of its commit, on its last part (what Commit carries)
    images: dict[tuple[str, str], dict[Key, str | None]]  # per table: key literals -> row literal, None = deleted
    counts: dict[tuple[tuple[str, str], str], int]  # rows per table and operation, for the metrics
    rows: int
    bytes: int  # of the row literals, for the batch limit
    first_seq: int  # rows events of the transaction up to this part (first_seq excluded) and with it (seq)
    seq: int
    oldest: int | None  # timestamp of its first rows event
    timestamp: int  # of its commit, or of its last event


@dataclass(frozen=True, slots=True)
class SkippedRows:
    """A rows event of a table that is not replicated; it still counts for ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class UnknownRows:
    """A rows event of a table the selection covers but austasync has no definition of (created on the source after
    the tables were loaded, its DDL not replayed): the consumer stops at it, never skips it."""

    db: str
    table: str
    seq: int
    position: Position


@dataclass(frozen=True, slots=True)
class Commit:
    """The source transaction committed; ``position`` is a transaction boundary (a valid checkpoint)."""

    position: Position
    timestamp: int


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement logged as text: DDL (its own transaction) or statement-format DML (never applied)."""

    query: str
    schema: str
    start: Position
    position: Position
    timestamp: int
    in_transaction: bool
    sql_mode: int | None
    time_zone: str | None = None  # the session time zone it ran in, when not the server's default
    parsed: Parsed | None = None  # what austasync.binlog.statements made of it
    # the text is the statement's bytes exactly (see binlog.query.QueryFields.exact); when False, running ``query``
    # on the target would run other text than the source ran, and judging its names may misread them
    exact: bool = True
    auto_increment: tuple[int, int] | None = None  # the session's auto_increment_increment and _offset
    lc_time_names: int | None = None  # the session's locale number (0 = en_US), when the event carries it
    # MariaDB's binlog_alter_two_phase logs an ALTER twice, at its start and at its commit (or rollback): only the
    # "commit" one changed the source's table
    alter_phase: str | None = None
    explicit_defaults_for_timestamp: int | None = None  # the session's, when the event carries it (MySQL 8)
    default_collation_for_utf8mb4: int | None = None  # the session's collation id, when logged (MySQL 8)


@dataclass(frozen=True, slots=True)
class Boundary:
    """A non-transactional event (rotate, format description, GTID list) outside any transaction."""

    position: Position


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The source is idle; ``position`` is where its binlog currently ends."""

    position: Position


@dataclass(frozen=True, slots=True)
class ReaderFailed:
    """The reader thread stopped; ``error`` is re-raised by the consumer."""

    error: BaseException


Event = (
    Begin
    | Rows
    | LiteralRows
    | TxnImages
    | SkippedRows
    | UnknownRows
    | Commit
    | Statement
    | Boundary
    | Heartbeat
    | ReaderFailed
)
