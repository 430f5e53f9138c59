"""The one HTTP helper every vendor adapter uses.

Every call has a timeout and a small, fixed number of retries with
exponential backoff and jitter; only failures that another try can fix are
retried (network errors, 429, 5xx). What comes back from a vendor is
untrusted: `download` checks scheme, size, time, content type and where
redirects lead before the bytes reach our storage.

In sandbox mode (and in tests) `transport` is the vendor's emulator, so the
same adapter code runs against it without any network.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from studio.vendors.base import VendorError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Network errors after which the request provably never reached the server: the
# only ones a call without an idempotency key (a billed generation) may retry.
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Images a vendor may hand back; anything else is refused before decoding.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 20.0, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `attempt` (1-based): exponential, full jitter.

    A server's Retry-After is honoured as a floor, plus a little jitter so
    many workers told the same time don't come back in the same instant.
    """
    delay = random.uniform(0, min(cap, base * (2 ** (attempt - 1))))
    if retry_after is not None:
        delay = max(delay, retry_after + random.uniform(0, min(1.0, base)))
    return min(delay, cap if retry_after is None else max(cap, retry_after + 1.0))


def pause(seconds: float) -> None:
    """The wait between tries: every VendorHttp without its own `sleep` waits here
    (one function, so a test can record the waits instead of waiting)."""
    time.sleep(seconds)


class UnreadableAnswer(VendorError):
    """A 2xx answer that is not a JSON object (e.g. a proxy's HTML page)."""


class AnswerTooLarge(VendorError):
    """An answer read with `max_bytes` grew past it (the adapter may word it its own way)."""


def parse_retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(raw)) if raw else None
    except ValueError:
        return None


def describe_transport_error(exc: httpx.HTTPError, vendor: str) -> str:
    """A short message for users; never the URL (it may carry a token)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"{vendor} did not answer in time. Please try again in a minute."
    if isinstance(exc, httpx.ConnectError):
        return f"We couldn't reach {vendor}. Please try again in a few minutes."
    return f"The connection to {vendor} broke off. Please try again in a minute."


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process for every vendor client. Building one loads
    the whole CA bundle (~30 ms on a quiet machine, 60-75 ms on a busy one),
    which every job paid again when each client built its own
    (docs/benchmarks.md, "Pipeline overhead")."""
    return httpx.create_ssl_context()


# Idle connections are closed after a few seconds, well before a vendor's front end
# would (typically a minute or more), so a kept connection is not one the server
# is closing just as a request goes out on it.
KEEPALIVE = httpx.Limits(max_connections=None, max_keepalive_connections=32, keepalive_expiry=5.0)


def _new_client(base_url: str, timeout: httpx.Timeout, transport: httpx.BaseTransport | None) -> httpx.Client:
    return httpx.Client(
        base_url=base_url, transport=transport, timeout=timeout, follow_redirects=False, verify=_tls_context(),
        limits=KEEPALIVE,
    )


_clients: dict[tuple, httpx.Client] = {}
_clients_lock = threading.Lock()


def _shared_client(base_url: str, timeout: httpx.Timeout) -> httpx.Client:
    """One client per vendor endpoint per process, shared by its threads (httpx's Client
    is thread-safe): calls reuse its kept-alive connections instead of opening (and,
    against a vendor, TLS-handshaking) one per call, and no client is built per call.
    Keyed by process id too: a forked process must not use its parent's sockets."""
    key = (os.getpid(), base_url, tuple(sorted(timeout.as_dict().items())))
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _clients[key] = _new_client(base_url, timeout, None)
    return client


@dataclass
class VendorHttp:
    """httpx with our retry policy and error messages, for one vendor."""

    vendor: str  # the name users see, e.g. "Perfect Corp"
    base_url: str
    transport: httpx.BaseTransport | None = None
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)
    retries: int = 3  # extra tries after the first
    backoff_base: float = 0.5
    sleep: Callable[[float], None] | None = None  # None: `pause`, looked up at each wait
    # Called before every request, e.g. to take from a shared request budget.
    before_request: Callable[[str, str], None] | None = None
    # Called with every 429, e.g. to pause the shared budget.
    on_rate_limited: Callable[[httpx.Response], None] | None = None
    # (host, port) pairs whose links `download` follows even on a private or
    # loopback address: the vendor's own configured base URL, or the emulator
    # serving it (RemoteProvider.http sets it). Every other private address is refused.
    private_origins: frozenset[tuple[str, int]] = frozenset()

    def __post_init__(self):
        if self.transport is None:
            self._client, self._shared = _shared_client(self.base_url, self.timeout), True
        else:  # an in-process emulator (tests): a client of its own
            self._client, self._shared = _new_client(self.base_url, self.timeout, self.transport), False

    def close(self) -> None:
        if not self._shared:  # the process's client stays open for the next call
            self._client.close()

    @contextmanager
    def _client_for(self, pinned_address: str | None):
        """The client for a download. One aimed at a vetted address (with the link's host name
        as TLS server name) gets a connection of its own: a pool matches connections by
        address only, so a kept one, verified for another host on that address (a CDN),
        would carry it."""
        if pinned_address is None or not self._shared:
            yield self._client
            return
        client = _new_client(self.base_url, self.timeout, None)
        try:
            yield client
        finally:
            client.close()

    def _wait(self, seconds: float) -> None:
        (self.sleep or pause)(seconds)

    def backoff(self, attempt: int) -> None:
        """Wait before retry number `attempt` of a call the adapter repeats itself (as `request` would)."""
        self._wait(backoff_delay(attempt, base=self.backoff_base))

    def request(
        self,
        method: str,
        url: str,
        *,
        retry: bool = True,
        retry_statuses: Iterable[int] = RETRYABLE_STATUS,
        retry_errors: tuple[type[Exception], ...] = (httpx.HTTPError,),
        max_bytes: int | None = None,
        max_seconds: float | None = None,
        **kwargs,
    ) -> httpx.Response:
        """Send a request; returns the response for any status it won't retry.

        Network errors and retryable statuses are retried up to `retries`
        times; when tries run out a non-permanent VendorError is raised with
        a message for the user. Other statuses are returned for the adapter
        to map (each vendor words its errors differently). `retry_errors`
        narrows which network errors are retried (NOT_SENT_ERRORS for calls
        that must not run twice).

        `max_bytes` / `max_seconds` cap the answer's body, for answers that
        carry the results themselves: it is read as it arrives, and one that
        grows too large (AnswerTooLarge) or is still arriving `max_seconds`
        after the request went out (a trickle that each read timeout would
        let through) ends the call. Failures while reading the body are not
        retried: the request was answered, so it may have been billed.
        """
        retry_statuses = frozenset(retry_statuses)
        attempts = 1 + (self.retries if retry else 0)
        capped = max_bytes is not None or max_seconds is not None
        for attempt in range(1, attempts + 1):
            if self.before_request:
                self.before_request(method, url)
            started = time.monotonic()
            try:
                if capped:
                    response = self._client.send(self._client.build_request(method, url, **kwargs), stream=True)
                else:
                    response = self._client.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                log.warning("%s %s %s failed: %s", self.vendor, method, _path_only(url), type(exc).__name__)
                if attempt == attempts or not isinstance(exc, retry_errors):
                    error = VendorError(describe_transport_error(exc, self.vendor), permanent=False)
                    # For calls without an idempotency key: did the request provably never leave?
                    error.not_sent = isinstance(exc, NOT_SENT_ERRORS)
                    raise error from None
                self._wait(backoff_delay(attempt, base=self.backoff_base))
                continue
            if response.status_code == 429 and self.on_rate_limited:
                self.on_rate_limited(response)
            if response.status_code in retry_statuses:
                response.close()
                log.warning("%s %s %s answered %s", self.vendor, method, _path_only(url), response.status_code)
                retry_after = parse_retry_after(response)
                if attempt == attempts:
                    error = VendorError(_status_message(response.status_code, self.vendor), permanent=False,
                                        retry_after=retry_after)
                    error.status = response.status_code  # the last answer, e.g. 429: refused, not run
                    raise error
                self._wait(backoff_delay(attempt, base=self.backoff_base, retry_after=retry_after))
                continue
            if capped:
                return self._read_capped(response, started=started, max_bytes=max_bytes, max_seconds=max_seconds)
            return response
        raise AssertionError("unreachable")

    def _read_capped(
        self, response: httpx.Response, *, started: float, max_bytes: int | None, max_seconds: float | None
    ) -> httpx.Response:
        """The streamed `response`, read within the caps into an ordinary (read) response."""
        too_large = AnswerTooLarge(f"{self.vendor} sent an answer too large to accept. Please try again.")
        too_slow = VendorError(
            f"Fetching the result from {self.vendor} took too long. Please try again.", permanent=False
        )
        try:
            declared = response.headers.get("Content-Length", "").strip()
            if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
                raise too_large
            chunks, size = [], 0
            for chunk in response.iter_bytes():  # decoded bytes: a small gzip "bomb" is capped too
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise too_large
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    raise too_slow
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise VendorError(describe_transport_error(exc, self.vendor), permanent=False) from None
        finally:
            response.close()
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        ]
        return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks), request=response.request)

    def json(self, response: httpx.Response) -> dict:
        """The response's JSON object, or a VendorError when it is not one."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UnreadableAnswer(
                f"{self.vendor} sent an answer we couldn't read. Please try again in a minute.", permanent=False
            )
        return data

    def download(
        self,
        url: str,
        *,
        max_bytes: int = 40 * 1024 * 1024,
        max_seconds: float = 60.0,
        content_types: tuple[str, ...] = IMAGE_TYPES,
        allow_private: bool = False,
        max_redirects: int = 3,
    ) -> tuple[bytes, str]:
        """Fetch a result file from a URL the vendor gave us; returns (bytes, content type).

        http(s) only; private, loopback and link-local addresses are refused
        (also as redirect targets, each hop checked on its own) unless the
        link is on one of `private_origins`, or `allow_private` is given
        (tests); the body is capped in size and in total time.
        """
        started = time.monotonic()
        too_slow = VendorError(
            f"Fetching the result from {self.vendor} took too long. Please try again.", permanent=False
        )
        for _ in range(max_redirects + 1):
            trusted = allow_private or origin_of(url) in self.private_origins
            address = _check_url(url, self.vendor, allow_private=trusted)
            remaining = max_seconds - (time.monotonic() - started)
            if remaining <= 0:
                raise too_slow
            request_url, headers, extensions = _pinned(url, address)
            timeout = httpx.Timeout(min(30.0, remaining), connect=min(5.0, remaining))
            if self.before_request:
                self.before_request("GET", url)
            try:
                with self._client_for(address) as client, client.stream(
                    "GET", request_url, headers=headers, extensions=extensions, timeout=timeout
                ) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if response.status_code == 429:
                        if self.on_rate_limited:
                            self.on_rate_limited(response)
                        raise VendorError(_status_message(429, self.vendor), permanent=False)
                    if response.status_code in (403, 404, 410):
                        raise VendorError(
                            f"{self.vendor}'s result has expired before we could fetch it. Please run the job again.",
                            permanent=True,
                        )
                    if response.status_code != 200:
                        raise VendorError(
                            f"{self.vendor} couldn't hand over the result. Please try again in a minute.",
                            permanent=False,
                        )
                    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if content_type not in content_types:
                        raise VendorError(f"{self.vendor} returned something that is not an image. Please try again.")
                    declared = response.headers.get("Content-Length", "").strip()
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise VendorError(f"{self.vendor} returned a file too large to accept. Please try again.")
                    chunks, size = [], 0
                    # Decoded bytes are counted, so a small gzip "bomb" is capped too.
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise VendorError(f"{self.vendor} returned a file too large to accept. Please try again.")
                        if time.monotonic() - started > max_seconds:
                            raise too_slow
                        chunks.append(chunk)
                    return b"".join(chunks), content_type
            except httpx.TimeoutException:
                raise too_slow from None
            except httpx.HTTPError as exc:
                raise VendorError(describe_transport_error(exc, self.vendor), permanent=False) from None
        raise VendorError(f"{self.vendor}'s result link redirected too many times. Please try again.")


def _status_message(status: int, vendor: str) -> str:
    if status == 429:
        return f"{vendor} is busy right now (too many requests). Please try again in a few minutes."
    return f"{vendor} is having trouble right now (error {status}). Please try again in a few minutes."


def _path_only(url: str) -> str:
    """For logs: no query string (signed URLs carry credentials there)."""
    return urlsplit(url).path or url


def origin_of(url: str) -> tuple[str, int] | None:
    """(host, port) of a URL, the port filled in from the scheme; None when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


# NAT64 (RFC 6052) addresses carry an IPv4 address in their last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally routable unicast address, also when an IPv4 address hides inside an IPv6 one."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return ip.is_global and not ip.is_multicast


def _check_url(url: str, vendor: str, *, allow_private: bool) -> str | None:
    """Refuse what we must not fetch; returns the vetted address to connect to.

    Returns None with `allow_private` (the emulator on 127.0.0.1): then the
    name is resolved by the HTTP client as usual.
    """
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError:  # e.g. an unclosed IPv6 bracket or a port out of range
        parts, hostname, port = None, None, None
    if parts is None or parts.scheme not in ("http", "https") or not hostname:
        raise VendorError(f"{vendor} returned an invalid result link. Please try again.")
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(hostname, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
        addresses = sorted({info[4][0].split("%")[0] for info in infos})
    except (OSError, UnicodeError, ValueError):
        raise VendorError(describe_transport_error(httpx.ConnectError(""), vendor), permanent=False) from None
    if not addresses:
        raise VendorError(describe_transport_error(httpx.ConnectError(""), vendor), permanent=False)
    for address in addresses:
        # Every address must be public: a name resolving to both is refused.
        if not is_public_address(ipaddress.ip_address(address)):
            raise VendorError(f"{vendor} returned a result link we don't follow. Please try again.")
    return addresses[0]


def _pinned(url: str, address: str | None) -> tuple[httpx.URL, dict, dict]:
    """The request aimed at the vetted address, so a second DNS answer (rebinding) can't redirect it.

    The Host header and the TLS server name (SNI, also used to verify the
    certificate) stay the original host name.
    """
    original = httpx.URL(url)
    if address is None:
        return original, {}, {}
    host = original.host if original.port is None else f"{original.host}:{original.port}"
    if ":" in original.host:  # an IPv6 literal
        host = f"[{original.host}]" if original.port is None else f"[{original.host}]:{original.port}"
    extensions = {"sni_hostname": original.host} if original.scheme == "https" else {}
    return original.copy_with(host=address), {"Host": host}, extensions
