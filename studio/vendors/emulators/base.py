"""What every vendor emulator shares: routing, a controllable clock, fault
switches, counters, and two ways to be reached.

An emulator is a plain object whose `handle(request) -> response` speaks the
vendor's documented protocol. It is reached either in-process, through an
httpx transport (sandbox mode, fast tests), or over real HTTP on 127.0.0.1
(`serve()`), so adapters are tested on the wire too. Faults that are not an
HTTP answer (timeouts, a reset connection) are raised as `NetworkFault` and
become the matching httpx error in-process, or the real thing on the wire.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class Clock:
    """Wall time plus an offset tests can move forward (URL expiry, token lifetimes)."""

    def __init__(self):
        self.offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds


class NetworkFault(Exception):
    """Raised by a handler to emulate a failure below HTTP."""

    def __init__(self, kind: str):  # "connect_timeout" | "read_timeout" | "reset"
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern
    handler: Callable[..., httpx.Response]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


class Emulator:
    """Base class: subclasses add routes in `__init__` with `self.route(...)`."""

    vendor = ""

    def __init__(self, *, clock: Clock | None = None, base_url: str = "http://emulator.invalid"):
        self.clock = clock or Clock()
        self.base_url = base_url.rstrip("/")
        # Fault and variant switches: name → value; each subclass documents its own.
        self.faults: dict[str, Any] = {}
        self.counters: Counter[str] = Counter()  # requests, charges, 429s, … for tests and benchmarks
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        self.lock = threading.RLock()
        self._routes: list[Route] = []

    # --- routing -----------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Callable[..., httpx.Response]) -> None:
        """Register a handler; named groups in the regex become keyword arguments."""
        self._routes.append(Route(method.upper(), re.compile(pattern + r"\Z"), handler))

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self.lock:
            self.counters["requests"] += 1
            self.log.append((request.method, path))
        for route in self._routes:
            match = route.pattern.match(path)
            if match and route.method == request.method:
                return route.handler(request, **match.groupdict())
        return json_response(404, {"error": "not found", "path": path})

    def url(self, path: str) -> str:
        """An absolute URL of this emulator (for file links it hands out)."""
        return f"{self.base_url}{path}"

    # --- fault switches ------------------------------------------------------------

    def fault(self, name: str, default: Any = None) -> Any:
        return self.faults.get(name, default)

    def take_fault(self, name: str) -> bool:
        """For counted faults (e.g. "fail the next 3 calls"): True and count down while > 0."""
        with self.lock:
            remaining = self.faults.get(name, 0)
            if isinstance(remaining, bool):
                return remaining
            if remaining and remaining > 0:
                self.faults[name] = remaining - 1
                return True
            return False

    # --- reaching it -----------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """In-process transport: every request, whatever its host, goes to `handle`."""

        def handler(request: httpx.Request) -> httpx.Response:
            request.read()
            try:
                return self.handle(request)
            except NetworkFault as fault:
                if fault.kind == "connect_timeout":
                    raise httpx.ConnectTimeout("emulated connect timeout", request=request) from None
                if fault.kind == "read_timeout":
                    raise httpx.ReadTimeout("emulated read timeout", request=request) from None
                raise httpx.RemoteProtocolError("emulated connection reset", request=request) from None

        return httpx.MockTransport(handler)

    @contextmanager
    def serve(self, *, read_timeout_sleep: float = 3.0):
        """Serve over real HTTP on 127.0.0.1 for the duration of the block; yields the base URL.

        A "read_timeout" fault holds the answer back `read_timeout_sleep`
        seconds (set the client's timeout below it); "reset" closes the socket.
        """
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = httpx.Request(
                    self.command,
                    f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}",
                    headers=[(k, v) for k, v in self.headers.items() if k.lower() != "host"],
                    content=body,
                )
                try:
                    response = emulator.handle(request)
                except NetworkFault as fault:
                    if fault.kind in ("read_timeout", "connect_timeout"):
                        time.sleep(read_timeout_sleep)
                    self.close_connection = True
                    with suppress(OSError):
                        self.connection.shutdown(2)
                    return
                response.read()
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        previous = self.base_url
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self.base_url
        finally:
            server.shutdown()
            server.server_close()
            self.base_url = previous
