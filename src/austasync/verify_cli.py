"""``austasync verify``: the command line of :mod:`austasync.verifier`.

Exit codes (its own, not the daemon's): 0 consistent, 1 differences found, 2 usage or configuration error,
3 the verification could not complete (a server or Redis unreachable, the daemon's barrier unavailable, a table
not copied yet, the report not stored).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
import pymysql
import redis

from austasync import config as configmod
from austasync import foreign
from austasync import log as logmod
from austasync import repair as repairmod
from austasync.db import describe_error
from austasync.errors import AustasyncError, ConfigError
from austasync.mirror import Mirror, explain
from austasync.reports import document, gate_summary, write_report
from austasync.verifier import (
    Aligner,
    HttpAligner,
    NoDaemonAligner,
    Result,
    TableResult,
    control_disabled,
    daemon_control,
)
from austasync.verifier import verify as run_verify

EXIT_CONSISTENT = 0
EXIT_DIFFERENCES = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"austasync: {message}", err=True)
    sys.exit(code)


def _guarded(func: Callable[[], int], config: configmod.Config) -> int:
    try:
        return func()
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except AustasyncError as exc:
        _fail(str(exc), EXIT_INCOMPLETE)
    except pymysql.err.MySQLError as exc:
        _fail(f"a database query failed: {describe_error(exc)}", EXIT_INCOMPLETE)
    except redis.RedisError as exc:
        _fail(explain(config.redis, exc), EXIT_INCOMPLETE)  # the server, and what to fix; never the password


CONTROL_DISABLED_NOTE = (
    'a daemon is streaming but its control plane is disabled ([http] control = "disabled"): compared as is,'
    " unaligned; rows written meanwhile may show as differences (verify again, or stop the daemon for a proof)"
)


def choose_aligner(config: configmod.Config) -> tuple[Aligner, bool, str | None]:
    """The daemon's barrier when a daemon holds the lease, else none (compare as is); whether one runs; and why
    the comparison is unaligned although one runs (its control plane disabled), if so."""
    mirror = Mirror(config.redis, config.replication.name)
    mirror.ping()
    if mirror.lease_holder() is None:
        return NoDaemonAligner(), False, None
    status = mirror.status()
    if control_disabled(config, status):
        return NoDaemonAligner(), True, CONTROL_DISABLED_NOTE
    return daemon_control(config, status), True, None


def _progress(result: TableResult) -> None:
    click.echo(f"\r  {result.table!s:<50} {result.chunks:>6} chunks {result.rows_checked:>12} rows", nl=False, err=True)


def _merge(first: Result, again: Result) -> Result:
    redone = {str(t.table): t for t in again.tables}
    first.tables = [redone.get(str(t.table), t) for t in first.tables]
    first.aligned = first.aligned and again.aligned
    first.duration_seconds += again.duration_seconds
    return first


def _verify_and_repair(
    config: configmod.Config, only: list[str] | None, repair: bool, daemon: bool, aligner: Aligner
) -> tuple[Result, dict[str, Any] | None]:
    progress = _progress if sys.stderr.isatty() else None
    result = run_verify(config, aligner, only, progress)
    if not (repair and result.differs):
        return result, None
    before = {str(t.table): len(t.differences) for t in result.tables if t.differences}
    if daemon and isinstance(aligner, HttpAligner):
        repaired = aligner.repair(repairmod.keys_to_wire(result)).get("tables", {})  # at the daemon's barrier
    elif daemon:
        raise ConfigError(
            "--repair with a daemon running goes through its control plane, which is disabled ([http] control ="
            ' "disabled"); stop the daemon and repair, or enable control with a control_token'
        )
    else:
        repaired = repairmod.repair(config, result)
    again = run_verify(config, aligner, sorted(repaired), progress)
    return _merge(result, again), {"differences_before": before, "tables": repaired}


def _human(doc: dict[str, Any]) -> str:
    verdict = "CONSISTENT" if doc["consistent"] else "NOT CONSISTENT"
    if doc["aligned"]:
        where = "aligned with the daemon"
    else:
        where = (
            "NOT aligned: " + doc["unaligned_reason"]
            if doc.get("unaligned_reason")
            else "no daemon running: compared as is"
        )
    lines = [f"{verdict} at source position {doc['source_position']} ({where}), {doc['duration_seconds']} s"]
    for table in doc["tables"]:
        state = "consistent" if table["consistent"] else table.get("unverified") or "DIFFERENT"
        lines.append(f"  {table['table']:<50} {table['rows_checked']:>12} rows {table['chunks']:>6} chunks  {state}")
        lines += [f"      schema: {s}" for s in table.get("schema_differences", [])]
        lines += [f"      {d['kind']:<18} {json.dumps(d['key'])}" for d in table["differences"]]
        if table["differences_capped"]:
            lines.append(f"      ... {table['differences_total']} differences in all: {table['counts']}")
    lines += [f"  schema: {d['kind']} {d['object']}: {d['difference']}" for d in doc["schema_differences"]]
    lines += [f"  not verified: {why}" for why in doc["not_verified"]]
    lines += [
        f"foreign write #{w['id']} cleared: {w['what']} ({w['cleared_how']})" for w in doc["foreign_writes_cleared"]
    ]
    lines += [
        f"foreign write #{w['id']} still OPEN: {w['what']}; ends with {w['ends_with']}"
        for w in doc["foreign_writes_open"]
    ]
    if "repair" in doc:
        lines.append(f"repaired: {json.dumps(doc['repair']['tables'])}")
    return "\n".join(lines)


def _exit_code(result: Result) -> int:
    if result.differs:
        return EXIT_DIFFERENCES
    return EXIT_CONSISTENT if result.consistent else EXIT_INCOMPLETE


def _publish(config: configmod.Config, result: Result) -> None:
    """A full verification's verdict goes to Redis for the gate; a subset of the tables proves nothing there."""
    try:
        Mirror(config.redis, config.replication.name).publish_verification(gate_summary(result, time.time()))
    except redis.RedisError as exc:
        click.echo(
            f"austasync: could not publish the result to Redis for the gate: {explain(config.redis, exc)}", err=True
        )


def _run(config: configmod.Config, only: list[str] | None, as_json: bool, report_to: str | None, repair: bool) -> int:
    aligner, daemon, unaligned = choose_aligner(config)
    if unaligned:
        click.echo(f"austasync: {unaligned}", err=True)
    result, repaired = _verify_and_repair(config, only, repair, daemon, aligner)
    if only is None:
        _publish(config, result)
    doc = document(result, config.replication.name)
    if unaligned:
        doc["unaligned_reason"] = unaligned
    if repaired is not None:
        doc["repair"] = repaired
    doc.update(_foreign_writes(config, result))
    if sys.stderr.isatty():
        click.echo("", err=True)
    click.echo(json.dumps(doc, indent=2) if as_json else _human(doc))
    if report_to:
        where = write_report(doc, report_to, config.replication.name, datetime.now(UTC))
        click.echo(f"report written to {where}", err=True)
    return _exit_code(result)


def _foreign_writes(config: configmod.Config, result: Result) -> dict[str, Any]:
    """Close the foreign writes this verification covers (recorded with who and how in the target's state), and
    list the ones still open. A target without the state schema has none."""
    cleared = foreign.clear_verified(config, result)
    still_open = foreign.listing(config)
    return {
        "foreign_writes_cleared": [r.as_dict() for r in cleared],
        "foreign_writes_open": [r.as_dict() for r in still_open],
    }


def _parse_tables(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n.count(".") != 1]
    if not names or bad:
        _fail(f"--tables takes db.table names separated by commas, got {text!r}", EXIT_USAGE)
    return names


@click.command("verify")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML configuration file."
)
@click.option("--tables", default=None, metavar="DB.T,...", help="Only these replicated tables (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@click.option("--report", "report_to", default=None, metavar="PATH_OR_S3_URL", help="Also store the report there.")
@click.option("--repair", is_flag=True, help="Re-copy the differing keys from the source, then verify again.")
def verify(config_path: str, tables: str | None, as_json: bool, report_to: str | None, repair: bool) -> None:
    """Prove that source and target hold the same rows, or name every row that differs.

    Asks the running daemon for an aligned point; with no daemon running it compares as is and says so.
    Exit codes: 0 consistent, 1 differences found, 2 usage error, 3 could not complete.
    """
    only = _parse_tables(tables)
    try:
        config = configmod.load(config_path)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    logmod.configure(config.log)
    sys.exit(_guarded(lambda: _run(config, only, as_json, report_to, repair), config))
