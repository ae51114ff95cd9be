"""Foreign-key cascades reproduced on the target the way InnoDB ran them on the source
(docs/DESIGN.md#rule-cascades).

The binlog holds only the row a statement changed, never the rows InnoDB's ``ON DELETE CASCADE``, ``SET NULL``
or ``ON UPDATE CASCADE`` changed after it, and the target's writer runs with ``foreign_key_checks = 0``. So the
applier hands every parent row change of a table that cascades to :class:`Cascade`, which walks the same tree
InnoDB walked (``row_ins_foreign_check_on_constraint`` in the server), depth-first:

- A row being deleted is gone before its children are looked for, as InnoDB delete-marks it first: a cycle that
  leads back to it (a row that is its own parent, two rows that are each other's parent, a ring of tables) finds
  nothing there and ends. A row already deleted by another branch (a diamond) is not found a second time.
- A row changed by SET NULL or ON UPDATE CASCADE changes its own children by *their* ``ON UPDATE`` rule, with
  the old values of the columns that changed.
- InnoDB fails the whole statement when a cascade would update a table that an update higher up the same chain
  is already changing (so self-referencing ``ON UPDATE CASCADE`` acts as RESTRICT), and when it finds a matching
  child 15 levels below the statement's row (``FK_MAX_CASCADE_DEL``; 14 levels succeed, measured on MariaDB
  10.11). A failed statement is not in the binlog, so meeting either here means the target holds rows the
  source did not: :class:`~austasync.errors.DriftError`, nothing written. Both bounds also make every walk end.
- Order: a deleted row's foreign keys are taken as InnoDB takes them, those referencing the clustered key first,
  each group by constraint id (``db/name``, bytewise); its children in key order, which is InnoDB's order when
  the child's foreign-key index holds exactly the foreign-key columns (the index InnoDB creates for one). Order
  matters only where two branches reach the same row through columns one of them changes.

A child table with nothing further to cascade takes one statement per parent row and foreign key (``DELETE`` or
``UPDATE ... WHERE fk = parent``); a child that cascades further is walked row by row, re-reading its remaining
matches whenever the walk below a row wrote to that table (they may have gone or changed since they were read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from austasync.errors import DriftError
from austasync.events import Row
from austasync.schema import ForeignKey, Table, TableId
from austasync.sql import Kind, after_key, quote_ident, value_literal
from austasync.touched import TouchedKeys

MAX_DEPTH = 15  # InnoDB's FK_MAX_CASCADE_DEL: a match this many levels below the statement's row fails it


class TablePlan(Protocol):
    """What the cascade needs of a table (the applier's per-table plan)."""

    table: Table
    target: str  # qualified target name
    kinds: tuple[tuple[Kind, str], ...]
    on_delete: tuple[ForeignKey, ...]
    on_update: tuple[ForeignKey, ...]

    def key(self, row: Row) -> tuple[object, ...]: ...

    def key_literal(self, key: Sequence[object]) -> tuple[str, ...]: ...


Execute = Callable[[str, TablePlan], int]  # a write statement in the open target transaction; rows changed
Select = Callable[[TablePlan, str], list[tuple[object, ...]]]  # every column of the rows matching, locked


@dataclass
class _Walk:
    """One parent row's cascade: what InnoDB would know on its chain of cascade nodes."""

    root: str  # the binlog row it started from, for messages
    updating: dict[TableId, int] = field(default_factory=dict)  # update nodes on the current chain, per table
    writes: dict[TableId, int] = field(default_factory=dict)  # statements written per table so far

    def wrote(self, table: TableId) -> int:
        self.writes[table] = self.writes.get(table, 0) + 1
        return self.writes[table]


class Cascade:
    """Reproduces the cascades of parent row changes in the applier's open target transaction."""

    def __init__(
        self,
        plans: Mapping[TableId, TablePlan],
        execute: Execute,
        select: Select,
        touched: TouchedKeys | None = None,
    ) -> None:
        self.plans = plans
        self._execute = execute
        self._select = select
        self.touched = touched
        self.cyclic = _cyclic(plans)

    def deleted(self, plan: TablePlan, row: Row) -> None:
        """The source deleted ``row`` of ``plan``: delete and set to NULL what InnoDB did after it.

        The row itself is the caller's to delete (a net image). In a table that a cascade can lead back to, it
        is deleted here first, as InnoDB delete-marks it before the cascade: the cycle then ends at it.
        """
        walk = _Walk(root=f"the delete of {plan.table} key {_shown(plan.key(row))}")
        if plan.table.id in self.cyclic:
            self._execute(f"DELETE FROM {plan.target} WHERE {_key_match(plan, row)}", plan)
            walk.wrote(plan.table.id)
        self._after_delete(plan, row, 0, walk)

    def updated(self, plan: TablePlan, before: Row, after: Row) -> None:
        """The source changed ``before`` into ``after``: the ON UPDATE effects on the rows referencing it."""
        walk = _Walk(root=f"the update of {plan.table} key {_shown(plan.key(before))}")
        self._after_update(plan, before, after, 0, walk)

    # --- a node's children ------------------------------------------------------------------------------------

    def _after_delete(self, plan: TablePlan, row: Row, level: int, walk: _Walk) -> None:
        for fk in _innodb_order(plan, plan.on_delete):
            values = _values(plan, fk.parent_columns, row)
            if any(v is None for v in values):
                continue  # a NULL references nothing
            child = self._child(fk)
            where = _match(child, fk.child_columns, values)
            if fk.on_delete == "CASCADE":
                self._delete_children(child, fk, where, level + 1, walk)
            else:
                self._update_children(child, fk, where, None, level + 1, walk)

    def _after_update(self, plan: TablePlan, before: Row, after: Row, level: int, walk: _Walk) -> None:
        tid = plan.table.id
        walk.updating[tid] = walk.updating.get(tid, 0) + 1  # InnoDB refuses to update it again below this node
        try:
            for fk in _innodb_order(plan, plan.on_update):
                if not referenced_changed(plan, fk, before, after):
                    continue
                old = _values(plan, fk.parent_columns, before)
                if any(v is None for v in old):
                    continue
                new = _values(plan, fk.parent_columns, after) if fk.on_update == "CASCADE" else None
                child = self._child(fk)
                self._update_children(child, fk, _match(child, fk.child_columns, old), new, level + 1, walk)
        finally:
            walk.updating[tid] -= 1

    def _child(self, fk: ForeignKey) -> TablePlan:
        if self.touched is not None:
            self.touched.whole(fk.child)  # the cascade's child keys are not in the binlog
        return self.plans[fk.child]

    def _delete_children(self, child: TablePlan, fk: ForeignKey, where: str, level: int, walk: _Walk) -> None:
        if not child.on_delete and level < MAX_DEPTH:
            walk.wrote(child.table.id)  # nothing cascades from these rows: one statement for all of them
            self._execute(f"DELETE FROM {child.target} WHERE {where}", child)
            return

        def delete(row: Row) -> None:
            self._refuse_beyond_innodb(child, fk, row, level, walk, update=False)
            self._execute(f"DELETE FROM {child.target} WHERE {_key_match(child, row)}", child)

        self._each_child(child, where, walk, delete, lambda row: self._after_delete(child, row, level, walk))

    def _update_children(
        self, child: TablePlan, fk: ForeignKey, where: str, new: Sequence[object] | None, level: int, walk: _Walk
    ) -> None:
        """Set the child's foreign-key columns to ``new`` (None: SET NULL) where they match the parent."""
        sets = _assignments(child, fk, new)
        further = any(set(fk.child_columns) & set(f.parent_columns) for f in child.on_update)
        if not further and level < MAX_DEPTH and not walk.updating.get(child.table.id):
            walk.wrote(child.table.id)
            self._execute(f"UPDATE {child.target} SET {sets} WHERE {where}", child)
            return
        names = [c.name for c in child.table.columns]

        def changed(row: Row) -> Row:
            out = list(row)
            for i, col in enumerate(fk.child_columns):
                out[names.index(col)] = None if new is None else new[i]
            return tuple(out)

        def update(row: Row) -> None:
            self._refuse_beyond_innodb(child, fk, row, level, walk, update=True)
            self._execute(f"UPDATE {child.target} SET {sets} WHERE {_key_match(child, row)}", child)

        self._each_child(
            child, where, walk, update, lambda row: self._after_update(child, row, changed(row), level, walk)
        )

    def _each_child(
        self,
        child: TablePlan,
        where: str,
        walk: _Walk,
        write: Callable[[Row], None],
        descend: Callable[[Row], None],
    ) -> None:
        """For each row matching ``where`` in key order (InnoDB's scan): write it, then walk below it.

        The rows are read once; when the walk below one of them wrote to this table, the rest is read again
        after that row's key, so a row deleted or changed by an earlier sibling's branch is seen as it now is.
        """
        tid = child.table.id
        key = child.table.key
        rows = self._select(child, f"{where} ORDER BY {','.join(quote_ident(k) for k in key)}")
        i = 0
        while i < len(rows):
            row = rows[i]
            i += 1
            write(row)
            mark = walk.wrote(tid)
            descend(row)
            if walk.writes[tid] != mark and i < len(rows):
                later = after_key(key, child.key_literal(child.key(row)))
                rows = self._select(child, f"({where}) AND ({later}) ORDER BY {','.join(quote_ident(k) for k in key)}")
                i = 0

    def _refuse_beyond_innodb(
        self, child: TablePlan, fk: ForeignKey, row: Row, level: int, walk: _Walk, *, update: bool
    ) -> None:
        """Stop where InnoDB would have failed the source statement: then the source did not get here."""
        where = f"{child.table} key {_shown(child.key(row))} (constraint {fk.name})"
        if level >= MAX_DEPTH:
            why = f"reaches {where} {level} levels down; InnoDB fails a statement whose cascade goes {MAX_DEPTH} deep"
        elif update and walk.updating.get(child.table.id):
            why = f"updates {where}, a table the same cascade is updating; InnoDB fails such a statement"
        else:
            return
        raise DriftError(
            f"the cascade of {walk.root} {why}, so the source cannot have run it: the target holds rows the source"
            " does not (drift). Nothing of this batch was committed; run `austasync verify` and repair the tables"
        )


def referenced_changed(plan: TablePlan, fk: ForeignKey, before: Sequence[object], after: Sequence[object]) -> bool:
    """A change of bytes counts, even where the collation says equal ('abc' -> 'ABC' cascades)."""
    return any(
        type(a) is not type(b) or a != b
        for a, b in zip(_values(plan, fk.parent_columns, before), _values(plan, fk.parent_columns, after), strict=True)
    )


def _cyclic(plans: Mapping[TableId, TablePlan]) -> frozenset[TableId]:
    """Tables from which a cascade can lead back to the same table (self-references included)."""
    edges: dict[TableId, set[TableId]] = {}
    for tid, plan in plans.items():
        edges[tid] = {fk.child for fk in (*plan.on_delete, *plan.on_update)}
    out = set()
    for start in plans:
        seen: set[TableId] = set()
        todo = list(edges.get(start, ()))
        while todo:
            tid = todo.pop()
            if tid == start:
                out.add(start)
                break
            if tid not in seen:
                seen.add(tid)
                todo.extend(edges.get(tid, ()))
    return frozenset(out)


def _innodb_order(plan: TablePlan, fks: Iterable[ForeignKey]) -> list[ForeignKey]:
    """InnoDB's order: foreign keys on the clustered key first, then the others; each by ``db/name`` bytes."""
    key = plan.table.key

    def order(fk: ForeignKey) -> tuple[int, bytes]:
        on_key = tuple(fk.parent_columns) == tuple(key[: len(fk.parent_columns)])
        return (0 if on_key else 1, f"{fk.child[0]}/{fk.name}".encode())

    return sorted(fks, key=order)


def _values(plan: TablePlan, columns: Sequence[str], row: Sequence[object]) -> list[object]:
    names = [c.name for c in plan.table.columns]
    return [row[names.index(c)] for c in columns]


def _literal(plan: TablePlan, column: str, value: object) -> str:
    idx = [c.name for c in plan.table.columns].index(column)
    return value_literal(value, plan.kinds[idx][0], plan.kinds[idx][1])


def _match(plan: TablePlan, columns: Sequence[str], values: Sequence[object]) -> str:
    return " AND ".join(
        f"{quote_ident(col)} = {_literal(plan, col, value)}" for col, value in zip(columns, values, strict=True)
    )


def _key_match(plan: TablePlan, row: Row) -> str:
    lits = plan.key_literal(plan.key(row))
    return " AND ".join(f"{quote_ident(c)} = {lit}" for c, lit in zip(plan.table.key, lits, strict=True))


def _assignments(child: TablePlan, fk: ForeignKey, new: Sequence[object] | None) -> str:
    sets = [
        f"{quote_ident(col)} = {'NULL' if new is None else _literal(child, col, new[i])}"
        for i, col in enumerate(fk.child_columns)
    ]
    # InnoDB's own cascade leaves ON UPDATE CURRENT_TIMESTAMP columns alone; assigning them keeps them
    sets += [f"{quote_ident(c.name)} = {quote_ident(c.name)}" for c in child.table.columns if c.on_update_timestamp]
    return ", ".join(sets)


def _shown(key: Sequence[object]) -> str:
    return "(" + ", ".join(repr(v) for v in key) + ")"
