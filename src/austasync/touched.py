"""The keys the stream wrote since the last full verification: what the daemon re-checks between full passes.

The applier records each key it writes (as the SQL literals it wrote them with); a table whose rows change by
other means (a foreign-key cascade, whose child keys the binlog does not name) or too many keys is marked to be
checked whole. The scheduler takes the set at the start of every pass, so a key written during a pass waits in
the next set: every write is checked by some pass after it committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from austasync.schema import TableId

KeyLiterals = tuple[str, ...]
DEFAULT_LIMIT = 200_000  # keys held at most: 29 MB as integer keys, 40 MB as 60-byte strings (measured); beyond, the biggest table goes whole


@dataclass(frozen=True)
class Touched:
    """What one pass has to check: keys per table, and tables to check whole."""

    keys: Mapping[TableId, frozenset[KeyLiterals]] = field(default_factory=dict)
    whole: frozenset[TableId] = frozenset()
    since: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.keys and not self.whole

    @property
    def key_count(self) -> int:
        return sum(len(k) for k in self.keys.values())

    def union(self, other: Touched | None) -> Touched:
        """Both sets together (the older ``since``); a table whole in either is whole."""
        if other is None:
            return self
        whole = self.whole | other.whole
        keys: dict[TableId, frozenset[KeyLiterals]] = {}
        for table in (set(self.keys) | set(other.keys)) - whole:
            keys[table] = self.keys.get(table, frozenset()) | other.keys.get(table, frozenset())
        return Touched(keys=keys, whole=whole, since=min(self.since, other.since))


class TouchedKeys:
    """Thread-safe: the applier's writer thread records, the verification thread takes."""

    def __init__(self, limit: int = DEFAULT_LIMIT, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[TableId, set[KeyLiterals]] = {}
        self._whole: set[TableId] = set()
        self._count = 0
        self._since = self._clock()

    def add(self, table: TableId, keys: Iterable[KeyLiterals]) -> None:
        with self._lock:
            if table in self._whole:
                return
            held = self._keys.setdefault(table, set())
            before = len(held)
            held.update(keys)
            self._count += len(held) - before
            if self._count > self.limit:
                biggest = max(self._keys, key=lambda t: len(self._keys[t]))
                self._drop(biggest)

    def whole(self, table: TableId) -> None:
        """Check this table whole next time (its changed keys are not known)."""
        with self._lock:
            self._drop(table)

    def take(self) -> Touched:
        """Everything recorded so far; recording starts afresh."""
        with self._lock:
            taken = Touched(
                keys={t: frozenset(k) for t, k in self._keys.items() if k},
                whole=frozenset(self._whole),
                since=self._since,
            )
            self._keys, self._whole, self._count, self._since = {}, set(), 0, self._clock()
        return taken

    def peek(self) -> Touched:
        """Everything recorded so far, left in place."""
        with self._lock:
            return Touched(
                keys={t: frozenset(k) for t, k in self._keys.items() if k},
                whole=frozenset(self._whole),
                since=self._since,
            )

    @property
    def since(self) -> float:
        """When recording started afresh (the last :meth:`take`)."""
        return self._since

    def restore(self, taken: Touched) -> None:
        """Put back what a pass took but could not check, so the next one checks it."""
        for table, keys in taken.keys.items():
            self.add(table, keys)
        for table in taken.whole:
            self.whole(table)

    def _drop(self, table: TableId) -> None:
        self._count -= len(self._keys.pop(table, ()))
        self._whole.add(table)
