"""One source transaction as the reader sees it: held until it ends, so what the source undid never reaches the
applier.

A transaction's events are *held* here until its COMMIT/XID and only then handed to the applier. Three things the
server logs make that necessary:

- ``SAVEPOINT s ... ROLLBACK TO s``: the server logs both (and the rows between them) when the transaction also
  changed a non-transactional table; the rows between are undone on the source. Laravel's nested
  ``DB::transaction`` emits exactly this. On ``ROLLBACK TO`` the held rows events after the savepoint are dropped.
- ``ROLLBACK`` at the end of a logged transaction (statement or mixed format with a non-transactional change): every
  held rows event is dropped.
- XA: the rows of ``XA START ... XA END`` are followed by ``XA PREPARE``, and the outcome (``XA COMMIT`` or
  ``XA ROLLBACK``) comes later as a transaction of its own. austasync does not carry XA transactions on replicated
  tables (the prepared rows would have to outlive a restart); it refuses them at ``XA PREPARE``, before any of
  their rows is written, and skips those that changed no replicated table.

Memory stays bounded: past :data:`HOLD_BYTES` of rows events a transaction is *spilled* (its held events handed
over; the applier may split it across target transactions, docs/DESIGN.md#rule-checkpoint). A ``ROLLBACK [TO]`` that
would have to undo a replicated rows event already handed over then stops the daemon instead of leaving rows the
source never kept. Statements inside a rolled-back stretch are kept: a statement is not undone by a rollback (DDL
commits, a non-transactional change stays) and the daemon judges it as usual.
"""

from __future__ import annotations

from typing import NamedTuple

from austasync.binlog import outcomes
from austasync.errors import UncarryableValueError
from austasync.events import Begin, Event, Key, LiteralRows, Rows, Statement, TxnImages, UnknownRows
from austasync.position import Position
from austasync.schema import TableId

HOLD_BYTES = 32 * 1024 * 1024  # rows-event bytes of one transaction held before it is spilled


class Savepoint(NamedTuple):
    name: str  # lower-cased; "" is the transaction's start, which a full ROLLBACK returns to
    generation: int  # which held list ``index`` points into (a spill starts a new one)
    at: int  # its place in that list
    seq: int  # rows events of the transaction before it
    replicated: int  # replicated rows events before it
    last_replicated_seq: int


class Chunk:
    """Rows of one transaction being merged into net images (see :class:`austasync.events.TxnImages`)."""

    __slots__ = ("bytes", "counts", "events", "first_seq", "images", "oldest", "rows", "start")

    def __init__(self, start: Position | None, first_seq: int) -> None:
        self.start = start
        self.first_seq = first_seq
        self.images: dict[TableId, dict[Key, str | None]] = {}
        self.counts: dict[tuple[TableId, str], int] = {}
        self.rows = 0
        self.bytes = 0
        self.events = 0
        self.oldest: int | None = None


class TxnState:
    """Where the reader stands: the last transaction boundary, and the transaction it is in, if any."""

    def __init__(self, position: Position, tally: dict[str, int], applied_events: int = 0) -> None:
        self.position = position
        self.boundary = position  # the last transaction boundary: where a resume may start
        self.in_txn = False
        self.standalone = False
        self.seq = 0
        self.last_table = ""
        # the transaction's rows merged so far (TxnImages). Not in the first transaction read: a resume may skip
        # a prefix of its rows events, which the applier does event by event
        self.chunk: Chunk | None = None
        self.merging = False
        self.tally = tally
        # rows events of the first transaction that a previous run committed to the target (a split transaction)
        self.applied_events = applied_events
        self.skip_upto = 0  # the same, while inside that first transaction
        self.held: list[Event] | None = None  # None: not holding (outside a transaction, or spilled)
        self.held_bytes = 0
        self.generation = 0
        self.savepoints: list[Savepoint] = []
        self.replicated = 0  # rows events of replicated tables read in this transaction
        self.last_replicated_seq = 0
        self.released_replicated_seq = 0  # the last of those handed over before the held list began
        self.xa = False
        self.hold_limit = HOLD_BYTES

    # --- the transaction's life ---------------------------------------------------------------------------------

    def begin(self) -> None:
        self.in_txn = True
        self.seq = 0
        self.last_table = ""
        self.held, self.held_bytes = [], 0
        self.generation += 1
        self.savepoints = [Savepoint("", self.generation, 0, 0, 0, 0)]
        self.replicated = self.last_replicated_seq = 0
        # the first transaction of a resume: its first events are on the target already, as if handed over
        self.skip_upto = self.released_replicated_seq = self.applied_events
        self.applied_events = 0
        self.xa = False

    def sink(self, out: list[Event]) -> list[Event]:
        """Where an event of the transaction goes now: the held list, or straight to the consumer once spilled."""
        return self.held if self.held is not None else out

    def grow(self, size: int, out: list[Event]) -> None:
        """A rows event of ``size`` bytes is about to be held: spill first if the transaction grew too big."""
        if self.held is not None:
            self.held_bytes += size
            if self.held_bytes > self.hold_limit:
                self.spill(out)

    def spill(self, out: list[Event]) -> None:
        if self.held:
            out.extend(self.held)
        self.held, self.held_bytes = None, 0
        self.released_replicated_seq = max(self.released_replicated_seq, self.last_replicated_seq)
        self.generation += 1  # the savepoints set so far point into a list that is gone

    def release(self, out: list[Event]) -> None:
        """The transaction ends: its held events go to the consumer."""
        if self.held:
            out.extend(self.held)
        self.held, self.held_bytes = None, 0
        self.savepoints = []
        self.skip_upto = 0

    def part(self, end: Position | None, ts: int, seq: int | None = None) -> TxnImages:
        """The merged rows as an event; ``end`` on the transaction's last part."""
        chunk = self.chunk
        assert chunk is not None  # noqa: S101 (callers check)
        return TxnImages(
            chunk.start,
            end,
            chunk.images,
            chunk.counts,
            chunk.rows,
            chunk.bytes,
            chunk.first_seq,
            self.seq if seq is None else seq,
            chunk.oldest,
            ts,
        )

    # --- savepoints and rollbacks -------------------------------------------------------------------------------

    def savepoint(self, name: str, out: list[Event], ts: int) -> None:
        """``SAVEPOINT name``: what is merged so far becomes a part of its own, so a rollback can drop what follows."""
        if self.chunk is not None:
            self.sink(out).append(self.part(None, ts))
            self.chunk = Chunk(None, self.seq)
        if self.held is None:  # spilled: hold again from here
            self.held, self.held_bytes = [], 0
            self.generation += 1
            self.released_replicated_seq = max(self.released_replicated_seq, self.last_replicated_seq)
        # a savepoint of an existing name replaces it (the server's rule)
        self.savepoints = [sp for sp in self.savepoints if sp.name != name or not sp.name]
        self.savepoints.append(
            Savepoint(name, self.generation, len(self.held), self.seq, self.replicated, self.last_replicated_seq)
        )

    def release_savepoint(self, name: str) -> None:
        """``RELEASE SAVEPOINT name``: it and every later savepoint are gone; no rows change."""
        for k, sp in enumerate(self.savepoints):
            if sp.name == name:
                del self.savepoints[k:]
                return

    def rollback_to(self, name: str, where: str) -> int:
        """Drop the rows events after savepoint ``name`` ("" = the transaction's start); the number of replicated
        ones dropped. Refuses (a stop) when one of them was handed over already, or the savepoint is unknown."""
        sp = next((s for s in reversed(self.savepoints) if s.name == name), None)
        if sp is None:
            raise UncarryableValueError(
                f"{where}: ROLLBACK TO SAVEPOINT {name} names a savepoint this transaction did not set (as read from"
                " the binlog); austasync cannot tell which rows the source undid"
            )
        released = self.last_replicated_seq if self.held is None else self.released_replicated_seq
        if released > sp.seq:
            raise UncarryableValueError(
                f"{where}: {'ROLLBACK' if not name else 'ROLLBACK TO SAVEPOINT ' + name} undoes rows of a source"
                f" transaction that was too big to hold (over {self.hold_limit} bytes of rows events), part of"
                " which austasync already handed to the target. The target may hold rows the source rolled back."
                " Nothing after the last checkpoint is committed; verify and repair the tables the transaction"
                " touched, or re-copy them (`austasync reset`)"
            )
        if self.held is None:
            self.held, self.held_bytes = [], 0
            self.generation += 1
        index = sp.at if sp.generation == self.generation else 0
        kept = [_kept(event) for event in self.held[index:]]
        self.held[index:] = [event for event in kept if event is not None]
        if self.chunk is not None:
            if self.chunk.start is not None:
                self.held.append(Begin(self.chunk.start))
            self.chunk = Chunk(None, self.seq)
        dropped = self.replicated - sp.replicated
        self.replicated, self.last_replicated_seq = sp.replicated, sp.last_replicated_seq
        self.savepoints = self.savepoints[: self.savepoints.index(sp) + 1]
        self.tally[outcomes.ROWS] -= dropped
        self.tally[outcomes.ROLLED_BACK] += dropped
        return dropped

    def holds_statements(self) -> bool:
        return any(isinstance(event, Statement) for event in self.held or ())


def _kept(event: Event) -> Event | None:
    """What survives a rollback of a held event: its transaction start and its statements, never its rows."""
    if isinstance(event, Statement | Begin):
        return event
    if isinstance(event, TxnImages) and event.start is not None:
        return Begin(event.start)
    if isinstance(event, LiteralRows | Rows | UnknownRows):
        return None
    return None  # SkippedRows: a table outside the selection; nothing to undo
