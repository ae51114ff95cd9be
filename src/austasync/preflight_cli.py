"""``austasync preflight``: registered on the main command group at the end of :mod:`austasync.cli`."""

from __future__ import annotations

import json
import sys

import click

from austasync import config as configmod
from austasync.errors import ConfigError

EXIT_USAGE = 2


@click.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML configuration file."
)
@click.option("--json", "as_json", is_flag=True, help="Print the checklist as JSON.")
def preflight(config_path: str, as_json: bool) -> None:
    """Check source, target, Redis and clocks before a migration; print a checklist with a fix for each problem.

    Only reads. Exit codes: 0 nothing failed (warnings allowed), 1 a check failed, 2 configuration or usage
    error, 3 a server (source, target, Redis) could not be reached.
    """
    from austasync.preflight import render, run_preflight  # noqa: PLC0415 (keeps `austasync --help` fast)

    try:
        cfg = configmod.load(config_path)
    except ConfigError as exc:
        click.echo(f"austasync: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    report = run_preflight(cfg)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report))
    sys.exit(report.exit_code)
