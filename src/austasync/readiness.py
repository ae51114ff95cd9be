"""The cutover-readiness gate: is it safe to *start* the cutover procedure right now?

One function decides, from the status the daemon publishes to Redis, so ``austasync ready`` (Redis only, no
database credentials) and the daemon's ``/ready`` endpoint always agree. Ready means all of:

- the daemon is alive (its ``alive`` key, refreshed by the apply loop with a short TTL, exists);
- it is not reconnecting to a server (:mod:`austasync.recovery`: the stream is not flowing meanwhile);
- its status is fresh (published within ``STALE_SECONDS``);
- every table is copied and the phase is ``streaming``;
- apply lag is at most the limit;
- the last verification is clean and younger than the limit, and no drift was found since;
- no foreign write on the target is open (each one recorded in the target's state until a clean verification
  that covers it, started after it, or an operator's ``austasync foreign-writes --ack`` ends it);
- no DDL stop or other fatal error is pending.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STALE_SECONDS = 30.0
DEFAULT_MAX_LAG_SECONDS = 5.0
DEFAULT_MAX_VERIFY_AGE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    value: Any
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    status: dict[str, Any] | None,
    verification: dict[str, Any] | None,
    *,
    alive: bool,
    now: float,
    max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS,
    max_verify_age_seconds: float = DEFAULT_MAX_VERIFY_AGE_SECONDS,
) -> list[Check]:
    """Every check with its value; the gate is ready only if all are ok."""
    doc = status or {}
    checks = [
        Check("daemon_alive", alive, alive, "" if alive else "the daemon's alive key expired: it is down or hung")
    ]
    checks.append(_connected_check(doc))
    updated = float(doc.get("updated_at") or 0)
    age = now - updated if updated else None
    fresh = age is not None and age <= STALE_SECONDS
    checks.append(
        Check("status_fresh", fresh, None if age is None else round(age, 1), "" if fresh else "no recent status")
    )
    checks.append(_copy_check(doc))
    lag = doc.get("lag_seconds")
    lag_ok = lag is not None and float(lag) <= max_lag_seconds
    checks.append(Check("lag", lag_ok, lag, "" if lag_ok else f"apply lag {lag} s is above {max_lag_seconds:g} s"))
    checks.append(_verify_check(verification, now, max_verify_age_seconds))
    checks.append(_foreign_check(doc))
    stop = doc.get("pending_stop")
    checks.append(
        Check(
            "no_pending_stop",
            not stop,
            stop,
            "" if not stop else f"stopped: {str(stop.get('kind', 'error')) if isinstance(stop, dict) else stop}",
        )
    )
    return checks


def _connected_check(doc: dict[str, Any]) -> Check:
    outages = doc.get("reconnecting") or {}
    if not isinstance(outages, dict) or not outages:
        return Check("connected", True, None, "")
    each = "; ".join(
        f"{name} {o.get('address')} (attempt {o.get('attempts')}): {o.get('operation')}: {o.get('error')}"
        for name, o in sorted(outages.items())
        if isinstance(o, dict)
    )
    return Check("connected", False, outages, f"reconnecting to {each}")


def _foreign_check(doc: dict[str, Any]) -> Check:
    foreign = int(doc.get("foreign_writes") or 0)
    listed = [w for w in doc.get("foreign_writes_open") or [] if isinstance(w, dict)]
    watch = doc.get("foreign_write_watch", "ok")
    if foreign:
        each = "; ".join(f"#{w.get('id')} at target {w.get('target_position')}: {w.get('what')}" for w in listed)
        more = f"; and {foreign - len(listed)} more" if foreign > len(listed) else ""
        reason = (
            f"{foreign} open foreign writes on the target ({each}{more}); each ends with a clean verification"
            " covering it started after it, or `austasync foreign-writes --ack`"
        )
    elif watch != "ok":
        reason = f"the target's binlog is not being watched ({watch}): foreign writes cannot be ruled out"
    else:
        reason = ""
    return Check("no_foreign_writes", not reason, {"count": foreign, "watch": watch, "open": listed}, reason)


def _copy_check(doc: dict[str, Any]) -> Check:
    tables = doc.get("tables") or {}
    pending = sorted(name for name, info in tables.items() if not info.get("done"))
    phase = doc.get("phase")
    ok = bool(tables) and not pending and phase == "streaming"
    if not tables:
        reason = "no copy progress published"
    elif pending:
        reason = f"{len(pending)} tables still copying: {', '.join(pending[:5])}"
    elif phase != "streaming":
        reason = f"phase is {phase}, not streaming"
    else:
        reason = ""
    return Check("copy_complete", ok, {"phase": phase, "pending": len(pending)}, reason)


def _verify_check(verification: dict[str, Any] | None, now: float, max_age: float) -> Check:
    if not verification:
        return Check("verification", False, None, "no verification recorded yet")
    finished = float(verification.get("finished_at") or 0)
    age = now - finished
    if not verification.get("consistent"):
        drift = verification.get("drift_rows")
        return Check(
            "verification",
            False,
            {"age_seconds": round(age), "drift_rows": drift},
            f"last verification found {drift} differing rows",
        )
    if age > max_age:
        return Check(
            "verification",
            False,
            {"age_seconds": round(age)},
            f"last clean verification is {age:.0f} s old (limit {max_age:g} s)",
        )
    return Check("verification", True, {"age_seconds": round(age)}, "")


def is_ready(checks: list[Check]) -> bool:
    return all(c.ok for c in checks)
