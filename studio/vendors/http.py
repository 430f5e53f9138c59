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

import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from studio.vendors.base import VendorError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
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


@dataclass
class VendorHttp:
    """httpx with our retry policy and error messages, for one vendor."""

    vendor: str  # the name users see, e.g. "Perfect Corp"
    base_url: str
    transport: httpx.BaseTransport | None = None
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)
    retries: int = 3  # extra tries after the first
    backoff_base: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    # Called before every request, e.g. to take from a shared request budget.
    before_request: Callable[[str, str], None] | None = None
    # Called with every 429, e.g. to pause the shared budget.
    on_rate_limited: Callable[[httpx.Response], None] | None = None

    def __post_init__(self):
        self._client = httpx.Client(
            base_url=self.base_url, transport=self.transport, timeout=self.timeout, follow_redirects=False
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        retry: bool = True,
        retry_statuses: Iterable[int] = RETRYABLE_STATUS,
        **kwargs,
    ) -> httpx.Response:
        """Send a request; returns the response for any status it won't retry.

        Network errors and retryable statuses are retried up to `retries`
        times; when tries run out a non-permanent VendorError is raised with
        a message for the user. Other statuses are returned for the adapter
        to map (each vendor words its errors differently).
        """
        retry_statuses = frozenset(retry_statuses)
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            if self.before_request:
                self.before_request(method, url)
            try:
                response = self._client.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                log.warning("%s %s %s failed: %s", self.vendor, method, _path_only(url), type(exc).__name__)
                if attempt == attempts:
                    raise VendorError(describe_transport_error(exc, self.vendor), permanent=False) from None
                self.sleep(backoff_delay(attempt, base=self.backoff_base))
                continue
            if response.status_code == 429 and self.on_rate_limited:
                self.on_rate_limited(response)
            if response.status_code in retry_statuses:
                log.warning("%s %s %s answered %s", self.vendor, method, _path_only(url), response.status_code)
                retry_after = parse_retry_after(response)
                if attempt == attempts:
                    raise VendorError(_status_message(response.status_code, self.vendor), permanent=False,
                                      retry_after=retry_after)
                self.sleep(backoff_delay(attempt, base=self.backoff_base, retry_after=retry_after))
                continue
            return response
        raise AssertionError("unreachable")

    def json(self, response: httpx.Response) -> dict:
        """The response's JSON object, or a VendorError when it is not one."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise VendorError(
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
        (also as redirect targets) unless `allow_private` (the emulator runs
        on 127.0.0.1); the body is capped in size and in total time.
        """
        started = time.monotonic()
        for _ in range(max_redirects + 1):
            _check_url(url, self.vendor, allow_private=allow_private)
            try:
                with self._client.stream("GET", url, timeout=httpx.Timeout(min(30.0, max_seconds), connect=5.0)) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
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
                    declared = response.headers.get("Content-Length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise VendorError(f"{self.vendor} returned a file too large to accept. Please try again.")
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise VendorError(f"{self.vendor} returned a file too large to accept. Please try again.")
                        if time.monotonic() - started > max_seconds:
                            raise VendorError(
                                f"Fetching the result from {self.vendor} took too long. Please try again.",
                                permanent=False,
                            )
                        chunks.append(chunk)
                    return b"".join(chunks), content_type
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


def _check_url(url: str, vendor: str, *, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise VendorError(f"{vendor} returned an invalid result link. Please try again.")
    if allow_private:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except OSError:
        raise VendorError(describe_transport_error(httpx.ConnectError(""), vendor), permanent=False) from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise VendorError(f"{vendor} returned a result link we don't follow. Please try again.")
