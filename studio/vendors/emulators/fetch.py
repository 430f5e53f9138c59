"""How an emulator reaches the app, as the real vendor would: it fetches image URLs
it was handed, and it calls webhooks back.

Vendors that take image URLs (Vtrix, WaveSpeed) download them from the
internet. Their emulators do the same through a `Fetcher`: by default a real
HTTP GET (in sandbox mode that reaches the app at STUDIO_PUBLIC_URL); tests
inject one backed by Django's test client or point it at a live server.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable

import httpx

# url → (HTTP status, body, content type); status 0 when nothing answered.
Fetcher = Callable[[str], tuple[int, bytes, str]]

MAX_FETCH_BYTES = 20 * 1024 * 1024


def http_fetch(url: str) -> tuple[int, bytes, str]:
    """A plain GET with a short timeout and no redirects, as a vendor's downloader does."""
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(10.0, connect=3.0), follow_redirects=False) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_FETCH_BYTES:
                    return 413, b"", ""
                chunks.append(chunk)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            return response.status_code, b"".join(chunks), content_type
    except httpx.HTTPError:
        return 0, b"", ""


def django_client_fetch(client=None) -> Fetcher:
    """A fetcher that asks this process's Django app (tests without a live server)."""
    from urllib.parse import urlsplit

    from django.test import Client

    client = client or Client()

    def fetch(url: str) -> tuple[int, bytes, str]:
        parts = urlsplit(url)
        response = client.get(parts.path + (f"?{parts.query}" if parts.query else ""))
        body = b"".join(response.streaming_content) if response.streaming else response.content
        return response.status_code, body, response.get("Content-Type", "").split(";")[0].strip().lower()

    return fetch


# --- webhooks: an emulator calling the app back ----------------------------------------------

# (url, body, headers) → HTTP status of the answer; 0 when nothing answered.
Deliverer = Callable[[str, bytes, dict[str, str]], int]


def http_deliver(url: str, body: bytes, headers: dict[str, str]) -> int:
    """A POST with a short timeout, as a vendor's webhook sender makes it."""
    try:
        return httpx.post(
            url, content=body, headers=headers, timeout=httpx.Timeout(10.0, connect=3.0), verify=_tls_context()
        ).status_code
    except httpx.HTTPError:
        return 0


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every delivery: building one per POST (httpx does, by default) was
    a quarter of the emulators' CPU time when hundreds of tasks ended together (bench/vendor_wait.py)."""
    import certifi  # httpx's own default trust store

    return ssl.create_default_context(cafile=certifi.where())


def django_client_deliver(client=None) -> Deliverer:
    """A deliverer that posts to this process's Django app (tests without a live server)."""
    from urllib.parse import urlsplit

    from django.db import connection
    from django.test import Client

    client = client or Client()

    def deliver(url: str, body: bytes, headers: dict[str, str]) -> int:
        parts = urlsplit(url)
        try:
            return client.post(
                parts.path + (f"?{parts.query}" if parts.query else ""),
                data=body,
                content_type=headers.get("Content-Type", "application/json"),
                headers={k: v for k, v in headers.items() if k.lower() != "content-type"},
            ).status_code
        finally:
            connection.close()  # the delivering thread's own connection

    return deliver
