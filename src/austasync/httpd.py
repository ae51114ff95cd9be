"""The daemon's HTTP listener: ``/metrics``, ``/healthz``, ``/ready`` and the verification barrier control.

Standard library only (a threading HTTP server): the endpoints are few and tiny, and the control calls block
while the apply loop reaches a position, which a thread per request handles simply.

Control (used by ``austasync verify`` to compare both sides at the same source position):
``POST /control/barrier/pause`` → ``{"position": "file:pos"}`` once the applier is paused at a transaction
boundary; ``POST /control/barrier/advance`` with ``{"position": "file:pos"}`` → returns when the applier stands
exactly there (still paused); ``POST /control/barrier/release``. The daemon releases by itself after a few seconds,
so a crashed client cannot stall replication. ``POST /control/repair`` (used by ``austasync verify --repair``)
re-copies the given keys at the barrier.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass(frozen=True)
class Endpoints:
    registry: CollectorRegistry
    health: Callable[[], tuple[bool, dict[str, Any]]]
    ready: Callable[[], tuple[bool, dict[str, Any]]]
    control: Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


def _handler(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "austasync"

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes every few seconds would flood the log

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, doc: dict[str, Any]) -> None:
            self._send(code, json.dumps(doc, default=str).encode())

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
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
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self._json(400, {"error": "body is not JSON"})
                return
            code, doc = endpoints.control(path.removeprefix("/control/"), body)
            self._json(code, doc)

    return Handler


class HttpServer:
    """Serves the endpoints on ``host:port`` in a background thread; port 0 picks a free port."""

    def __init__(self, host: str, port: int, endpoints: Endpoints) -> None:
        self.server = ThreadingHTTPServer((host, port), _handler(endpoints))
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
