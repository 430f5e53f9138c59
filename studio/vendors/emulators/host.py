"""Every sandbox emulator behind one HTTP address that all processes share.

`manage.py runemulators` serves a host on 127.0.0.1; web and worker
processes started with STUDIO_SANDBOX_URL set to its address reach the same
emulators (studio/vendors/sandbox.py). So a vendor task submitted by one
worker can be polled by another, which crash recovery needs, and so can
several workers in a sandbox deployment. Each emulator lives under its
vendor key (`/perfectcorp/s2s/v1.0/...`); the links it hands out (upload
slots, result files) are built on that prefix and come back through the host.
`GET /_host/<key>` tells a process the emulator's public test credentials
(Perfect Corp's client id and public key; the private key never leaves).

Tests run the same host in a thread (`serve()`), so they read the emulators'
counters and flip their fault switches directly. Two switches belong to the
host itself: `hold` answers matching requests only after a pause (so a kill
can land while a worker waits for an answer the vendor already acted on) and
`in_flight` lists the requests being answered, with each client's port.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from importlib import import_module

import httpx

from studio.vendors.emulators.base import Emulator, NetworkFault, VendorLikeHandler

# Provider key → dotted path of its emulator class.
EMULATORS: dict[str, str] = {
    "perfectcorp": "studio.vendors.emulators.perfectcorp.PerfectCorpEmulator",
    "headshot": "studio.vendors.emulators.headshot.HeadshotEmulator",
    "wavespeed": "studio.vendors.emulators.wavespeed.WaveSpeedEmulator",
    "vtrix": "studio.vendors.emulators.vtrix.VtrixEmulator",
}
# Attributes a process may learn about an emulator it reaches through the host (never a private key).
PUBLIC_ATTRIBUTES = ("client_id", "public_key_b64")


def new_emulator(key: str) -> Emulator:
    module_name, _, class_name = EMULATORS[key].rpartition(".")
    return getattr(import_module(module_name), class_name)()


@dataclass
class InFlight:
    """A request the host is answering now."""

    method: str
    key: str  # the emulator's vendor key
    path: str  # below the key's prefix, e.g. /s2s/v1.0/task/colorize
    query: str
    body: bytes
    client_port: int  # the caller's local port: tells which process is asking
    since: float = field(default_factory=time.monotonic)

    def json(self) -> dict:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A vendor's front end takes a burst of connections; the standard library's backlog of 5
    # refused some when hundreds of jobs were sent at once (bench/vendor_wait.py).
    request_queue_size = 256


class EmulatorHost:
    def __init__(self, emulators: dict[str, Emulator] | None = None):
        self.emulators = emulators if emulators is not None else {key: new_emulator(key) for key in EMULATORS}
        # Regex on "METHOD /key/path" → seconds to hold the answer after the emulator made it.
        self.hold: dict[str, float] = {}
        self.in_flight: dict[int, InFlight] = {}
        self.base_url = ""
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def requests_in_flight(self, key: str | None = None, method: str | None = None, path: str = "") -> list[InFlight]:
        """Requests being answered now, optionally of one emulator, method and path pattern."""
        with self._lock:
            found = list(self.in_flight.values())
        return [
            r
            for r in found
            if (key is None or r.key == key)
            and (method is None or r.method == method)
            and (not path or re.search(path, r.path))
        ]

    def info(self, key: str) -> dict:
        emulator = self.emulators[key]
        return {
            "base_url": emulator.base_url,
            **{name: getattr(emulator, name) for name in PUBLIC_ATTRIBUTES if hasattr(emulator, name)},
        }

    def _held_for(self, method: str, key: str, path: str) -> float:
        line = f"{method} /{key}{path}"
        return max((seconds for pattern, seconds in list(self.hold.items()) if re.search(pattern, line)), default=0.0)

    @contextmanager
    def serve(self, *, port: int = 0, read_timeout_sleep: float = 3.0):
        """Serve every emulator over HTTP on 127.0.0.1 for the duration of the block; yields the base URL.

        As with Emulator.serve, a "read_timeout" fault holds the answer back
        `read_timeout_sleep` seconds and "reset" closes the socket.
        """
        host = self

        class Handler(VendorLikeHandler):
            def log_message(self, *args):  # keep output quiet
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                key, _, rest = path.lstrip("/").partition("/")
                rest = "/" + rest
                if key == "_host" and self.command == "GET" and rest.strip("/") in host.emulators:
                    return self._send(httpx.Response(200, json=host.info(rest.strip("/"))))
                emulator = host.emulators.get(key)
                if emulator is None:
                    return self._send(httpx.Response(404, json={"error": "no emulator here", "path": path}))
                # The emulator sees its own paths; the links it makes carry the prefix (its base_url).
                request = httpx.Request(
                    self.command,
                    f"{host.base_url}{rest}" + (f"?{query}" if query else ""),
                    headers=[(k, v) for k, v in self.headers.items() if k.lower() != "host"],
                    content=body,
                )
                number = next(host._ids)
                with host._lock:
                    host.in_flight[number] = InFlight(self.command, key, rest, query, body, self.client_address[1])
                try:
                    try:
                        response = emulator.handle(request)
                    except NetworkFault as fault:
                        if fault.kind in ("read_timeout", "connect_timeout"):
                            time.sleep(read_timeout_sleep)
                        self.close_connection = True
                        with suppress(OSError):
                            self.connection.shutdown(2)
                        return
                    held = host._held_for(self.command, key, rest)
                    if held:
                        time.sleep(held)
                    self._send(response)
                finally:
                    with host._lock:
                        host.in_flight.pop(number, None)

            def _send(self, response: httpx.Response) -> None:
                response.read()
                try:
                    self.send_response(response.status_code)
                    for name, value in response.headers.items():
                        if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(response.content)))
                    self.end_headers()
                    self.wfile.write(response.content)
                except OSError:  # the caller is gone (a killed worker): nobody to answer
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        server = _Server(("127.0.0.1", port), Handler)
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        previous = {key: emulator.base_url for key, emulator in self.emulators.items()}
        for key, emulator in self.emulators.items():
            emulator.base_url = f"{self.base_url}/{key}"
        thread = threading.Thread(target=server.serve_forever, name="emulator-host", daemon=True)
        thread.start()
        try:
            yield self.base_url
        finally:
            server.shutdown()
            server.server_close()
            for key, emulator in self.emulators.items():
                emulator.base_url = previous[key]
            self.base_url = ""
