"""``austasync verify --repair``: re-copy the differing keys from the source, fenced like every austasync write.

Rows written to the target must be the source's rows *at the target's checkpoint*, or the stream would later be
replayed over rows copied ahead of it (docs/DESIGN.md#rule-repair, docs/DESIGN.md#why-not-copy-ahead).

- With a daemon running (it holds the lease), the keys go to its ``POST /control/repair``: at its barrier it
  opens a source snapshot, applies the stream to exactly its position, reads those keys there and replaces them in
  one fenced target transaction with its checkpoint (:meth:`austasync.daemon.Daemon` ``_repair``).
- With no daemon, this process takes the Redis lease and fences the target itself (a daemon that starts meanwhile
  waits, a stale one cannot write), and refuses unless the source snapshot it reads stands exactly at the
  target's checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from austasync.config import Config
from austasync.copier import SnapshotReader
from austasync.db import Connection, connect, execute_raw, query, setup_target_session
from austasync.errors import UnavailableError
from austasync.mirror import Mirror
from austasync.position import Position
from austasync.schema import Table
from austasync.sql import in_list, qualified, raw_literal, select_expr
from austasync.state import Checkpoint, TargetState, connection_id, holder_name
from austasync.verifier import Key, Result, TableResult

KEYS_PER_STATEMENT = 500
MAX_STATEMENT_BYTES = 4 * 1024 * 1024


def _batches(keys: Sequence[Key], size: int) -> Iterator[Sequence[Key]]:
    for i in range(0, len(keys), size):
        yield keys[i : i + size]


def _key_literals(table: Table, key: Key) -> tuple[str, ...]:
    return tuple(raw_literal(v, c.kind, c.charset) for v, c in zip(key, table.key_columns, strict=True))


def _check_aligned(checkpoint: Checkpoint | None, position: Position) -> None:
    if checkpoint is None:
        raise UnavailableError("the target has no replication state for this migration: nothing to repair against")
    if checkpoint.skip_events or checkpoint.position != position:
        raise UnavailableError(
            f"the source is at {position} but the target's checkpoint is {checkpoint.position}: rows copied now"
            " would be ahead of the stream. Let `austasync run` catch up and stop it, then repair while the source"
            " is quiet (a repair through a running daemon needs its repair endpoint, not in this version)"
        )


def keys_to_wire(result: Result) -> dict[str, list[list[str]]]:
    """The differing keys per table, each key's values hex-encoded, for the daemon's repair endpoint."""
    return {str(t.table): [[v.hex() for v in d.key] for d in t.differences] for t in result.tables if t.differences}


def keys_from_wire(doc: object, tables: dict[str, Table]) -> dict[str, list[Key]]:
    """The endpoint's body, checked: known tables, keys of the right width, hex values. ValueError says what is
    wrong."""
    wanted = doc.get("tables") if isinstance(doc, dict) else None
    if not isinstance(wanted, dict) or not wanted:
        raise ValueError('body must be {"tables": {"db.table": [[hex key values], ...]}}')
    out: dict[str, list[Key]] = {}
    for name, keys in wanted.items():
        table = tables.get(str(name))
        if table is None:
            raise ValueError(f"{name} is not a replicated table")
        if not isinstance(keys, list) or not all(isinstance(k, list) and len(k) == len(table.key) for k in keys):
            raise ValueError(f"{name}: each key is a list of {len(table.key)} hex values ({', '.join(table.key)})")
        out[str(name)] = [tuple(bytes.fromhex(str(v)) for v in key) for key in keys]
    return out


def source_rows(reader: SnapshotReader, table: Table, keys: Sequence[Key]) -> list[tuple[bytes | None, ...]]:
    cols = ", ".join(select_expr(c.name, c.kind) for c in table.writable)
    rows: list[tuple[bytes | None, ...]] = []
    for batch in _batches(keys, KEYS_PER_STATEMENT):
        where = in_list(table.key, [_key_literals(table, k) for k in batch])
        with reader.conn.cursor() as cur:
            cur.execute(f"SELECT {cols} FROM {qualified(table.db, table.name)} WHERE {where}".encode("latin1"))
            rows.extend(cur.fetchall())
    return rows


def _insert(conn: Connection, target: str, table: Table, rows: Sequence[Sequence[bytes | None]]) -> None:
    head = f"INSERT INTO {target} ({', '.join(f'`{c.name}`' for c in table.writable)}) VALUES "
    parts: list[str] = []
    size = len(head)
    for row in rows:
        lit = "(" + ",".join(raw_literal(v, c.kind, c.charset) for v, c in zip(row, table.writable, strict=True)) + ")"
        if parts and size + len(lit) > MAX_STATEMENT_BYTES:
            execute_raw(conn, head + ",".join(parts))
            parts, size = [], len(head)
        parts.append(lit)
        size += len(lit) + 1
    if parts:
        execute_raw(conn, head + ",".join(parts))


def _repair_table(conn: Connection, state: TargetState, reader: SnapshotReader, result: TableResult) -> dict[str, int]:
    """Delete every differing key on the target, insert the source's rows for them: one fenced transaction."""
    table = result.table
    keys = [d.key for d in result.differences]
    rows = source_rows(reader, table, keys)
    state.check_fence(conn)
    # so the next daemon's watcher knows this transaction for austasync's (docs/DESIGN.md#rule-foreign-writes)
    state.mark_own_write(conn)
    deleted = 0
    for batch in _batches(keys, KEYS_PER_STATEMENT):
        where = in_list(table.key, [_key_literals(table, k) for k in batch])
        deleted += execute_raw(conn, f"DELETE FROM {result.target_name} WHERE {where}")
    _insert(conn, result.target_name, table, rows)
    query(conn, "COMMIT")
    return {"keys": len(keys), "rows_deleted": deleted, "rows_written": len(rows)}


def repair(config: Config, result: Result) -> dict[str, dict[str, int]]:
    """Re-copy the differing keys of every table of ``result``; per table what was deleted and written."""
    todo = [t for t in result.tables if t.differences]
    if not todo:
        return {}
    mirror = Mirror(config.redis, config.replication.name)
    mirror.ping()
    ttl = max(30.0, config.replication.lease_seconds)
    if not mirror.acquire_lease(holder_name() + " (verify --repair)", ttl, wait=False):
        raise UnavailableError(
            f"a daemon holds the lease of migration {config.replication.name!r}; a repair through it needs its"
            " repair endpoint (not in this version): stop it and run `austasync verify --repair` again"
        )
    try:
        return _repair_fenced(config, mirror, ttl, todo)
    finally:
        mirror.release_lease()


def _repair_fenced(
    config: Config, mirror: Mirror, ttl: float, todo: Sequence[TableResult]
) -> dict[str, dict[str, int]]:
    conn = connect(config.target, "target", autocommit=False)
    reader = SnapshotReader(config.source)
    try:
        setup_target_session(conn)
        state = TargetState(config.replication.state_schema, config.replication.name)
        state.ensure_schema(conn)
        state.take_over(conn, [connection_id(conn)])
        position = reader.open_snapshot([t.table for t in todo])
        _check_aligned(state.load(conn), position)
        done = {}
        for result in todo:
            if not mirror.renew_lease(ttl):
                raise UnavailableError("lost the migration's lease during the repair; stopped between tables")
            done[str(result.table)] = _repair_table(conn, state, reader, result)
        return done
    finally:
        reader.close()
        conn.close()
