"""Soak the differential fuzzer: new seeds, one pytest run each, until the time is up; then a summary.

    python scripts/fuzz_soak.py --minutes 60 [--run-seconds 120] [--report soak.jsonl]

Each run is ``tests/fuzz`` with a fresh random seed (printed by the test, and in the report), so a failure can be
replayed with ``AUSTASYNC_FUZZ_SEED=<seed> pytest tests/fuzz``. The summary counts runs, rounds (each ended by a
comparison of both sides by the independent dump), transactions, statements and daemon restarts, and lists every
failing seed. Exit status 1 when any run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(run_seconds: float, report: Path) -> int:
    env = {
        **os.environ,
        "AUSTASYNC_FUZZ_SECONDS": str(run_seconds),
        "AUSTASYNC_FUZZ_REPORT": str(report),
        "PYTEST_DEBUG_TEMPROOT": tempfile.mkdtemp(prefix="fuzz-soak-"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/fuzz", "-o", "timeout=0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(out.stdout[-6000:], flush=True)
    subprocess.run(["rm", "-rf", env["PYTEST_DEBUG_TEMPROOT"]], check=False)
    return out.returncode


def summary(report: Path) -> dict[str, object]:
    runs = [json.loads(line) for line in report.read_text().splitlines() if line.strip()] if report.exists() else []
    return {
        "runs": len(runs),
        "rounds": sum(r["rounds"] for r in runs),
        "transactions": sum(r["transactions"] for r in runs),
        "statements": sum(r["statements"] for r in runs),
        "restarts": sum(r["restarts"] for r in runs),
        "diverged": [r["seed"] for r in runs if r["result"] == "diverged"],
        "failed": [r["seed"] for r in runs if r["result"] == "failed"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--run-seconds", type=float, default=120.0)
    parser.add_argument("--report", type=Path, default=Path("fuzz-soak.jsonl"))
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    failures = 0
    while time.monotonic() < deadline:
        failures += run_once(min(args.run_seconds, max(30.0, deadline - time.monotonic())), args.report) != 0
        print(json.dumps({"elapsed_s": round(time.monotonic() - started), **summary(args.report)}), flush=True)
    result = summary(args.report)
    print(json.dumps({"minutes": round((time.monotonic() - started) / 60, 1), **result}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
