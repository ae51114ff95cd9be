"""In-process recovery: a lost or refused connection is retried, not the end of the process.

Two kinds of outage, handled differently because the servers matter differently (the target holds the truth,
Redis is a mirror: docs/DESIGN.md#rule-target-truth):

- **Source or target** (the binlog stream, a query, a batch, a deadlock or lock wait timeout on the target): the
  daemon tears its pipeline down, waits a capped exponential backoff with jitter, and starts it again from the
  target's checkpoint, exactly as a restart would, while the HTTP server, the metrics and the lease stay. It gives
  up (exit 3) only when the outage has lasted ``[apply] retry_budget_seconds``. :class:`Reconnector` keeps that
  budget; :func:`classify` says which errors it covers and which server failed.
- **Redis**: nothing stops. The calls the loop makes (publish the status, renew the lease, read the verification)
  are skipped while Redis is unreachable, and tried again on the same backoff (:class:`RedisLink`); the lease
  counts as still held (the fence in the target stops a stale writer, not the lease).

Every attempt is logged once, with the server (``host:port``), the operation and the server's error code and
text, and counted in ``austasync_reconnects_total{server}``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import pymysql
import redis

from austasync.config import Config, RedisConfig
from austasync.db import ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, describe_error
from austasync.errors import UnavailableError
from austasync.metrics import Metrics
from austasync.mirror import explain

BASE_SECONDS = 0.5  # the first retry waits 0.25-0.5 s: a blip costs little
CAP_SECONDS = 10.0  # a long outage is retried every 5-10 s: the daemon is back within seconds of the server
T = TypeVar("T")


@dataclass(frozen=True)
class Outage:
    """One failed attempt: which server, where, doing what, and what the server (or the driver) said."""

    server: str  # "source" | "target" | "redis"
    address: str  # host:port
    operation: str
    error: str
    # "connection" (lost, refused, stalled) or "lock" (a deadlock or lock wait timeout on the target: the batch
    # is applied again from the checkpoint; the connections are renewed all the same)
    kind: str = "connection"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class Backoff:
    """Capped exponential backoff with jitter: attempt n waits a random time in [d/2, d], d = min(cap, base * 2^n).

    The jitter keeps daemons that lost the same server from coming back in step.
    """

    def __init__(self, base: float = BASE_SECONDS, cap: float = CAP_SECONDS, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()  # jitter, not a secret

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.attempts, 30))
        self.attempts += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


def classify(exc: BaseException, config: Config) -> Outage | None:
    """The outage ``exc`` is, or None when it is no connection problem (then it is not retried).

    Retried is exactly what exits 3 without recovery: :class:`UnavailableError` (a refused connection, a binlog
    stream that broke or stalled past ``read_timeout_seconds``), the driver's ``OperationalError`` (a lost
    connection, a deadlock 1213, a lock wait timeout 1205, a server gone away) and ``InterfaceError`` (a connection
    already closed), and Redis errors. A stop (DDL, drift, a purged binlog, fencing) or a bug is never retried.
    """
    if isinstance(exc, UnavailableError):
        server = exc.server or _guess_server(str(exc))
        address = exc.address or _address(config, server)
        return Outage(server, address, exc.operation or "start-up", exc.detail or str(exc))
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        where = str(getattr(exc, "austasync_where", ""))
        role, _, address = where.rpartition(" ")
        server = role if role in ("source", "target") else _server_at(config, address) or _guess_server(where)
        operation = str(getattr(exc, "austasync_operation", "") or "query")
        code = exc.args[0] if exc.args else None
        kind = "lock" if code in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT) else "connection"
        return Outage(server, address or _address(config, server), operation, describe_error(exc), kind)
    if isinstance(exc, redis.RedisError):
        return Outage("redis", config.redis.address, "redis command", explain(config.redis, exc))
    return None


def _guess_server(text: str) -> str:
    lowered = text.lower()
    if "redis" in lowered:
        return "redis"
    return "target" if "target" in lowered else "source"


def _server_at(config: Config, address: str) -> str | None:
    """Which configured server listens at ``address`` (a binlog connection knows only its host:port)."""
    for name, db in (("source", config.source), ("target", config.target)):
        if address == f"{db.host}:{db.port}":
            return name
    return None


def _address(config: Config, server: str) -> str:
    if server == "redis":
        return config.redis.address
    db = config.target if server == "target" else config.source
    return f"{db.host}:{db.port}"


class Reconnector:
    """The retry budget of the source and target connections: one outage at a time, from its first failure until
    the restarted pipeline receives its first event (:meth:`recovered`)."""

    def __init__(
        self,
        budget_seconds: float,
        log: Any,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        self.budget = budget_seconds
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.backoff = backoff or Backoff()
        self.since: float | None = None  # clock() of the outage's first failure
        self.since_wall: float | None = None
        self.first: Outage | None = None
        self.last: Outage | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, outage: Outage, phase: str) -> float:
        """Record a failed attempt (the first is the loss itself) and return how long to wait before the next.

        Raises :class:`UnavailableError` (exit 3) once the outage has lasted the budget, naming the server, the
        operation and the error of the first failure and of the last.
        """
        now = self.clock()
        if self.since is None:
            self.since, self.since_wall, self.first = now, self.wall(), outage
        self.last = outage
        elapsed = now - self.since
        left = self.budget - elapsed
        if left <= 0:
            first = self.first or outage
            self.log.error(
                "giving up reconnecting: the retry budget is spent",
                server=outage.server,
                address=outage.address,
                operation=outage.operation,
                error=outage.error,
                attempts=self.backoff.attempts,
                seconds=round(elapsed, 1),
                budget_seconds=self.budget,
            )
            raise UnavailableError(
                f"{outage.server} {outage.address} still unreachable after {elapsed:.0f} s of retries"
                f" (apply.retry_budget_seconds = {self.budget:g}): {outage.operation}: {outage.error}"
                + ("" if first == outage else f"; first failure: {first.operation} on {first.address}: {first.error}")
                + ". The target's checkpoint is intact: restart `austasync run` once the server is back",
                server=outage.server,
                address=outage.address,
                operation=outage.operation,
                detail=outage.error,
            )
        delay = min(self.backoff.next_delay(), left)
        self.metrics.reconnects.labels(outage.server).inc()
        if outage.kind == "lock":
            event = "deadlock or lock wait timeout on the target; applying again from the target's checkpoint"
        elif self.backoff.attempts == 1:
            event = "connection lost or refused; reconnecting from the target's checkpoint"
        else:
            event = "reconnect attempt failed; retrying"
        self.log.warning(
            event,
            server=outage.server,
            address=outage.address,
            operation=outage.operation,
            error=outage.error,
            phase=phase,
            attempt=self.backoff.attempts,
            retry_in_seconds=round(delay, 2),
            budget_left_seconds=round(left, 1),
        )
        return delay

    def recovered(self, position: str) -> None:
        """The restarted pipeline works again (its first event arrived): log it and restore the whole budget."""
        if self.since is None:
            return
        first = self.first
        self.log.info(
            "reconnected; replication resumed from the target's checkpoint",
            server=first.server if first else None,
            address=first.address if first else None,
            attempts=self.backoff.attempts,
            outage_seconds=round(self.clock() - self.since, 1),
            position=position,
        )
        self.since = self.since_wall = self.first = self.last = None
        self.backoff.reset()

    def status(self) -> dict[str, Any] | None:
        """What the status document and the gate show while reconnecting (None otherwise)."""
        if self.since is None or self.last is None:
            return None
        return {
            **self.last.as_dict(),
            "since": self.since_wall,
            "attempts": self.backoff.attempts,
            "budget_seconds": self.budget,
        }


class RedisLink:
    """The daemon's best-effort Redis calls (status, lease renewal, verification): a failure never stops
    replication. After one, calls are skipped until the next attempt of a :class:`Backoff` is due; each attempt
    that fails is logged once and counted, and the first call that works again ends the outage."""

    def __init__(
        self,
        cfg: RedisConfig,
        log: Any,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        self.cfg = cfg
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.backoff = backoff or Backoff()
        self.since: float | None = None  # clock() of the outage's first failure
        self.since_wall: float | None = None
        self.last: Outage | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def call(self, operation: str, work: Callable[[], T], *, force: bool = False) -> T | None:
        """``work()``, or None when Redis failed it or is in an outage whose next attempt is not due (``force``:
        try anyway, e.g. the last status at a stop)."""
        if self.since is not None and not force and self.clock() < self._retry_at:
            return None
        try:
            result = work()
        except (redis.RedisError, OSError) as exc:
            self._failed(operation, exc)
            return None
        if self.since is not None:
            self.log.info(
                "Redis reachable again; republishing the status, renewing the lease",
                server="redis",
                address=self.cfg.address,
                attempts=self.backoff.attempts,
                outage_seconds=round(self.clock() - self.since, 1),
            )
            self.since = self.since_wall = self.last = None
            self.backoff.reset()
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self.since is None:
            self.since, self.since_wall = self.clock(), self.wall()
        self.last = Outage("redis", self.cfg.address, operation, explain(self.cfg, exc))
        delay = self.backoff.next_delay()
        self._retry_at = self.clock() + delay
        self.metrics.reconnects.labels("redis").inc()
        self.log.warning(
            "Redis unreachable; replication goes on, Redis calls wait for the next attempt"
            if self.backoff.attempts == 1
            else "Redis still unreachable; replication goes on",
            server="redis",
            address=self.cfg.address,
            operation=operation,
            error=self.last.error,
            attempt=self.backoff.attempts,
            retry_in_seconds=round(delay, 2),
        )

    def status(self) -> dict[str, Any] | None:
        if self.since is None or self.last is None:
            return None
        return {**self.last.as_dict(), "since": self.since_wall, "attempts": self.backoff.attempts}
