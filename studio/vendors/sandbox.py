"""Sandbox mode: every vendor is served by its local emulator.

With STUDIO_SANDBOX=1 each process holds one emulator per vendor and the
adapters talk to it through an in-process transport, so a visitor with no
keys can walk every vendor flow. Jobs run this way are flagged `sandbox` and
labelled so everywhere; their output is never presented as a vendor's.
Tests install their own emulator (often served on 127.0.0.1) with `use()`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from importlib import import_module

from django.conf import settings

from studio.vendors.emulators.base import Emulator

# Provider key → dotted path of its emulator class.
EMULATORS: dict[str, str] = {
    "perfectcorp": "studio.vendors.emulators.perfectcorp.PerfectCorpEmulator",
    "headshot": "studio.vendors.emulators.headshot.HeadshotEmulator",
    "wavespeed": "studio.vendors.emulators.wavespeed.WaveSpeedEmulator",
    "vtrix": "studio.vendors.emulators.vtrix.VtrixEmulator",
}

_lock = threading.Lock()
_instances: dict[str, Emulator] = {}
_overrides: dict[str, tuple[Emulator, bool]] = {}


def is_enabled() -> bool:
    return bool(settings.STUDIO_SANDBOX)


def emulator_for(key: str) -> Emulator:
    """This process's emulator for a vendor (created on first use)."""
    if key in _overrides:
        return _overrides[key][0]
    with _lock:
        if key not in _instances:
            module_name, _, class_name = EMULATORS[key].rpartition(".")
            _instances[key] = getattr(import_module(module_name), class_name)()
        return _instances[key]


def routed(key: str) -> tuple[str, object] | None:
    """(base URL, transport) to reach the emulator, or None to reach the real vendor.

    An emulator installed with `use(..., over_http=True)` is reached over
    real HTTP at its served address (no transport override).
    """
    if key in _overrides:
        emulator, over_http = _overrides[key]
        return emulator.base_url, (None if over_http else emulator.transport())
    if not is_enabled():
        return None
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
    _overrides.clear()
