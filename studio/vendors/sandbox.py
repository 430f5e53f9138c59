"""Sandbox mode: every vendor is served by its local emulator.

With STUDIO_SANDBOX=1 a visitor with no keys can walk every vendor flow.
Jobs run this way are flagged `sandbox` and labelled so everywhere; their
output is never presented as a vendor's. Where the emulators live:

- STUDIO_SANDBOX_URL set: in one `manage.py runemulators` process
  (emulators/host.py), reached over HTTP on 127.0.0.1, so every web and
  worker process sees the same vendor tasks (a job resumed by another worker
  finds its task);
- otherwise each process holds its own, reached through an in-process
  transport.

Tests install their own emulator (often served on 127.0.0.1) with `use()`.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import httpx
from django.conf import settings

from studio.vendors.base import VendorError
from studio.vendors.emulators.base import Emulator
from studio.vendors.emulators.host import EMULATORS as EMULATORS  # re-exported: remote.py reads it
from studio.vendors.emulators.host import new_emulator

log = logging.getLogger(__name__)

_lock = threading.Lock()
_instances: dict[str, Emulator] = {}
_overrides: dict[str, tuple[Emulator, bool]] = {}
_hosted: dict[str, HostedEmulator] = {}


def is_enabled() -> bool:
    return bool(settings.STUDIO_SANDBOX)


class HostedEmulator:
    """An emulator served by `runemulators`, as a process sees it: its address and
    public test credentials (e.g. `client_id`), asked of the host when first read."""

    INFO_TTL = 60.0  # a restarted host has new keys; look again after this long

    def __init__(self, key: str, host_url: str):
        self.key = key
        self.base_url = f"{host_url}/{key}"
        self._host_url = host_url
        self._info: dict = {}
        self._fetched = 0.0

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if time.monotonic() - self._fetched > self.INFO_TTL:
            try:
                response = httpx.get(f"{self._host_url}/_host/{self.key}", timeout=5.0)
                response.raise_for_status()
                self._info = response.json()
            except (httpx.HTTPError, ValueError):
                log.error("the sandbox emulators at STUDIO_SANDBOX_URL=%s did not answer", self._host_url)
                raise VendorError(
                    "The sandbox emulators are not running. Please try again in a minute.", permanent=False
                ) from None
            self._fetched = time.monotonic()
        if name in self._info:
            return self._info[name]
        raise AttributeError(name)


def emulator_for(key: str) -> Emulator | HostedEmulator:
    """The emulator this process reaches for a vendor (created on first use)."""
    if key in _overrides:
        return _overrides[key][0]
    with _lock:
        if settings.STUDIO_SANDBOX_URL:
            if key not in _hosted or _hosted[key]._host_url != settings.STUDIO_SANDBOX_URL:
                _hosted[key] = HostedEmulator(key, settings.STUDIO_SANDBOX_URL)
            return _hosted[key]
        if key not in _instances:
            _instances[key] = _for_sandbox(new_emulator(key))
        return _instances[key]


def _for_sandbox(emulator: Emulator) -> Emulator:
    """Let an emulator take its sandbox-mode settings (e.g. where to deliver webhooks)."""
    configure = getattr(emulator, "configure_for_sandbox", None)
    if configure is not None:
        configure()
    return emulator


def routed(key: str) -> tuple[str, object] | None:
    """(base URL, transport) to reach the emulator, or None to reach the real vendor.

    An emulator installed with `use(..., over_http=True)`, or served by the
    shared host, is reached over real HTTP (no transport override).
    """
    if key in _overrides:
        emulator, over_http = _overrides[key]
        return emulator.base_url, (None if over_http else emulator.transport())
    if not is_enabled():
        return None
    if settings.STUDIO_SANDBOX_URL:
        return f"{settings.STUDIO_SANDBOX_URL}/{key}", None
    emulator = emulator_for(key)
    return emulator.base_url, emulator.transport()


@contextmanager
def use(key: str, emulator: Emulator, *, over_http: bool = False):
    """Route a vendor to this emulator for the duration of the block (tests)."""
    _overrides[key] = (emulator, over_http)
    try:
        yield emulator
    finally:
        _overrides.pop(key, None)


def reset() -> None:
    """Forget every emulator (tests)."""
    with _lock:
        _instances.clear()
        _hosted.clear()
    _overrides.clear()
