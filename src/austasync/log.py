"""structlog set-up: JSON lines when stderr is not a terminal, readable lines when it is; secrets masked."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from austasync.config import LogConfig

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|credential", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(\w+://)([^/@\s]*)@")


def _mask(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: mask values under secret-looking keys and credentials inside URLs."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key):
            event[key] = "**********"
        elif isinstance(value, str) and "@" in value:
            event[key] = _URL_CREDENTIALS.sub(r"\1**********@", value)
    return event


def configure(cfg: LogConfig | None = None, stream: Any = None) -> None:
    cfg = cfg or LogConfig()
    out = stream or sys.stderr
    as_json = cfg.format == "json" or (cfg.format == "auto" and not out.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, cfg.level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)
