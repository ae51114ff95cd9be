"""Continuous verification inside the daemon: a first full pass as soon as the copy completes, then one on a
schedule, each aligned with the daemon's own applier through the same barrier the CLI uses over HTTP.

A fresh deployment thus becomes ready without anyone stepping in, and the gate's "clean verification younger
than 24 h" stays true for weeks of parallel running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from austasync import log as logmod
from austasync.config import Config
from austasync.control import Control
from austasync.errors import AustasyncError, UnavailableError
from austasync.position import Position
from austasync.touched import Touched, TouchedKeys
from austasync.verifier import Result, verify


class InProcessAligner:
    """The daemon's barrier reached through its control mailbox, for a verification running in the daemon."""

    def __init__(self, control: Control, timeout_seconds: float = 60.0) -> None:
        self.control = control
        self.timeout = timeout_seconds

    def _call(self, command: str, body: dict[str, Any]) -> dict[str, Any]:
        code, doc = self.control.call(command, body, timeout=self.timeout)
        if code != 200:
            raise UnavailableError(f"barrier {command} failed ({code}): {doc.get('error', doc)}")
        return doc

    def pause(self) -> Position | None:
        return Position.parse(str(self._call("barrier/pause", {})["position"]))

    def advance_to(self, position: Position) -> None:
        reached = Position.parse(str(self._call("barrier/advance", {"position": str(position)})["position"]))
        if reached != position:
            raise UnavailableError(f"the applier stopped at {reached}, not at the snapshot position {position}")

    def release(self) -> None:
        self._call("barrier/release", {})


class VerificationScheduler:
    """Runs full verifications in a background thread once ``start_when_copied`` is called."""

    def __init__(
        self,
        config: Config,
        control: Control,
        on_result: Callable[[Result], None],
        *,
        touched: TouchedKeys | None = None,
        run: Callable[..., Result] = verify,
        clock: Callable[[], float] = time.monotonic,
        hold: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        # the operator's pause (governor.Pause.reason): a pass waits, its snapshots closed, while it is not ""
        self.hold = hold
        self.touched = touched
        self.aligner = InProcessAligner(control)
        self.on_result = on_result
        self.run_verification = run
        self.clock = clock
        self.log = logmod.get("austasync.verify")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        # when the written-keys set last started afresh at the start of a full pass that then came out clean, with
        # every written-keys pass since clean too: the set plus that pass prove the tables equal (cutover uses it)
        self.baseline: float | None = None
        # the keys a running pass took: not proven yet, so still part of what a final check must cover
        self._in_flight: Touched | None = None
        self._invalidated_at = float("-inf")  # when something last wrote past the written-keys set

    def start_when_copied(self) -> None:
        if self._thread is None and self.config.verify.interval_seconds > 0:
            self._thread = threading.Thread(target=self._loop, name="verifier", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        """One full pass now, then one every ``verify.interval_seconds``; in between, the keys the stream wrote
        every ``verify.touched_interval_seconds``; until the daemon stops."""
        first = True
        while not self._stop.is_set():
            if self._full_pass(first):
                first = False
                next_full = self.clock() + self.config.verify.interval_seconds
            else:
                next_full = self.clock() + min(300.0, self.config.verify.interval_seconds)  # retry sooner
            self._between_passes(next_full)

    def _between_passes(self, next_full: float) -> None:
        every = self.config.verify.touched_interval_seconds
        while not self._stop.is_set():
            left = next_full - self.clock()
            if left <= 0:
                return
            if every <= 0 or self.touched is None:
                self._stop.wait(left)
                continue
            if self._stop.wait(min(every, left)) or self.clock() >= next_full:
                return
            self._touched_pass()

    def _full_pass(self, first: bool) -> bool:
        """A full verification; False when it could not complete."""
        started = self.clock()
        taken = self.touched.take() if self.touched is not None else None  # covered by this pass from now on
        fresh = self.touched.since if self.touched is not None else None
        self._in_flight = taken
        try:
            return self._run_full_pass(first, started, taken, fresh)
        finally:
            self._in_flight = None

    def _run_full_pass(self, first: bool, started: float, taken: Touched | None, fresh: float | None) -> bool:
        # the first pass at full speed: a fresh deployment is not ready until it is done
        pace = 1.0 if first else self.config.verify.pace
        try:
            result = self.run_verification(self.config, self.aligner, pace=pace, sleep=self._stop.wait, hold=self.hold)
        except (AustasyncError, OSError) as exc:
            self._restore(taken)
            self.last_error = str(exc)
            self.log.warning("scheduled verification could not complete; retrying later", error=str(exc)[:500])
            return False
        except Exception as exc:  # noqa: BLE001 (a verifier bug must not stop replication; it is logged)
            self._restore(taken)
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log.error("scheduled verification failed", error=self.last_error[:500])
            return False
        self.last_error = None
        # a foreign write seen while the pass ran may be behind its snapshots: that pass is no baseline
        self.baseline = fresh if result.consistent and self._invalidated_at < started else None
        self.on_result(result)
        self.log.info(
            "scheduled verification done",
            consistent=result.consistent,
            drift_rows=sum(len(t.differences) for t in result.tables),
            seconds=round(self.clock() - started, 1),
        )
        return True

    def invalidate(self, why: str) -> None:
        """Something wrote to the target besides the stream's recorded keys: only a new clean full pass proves
        equality again."""
        if self.baseline is not None:
            self.log.warning("written keys no longer cover the changes; the next full pass is needed", reason=why)
        self.baseline = None
        self._invalidated_at = self.clock()

    def _restore(self, taken: Touched | None) -> None:
        if self.touched is not None and taken is not None:
            self.touched.restore(taken)  # a failed pass proves nothing: its keys wait for the next

    def written_since_baseline(self) -> dict[str, Any]:
        """What a final check must cover beyond the last clean full pass (``baseline`` None: it must be full)."""
        baseline, in_flight = self.baseline, self._in_flight
        touched = self.touched.peek().union(in_flight) if self.touched is not None else None
        if baseline is None or touched is None:
            return {"baseline": None}
        return {
            "baseline": baseline,
            "keys": {f"{db}.{name}": sorted(list(k) for k in keys) for (db, name), keys in touched.keys.items()},
            "whole": sorted(f"{db}.{name}" for db, name in touched.whole),
        }

    def _touched_pass(self) -> None:
        """The keys written since the last pass, at an aligned point. Drift found is published (the gate closes);
        a clean result is not: it is no full verification, and the gate's clock stays with the last full pass."""
        assert self.touched is not None  # noqa: S101 (the caller checked)
        taken = self.touched.take()
        if taken.empty:
            return
        keys = {f"{db}.{name}": k for (db, name), k in taken.keys.items()}
        only = sorted(set(keys) | {f"{db}.{name}" for db, name in taken.whole})
        self._in_flight = taken
        try:
            result = self.run_verification(
                self.config,
                self.aligner,
                only,
                pace=self.config.verify.pace,
                sleep=self._stop.wait,
                keys=keys,
                hold=self.hold,
            )
        except Exception as exc:  # noqa: BLE001 (logged; the keys wait for the next pass)
            self.touched.restore(taken)
            self.log.warning("check of the written keys could not complete; retrying later", error=str(exc)[:500])
            return
        finally:
            self._in_flight = None
        if result.differs:
            self.baseline = None
            self.on_result(result)
        self.log.info(
            "written keys verified",
            keys=taken.key_count,
            whole_tables=len(taken.whole),
            consistent=result.consistent,
            drift_rows=sum(len(t.differences) for t in result.tables),
        )
