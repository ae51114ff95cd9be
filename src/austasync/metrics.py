"""Prometheus metrics of the daemon, on an injected registry so tests can hold their own.

Names follow Prometheus conventions (base units, ``_total``, ``_seconds``, ``_bytes``); labels are bounded
(table names of the replicated set, operations, reasons, error kinds), never binlog file names or keys.
Values that go stale if pushed (lag, purge horizon) are computed at scrape time from the daemon's state.

The README's metrics reference is checked against :data:`REFERENCE` by a test; add new metrics there too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from austasync import __version__
from austasync.binlog import outcomes

PHASES = [
    "starting",
    "copying",
    "streaming",
    "stopped_ddl",
    "stopped_error",
    "stopping",
    "reconnecting",
    "draining",
    "drained",
    "promoted",
]
RECONNECT_SERVERS = ("source", "target", "redis")
THROTTLE_REASONS = ["threads_running", "history_list", "probe", "lock_waits", "lag", "none"]

# name, type, labels, meaning: the README's metrics reference is generated from and tested against this
REFERENCE: list[tuple[str, str, str, str]] = [
    ("austasync_build_info", "gauge", "version", "Build information; always 1."),
    ("austasync_phase", "stateset", "austasync_phase", "Daemon phase: " + ", ".join(PHASES) + "."),
    (
        "austasync_replication_lag_seconds",
        "gauge",
        "",
        "Age of the oldest source change not yet committed on the target; 0 when caught up. Computed at scrape time.",
    ),
    (
        "austasync_source_binlog_bytes_behind",
        "gauge",
        "",
        "Bytes of source binlog between the checkpoint and the source's current end.",
    ),
    (
        "austasync_binlog_purge_horizon_seconds",
        "gauge",
        "",
        "Seconds until the source may purge the binlog file the checkpoint needs (+Inf when it never purges).",
    ),
    (
        "austasync_foreign_writes_total",
        "counter",
        "table",
        "Row changes (and table DDL or unclassifiable statements) on the target made by sessions that are not"
        " austasync's (drift by definition); counted once per target binlog position, across restarts too.",
    ),
    (
        "austasync_foreign_schema_changes_total",
        "counter",
        "object",
        "DDL of views, routines, triggers or events of the replicated databases run on the target by someone"
        " else: schema drift of that object, judged by verify's schema comparison, not row drift.",
    ),
    (
        "austasync_foreign_writes_open",
        "gauge",
        "",
        "Foreign writes recorded in the target and not yet cleared by a covering clean verification or an"
        " acknowledgement (`austasync foreign-writes`); the gate is not ready while it is above 0.",
    ),
    (
        "austasync_applied_rows_total",
        "counter",
        "table, operation",
        "Rows applied from the stream, by table and operation (insert, update, delete).",
    ),
    ("austasync_applied_transactions_total", "counter", "", "Source transactions applied."),
    ("austasync_apply_batch_rows", "histogram", "", "Rows per target batch."),
    ("austasync_apply_batch_seconds", "histogram", "", "Time to write and commit one target batch."),
    ("austasync_copy_rows", "gauge", "table", "Rows copied so far by the bulk copy."),
    (
        "austasync_copy_rows_estimated",
        "gauge",
        "table",
        "Estimated rows of the table (information_schema; approximate).",
    ),
    ("austasync_copy_done", "gauge", "table", "1 when the table's bulk copy is complete."),
    ("austasync_copied_rows_total", "counter", "", "Rows written by the bulk copy."),
    (
        "austasync_throttle_active",
        "gauge",
        "reason",
        "1 for the reason the copy and verification are throttled now (threads_running, history_list, probe,"
        " lock_waits, lag), none=1 when not throttled; a signal that cannot be read counts as over budget.",
    ),
    (
        "austasync_throttle_paused",
        "gauge",
        "",
        "1 while the operator's pause (`austasync throttle --pause`) holds the copy and the daemon's verification.",
    ),
    (
        "austasync_throttle_pace",
        "gauge",
        "",
        "Share of full speed the copy and verification take: 1 full, below 1 while a source signal is past"
        " `[throttle] slow_from` of its limit, 0 while throttled or paused.",
    ),
    (
        "austasync_source_lock_waits",
        "gauge",
        "",
        "Source sessions waiting on a lock of austasync's own sessions at the last check; NaN when unreadable or"
        " not watched.",
    ),
    (
        "austasync_source_history_list_length",
        "gauge",
        "",
        "InnoDB history list length of the source (trx_rseg_history_len) at the last throttle check; NaN when"
        " unreadable or not watched.",
    ),
    (
        "austasync_source_probe_seconds",
        "gauge",
        "",
        "Time the daemon's probe read on the source took at the last throttle check; NaN when it failed or is off.",
    ),
    ("austasync_verify_drift_rows", "gauge", "table", "Rows found different by the last verification of the table."),
    (
        "austasync_verify_last_success_timestamp_seconds",
        "gauge",
        "",
        "Unix time of the last verification that found no difference.",
    ),
    ("austasync_verify_chunks_total", "counter", "result", "Verified chunks by result (match, mismatch)."),
    (
        "austasync_errors_total",
        "counter",
        "kind",
        "Errors by kind (unavailable, drift, uncarryable, ddl_stop, fenced, ...).",
    ),
    (
        "austasync_reconnects_total",
        "counter",
        "server",
        "Attempts to reconnect after a lost or refused connection, by the server that failed (source, target,"
        " redis); a deadlock or lock wait timeout on the target, applied again, counts too. The daemon retries"
        " in-process for up to apply.retry_budget_seconds before exiting 3.",
    ),
    ("austasync_lease_held", "gauge", "", "1 while this process holds the migration's lease."),
    ("austasync_last_checkpoint_timestamp_seconds", "gauge", "", "Unix time of the last committed checkpoint."),
    (
        "austasync_source_heartbeat_timestamp_seconds",
        "gauge",
        "",
        "Unix time of the last event or heartbeat received from the source.",
    ),
    (
        "austasync_binlog_events_total",
        "counter",
        "outcome, rule",
        "Binlog events read, by outcome (applied, skipped, stopped) and the rule that decided it (see 'Event"
        " accounting'); every event read is counted exactly once, so the outcomes add up to the events read.",
    ),
]


class Metrics:
    """All metrics of one daemon, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # *_created series double the output and no dashboard or rule here uses them
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        self.registry = registry or CollectorRegistry()
        r = self.registry
        info = Info("austasync_build", "Build information; always 1.", registry=r)
        info.info({"version": __version__})
        self.phase = Enum("austasync_phase", "Daemon phase.", states=PHASES, registry=r)
        self.lag = Gauge("austasync_replication_lag_seconds", "Apply lag.", registry=r)
        self.bytes_behind = Gauge("austasync_source_binlog_bytes_behind", "Binlog bytes not yet applied.", registry=r)
        self.purge_horizon = Gauge(
            "austasync_binlog_purge_horizon_seconds", "Seconds until the needed binlog may be purged.", registry=r
        )
        self.foreign_writes = Counter(
            "austasync_foreign_writes", "Row changes on the target not made by austasync.", ["table"], registry=r
        )
        self.foreign_schema_changes = Counter(
            "austasync_foreign_schema_changes",
            "Schema changes of views, routines, triggers, events on the target not made by austasync.",
            ["object"],
            registry=r,
        )
        self.foreign_writes_open = Gauge("austasync_foreign_writes_open", "Foreign writes not cleared yet.", registry=r)
        self.applied_rows = Counter(
            "austasync_applied_rows", "Rows applied from the stream.", ["table", "operation"], registry=r
        )
        self.applied_transactions = Counter(
            "austasync_applied_transactions", "Source transactions applied.", registry=r
        )
        self.batch_rows = Histogram(
            "austasync_apply_batch_rows",
            "Rows per target batch.",
            buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "austasync_apply_batch_seconds",
            "Batch write and commit time.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.copy_rows = Gauge("austasync_copy_rows", "Rows copied.", ["table"], registry=r)
        self.copy_estimated = Gauge("austasync_copy_rows_estimated", "Estimated rows.", ["table"], registry=r)
        self.copy_done = Gauge("austasync_copy_done", "Copy complete.", ["table"], registry=r)
        self.copied_rows = Counter("austasync_copied_rows", "Rows written by the bulk copy.", registry=r)
        self.throttle = Gauge("austasync_throttle_active", "Throttle state by reason.", ["reason"], registry=r)
        self.history_list = Gauge(
            "austasync_source_history_list_length", "Source InnoDB history list length.", registry=r
        )
        self.probe_seconds = Gauge("austasync_source_probe_seconds", "Source probe read latency.", registry=r)
        self.history_list.set(math.nan)
        self.probe_seconds.set(math.nan)
        self.paused = Gauge("austasync_throttle_paused", "Paused by the operator.", registry=r)
        self.pace = Gauge("austasync_throttle_pace", "Share of full speed of copy and verification.", registry=r)
        self.pace.set(1.0)
        self.lock_waits = Gauge("austasync_source_lock_waits", "Source sessions waiting on our locks.", registry=r)
        self.lock_waits.set(math.nan)
        self.drift_rows = Gauge("austasync_verify_drift_rows", "Rows found different.", ["table"], registry=r)
        self.verify_success = Gauge(
            "austasync_verify_last_success_timestamp_seconds", "Last clean verification.", registry=r
        )
        self.verify_chunks = Counter("austasync_verify_chunks", "Verified chunks by result.", ["result"], registry=r)
        self.errors = Counter("austasync_errors", "Errors by kind.", ["kind"], registry=r)
        self.reconnects = Counter(
            "austasync_reconnects", "Reconnect attempts after a lost or refused connection.", ["server"], registry=r
        )
        self.lease_held = Gauge("austasync_lease_held", "Lease held by this process.", registry=r)
        self.last_checkpoint = Gauge(
            "austasync_last_checkpoint_timestamp_seconds", "Last committed checkpoint.", registry=r
        )
        self.source_heartbeat = Gauge(
            "austasync_source_heartbeat_timestamp_seconds", "Last event or heartbeat from the source.", registry=r
        )
        self.set_throttle("")
        self.phase.state("starting")
        for result in ("match", "mismatch"):
            self.verify_chunks.labels(result)
        for server in RECONNECT_SERVERS:
            self.reconnects.labels(server)
        for kind in ("unavailable", "drift", "uncarryable", "ddl_stop", "fenced", "setup", "binlog_purged", "error"):
            self.errors.labels(kind)

    def bind_events(self, tally: Callable[[], dict[str, int]]) -> None:
        """``austasync_binlog_events_total{outcome, rule}``, read from the event accounting when scraped."""
        self.registry.register(_EventsCollector(tally))

    def bind_lag(self, lag: Callable[[], float], horizon: Callable[[], float]) -> None:
        """Lag and purge horizon are computed when scraped, so a dead loop cannot leave a stale 'caught up'."""
        self.lag.set_function(lag)
        self.purge_horizon.set_function(horizon)

    def set_throttle(self, signal: str) -> None:
        """``signal`` is one of :data:`THROTTLE_REASONS` ("" = not throttled)."""
        for name in THROTTLE_REASONS:
            self.throttle.labels(name).set(0)
        self.throttle.labels(signal or "none").set(1)

    def set_copy(self, table: str, copied: int, estimated: int, done: bool) -> None:
        self.copy_rows.labels(table).set(copied)
        self.copy_estimated.labels(table).set(estimated)
        self.copy_done.labels(table).set(1 if done else 0)


class _EventsCollector(Collector):
    """Counts kept as plain dicts by the reader's hot loop (austasync.binlog.outcomes), exposed as one counter."""

    def __init__(self, tally: Callable[[], dict[str, int]]) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "austasync_binlog_events",
            "Binlog events read, by outcome (applied, skipped, stopped) and the rule that decided it.",
            labels=["outcome", "rule"],
        )
        for outcome, rule, count in outcomes.labelled(self._tally()):
            family.add_metric([outcome, rule], count)
        yield family
