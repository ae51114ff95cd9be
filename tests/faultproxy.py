"""A TCP proxy with faults on demand, between the daemon and a real server (threads and sockets only).

``FaultProxy(upstream_port)`` listens on a free loopback port and forwards every connection to the server. The
faults:

- :meth:`FaultProxy.cut`: close every open connection at once, both sides (a network blip, a proxy restart);
- :meth:`FaultProxy.stall`: forward nothing, either way, for N seconds; bytes wait, none is lost (a partition that
  heals); connections made meanwhile are accepted and stall too;
- :meth:`FaultProxy.delay`: deliver every chunk N seconds late, in order (a slow link);
- :meth:`FaultProxy.refuse` / :meth:`FaultProxy.accept`: the listening socket closes, so new connections are
  refused (ECONNREFUSED) while open ones go on; ``accept`` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

_CHUNK = 65536
_POLL = 0.05


class _Link:
    """One proxied connection: a client socket, an upstream socket and a pump each way."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()

    def start(self) -> None:
        for src, dst, name in ((self.client, self.upstream, "up"), (self.upstream, self.client, "down")):
            pending: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            threading.Thread(target=self._read, args=(src, pending), name=f"proxy-{name}-read", daemon=True).start()
            threading.Thread(target=self._send, args=(dst, pending), name=f"proxy-{name}-send", daemon=True).start()

    def _read(self, src: socket.socket, pending: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                pending.put((time.monotonic() + self.proxy.latency, data))
        except OSError:
            pass
        pending.put(None)

    def _send(self, dst: socket.socket, pending: queue.Queue[tuple[float, bytes] | None]) -> None:
        try:
            while True:
                item = pending.get()
                if item is None or self.closed.is_set():
                    break
                due, data = item
                while not self.closed.is_set() and (time.monotonic() < due or self.proxy.stalled):
                    time.sleep(_POLL)
                if self.closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy.forget(self)


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream_host:upstream_port``; see the module docstring for the faults."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.latency = 0.0
        self._stalled_until = 0.0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._closing = False
        self.accepted = 0  # connections accepted since start
        self.cuts = 0  # connections closed by cut()
        self.port = self._listen(0)

    # --- faults --------------------------------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every open connection now; how many there were."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        self.cuts += len(links)
        return len(links)

    def stall(self, seconds: float) -> None:
        """Forward nothing for ``seconds`` from now (returns at once)."""
        self._stalled_until = time.monotonic() + seconds

    @property
    def stalled(self) -> bool:
        return time.monotonic() < self._stalled_until

    def delay(self, seconds: float) -> None:
        """Deliver every chunk read from now on ``seconds`` late (0: no delay)."""
        self.latency = seconds

    def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones go on."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def accept(self) -> None:
        """Listen again on the same port."""
        if self._listener is None:
            self._listen(self.port)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        self._closing = True
        self.refuse()
        self.cut()

    # --- plumbing ------------------------------------------------------------------------------------------------

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()
        return int(listener.getsockname()[1])

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refuse() or close() closed the listener
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()  # the server is down: the client sees its connection lost at once
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self.accepted += 1
                self._links.add(link)
            link.start()

    def forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
