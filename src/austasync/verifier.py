"""``austasync verify``: prove that source and target hold the same rows, or name the rows that differ.

Both sides are read in REPEATABLE READ consistent snapshots opened at one aligned point
(docs/DESIGN.md#rule-aligned-verification): the daemon, through an :class:`Aligner`, pauses its applier at a
transaction boundary, the source snapshot is opened and its exact binlog position P read, the applier runs to
exactly P and stays there while the target snapshot opens, then goes on. The target snapshot must then show the
daemon's checkpoint at exactly P (it is committed with the data), which proves the alignment whatever the daemon's
release timing. No lock is held on the source while anything waits. Snapshots are renewed within
``copy.snapshot_seconds`` so neither the applier nor the source's undo history waits long. Without a daemon both
sides are compared as they are (``aligned: false``).

Each table is compared in key-ordered chunks: the source sums the next rows and names the chunk's last key (the
first chunk has no lower bound and the last one no upper bound, so target rows before the first or past the last
source key are seen) while the target sums the previous chunk's key range: both servers work at once
(:mod:`austasync.rowhash` says what is summed and why two changed rows cannot cancel). A mismatched chunk is
narrowed inside the same snapshots: split into parts by source keys, each part summed on both sides, until a
part is small enough to compare key-ordered row hashes, each differing key classified as missing_in_target,
extra_in_target or changed. Every differing key is compared again at a new aligned point and counts only if it
differs both times: a row caught in flight never becomes a reported difference.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import pymysql

from austasync import governor, objects, rowhash
from austasync import log as logmod
from austasync.config import Config, Secret
from austasync.copier import SnapshotReader
from austasync.db import (
    Connection,
    binlog_end_or_none,
    connect,
    query,
    setup_raw_copy_session,
    setup_source_session,
    start_snapshot,
)
from austasync.errors import ConfigError, UnavailableError
from austasync.objects import ObjectDifference
from austasync.position import Position
from austasync.schema import Table, discover_tables, parse_foreign_keys
from austasync.sql import after_key, at_most_key, in_list, qualified, quote_ident, raw_literal
from austasync.state import TargetState

T = TypeVar("T")

Key = tuple[bytes, ...]
_log = logmod.get("austasync.verify")
MISSING = "missing_in_target"
EXTRA = "extra_in_target"
CHANGED = "changed"
CHUNK_SECONDS = 0.25  # a checksum query's time budget: chunk sizes adapt to it
MIN_CHUNK_ROWS = 100
MAX_CHUNK_ROWS = 10_000  # a mismatched chunk is checksummed again while narrowing: keep that cheap
LEAF_ROWS = 2000  # a mismatched range this small is compared row by row
SPLIT_PARTS = 32  # a larger one is split into this many parts, all checksummed in one scan per side
RECHECK_KEYS = 500
#: a rest between chunks this long or longer is taken with both snapshots closed: a read view held while idle
#: only grows the source's undo history (the governor's history list length)
LONG_REST_SECONDS = 1.0
ALIGN_ATTEMPTS = 3
_ER_NO_SUCH_TABLE = 1146
_ER_BAD_DB = 1049


# --- alignment with the daemon's applier -----------------------------------------------------------------------


class Aligner(Protocol):
    """The daemon's barrier, as the verifier needs it."""

    def pause(self) -> Position | None:
        """Pause the applier at a transaction boundary; None when there is no daemon to align with."""

    def advance_to(self, position: Position) -> None:
        """Apply exactly up to ``position`` and stay paused there."""

    def release(self) -> None:
        """Let the applier go on."""


class NoDaemonAligner:
    """No daemon runs: the target does not move, so both sides are compared as they are (``aligned: false``)."""

    def pause(self) -> Position | None:
        return None

    def advance_to(self, position: Position) -> None:
        del position

    def release(self) -> None:
        return None


def control_disabled(config: Config, status: dict[str, Any] | None) -> bool:
    """The daemon serves no /control/* (``[http] control = "disabled"`` here, or as it published)."""
    return config.http.control == "disabled" or (status or {}).get("control_auth") == "disabled"


def daemon_control(config: Config, status: dict[str, Any] | None) -> HttpAligner:
    """The running daemon's control interface, with this configuration's ``[http] control_token``."""
    return HttpAligner(control_url(config, status), token=config.http.control_token)


def control_url(config: Config, status: dict[str, Any] | None) -> str:
    """The daemon's control address: what it published (``control_listen``, else ``http_listen``), else
    ``[http] control_listen`` or ``[http] listen``."""
    status = status or {}
    listen = str(
        status.get("control_listen") or status.get("http_listen") or config.http.control_listen or config.http.listen
    )
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        raise UnavailableError(
            f"a daemon holds the lease of migration {config.replication.name!r} but its control address is not"
            f" known ({listen!r}); set [http] listen to a fixed port"
        )
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 (a wildcard listen address is reached on loopback)
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


class HttpAligner:
    """The daemon's control interface on its ``[http] listen`` address (it auto-releases after 10 s).

    ``POST /control/barrier/pause`` answers ``{"position": "file:pos"}`` once paused at a transaction boundary;
    ``POST /control/barrier/advance`` with ``{"position": "file:pos"}`` answers once the applier stands exactly
    there, still paused; ``POST /control/barrier/release``.
    """

    def __init__(self, base_url: str, timeout_seconds: float = 30.0, token: Secret | None = None) -> None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(f"daemon control URL must be http(s), got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout_seconds
        self.token = token if token is not None else Secret("")  # a Secret: never in a repr or a traceback

    def pause(self) -> Position | None:
        return Position.parse(str(self._post("barrier/pause", None)["position"]))

    def advance_to(self, position: Position) -> None:
        answer = self._post("barrier/advance", {"position": str(position)})
        reached = answer.get("position")
        if reached is not None and Position.parse(str(reached)) != position:
            raise UnavailableError(f"the daemon stopped at {reached}, not at the snapshot position {position}")

    def release(self) -> None:
        try:
            self._post("barrier/release", None)
        except UnavailableError as exc:
            # it releases by itself after 10 s; the snapshots were checked against the target's checkpoint
            _log.warning("could not release the daemon's barrier", error=str(exc))

    def repair(self, tables: dict[str, list[list[str]]], timeout_seconds: float = 120.0) -> dict[str, Any]:
        """``POST /control/repair``: the daemon re-copies these keys (hex-encoded key values per table) from the
        source at its barrier, fenced, and answers per table what it deleted and wrote."""
        previous, self.timeout = self.timeout, timeout_seconds
        try:
            return self._post("repair", {"tables": tables})
        finally:
            self.timeout = previous

    def written(self) -> dict[str, Any]:
        """``POST /control/verify/written``: the keys written since the daemon's last clean full pass (see
        :meth:`austasync.scheduler.VerificationScheduler.written_since_baseline`)."""
        return self._post("verify/written", None)

    def throttle(self, pause: bool, by: str = "", note: str = "") -> dict[str, Any]:
        """``POST /control/throttle/pause`` (with who and why) or ``/control/throttle/resume``."""
        if pause:
            return self._post("throttle/pause", {"by": by, "note": note})
        return self._post("throttle/resume", None)

    def _post(self, action: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = f"{self.base_url}/control/{action}"
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            url, data=json.dumps(body or {}).encode(), method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (same)
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            if exc.code in (401, 403):
                raise ConfigError(_refused_hint(action, exc.code, detail, bool(self.token))) from None
            raise UnavailableError(f"the daemon refused {action} ({exc.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise UnavailableError(f"cannot reach the daemon's control interface at {url}: {exc}") from None
        try:
            doc = json.loads(payload or b"{}")
        except ValueError:
            raise UnavailableError(f"the daemon answered {action} with something that is not JSON") from None
        return doc if isinstance(doc, dict) else {}


def _refused_hint(action: str, code: int, detail: str, sent_token: bool) -> str:
    """What to fix when the daemon refused the control call for who is asking (never the token itself)."""
    if code == 401 or not sent_token:
        fix = "set [http] control_token (or control_token_file) in this configuration to the daemon's token"
    elif "wrong" in detail:
        fix = "[http] control_token here differs from the daemon's; use the same secret"
    else:
        fix = "see the daemon's [http] control settings"
    return f"the daemon refused {action} ({code}): {detail}; {fix}"


# --- results ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    key: Key
    kind: str


@dataclass
class TableResult:
    table: Table
    target_name: str
    rows_checked: int = 0
    chunks: int = 0
    differences: list[Difference] = field(default_factory=list)
    schema_differences: list[str] = field(default_factory=list)
    unverified: str | None = None  # why the rows were not compared

    @property
    def consistent(self) -> bool:
        return self.unverified is None and not self.differences and not self.schema_differences

    @property
    def differs(self) -> bool:
        return bool(self.differences or self.schema_differences)


@dataclass
class Result:
    tables: list[TableResult]
    aligned: bool
    source_position: Position | None
    started_at: datetime
    duration_seconds: float
    flavor: str
    #: tables, views and routines on one side only or defined differently (full passes only)
    objects: list[ObjectDifference] = field(default_factory=list)
    #: selected tables that are not replicated and so not verified (``db.table: why``)
    refused: list[str] = field(default_factory=list)
    #: the target's binlog end when the verification started: foreign writes logged up to here are covered
    target_start: Position | None = None
    #: every selected table compared whole and every object's schema: a full pass
    full: bool = False
    #: tables compared at some keys only (the written-keys passes), which prove nothing about their other rows
    keyed: frozenset[str] = frozenset()

    @property
    def consistent(self) -> bool:
        return all(t.consistent for t in self.tables) and not self.objects and not self.refused

    @property
    def differs(self) -> bool:
        return any(t.differs for t in self.tables) or bool(self.objects)


# --- the two snapshot sessions ---------------------------------------------------------------------------------


class Snapshots:
    """A source and a target snapshot session opened at one aligned point and renewed within a time budget."""

    def __init__(self, config: Config, aligner: Aligner, tables: Sequence[Table], clock: Callable[[], float]) -> None:
        self.aligner = aligner
        self.tables = list(tables)
        self.clock = clock
        self.budget = max(config.copy.snapshot_seconds, 0.1)
        self.state_table = f"{quote_ident(config.replication.state_schema)}.state"
        self.migration = config.replication.name
        self.source = SnapshotReader(config.source)
        self.target: Connection = connect(config.target, "target", raw=True)
        setup_raw_copy_session(self.target)
        self.position: Position | None = None
        self.aligned: bool | None = None  # every snapshot pair so far was aligned by a daemon
        self.opened_at = 0.0
        self.open_now = False

    def open(self) -> Position:
        """Open both snapshots at one point; with a daemon, the target's own checkpoint proves the point."""
        for _ in range(ALIGN_ATTEMPTS):
            started = self.clock()
            position, by_daemon = self._open_pair()
            if not by_daemon or self._target_at(position):
                self.aligned = by_daemon and self.aligned is not False
                self.position, self.opened_at, self.open_now = position, self.clock(), True
                _log.debug("snapshots open", position=str(position), seconds=round(self.clock() - started, 3))
                return position
            # the daemon let go before the target snapshot opened (its auto-release): try again
            self.source.close_snapshot()
            query(self.target, "COMMIT")
        raise UnavailableError(
            f"could not open the target's snapshot at the source position {position} in {ALIGN_ATTEMPTS} tries:"
            " the daemon released its barrier too early"
        )

    def _open_pair(self) -> tuple[Position, bool]:
        paused = self.aligner.pause()
        try:
            position = self.source.open_snapshot(self.tables)
            if paused is not None:
                self.aligner.advance_to(position)
            start_snapshot(self.target)
        finally:
            if paused is not None:
                self.aligner.release()
        return position, paused is not None

    def _target_at(self, position: Position) -> bool:
        """Whether the target snapshot holds exactly the source at ``position``: the checkpoint is committed in
        the same transaction as the data it describes (docs/DESIGN.md#rule-target-truth)."""
        rows = _fetch(
            self.target,
            f"SELECT file, pos, skip_events FROM {self.state_table} WHERE migration = '{self.migration}'",
        )
        if not rows:
            return False
        file, pos, skip = rows[0]
        return Position(file.decode(), int(pos)) == position and not int(skip)

    def close(self) -> None:
        if self.open_now:
            self.source.close_snapshot()
            query(self.target, "COMMIT")
            self.open_now = False

    def renew(self) -> None:
        self.close()
        self.open()

    def renew_if_due(self) -> None:
        if not self.open_now or self.clock() - self.opened_at >= self.budget:
            self.renew()

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # closing on the way out; the servers end the snapshots themselves
            self.close()
        self.source.close()
        with contextlib.suppress(Exception):
            self.target.close()


def _fetch(conn: Connection, sql: str) -> list[tuple[Any, ...]]:
    """Run a statement whose literals carry raw bytes as latin1 characters (:mod:`austasync.sql`)."""
    with conn.cursor() as cur:
        cur.execute(sql.encode("latin1"))
        return list(cur.fetchall())


# --- table selection and pre-checks ----------------------------------------------------------------------------


def select_tables(tables: dict[tuple[str, str], Table], only: Sequence[str] | None) -> list[Table]:
    """The replicated tables to verify, in name order; ``only`` names ``db.table`` items, each must exist."""
    by_name = {str(t): t for t in tables.values()}
    if not only:
        return [by_name[n] for n in sorted(by_name)]
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ConfigError(
            f"--tables names tables that are not replicated: {', '.join(unknown)} (known: {', '.join(sorted(by_name))})"
        )
    return [by_name[n] for n in sorted(set(only))]


def hash_flavor(source: Connection, target: Connection) -> str:
    """CRC32 + CRC32C when both servers have CRC32C (MariaDB 10.8+), else MD5 (MySQL 8); see :mod:`rowhash`."""
    one_pass = True
    for conn in (source, target):
        try:
            rows = query(conn, rowhash.probe_sql())
        except pymysql.err.MySQLError:
            return rowhash.MD5
        one_pass = one_pass and bool(rows) and str(rows[0][0]) == "1"
    return rowhash.CRC if one_pass else rowhash.CRC_TWICE


def _shape(conn: Connection, db: str, table: str) -> dict[str, tuple[str, ...]]:
    rows = query(
        conn,
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COALESCE(COLLATION_NAME, ''), COALESCE(COLUMN_DEFAULT, 'NULL'),"
        " EXTRA, COALESCE(GENERATION_EXPRESSION, ''), ORDINAL_POSITION FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (db, table),
    )
    return {str(r[0]): tuple(str(v).lower() for v in r[1:]) for r in rows}


_COLUMN_FIELDS = ("type", "nullable", "collation", "default", "extra", "generated as", "position")


def _indexes(conn: Connection, db: str, table: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Index name → its columns in order, each with uniqueness, prefix length, order and index type."""
    rows = query(
        conn,
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME, COALESCE(SUB_PART, ''), COALESCE(COLLATION, ''), INDEX_TYPE"
        " FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
        " ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (db, table),
    )
    out: dict[str, list[tuple[str, ...]]] = {}
    for name, non_unique, *rest in rows:
        unique = "unique" if str(non_unique) == "0" else "non-unique"
        out.setdefault(str(name), []).append((unique, *(str(v) for v in rest)))
    return {name: tuple(parts) for name, parts in out.items()}


def _describe_index(parts: tuple[tuple[str, ...], ...]) -> str:
    columns = ", ".join(p[1] + (f"({p[2]})" if p[2] else "") + (" DESC" if p[3] == "D" else "") for p in parts)
    return f"{parts[0][0]} {parts[0][4]} ({columns})"


def _foreign_keys(conn: Connection, db: str, table: str, source_db: str) -> dict[str, str]:
    """Constraint name → its definition, parents named by their source database (``SHOW CREATE TABLE``: the
    information_schema views show nothing to a SELECT-only user on MariaDB)."""
    create = str(query(conn, f"SHOW CREATE TABLE {qualified(db, table)}")[0][1])
    out = {}
    for fk in parse_foreign_keys(db, table, create):
        parent_db = source_db if fk.parent[0] == db else fk.parent[0]
        out[fk.name] = (
            f"({', '.join(fk.child_columns)}) REFERENCES {parent_db}.{fk.parent[1]} ({', '.join(fk.parent_columns)})"
            f" ON DELETE {fk.on_delete} ON UPDATE {fk.on_update}"
        )
    return out


def schema_differences(source: Connection, target: Connection, table: Table, target_db: str) -> list[str]:
    """Columns (name, type, nullability, collation, default, extra, generation, order), indexes and foreign keys
    that differ: a row checksum cannot see them, and chunk ranges are only comparable under equal collations."""
    want, have = _shape(source, table.db, table.name), _shape(target, target_db, table.name)
    if not have:
        return [f"table {target_db}.{table.name} does not exist on the target"]
    out = [f"column {c} is missing on the target" for c in want if c not in have]
    out += [f"column {c} exists only on the target" for c in have if c not in want]
    for c in want:
        if c in have and want[c] != have[c]:
            fields = [f for f, w, h in zip(_COLUMN_FIELDS, want[c], have[c], strict=True) if w != h]
            if fields == ["position"] and (out or len(want) != len(have)):
                continue  # moved only because another column is missing or extra: said already
            out.append(
                f"column {c} is {' '.join(have[c][:4])} on the target, {' '.join(want[c][:4])} on the source"
                f" ({', '.join(fields)} differ{'s' if len(fields) == 1 else ''})"
            )
    out += _index_differences(_indexes(source, table.db, table.name), _indexes(target, target_db, table.name))
    want_fk = _foreign_keys(source, table.db, table.name, table.db)
    have_fk = _foreign_keys(target, target_db, table.name, table.db)
    out += _named_differences("foreign key", want_fk, have_fk, str)
    return out


def _index_differences(
    want: dict[str, tuple[tuple[str, ...], ...]], have: dict[str, tuple[tuple[str, ...], ...]]
) -> list[str]:
    return _named_differences("index", want, have, _describe_index)


def _named_differences(kind: str, want: dict[str, T], have: dict[str, T], describe: Callable[[T], str]) -> list[str]:
    """Objects of ``kind`` by name: missing on the target, only on the target, or defined differently."""
    out = [f"{kind} {n} is missing on the target" for n in want if n not in have]
    out += [f"{kind} {n} exists only on the target" for n in have if n not in want]
    out += [
        f"{kind} {n} is {describe(have[n])} on the target, {describe(want[n])} on the source"
        for n in want
        if n in have and want[n] != have[n]
    ]
    return out


def copy_unfinished(config: Config, target: Connection) -> set[str] | None:
    """Tables whose copy is not complete; None when the target has no state (never replicated by austasync)."""
    state = TargetState(config.replication.state_schema, config.replication.name)
    try:
        cursors = state.cursors(target)
    except pymysql.err.ProgrammingError as exc:
        if exc.args and exc.args[0] in (_ER_NO_SUCH_TABLE, _ER_BAD_DB):
            return None
        raise
    return {f"{c.db}.{c.table}" for c in cursors if not c.done}


def precheck(config: Config, source: Connection, target: Connection, tables: Sequence[Table]) -> list[TableResult]:
    unfinished = copy_unfinished(config, target)
    results = []
    for table in tables:
        target_db = config.replication.target_db(table.db)
        result = TableResult(table=table, target_name=qualified(target_db, table.name))
        if unfinished is not None and str(table) in unfinished:
            result.unverified = "copy not complete: a table is verified once it is copied"
        else:
            result.schema_differences = schema_differences(source, target, table, target_db)
        results.append(result)
    return results


# --- the comparison --------------------------------------------------------------------------------------------


def _literals(table: Table, key: Key) -> list[str]:
    return [raw_literal(v, c.kind, c.charset) for v, c in zip(key, table.key_columns, strict=True)]


def range_where(table: Table, lower: Key | None, upper: Key | None) -> str:
    """Keys in (lower, upper]; no bound where None (the first and the open-ended last chunk)."""
    conds = []
    if lower is not None:
        conds.append(after_key(table.key, _literals(table, lower)))
    if upper is not None:
        conds.append(at_most_key(table.key, _literals(table, upper)))
    return " AND ".join(conds) or "1=1"


_EMPTY = rowhash.ChunkSum(count=0, sum_x=0, sum_x2=0)
ProgressFn = Callable[[TableResult], None]
Rows = list[tuple[Any, ...]]


@dataclass
class _Pending:
    """A chunk whose source sums are known and whose target sums are being computed."""

    lower: Key | None
    upper: Key | None
    source: rowhash.ChunkSum
    target: Future[Rows]


class Comparison:
    """One verification pass over prepared tables, then the re-check of every differing key."""

    def __init__(
        self,
        config: Config,
        snapshots: Snapshots,
        flavor: str,
        throttle_conn: Connection,
        progress: ProgressFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        pace: float = 1.0,
        sleep: Callable[[float], object] = time.sleep,
        hold: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.snaps = snapshots
        self.pace = pace
        self.sleep = sleep
        self.hold = hold  # the operator's pause: a reason ("" = none) to wait, snapshots closed
        self.governor_pace = 1.0  # the source's signals near their limits slow the pass further (governor)
        self.flavor = flavor
        self.throttle_conn = throttle_conn
        self.progress = progress
        self.clock = clock
        self.chunk_rows = max(MIN_CHUNK_ROWS, config.copy.chunk_rows)
        self.suspects: dict[str, dict[Key, str]] = {}
        self.throttle_checked = 0.0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-target")

    def run(self, results: Sequence[TableResult], keys: Mapping[str, Collection[tuple[str, ...]]]) -> None:
        try:
            for result in results:
                if result.unverified is not None or result.schema_differences:
                    continue
                if str(result.table) in keys:
                    self._check_keys(result, sorted(keys[str(result.table)]))
                else:
                    self._scan(result)
            self._recheck([r for r in results if str(r.table) in self.suspects])
        finally:
            self.pool.shutdown(wait=True)

    def _both(self, source_sql: str, target_sql: str) -> tuple[Rows, Rows]:
        """The same question to both servers at once: each answers from its own snapshot, on its own CPU."""
        future = self.pool.submit(_fetch, self.snaps.target, target_sql)
        try:
            source_rows = _fetch(self.snaps.source.conn, source_sql)
        finally:
            target_rows = future.result()
        return source_rows, target_rows

    def _scan(self, result: TableResult) -> None:
        """Chunks in key order, pipelined: the source sums chunk i+1 while the target sums chunk i."""
        lower: Key | None = None
        pending: _Pending | None = None
        while True:
            if self._pause_due():
                self._settle(result, pending)
                pending = None
                self._throttle()
                self.snaps.renew_if_due()
            started = self.clock()
            source_sum, upper = self._source_chunk(result.table, lower)
            self._adapt(self.clock() - started)
            self._settle(result, pending)
            target_sql = rowhash.chunk_sql(
                result.table, result.target_name, range_where(result.table, lower, upper), self.flavor
            )
            pending = _Pending(lower, upper, source_sum, self.pool.submit(_fetch, self.snaps.target, target_sql))
            if upper is None:
                self._settle(result, pending)
                return
            lower = upper
            rest = self._rest_for(self.clock() - started)
            if rest >= LONG_REST_SECONDS:
                self._settle(result, pending)
                pending = None
                self.snaps.close()  # reopened, aligned again, by the next chunk's _pause_due
            if rest > 0:
                self.sleep(rest)

    def _rest_for(self, busy: float) -> float:
        """At a pace < 1 (``pace`` times the governor's), idle in proportion to the time the last chunk kept the
        servers busy."""
        pace = self.pace * self.governor_pace
        return busy * (1 / pace - 1) if pace < 1 else 0.0

    def _check_keys(self, result: TableResult, keys: Sequence[tuple[str, ...]]) -> None:
        """Row hashes of both sides at these keys only, in batches; differing keys become suspects, re-checked at a
        new aligned point like a full pass's."""
        for start in range(0, len(keys), RECHECK_KEYS):
            if self._pause_due():
                self._throttle()
                self.snaps.renew_if_due()
            batch = keys[start : start + RECHECK_KEYS]
            found = self._row_differences(result, in_list(result.table.key, batch))
            result.chunks += 1
            result.rows_checked += len(batch)
            if found:
                self.suspects.setdefault(str(result.table), {}).update(found)
            if self.progress is not None:
                self.progress(result)

    def _pause_due(self) -> bool:
        """Snapshots to renew or the source to check: both need the pipeline drained first."""
        if not self.snaps.open_now or self.clock() - self.snaps.opened_at >= self.snaps.budget:
            return True
        if self.hold is not None and self.hold():
            return True
        interval = self.config.throttle.check_interval_seconds
        return _governed(self.config) and self.clock() - self.throttle_checked >= interval

    def _source_chunk(self, table: Table, lower: Key | None) -> tuple[rowhash.ChunkSum, Key | None]:
        """The sums of the next ``chunk_rows`` source rows and the key of the last (None: the rest of the table)."""
        name = qualified(table.db, table.name)
        after = range_where(table, lower, None)
        if len(table.key) == 1:
            row = _fetch(
                self.snaps.source.conn, rowhash.leading_chunk_sql(table, name, after, self.chunk_rows, self.flavor)
            )[0]
            total = rowhash.parse_chunk(row, f"{table} on the source")
            return total, ((row[4],) if total.count >= self.chunk_rows else None)
        upper = self._boundary(table, lower)
        where = range_where(table, lower, upper)
        row = _fetch(self.snaps.source.conn, rowhash.chunk_sql(table, name, where, self.flavor))[0]
        return rowhash.parse_chunk(row, f"{table} on the source"), upper

    def _boundary(self, table: Table, lower: Key | None) -> Key | None:
        """The key of the chunk's last row on the source; None when the rest of the table fits in one chunk."""
        order = ", ".join(quote_ident(k) for k in table.key)
        rows = _fetch(
            self.snaps.source.conn,
            f"SELECT {', '.join(rowhash.key_exprs(table))} FROM {qualified(table.db, table.name)}"
            f" WHERE {range_where(table, lower, None)} ORDER BY {order} LIMIT 1 OFFSET {self.chunk_rows - 1}",
        )
        return tuple(rows[0]) if rows else None

    def _settle(self, result: TableResult, pending: _Pending | None) -> None:
        """Wait for the target's sums of a chunk; narrow it to rows when they differ from the source's."""
        if pending is None:
            return
        target_sum = rowhash.parse_chunk(pending.target.result()[0], f"{result.target_name} on the target")
        result.chunks += 1
        result.rows_checked += pending.source.count
        if pending.source != target_sum:
            found = self._narrow(result, pending.lower, pending.upper, pending.source, target_sum)
            self.suspects.setdefault(str(result.table), {}).update(found)
        if self.progress is not None:
            self.progress(result)

    def _adapt(self, seconds: float) -> None:
        if seconds < CHUNK_SECONDS / 2:
            self.chunk_rows = min(MAX_CHUNK_ROWS, self.chunk_rows * 2)
        elif seconds > CHUNK_SECONDS * 2:
            self.chunk_rows = max(MIN_CHUNK_ROWS, self.chunk_rows // 2)

    def _narrow(
        self,
        result: TableResult,
        lower: Key | None,
        upper: Key | None,
        source_sum: rowhash.ChunkSum,
        target_sum: rowhash.ChunkSum,
    ) -> dict[Key, str]:
        """The differing keys of a mismatched range: split it by source keys, recurse into mismatched parts,
        compare row hashes once a part is small. Everything runs inside the snapshots that saw the mismatch."""
        table = result.table
        where = range_where(table, lower, upper)
        if source_sum.count <= LEAF_ROWS:
            # small on the source: compare rows, the target's extra rows each being a difference anyway
            return self._row_differences(result, where)
        bounds = self._split_points(table, where, source_sum.count)
        parts = self._part_sums(result, where, bounds)
        found: dict[Key, str] = {}
        for i, (low, high) in enumerate(itertools.pairwise([lower, *bounds, upper])):
            part_source, part_target = parts[0].get(i, _EMPTY), parts[1].get(i, _EMPTY)
            if part_source != part_target:
                found.update(self._narrow(result, low, high, part_source, part_target))
        return found

    def _part_sums(
        self, result: TableResult, where: str, bounds: Sequence[Key]
    ) -> tuple[dict[int, rowhash.ChunkSum], dict[int, rowhash.ChunkSum]]:
        """The sums of every part between ``bounds``, in one scan per side."""
        table = result.table
        literals = [_literals(table, b) for b in bounds]
        source_rows, target_rows = self._both(
            rowhash.parts_sql(table, qualified(table.db, table.name), where, literals, self.flavor),
            rowhash.parts_sql(table, result.target_name, where, literals, self.flavor),
        )
        return (
            {int(r[0]): rowhash.parse_chunk(r[1:], f"{table} on the source") for r in source_rows},
            {int(r[0]): rowhash.parse_chunk(r[1:], f"{result.target_name} on the target") for r in target_rows},
        )

    def _split_points(self, table: Table, where: str, rows: int) -> list[Key]:
        step = -(-rows // SPLIT_PARTS)
        sql = rowhash.split_sql(table, qualified(table.db, table.name), where, step)
        return [tuple(r) for r in _fetch(self.snaps.source.conn, sql)]

    def _row_differences(self, result: TableResult, where: str) -> dict[Key, str]:
        """Every differing key of a range, from the key-ordered row hashes of both sides."""
        table = result.table
        source_rows, target_rows = self._both(
            rowhash.rows_sql(table, qualified(table.db, table.name), where, self.flavor),
            rowhash.rows_sql(table, result.target_name, where, self.flavor),
        )
        width = len(table.key)
        source = {tuple(r[:width]): r[width] for r in source_rows}
        target = {tuple(r[:width]): r[width] for r in target_rows}
        found: dict[Key, str] = {}
        for key, digest in source.items():
            if key not in target:
                found[key] = MISSING
            elif target[key] != digest:
                found[key] = CHANGED
        found.update((key, EXTRA) for key in target if key not in source)
        return found

    def _recheck(self, results: Sequence[TableResult]) -> None:
        """Compare every differing key again at a new aligned point; only keys differing both times count."""
        if not results:
            return
        self.snaps.renew()
        for result in results:
            first = self.suspects[str(result.table)]
            keys = list(first)
            for i in range(0, len(keys), RECHECK_KEYS):
                self.snaps.renew_if_due()
                batch = keys[i : i + RECHECK_KEYS]
                where = in_list(result.table.key, [_literals(result.table, k) for k in batch])
                again = self._row_differences(result, where)
                result.differences.extend(Difference(k, again[k]) for k in batch if k in again)

    def _throttle(self) -> None:
        """Wait while the operator's pause holds or a source signal of ``[throttle]`` is over budget or unreadable
        (fail closed: docs/DESIGN.md#rule-source-budget and :mod:`austasync.governor`)."""
        held = self.hold is not None and bool(self.hold())
        if not held and (
            not _governed(self.config)
            or self.clock() - self.throttle_checked < self.config.throttle.check_interval_seconds
        ):
            return
        self.throttle_checked = self.clock()
        said = ""
        while reason := self._reason():
            if reason.split(" ")[:3] != said.split(" ")[:3]:  # once per signal, not once per changing reading
                _log.warning("verification paused by the throttle", reason=reason)
                said = reason
            # a snapshot held while waiting would only grow the source's undo history
            self.snaps.close()
            time.sleep(self.config.throttle.check_interval_seconds)

    def _reason(self) -> str:
        """Why to wait now (the operator's pause first, then the source's signals); sets the governor's pace."""
        if self.hold is not None and (held := self.hold()):
            return held
        if not _governed(self.config):
            self.governor_pace = 1.0
            return ""
        reading = governor.read_source(self.throttle_conn, self.config.throttle)
        self.governor_pace = reading.pace
        return reading.reason


def _governed(config: Config) -> bool:
    throttle = config.throttle
    return bool(
        throttle.max_threads_running
        or throttle.max_history_list_length
        or throttle.max_probe_ms
        or throttle.watch_lock_waits
    )


@contextlib.contextmanager
def _connections(config: Config) -> Iterator[tuple[Connection, Connection]]:
    source = connect(config.source, "source")
    try:
        setup_source_session(source)
        target = connect(config.target, "target")
        try:
            yield source, target
        finally:
            target.close()
    finally:
        source.close()


def verify(
    config: Config,
    aligner: Aligner,
    only: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    clock: Callable[[], float] = time.monotonic,
    pace: float = 1.0,
    sleep: Callable[[float], object] = time.sleep,
    keys: Mapping[str, Collection[tuple[str, ...]]] | None = None,
    hold: Callable[[], str] | None = None,
) -> Result:
    """Compare the selected replicated tables (all by default) of source and target; ``pace`` < 1 idles between
    chunks so the checksum queries take that share of the time. A table named in ``keys`` is compared at those
    keys only (SQL literals of its key columns), each differing one named as in a full pass. ``hold``: a reason
    to wait ("" = none), asked between chunks (the daemon's operator pause)."""
    started_at, started = datetime.now(UTC), clock()
    with _connections(config) as (source, target):
        # read before any snapshot opens: a write logged up to here is in both snapshots (austasync.foreign)
        target_start = binlog_end_or_none(target)
        replicated, refused = discover_tables(source, config)
        tables = select_tables(replicated, only)
        flavor = hash_flavor(source, target)
        results = precheck(config, source, target, tables)
        # a pass over some tables proves nothing about the others, nor about which objects exist
        differences = objects.compare(source, target, config) if only is None else []
        snaps = Snapshots(config, aligner, [r.table for r in results if r.unverified is None], clock)
        try:
            Comparison(config, snaps, flavor, source, progress, clock, pace, sleep, hold).run(results, keys or {})
        finally:
            snaps.shutdown()
    return Result(
        tables=results,
        aligned=bool(snaps.aligned),
        source_position=snaps.position,
        started_at=started_at,
        duration_seconds=clock() - started,
        flavor=flavor,
        objects=differences,
        refused=refused if only is None else [],
        target_start=target_start,
        full=only is None and not keys,
        keyed=frozenset(keys or ()),
    )
