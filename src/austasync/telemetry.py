"""What the daemon tells the world: lag, purge horizon, bytes behind, the status document, the progress line.

Lag is computed when asked (a scrape, a publish), from what the loop has and has not committed, so a dead loop
or a dead stream can never leave a stale "caught up": without events or heartbeats from the source for a few
heartbeat periods, the lag grows with the silence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from austasync.applier import Applier
from austasync.binlog.adapter import BinlogReader, TargetWriteWatcher
from austasync.config import Config
from austasync.db import Connection, query, variable
from austasync.foreign import MAX_PUBLISHED, Recorded
from austasync.governor import Pause
from austasync.metrics import Metrics
from austasync.mirror import Mirror
from austasync.position import Position
from austasync.recovery import RedisLink
from austasync.schema import TableId
from austasync.state import CopyCursor, holder_name

ALIVE_TTL_SECONDS = 10.0
SOURCE_REFRESH_SECONDS = 2.0
VERIFICATION_SYNC_SECONDS = 5.0


@dataclass
class Throttle:
    active: bool = False
    reason: str = ""
    checked: float = 0.0
    history_list_length: float = math.nan  # NaN: unreadable or not watched (see austasync.governor)
    probe_seconds: float = math.nan
    lock_waits: float = math.nan
    pace: float = 1.0  # share of full speed the copy and verification take (governor.pace_of); 0 when throttled
    slowed_by: str = ""  # the signal near its limit that slows them, when pace < 1


@dataclass
class Telemetry:
    config: Config
    mirror: Mirror
    metrics: Metrics
    log: Any
    wall: Callable[[], float] = time.time
    clock: Callable[[], float] = time.monotonic
    progress: TextIO | None = None
    phase: str = "starting"
    throttle: Throttle = field(default_factory=Throttle)
    pause: Pause = field(default_factory=Pause)  # the operator's, shown beside the governor's throttle
    cursors: dict[TableId, CopyCursor] = field(default_factory=dict)
    applier: Applier | None = None
    reader: BinlogReader | None = None
    watcher: TargetWriteWatcher | None = None
    watch_error: str | None = None
    watch_target: str = ""  # which server the watcher reads (host:port and server_id): positions are per server
    watch_resume: dict[str, Any] | None = None  # where the last daemon's watcher stopped, read at start
    source_head: Position | None = None
    binlog_files: list[tuple[str, int]] = field(default_factory=list)
    expire_seconds: float = math.inf
    last_applied_ts: float | None = None
    pending_since_ts: float | None = None
    pending_stop: dict[str, Any] | None = None
    open_foreign: list[Recorded] = field(default_factory=list)  # recorded in the target, not cleared yet
    generation: int | None = None
    last_publish: float = 0.0
    last_source_refresh: float = 0.0
    loop_tick: float = field(default_factory=time.monotonic)
    last_verification_sync: float = 0.0
    last_verification: dict[str, Any] | None = None
    heads_seen: list[tuple[Position, float]] = field(default_factory=list)
    http_listen: str | None = None
    # where /control/* answers (http_listen or control_listen) and how it is guarded; never the token
    control_listen: str | None = None
    control_auth: str | None = None
    # the source or target outage the daemon is reconnecting from (austasync.recovery.Reconnector.status)
    reconnecting: dict[str, Any] | None = None
    redis: RedisLink = field(init=False)

    def __post_init__(self) -> None:
        self.redis = RedisLink(self.config.redis, self.log, self.metrics, clock=self.clock, wall=self.wall)

    # --- computed at read time ---------------------------------------------------------------------------------

    @property
    def foreign_writes(self) -> int:
        """Foreign writes still open (the gate is not ready while any is)."""
        return len(self.open_foreign)

    def set_open_foreign(self, records: list[Recorded]) -> None:
        self.open_foreign = list(records)
        self.metrics.foreign_writes_open.set(len(records))

    def lag_seconds(self) -> float:
        """Age of the oldest source change not committed on the target; 0 when everything read is applied."""
        now = self.wall()
        lag = 0.0
        if self.pending_since_ts is not None:
            lag = max(lag, now - self.pending_since_ts)
        reader = self.reader
        if reader is not None:
            head = _peek_timestamp(reader)
            if head is not None:
                lag = max(lag, now - head)
            # a silent stream is not a caught-up stream: heartbeats arrive every heartbeat_seconds when idle
            silence = now - reader.last_event_wall
            grace = 3 * self.config.replication.heartbeat_seconds + 1.0
            if silence > grace:
                lag = max(lag, silence)
        behind = self._behind_since()
        if behind is not None:
            lag = max(lag, now - behind)
        return max(0.0, lag)

    def _behind_since(self) -> float | None:
        """When the source reached the oldest end-of-binlog position seen that is not committed yet.

        Measured against the source's own head (read every few seconds), this catches a stream that is behind
        while the applier's queue happens to be empty, e.g. when decoding is the bottleneck.
        """
        if self.applier is None:
            return None
        committed = self.applier.committed
        self.heads_seen = [(p, t) for p, t in self.heads_seen if p > committed]
        return self.heads_seen[0][1] if self.heads_seen else None

    def purge_horizon_seconds(self) -> float:
        """Seconds until the source may purge the binlog file the checkpoint needs (conservative)."""
        if math.isinf(self.expire_seconds) or self.applier is None:
            return math.inf
        committed = self.applier.committed
        if self.source_head is None or committed.file == self.source_head.file:
            return self.expire_seconds
        # the file was last written after the last event we applied from it: its age is at most this
        written = self.last_applied_ts or self.wall()
        return self.expire_seconds - (self.wall() - written)

    def bytes_behind(self) -> int:
        if self.applier is None or self.source_head is None:
            return 0
        committed, head = self.applier.committed, self.source_head
        if committed.file == head.file:
            return max(0, head.pos - committed.pos)
        total, counting = 0, False
        for name, size in self.binlog_files:
            if name == committed.file:
                counting = True
                total += size - committed.pos
            elif name == head.file:
                total += head.pos
                break
            elif counting:
                total += size
        return max(0, total)

    # --- refreshed by the loop -------------------------------------------------------------------------------

    def read_source_settings(self, source: Connection) -> None:
        seconds = variable(source, "binlog_expire_logs_seconds")
        days = variable(source, "expire_logs_days")
        expire = float(seconds or 0) or float(days or 0) * 86400
        self.expire_seconds = expire if expire > 0 else math.inf

    def refresh_source(self, source: Connection) -> None:
        now = self.clock()
        if now - self.last_source_refresh < SOURCE_REFRESH_SECONDS:
            return
        self.last_source_refresh = now
        rows = query(source, "SHOW BINARY LOGS")
        self.binlog_files = [(str(r[0]), int(r[1])) for r in rows]
        if rows:
            self.source_head = Position(str(rows[-1][0]), int(rows[-1][1]))
            if not self.heads_seen or self.source_head > self.heads_seen[-1][0]:
                self.heads_seen.append((self.source_head, self.wall()))
        self.metrics.bytes_behind.set(self.bytes_behind())

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.metrics.phase.state(phase)

    def set_cursor(self, cursor: CopyCursor) -> None:
        if (cursor.db, cursor.table) not in self.cursors:
            self.metrics.foreign_writes.labels(f"{cursor.db}.{cursor.table}")  # a zero series per table
        self.cursors[(cursor.db, cursor.table)] = cursor
        self.metrics.set_copy(f"{cursor.db}.{cursor.table}", cursor.rows_copied, cursor.rows_estimated, cursor.done)

    # --- publishing -------------------------------------------------------------------------------------------

    def status_doc(self) -> dict[str, Any]:
        applier = self.applier
        return {
            "phase": self.phase,
            "position": str(applier.committed) if applier else None,
            "skip_events": applier.skip_events if applier else 0,
            "source_head": str(self.source_head) if self.source_head else None,
            "lag_seconds": round(self.lag_seconds(), 3),
            "bytes_behind": self.bytes_behind(),
            "purge_horizon_seconds": _finite(self.purge_horizon_seconds()),
            "tables": {
                f"{c.db}.{c.table}": {
                    "rows_copied": c.rows_copied,
                    "rows_estimated": c.rows_estimated,
                    "done": c.done,
                }
                for c in self.cursors.values()
            },
            "throttle": {
                "active": self.throttle.active,
                "reason": self.throttle.reason,
                "source_history_list_length": _reading(self.throttle.history_list_length, 0),
                "source_probe_seconds": _reading(self.throttle.probe_seconds, 6),
                "source_lock_waits": _reading(self.throttle.lock_waits, 0),
                "pace": 0.0 if self.pause.doc is not None else round(self.throttle.pace, 3),
                "slowed_by": self.throttle.slowed_by,
                # the operator's pause (who, since, note), or None
                "paused": self.pause.doc,
            },
            "foreign_writes": self.foreign_writes,
            # each open one, with what it touched and what ends it (the count above is always complete)
            "foreign_writes_open": [r.as_dict() for r in self.open_foreign[:MAX_PUBLISHED]],
            "foreign_write_watch": self._watch_state(),
            # where the next daemon's watcher resumes, so writes made while none runs are seen too
            "foreign_write_watch_position": (
                {"at": str(self.watcher.position), "target": self.watch_target}
                if self.watcher is not None
                else self.watch_resume  # not watching (yet): keep the last daemon's point for the next one
            ),
            "pending_stop": self.pending_stop,
            # by server, each outage being retried now: the gate is not ready while any is
            "reconnecting": self.reconnecting_doc(),
            "holder": holder_name(),
            "http_listen": self.http_listen,
            "control_listen": self.control_listen,
            "control_auth": self.control_auth,
            "generation": self.generation,
            "updated_at": self.wall(),
        }

    def reconnecting_doc(self) -> dict[str, dict[str, Any]] | None:
        outages = {}
        if self.reconnecting is not None:
            outages[str(self.reconnecting["server"])] = self.reconnecting
        redis_outage = self.redis.status()
        if redis_outage is not None:
            outages["redis"] = redis_outage
        return outages or None

    def _watch_state(self) -> str:
        watcher = self.watcher
        if self.watch_error is not None:
            return f"failed: {self.watch_error[:200]}"
        if watcher is None:
            return "not started"
        if watcher.error is not None:
            return f"failed: {type(watcher.error).__name__}: {str(watcher.error)[:200]}"
        return "ok" if watcher.alive else "stopped"

    def publish(self, force: bool = False) -> None:
        self.last_publish = self.clock()
        doc = self.status_doc()
        # Redis is a mirror: losing it must not stop replication (the link logs the outage and spaces retries)
        self.redis.call("publish the status", lambda: self.mirror.publish(doc, ALIVE_TTL_SECONDS), force=force)
        if self.progress is not None:
            self._progress_line(doc)

    def sync_verification(self) -> None:
        """Mirror the last verification (whoever ran it: the daemon, the CLI) into the drift metrics."""
        if self.clock() - self.last_verification_sync < VERIFICATION_SYNC_SECONDS:
            return
        self.last_verification_sync = self.clock()
        # Redis down: keep the last values; the gate reports Redis itself
        read = self.redis.call("read the verification", lambda: (self.mirror.verification(),))
        if read is None:
            return
        doc, known = read[0], self.last_verification
        if known and (not doc or _finished(doc) < _finished(known)):
            # Redis restarted empty (or lost a publish while down): the daemon's copy is the newer truth
            if not self.redis.call("republish the verification", lambda: self.republish_verification(known)):
                return
            self.log.info("republished the last verification to Redis", finished_at=known.get("finished_at"))
            doc = known
        if not doc:
            return
        self.last_verification = doc
        if doc.get("consistent") and doc.get("finished_at"):
            self.metrics.verify_success.set(float(doc["finished_at"]))
        per_table = doc.get("tables") or {}
        for db, table in self.cursors:
            name = f"{db}.{table}"
            self.metrics.drift_rows.labels(name).set(float(per_table.get(name, 0) or 0))

    def republish_verification(self, doc: dict[str, Any]) -> bool:
        """Publish a verification summary again (raises Redis's error; call it through :attr:`redis`)."""
        self.mirror.publish_verification(doc)
        return True

    def publish_due(self) -> bool:
        return self.clock() - self.last_publish >= 1.0

    def _progress_line(self, doc: dict[str, Any]) -> None:
        assert self.progress is not None  # noqa: S101 (checked by the caller)
        done = sum(1 for c in self.cursors.values() if c.done)
        copied = sum(c.rows_copied for c in self.cursors.values())
        throttle = (
            "PAUSED by the operator"
            if self.pause.doc is not None
            else "THROTTLED: " + self.throttle.reason
            if self.throttle.active
            else f"slowed to {100 * self.throttle.pace:.0f}%: {self.throttle.slowed_by}"
            if self.throttle.slowed_by
            else ""
        )
        self.progress.write(
            f"\r{self.phase:<10} tables {done}/{len(self.cursors)}  rows copied {copied:>10}"
            f"  at {doc['position']}  lag {doc['lag_seconds']:6.1f}s  {throttle:<45}"
        )
        self.progress.flush()


def _finished(doc: dict[str, Any]) -> float:
    return float(doc.get("finished_at") or 0)


def _peek_timestamp(reader: BinlogReader) -> float | None:
    """Timestamp of the oldest event read from the source but not yet taken by the applier."""
    return reader.oldest_waiting_timestamp()


def _reading(value: float, digits: int) -> float | None:
    """A governor reading for JSON: None when it was not read (NaN), so nobody takes it for a value."""
    return None if not math.isfinite(value) else round(value, digits)


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 1)
