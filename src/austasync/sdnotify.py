"""systemd's notify protocol (``Type=notify``): one datagram per state change to ``$NOTIFY_SOCKET``.

Written out instead of depending on a package because the protocol is this small. Without ``NOTIFY_SOCKET``
(a terminal, a container, a test) every call does nothing, so callers never need to ask whether systemd runs them.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send ``message`` (``KEY=value`` lines); False when not run by systemd or the socket is gone."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket: systemd writes its leading NUL as '@'
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode("utf-8"), address)
    except OSError:
        # systemd restarted or the socket vanished: a lost notification must never stop replication
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    # one line only: a newline would start another KEY=value assignment
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog_interval() -> float | None:
    """Seconds between pings that keep ``WatchdogSec=`` satisfied (half of it), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
