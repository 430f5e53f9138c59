"""What every vendor emulator shares: routing, a controllable clock, fault
switches, counters, and two ways to be reached.

An emulator is a plain object whose `handle(request) -> response` speaks the
vendor's documented protocol. It is reached either in-process, through an
httpx transport (sandbox mode, fast tests), or over real HTTP on 127.0.0.1
(`serve()`), so adapters are tested on the wire too. Faults that are not an
HTTP answer (timeouts, a reset connection) are raised as `NetworkFault` and
become the matching httpx error in-process, or the real thing on the wire.

Generic fault switches, the same for every vendor (`emulator.faults[name]`).
`handle()` applies them around routing, so a vendor emulator only supplies
its error envelope (`error_response`). Counted ones take an int "for the
next N matching requests" or True "always"; `fault_path` (a regex) limits
every generic switch to the paths it matches, e.g. only the poll:
  "429", "500", "502", "503" (counted)  answer that status in the vendor's error envelope
                                          instead of handling the request (nothing is created)
  "connect_timeout" (counted)   the connection is never made (in-process: httpx.ConnectTimeout)
  "read_timeout" (counted)      no answer; on the wire it is held back `read_timeout_sleep` s
  "reset" (counted)             the connection drops before the request is handled
  "reset_after" (counted)       the request is handled (a task is created), then the
                                connection drops: the answer is lost
  "malformed_json" (counted)    the request is handled, the answer is replaced by a 200
                                HTML page (what a proxy in front of the API sends)
  "slow_answer": float          matching answers trickle in over this many seconds
  "oversized_answer": int       matching answers are padded to this many bytes
Result files that an emulator serves through `file_response` (WaveSpeed's
and Vtrix's output URLs) take two more:
  "slow_download": float        the file trickles in over this many seconds
  "oversized_download": int     the file is padded with NUL bytes to this many bytes
Every generic fault that fires counts in `counters["fault_<name>"]`.
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


class Trickle(httpx.SyncByteStream):
    """A body sent in `pieces` parts spread over `seconds` (a slow link, not a stalled one)."""

    def __init__(self, data: bytes, seconds: float, pieces: int = 10):
        self.data = data
        self.interval = max(0.0, float(seconds)) / pieces
        size = max(1, -(-len(data) // pieces))
        self.parts = [data[i : i + size] for i in range(0, len(data), size)] or [b""]

    def __iter__(self):
        for part in self.parts:
            time.sleep(self.interval)
            yield part


STATUS_TEXT = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
MALFORMED_BODY = b"<html><body>Service temporarily unavailable</body></html>"


class VendorLikeHandler(BaseHTTPRequestHandler):
    """What every emulator's HTTP server shares: kept-alive HTTP/1.1 connections, as a vendor's."""

    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as vendors' front ends set it: the headers and the body go out as
    # two writes, and with Nagle's algorithm on a kept-alive connection the body waited
    # for the client's delayed ACK of the headers (40 ms on Linux) on many answers.
    disable_nagle_algorithm = True


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

    def route(self, method: str, pattern: str, handler: Callable[..., httpx.Response], *, first: bool = False) -> None:
        """Register a handler; named groups in the regex become keyword arguments.

        Routes are tried in order; `first` puts this one ahead of every route so far
        (a fixed path such as /task/delete before a /task/{feature} pattern).
        """
        route = Route(method.upper(), re.compile(pattern + r"\Z"), handler)
        if first:
            self._routes.insert(0, route)
        else:
            self._routes.append(route)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request: the generic faults around the vendor's own routes."""
        with self.lock:
            self.counters["requests"] += 1
            self.log.append((request.method, request.url.path))
        self.raise_network_fault(request)
        answer = self.status_fault(request)
        if answer is None:
            answer = self.dispatch(request)
        return self.spoil_answer(request, answer)

    def dispatch(self, request: httpx.Request) -> httpx.Response:
        """The vendor's own answer (no generic faults, not logged)."""
        path = request.url.path
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

    def take_scoped(self, name: str, request: httpx.Request) -> bool:
        """`take_fault` for a generic switch, only on the paths `fault_path` matches (all when unset)."""
        pattern = self.fault("fault_path")
        if pattern and not re.search(pattern, request.url.path):
            return False
        if not self.take_fault(name):
            return False
        with self.lock:
            self.counters[f"fault_{name}"] += 1
        return True

    def raise_network_fault(self, request: httpx.Request) -> None:
        for kind in ("connect_timeout", "read_timeout", "reset"):
            if self.take_scoped(kind, request):
                raise NetworkFault(kind)

    def status_fault(self, request: httpx.Request, statuses=("429", "500", "502", "503")) -> httpx.Response | None:
        for status in statuses:
            if self.take_scoped(status, request):
                if status == "429":
                    with self.lock:
                        self.counters["429"] += 1
                return self.error_response(int(status))
        return None

    def error_response(self, status: int) -> httpx.Response:
        """A refused request in this vendor's error envelope (subclasses override the shape)."""
        headers = {"Retry-After": "1"} if status == 429 else None
        return json_response(status, {"error": STATUS_TEXT.get(status, "error")}, headers)

    def spoil_answer(self, request: httpx.Request, answer: httpx.Response) -> httpx.Response:
        """The faults that strike after the request was handled: its answer is lost, garbled or slow."""
        if self.take_scoped("reset_after", request):
            raise NetworkFault("reset")
        if self.take_scoped("malformed_json", request):
            return httpx.Response(200, content=MALFORMED_BODY, headers={"Content-Type": "text/html"})
        pattern = self.fault("fault_path")
        if not pattern or re.search(pattern, request.url.path):
            return self._reshaped(answer, "slow_answer", "oversized_answer", pad=b" ")  # blanks keep JSON valid
        return answer

    def file_response(self, data: bytes, content_type: str) -> httpx.Response:
        """A result file, with the download faults applied ("slow_download", "oversized_download")."""
        response = httpx.Response(200, content=data, headers={"Content-Type": content_type})
        return self._reshaped(response, "slow_download", "oversized_download", pad=b"\0")

    def _reshaped(self, answer: httpx.Response, slow_switch: str, size_switch: str, *, pad: bytes) -> httpx.Response:
        """The answer padded to the `size_switch` bytes and/or trickling in over `slow_switch` seconds."""
        slow, oversized = self.fault(slow_switch), self.fault(size_switch)
        if not (slow or oversized):
            return answer
        body = answer.read()
        headers = [
            (k, v) for k, v in answer.headers.multi_items() if k.lower() not in ("content-length", "content-encoding")
        ]
        with self.lock:
            if oversized:
                self.counters[f"fault_{size_switch}"] += 1
                body += pad * max(0, int(oversized) - len(body))
            if slow:
                self.counters[f"fault_{slow_switch}"] += 1
        if not slow:
            return httpx.Response(answer.status_code, content=body, headers=headers)
        headers.append(("Content-Length", str(len(body))))
        return httpx.Response(answer.status_code, stream=Trickle(body, float(slow)), headers=headers)

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
        seconds (set the client's timeout below it); "reset" closes the socket;
        a slow answer is written piece by piece as it trickles.
        """
        emulator = self

        class Handler(VendorLikeHandler):
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
                if isinstance(response.stream, Trickle):  # headers now, then the body piece by piece
                    self._head(response, len(response.stream.data))
                    for part in response.stream:
                        try:
                            self.wfile.write(part)
                        except OSError:  # the client gave up on it
                            self.close_connection = True
                            return
                    return
                response.read()
                self._head(response, len(response.content))
                self.wfile.write(response.content)

            def _head(self, response: httpx.Response, length: int) -> None:
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()

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
