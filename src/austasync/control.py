"""Requests from the HTTP thread to the apply loop, answered by the loop at a safe point.

The apply loop is the only writer, so anything that needs it to stand still (the verification barrier) is a
request put on a queue and answered by the loop itself; the HTTP thread just waits for the reply.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any

AUTO_RELEASE_SECONDS = 10.0


@dataclass
class Request:
    command: str
    body: dict[str, Any]
    deadline: float = float("inf")
    reply: queue.Queue[tuple[int, dict[str, Any]]] = field(default_factory=lambda: queue.Queue(maxsize=1))

    @property
    def expired(self) -> bool:
        """The caller stopped waiting: acting on it now (a pause!) would only stall the applier."""
        return time.monotonic() > self.deadline

    def answer(self, code: int, doc: dict[str, Any]) -> None:
        self.reply.put_nowait((code, doc))


class Control:
    """The mailbox between HTTP handlers and the loop."""

    # throttle/* are answered by the daemon in the HTTP thread (Daemon._control_call), not through this mailbox
    COMMANDS = (
        "barrier/pause",
        "barrier/advance",
        "barrier/release",
        "repair",
        "verify/written",
        "throttle/pause",
        "throttle/resume",
    )

    def __init__(self) -> None:
        self.requests: queue.Queue[Request] = queue.Queue()

    def call(self, command: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        """Called from an HTTP thread: hand the request to the loop and wait for its answer."""
        if command not in self.COMMANDS:
            return 404, {"error": f"unknown control command {command!r}; known: {', '.join(self.COMMANDS)}"}
        request = Request(command, body, deadline=time.monotonic() + timeout)
        self.requests.put(request)
        try:
            return request.reply.get(timeout=timeout)
        except queue.Empty:
            return 504, {"error": f"the apply loop did not answer {command} within {timeout:g} s"}

    def next(self, timeout: float = 0.0) -> Request | None:
        try:
            return self.requests.get(timeout=timeout) if timeout else self.requests.get_nowait()
        except queue.Empty:
            return None
