"""The command line. Exit codes are mapped here and only here (see :mod:`austasync.errors`)."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click
import pymysql
import redis

from austasync import __version__, readiness
from austasync import config as configmod
from austasync import log as logmod
from austasync.db import describe_error
from austasync.errors import (
    AustasyncError,
    BinlogPurgedError,
    ConfigError,
    DdlStop,
    DriftError,
    FencedError,
    SetupError,
    UnavailableError,
    UncarryableValueError,
)
from austasync.mirror import explain
from austasync.position import Position

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SETUP = 4
EXIT_DDL_STOP = 10
EXIT_DRIFT = 11
EXIT_UNCARRYABLE = 12
EXIT_FENCED = 13
EXIT_BINLOG_PURGED = 14

_EXIT_CODES: list[tuple[type[AustasyncError], int]] = [
    (ConfigError, EXIT_USAGE),
    (UnavailableError, EXIT_UNAVAILABLE),
    (SetupError, EXIT_SETUP),
    (DdlStop, EXIT_DDL_STOP),
    (DriftError, EXIT_DRIFT),
    (UncarryableValueError, EXIT_UNCARRYABLE),
    (FencedError, EXIT_FENCED),
    (BinlogPurgedError, EXIT_BINLOG_PURGED),
]


def exit_code(exc: AustasyncError) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILURE


def _fail(exc: AustasyncError) -> NoReturn:
    code = exit_code(exc)
    logmod.get("austasync").error(str(exc), kind=exc.kind, exit_code=code)
    click.echo(f"austasync: {exc}", err=True)
    sys.exit(code)


def _guard(func: Callable[[], Any], cfg: configmod.Config) -> Any:
    try:
        return func()
    except AustasyncError as exc:
        _fail(exc)
    except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
        # a connection lost mid-run: nothing half-written survives (the open target transaction rolls back)
        _fail(UnavailableError(f"a database connection failed: {describe_error(exc)}"))
    except redis.RedisError as exc:
        # which server, over what, and what to fix; the password never (mirror.explain masks it)
        _fail(UnavailableError(explain(cfg.redis, exc)))


def _load(path: str) -> configmod.Config:
    try:
        return configmod.load(path)
    except ConfigError as exc:
        click.echo(f"austasync: {exc}", err=True)
        sys.exit(EXIT_USAGE)


config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML configuration file."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="austasync")
def main() -> None:
    """austasync: copy a live MySQL database to a new server and keep it exact, with zero downtime."""


@main.command()
@config_option
@click.option("--reverse", is_flag=True, help="After a cutover: stream the promoted target back into the legacy host.")
@click.option("--from-position", help="Where the reverse stream starts (file:pos); default: recorded by cutover.")
def run(config_path: str, reverse: bool, from_position: str | None) -> None:
    """Copy the selected schemas while streaming the binlog, then keep streaming (a daemon).

    SIGTERM stops at a clean checkpoint and exits 0. A connection lost once running is retried in-process from the
    target's checkpoint for up to apply.retry_budget_seconds. Exit codes: 2 configuration, 3 a server unreachable
    (at start-up, or past the retry budget), 4 set-up refused, 10 DDL stop, 11 drift, 12 a value or event that cannot be carried exactly, 13 fenced
    (another daemon took over), 14 the source purged the binlog the checkpoint needs.
    """
    from austasync.daemon import Daemon  # noqa: PLC0415 (keeps `austasync --help` fast)

    cfg = _load(config_path)
    logmod.configure(cfg.log)
    if reverse:
        start = _guard(lambda: _reverse_start(cfg, from_position), cfg)
        daemon = Daemon(configmod.reversed_config(cfg), start_at=start, assume_copied=True)
    else:
        daemon = Daemon(cfg)

    def on_signal(signum: int, _frame: object) -> None:
        # nothing that takes a lock: the interrupted code may hold it (logging here once deadlocked the daemon
        # inside its own log call); the daemon logs the signal from its loop
        daemon.request_stop(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _guard(daemon.run, cfg)
    if daemon.progress is not None:
        daemon.progress.write("\n")


def _reverse_start(cfg: configmod.Config, from_position: str | None) -> Position:
    """The target's binlog position recorded at promotion, unless given."""
    from austasync.mirror import Mirror  # noqa: PLC0415

    if from_position:
        try:
            return Position.parse(from_position)
        except ValueError:
            raise ConfigError(f"--from-position must be file:pos, got {from_position!r}") from None
    doc = Mirror(cfg.redis, cfg.replication.name).cutover()
    if not doc or doc.get("state") != "promoted" or not doc.get("target_position"):
        raise ConfigError(
            "no promotion recorded for this migration: run `austasync cutover` first, or give --from-position"
        )
    return Position.parse(str(doc["target_position"]))


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
def status(config_path: str, as_json: bool) -> None:
    """Phase, position, lag, copy progress, throttle, last verification and lease holder, from Redis."""
    from austasync.mirror import Mirror  # noqa: PLC0415

    cfg = _load(config_path)

    def read() -> dict[str, Any]:
        mirror = Mirror(cfg.redis, cfg.replication.name)
        mirror.ping()
        doc = mirror.status() or {}
        doc["alive"] = mirror.alive()
        doc["lease"] = mirror.lease_holder()
        doc["last_verification"] = mirror.verification()
        doc["cutover"] = mirror.cutover()
        return doc

    doc = _guard(read, cfg)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    if not doc.get("phase"):
        click.echo("no status published yet (daemon never ran, or Redis was emptied and the daemon is down)")
        sys.exit(EXIT_UNAVAILABLE)
    click.echo(f"phase      {doc['phase']}   alive: {'yes' if doc['alive'] else 'NO'}")
    click.echo(f"position   {doc.get('position')}   lag {doc.get('lag_seconds')} s")
    for server, outage in sorted((doc.get("reconnecting") or {}).items()):
        click.echo(
            f"RECONNECTING to the {server} {outage.get('address')} (attempt {outage.get('attempts')}):"
            f" {outage.get('operation')}: {str(outage.get('error', ''))[:300]}"
        )
    throttle = doc.get("throttle") or {}
    click.echo(f"throttle   {_throttle_line(throttle)}")
    click.echo(f"source     {_governor_line(throttle)}")
    click.echo(f"holder     {(doc.get('lease') or {}).get('holder', '-')}   generation {doc.get('generation')}")
    click.echo(f"verified   {_verification_line(doc.get('last_verification'))}")
    if doc.get("cutover"):
        click.echo(f"cutover    {doc['cutover'].get('state')} at source {doc['cutover'].get('final_source_position')}")
    if doc.get("foreign_writes"):
        click.echo(f"FOREIGN WRITES on the target, open: {doc['foreign_writes']}")
        for write in doc.get("foreign_writes_open") or []:
            click.echo(f"  #{write.get('id')} at target {write.get('target_position')}: {write.get('what')}")
            click.echo(f"      seen {write.get('seen_at')}; ends with {write.get('ends_with')}")
    if doc.get("pending_stop"):
        click.echo(f"STOPPED    {doc['pending_stop'].get('kind')}: {str(doc['pending_stop'].get('message', ''))[:300]}")
    click.echo("tables")
    for name, info in sorted((doc.get("tables") or {}).items()):
        mark = "done" if info["done"] else "copying"
        click.echo(f"  {name:<50} {info['rows_copied']:>12} / ~{info['rows_estimated']:<12} {mark}")


def _throttle_line(throttle: dict[str, Any]) -> str:
    """PAUSED (by the operator), ON (a signal over budget or unreadable), slowed (near a limit), or off."""
    paused = throttle.get("paused")
    if paused:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(paused.get("since") or 0)))
        note = f": {paused['note']}" if paused.get("note") else ""
        return f"PAUSED by {paused.get('by')} since {since}{note} (austasync throttle --resume)"
    if throttle.get("active"):
        return "ON: " + str(throttle.get("reason", ""))
    if throttle.get("slowed_by"):
        return f"slowed to {100 * float(throttle.get('pace') or 0):.0f}%: {throttle['slowed_by']}"
    return "off"


def _governor_line(throttle: dict[str, Any]) -> str:
    """The source signals of the last throttle check; '-' where unread (unreadable counts as over budget)."""
    history = throttle.get("source_history_list_length")
    probe = throttle.get("source_probe_seconds")
    waits = throttle.get("source_lock_waits")
    probe_text = "-" if probe is None else f"{float(probe) * 1000:.1f} ms"
    return (
        f"history list {'-' if history is None else int(history)}   probe {probe_text}"
        f"   lock waits on ours {'-' if waits is None else int(waits)}"
    )


def _verification_line(doc: dict[str, Any] | None) -> str:
    if not doc:
        return "never"
    age = time.time() - float(doc.get("finished_at") or 0)
    verdict = "consistent" if doc.get("consistent") else f"DIFFERENCES: {doc.get('drift_rows')} rows"
    return f"{verdict}, {age / 60:.0f} min ago{'' if doc.get('aligned', True) else ' (not aligned: no daemon ran)'}"


@main.command()
@config_option
@click.option("--pause", "action", flag_value="pause", help="Hold the copy and the daemon's verification now.")
@click.option("--resume", "action", flag_value="resume", help="Let them go on (the governor's signals still apply).")
@click.option("--note", default="", help="Why (shown in status and the daemon's log).")
@click.option("--by", "by", default=None, help="Who pauses (default: the OS user@host).")
def throttle(config_path: str, action: str | None, note: str, by: str | None) -> None:
    """Pause or resume the running daemon's copy and verification, or show the throttle's state.

    Goes through the daemon's /control/throttle/* endpoints with this configuration's [http] control_token; the
    pause is kept in Redis, so a restarted daemon stays paused until --resume. Streaming goes on while paused,
    and a paused copy or verification holds no snapshot on the source. `austasync verify` run by hand and the
    cutover's check are not held. Exit 0, 3 when no daemon runs or it cannot be reached.
    """
    from austasync.mirror import Mirror  # noqa: PLC0415
    from austasync.state import holder_name  # noqa: PLC0415
    from austasync.verifier import daemon_control  # noqa: PLC0415

    cfg = _load(config_path)

    def call() -> dict[str, Any]:
        mirror = Mirror(cfg.redis, cfg.replication.name)
        mirror.ping()
        if action is None:
            return dict((mirror.status() or {}).get("throttle") or {})
        if mirror.lease_holder() is None:
            raise UnavailableError(
                f"no daemon holds the lease of migration {cfg.replication.name!r}: nothing to pause or resume"
            )
        control = daemon_control(cfg, mirror.status())
        return control.throttle(action == "pause", by or holder_name(), note)

    doc = _guard(call, cfg)
    if action == "pause":
        kept = "" if doc.get("persisted") else " (NOT kept in Redis: a restarted daemon would not be paused)"
        click.echo(f"paused by {doc.get('by')}{kept}; `austasync throttle --resume` resumes")
    elif action == "resume":
        click.echo("resumed" if doc.get("was") else "resumed (it was not paused)")
    else:
        click.echo(f"throttle   {_throttle_line(doc)}")
        click.echo(f"source     {_governor_line(doc)}")


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print every check and its value as JSON.")
@click.option("--max-lag-seconds", type=float, default=readiness.DEFAULT_MAX_LAG_SECONDS, show_default=True)
@click.option(
    "--max-verify-age-seconds", type=float, default=readiness.DEFAULT_MAX_VERIFY_AGE_SECONDS, show_default=True
)
def ready(config_path: str, as_json: bool, max_lag_seconds: float, max_verify_age_seconds: float) -> None:
    """Is it safe to start the cutover procedure now? Reads Redis only (no database credentials needed).

    Exit 0 ready, 1 not ready (the reasons, one per line), 3 unknown (the state cannot be read).
    """
    from austasync.mirror import Mirror, explain  # noqa: PLC0415

    cfg = _load(config_path)
    try:
        mirror = Mirror(cfg.redis, cfg.replication.name)
        status_doc, verification, alive = mirror.status(), mirror.verification(), mirror.alive()
    except (redis.RedisError, OSError) as exc:
        doc = {"ready": None, "error": f"cannot read the state from Redis: {explain(cfg.redis, exc)}"}
        click.echo(json.dumps(doc) if as_json else f"unknown: {doc['error']}")
        sys.exit(EXIT_UNAVAILABLE)
    checks = readiness.evaluate(
        status_doc,
        verification,
        alive=alive,
        now=time.time(),
        max_lag_seconds=max_lag_seconds,
        max_verify_age_seconds=max_verify_age_seconds,
    )
    ok = readiness.is_ready(checks)
    if as_json:
        cutover_doc = mirror.cutover()
        click.echo(
            json.dumps(
                {"ready": ok, "checks": [c.as_dict() for c in checks], "cutover": (cutover_doc or {}).get("state")},
                default=str,
            )
        )
    elif ok:
        click.echo("ready")
    else:
        for check in checks:
            if not check.ok:
                click.echo(f"{check.name}: {check.reason}")
    sys.exit(EXIT_OK if ok else EXIT_FAILURE)


@main.command()
@config_option
@click.option("--app-user", "app_users", multiple=True, help="An application user that must not bypass read_only.")
@click.option("--timeout-seconds", type=float, default=60.0, show_default=True, help="How long to wait for the drain.")
@click.option(
    "--verify-budget-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="Also run a full verification pass while writes are refused if the last one took no longer than this;"
    " else only the keys written since the daemon's last clean full pass are checked.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def cutover(
    config_path: str, app_users: tuple[str, ...], timeout_seconds: float, verify_budget_seconds: float, as_json: bool
) -> None:
    """Make the source read-only, drain the stream, verify, raise AUTO_INCREMENTs and promote the target.

    At promotion the source's triggers on replicated tables move to the target (saved and dropped on the source).
    Needs a source user allowed to set read_only (SUPER or READ_ONLY ADMIN). Any failure before the promotion
    makes the source writable again and leaves the triggers where they were. Exit 0 promoted, 1 refused or failed
    (the reason is printed), 3 unavailable, 4 triggers cannot be moved as they are (the message says what to do).
    """
    from austasync.cutover import run_cutover  # noqa: PLC0415

    cfg = _load(config_path)
    logmod.configure(cfg.log)
    result = _guard(
        lambda: run_cutover(
            cfg,
            app_users=list(app_users),
            timeout_seconds=timeout_seconds,
            announce=lambda m: click.echo(m, err=True),
            verify_budget_seconds=verify_budget_seconds,
        ),
        cfg,
    )
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        for step in result.steps:
            click.echo(f"  {step['step']:<18} {step['seconds']:>8.3f} s")
        if result.triggers_moved:
            click.echo("triggers moved to the target: " + ", ".join(result.triggers_moved))
        click.echo(
            f"promoted: the target holds every write up to source position {result.final_position}; writes were"
            f" refused for {result.writes_refused_seconds:.1f} s. Next: point the application at the target."
            f" A reverse stream would start at the target's {result.target_position}."
        )


@main.command()
@config_option
@click.option("--app-user", "app_users", multiple=True, help="An application user that must not bypass read_only.")
@click.option("--timeout-seconds", type=float, default=60.0, show_default=True, help="How long to wait for the drain.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rollback(config_path: str, app_users: tuple[str, ...], timeout_seconds: float, as_json: bool) -> None:
    """The mirror of cutover, while `run --reverse` streams: make the promoted target read-only, drain the reverse
    stream into the legacy host, verify, promote the legacy host (its saved triggers restored, the new side's saved
    and dropped) and make it writable again."""
    from austasync.cutover import run_cutover  # noqa: PLC0415

    cfg = configmod.reversed_config(_load(config_path))
    logmod.configure(cfg.log)
    result = _guard(
        lambda: run_cutover(
            cfg,
            app_users=list(app_users),
            timeout_seconds=timeout_seconds,
            announce=lambda m: click.echo(m, err=True),
            rollback=True,
        ),
        cfg,
    )
    click.echo(
        json.dumps(result.as_dict(), indent=2)
        if as_json
        else f"rolled back: the legacy host holds every write up to {result.final_position} and takes writes again;"
        f" writes were refused for {result.writes_refused_seconds:.1f} s."
        + (f" Its triggers are back: {', '.join(result.triggers_moved)}." if result.triggers_moved else "")
        + " Point the application back at it."
    )


@main.command()
@config_option
@click.option("--skip", "action", flag_value="skip", help="You applied the DDL to the target yourself: go past it.")
@click.option("--exec", "action", flag_value="exec", help="Run the stopped DDL on the target, then go past it.")
def ddl(config_path: str, action: str | None) -> None:
    """Resolve a DDL stop: show it, or skip it / execute it on the target, so `austasync run` can go on."""
    from austasync.maintenance import resolve_ddl  # noqa: PLC0415

    cfg = _load(config_path)
    logmod.configure(cfg.log)
    message = _guard(lambda: resolve_ddl(cfg, action), cfg)
    click.echo(message)


@main.command()
@config_option
@click.option("--yes", is_flag=True, help="Confirm: forget the copy progress and stream position.")
def reset(config_path: str, yes: bool) -> None:
    """Forget the migration's progress so the next `run` re-copies every table from a new P0.

    Needed after the source purged the binlog the checkpoint points into. Target rows are replaced chunk by chunk
    by the re-copy; nothing needs truncating by hand. Stop the daemon first.
    """
    from austasync.maintenance import reset_state  # noqa: PLC0415

    cfg = _load(config_path)
    if not yes:
        click.echo("austasync: reset forgets the copy progress; add --yes to confirm", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(_guard(lambda: reset_state(cfg), cfg))


@main.command("foreign-writes")
@config_option
@click.option(
    "--ack",
    "ack",
    is_flag=False,
    flag_value="all",
    default=None,
    metavar="[ID|all]",
    help="Acknowledge one open foreign write (by id) or all of them: the gate stops counting it.",
)
@click.option("--by", "by", default=None, help="Who acknowledges (default: the OS user@host).")
@click.option("--all", "show_all", is_flag=True, help="List the cleared ones too, with who cleared them and how.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def foreign_writes(config_path: str, ack: str | None, by: str | None, show_all: bool, as_json: bool) -> None:
    """List the writes on the target that austasync did not make, or acknowledge them (--ack).

    Each one stays open, and the gate not ready, until a verification that covers it (started after it) comes out
    clean or it is acknowledged here. Reads and writes the target's state schema; no daemon needed. Exit 0, 1
    when open foreign writes remain after this command, 2 usage (an unknown id).
    """
    from austasync.foreign import acknowledge, listing  # noqa: PLC0415

    cfg = _load(config_path)
    if ack is not None and ack != "all" and not ack.isdigit():
        click.echo(f"austasync: --ack takes an id or 'all', got {ack!r}", err=True)
        sys.exit(EXIT_USAGE)
    if ack is not None:
        acked = _guard(lambda: acknowledge(cfg, ack, by), cfg)
        if ack != "all" and not acked:
            click.echo(f"austasync: no open foreign write with id {ack}", err=True)
            sys.exit(EXIT_USAGE)
    else:
        acked = []
    records = _guard(lambda: listing(cfg, cleared=show_all), cfg)
    still_open = [r for r in records if r.cleared_at is None]
    if as_json:
        doc = {"acknowledged": [r.as_dict() for r in acked], "foreign_writes": [r.as_dict() for r in records]}
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        for rec in acked:
            click.echo(f"acknowledged #{rec.id} ({rec.write.describe()}) by {rec.cleared_by} at {rec.cleared_at}")
        if not records:
            click.echo("no open foreign writes" if not show_all else "no foreign writes recorded")
        for rec in records:
            state = "OPEN" if rec.cleared_at is None else f"cleared {rec.cleared_at} by {rec.cleared_by}"
            click.echo(f"#{rec.id:<5} target {rec.write.position}  {state}")
            click.echo(f"       {rec.write.describe()}; seen {rec.seen_at}")
            if rec.write.statement:
                click.echo(f"       statement: {rec.write.statement[:300]}")
            click.echo(f"       {rec.cleared_how or 'ends with ' + rec.write.ends_with()}")
    sys.exit(EXIT_FAILURE if still_open else EXIT_OK)


@main.command("check-config")
@config_option
def check_config(config_path: str) -> None:
    """Validate the configuration file and print it with secrets masked."""
    cfg = _load(config_path)
    click.echo(json.dumps(configmod.describe(cfg), indent=2, default=str))


from austasync.preflight_cli import preflight  # noqa: E402 (registered last, after main exists)

main.add_command(preflight)

from austasync.verify_cli import verify  # noqa: E402 (registered last, after main exists)

main.add_command(verify)
