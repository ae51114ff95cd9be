"""Binlog coordinates, ordered the way the server writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEQ = re.compile(r"\.(\d+)$")


@dataclass(frozen=True, order=False)
class Position:
    """A point in the source binlog: the end of an event, ``(file, pos)``."""

    file: str
    pos: int

    def sort_key(self) -> tuple[int, str, int]:
        match = _SEQ.search(self.file)
        return (int(match.group(1)) if match else 0, self.file, self.pos)

    def __lt__(self, other: Position) -> bool:
        return self.sort_key() < other.sort_key()

    def __le__(self, other: Position) -> bool:
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: Position) -> bool:
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: Position) -> bool:
        return self.sort_key() >= other.sort_key()

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"

    @classmethod
    def parse(cls, text: str) -> Position:
        file, _, pos = text.rpartition(":")
        return cls(file, int(pos))
