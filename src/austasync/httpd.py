"""The daemon's HTTP listener: ``/metrics``, ``/healthz``, ``/ready`` and the verification barrier control.

Standard library only (a threading HTTP server): the endpoints are few and tiny, and the control calls block
while the apply loop reaches a position, which a thread per request handles simply.

Control (used by ``austasync verify`` to compare both sides at the same source position):
``POST /control/barrier/pause`` → ``{"position": "file:pos"}`` once the applier is paused at a transaction
boundary; ``POST /control/barrier/advance`` with ``{"position": "file:pos"}`` → returns when the applier stands
exactly there (still paused); ``POST /control/barrier/release``. The daemon releases by itself after a few seconds,
so a crashed client cannot stall replication. ``POST /control/repair`` (used by ``austasync verify --repair``)
re-copies the given keys at the barrier.

Who may steer it (:class:`ControlPolicy`): with ``[http] control_token`` every ``/control/*`` request needs
``Authorization: Bearer <token>`` (401 without, 403 when wrong, compared in constant time); without a token only a
loopback listener serves ``/control/*``; ``control = "disabled"`` refuses it everywhere. ``/metrics``,
``/healthz`` and ``/ready`` stay open: Prometheus and health checks carry no credentials.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from austasync.config import Secret

#: a repair body of about 400,000 keys; a bigger one is refused before it is read (memory of an HTTP thread)
MAX_CONTROL_BODY_BYTES = 64 * 1024 * 1024
AUTH_CHALLENGE = 'Bearer realm="austasync control"'


@dataclass(frozen=True)
class Refusal:
    code: int
    error: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ControlPolicy:
    """Whether one listener serves ``/control/*``, and to whom. The token stays a :class:`Secret` (never shown in a
    repr or a traceback) and is revealed only to compare it."""

    token: Secret = field(default_factory=lambda: Secret(""))
    disabled: bool = False
    #: this listener is on loopback: without a token it still serves /control/* (only local processes reach it)
    loopback: bool = False
    #: ``[http] control_listen`` when /control/* is served there instead of on this listener
    elsewhere: str | None = None

    def refusal(self, authorization: str | None) -> Refusal | None:
        """None when the request may go on, else what to answer. Nothing of the presented value is echoed."""
        if self.disabled:
            return Refusal(403, 'the control plane is disabled ([http] control = "disabled")')
        if self.elsewhere is not None:
            return Refusal(404, f"/control/* is served on [http] control_listen ({self.elsewhere}), not here")
        if not self.token:
            if self.loopback:
                return None
            return Refusal(403, "/control/* answers on a non-loopback listener only with [http] control_token set")
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            challenge = (("WWW-Authenticate", AUTH_CHALLENGE),)
            return Refusal(401, "/control/* needs Authorization: Bearer <[http] control_token>", challenge)
        if not hmac.compare_digest(presented.strip().encode(), self.token.reveal().encode()):
            return Refusal(403, "the control token is wrong")
        return None


@dataclass(frozen=True)
class Endpoints:
    registry: CollectorRegistry
    health: Callable[[], tuple[bool, dict[str, Any]]]
    ready: Callable[[], tuple[bool, dict[str, Any]]]
    control: Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


def _handler(endpoints: Endpoints, policy: ControlPolicy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "austasync"

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds would flood the log

        def _send(
            self,
            code: int,
            body: bytes,
            content_type: str = "application/json",
            headers: tuple[tuple[str, str], ...] = (),
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
            self._send(code, json.dumps(doc, default=str).encode(), headers=headers)

        def _control_allowed(self) -> bool:
            """Checked before the body is read: an unauthenticated caller gets nothing read, nothing queued."""
            refused = policy.refusal(self.headers.get("Authorization"))
            if refused is not None:
                self._json(refused.code, {"error": refused.error}, refused.headers)
            return refused is None

        def _body(self) -> dict[str, Any] | None:
            """The JSON body, or None after answering why not (not a number, too big, not a JSON object)."""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                self._json(400, {"error": "Content-Length is not a number"})
                return None
            if length < 0 or length > MAX_CONTROL_BODY_BYTES:
                limit = MAX_CONTROL_BODY_BYTES // (1024 * 1024)
                self._json(413, {"error": f"the body is over {limit} MiB; repair fewer tables at once (--tables)"})
                return None
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                self._json(400, {"error": "body is not JSON"})
                return None
            if not isinstance(body, dict):
                self._json(400, {"error": "body must be a JSON object"})
                return None
            return body

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/control/"):
                if self._control_allowed():
                    self._json(405, {"error": f"{path} takes POST"}, (("Allow", "POST"),))
            elif path == "/metrics":
                self._send(200, generate_latest(endpoints.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, doc = endpoints.health()
                self._json(200 if ok else 503, doc)
            elif path == "/ready":
                ok, doc = endpoints.ready()
                self._json(200 if ok else 503, doc)
            else:
                self._json(404, {"error": f"no such endpoint {path}"})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if not path.startswith("/control/"):
                self._json(404, {"error": f"no such endpoint {path}"})
                return
            if not self._control_allowed():
                return
            body = self._body()
            if body is None:
                return
            code, doc = endpoints.control(path.removeprefix("/control/"), body)
            self._json(code, doc)

    return Handler


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class HttpServer:
    """Serves the endpoints on ``host:port`` in a background thread; port 0 picks a free port."""

    def __init__(self, host: str, port: int, endpoints: Endpoints, policy: ControlPolicy | None = None) -> None:
        server_class = _ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), _handler(endpoints, policy or ControlPolicy()))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
