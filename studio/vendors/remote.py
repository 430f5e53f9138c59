"""Base for providers reached over HTTP: configuration, sandbox routing, client.

A remote provider names the settings it needs; when any is empty it is
unavailable with a reason users see (unless sandbox mode serves it from its
emulator). `http()` gives a VendorHttp aimed at the real vendor, or at the
emulator when sandbox mode or a test routes it there.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from django.conf import settings

from studio.vendors import sandbox
from studio.vendors.base import Provider
from studio.vendors.http import VendorHttp, origin_of

log = logging.getLogger(__name__)

# A status answer we couldn't read is asked again (a poll is safe to repeat), this often per job.
GARBLED_POLLS = 2


class RemoteProvider(Provider):
    # Setting names that must be non-empty to reach the real vendor.
    required_settings: tuple[str, ...] = ()
    base_url_setting: str = ""
    # The setting holding the vendor's API key, for vendors that use one.
    api_key_setting: str = ""
    # The setting holding the secret its webhooks are signed with, for vendors that sign them.
    webhook_secret_setting: str = ""

    def missing_settings(self) -> list[str]:
        return [name for name in self.required_settings if not getattr(settings, name, "")]

    def unavailable_reason(self) -> str | None:
        if sandbox.routed(self.key) is not None:
            return None
        missing = self.missing_settings()
        if missing:
            return (
                f"{self.label} isn't set up on this server yet: an administrator needs to set "
                f"{' and '.join(missing)}."
            )
        return None

    def is_sandboxed(self) -> bool:
        return sandbox.routed(self.key) is not None

    def api_key(self) -> str:
        """The key to send: the configured one, or the emulator's sandbox key when an
        emulator serves this vendor (a real key is never sent to an emulator)."""
        return self._configured_or_sandbox(self.api_key_setting, "SANDBOX_KEY")

    def webhook_secret(self) -> str:
        """The secret the vendor signs webhooks with; the emulator's when it serves this vendor."""
        return self._configured_or_sandbox(self.webhook_secret_setting, "SANDBOX_WEBHOOK_SECRET")

    def _configured_or_sandbox(self, setting: str, sandbox_constant: str) -> str:
        if self.is_sandboxed():
            module_name = sandbox.EMULATORS[self.key].rpartition(".")[0]
            return getattr(import_module(module_name), sandbox_constant)
        return getattr(settings, setting, "") if setting else ""

    def bearer_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key()}"}

    def http(self, **options: Any) -> VendorHttp:
        """A client for the vendor, or for the emulator serving it.

        The one private-address rule for every adapter: a result link on a
        private or loopback address is followed only when it is on the host
        and port this client is aimed at (a self-hosted or staging endpoint,
        or the emulator); any other private address is refused.
        """
        route = sandbox.routed(self.key)
        base_url, transport = route if route is not None else (getattr(settings, self.base_url_setting), None)
        origin = origin_of(base_url)
        return VendorHttp(
            vendor=self.label,
            base_url=base_url,
            transport=transport,
            private_origins=frozenset({origin} if origin else ()),
            **options,
        )

    def catalogue_http(self) -> VendorHttp:
        """The client the style sync fetches thumbnails with (an adapter with a shared budget draws from it)."""
        return self.http()

    def garbled_poll_allowed(self, job, **state: Any) -> bool:
        """Count a status answer we couldn't read; True while one more poll is allowed.

        The count lives in the job's saved state, so a resumed job keeps it.
        """
        bad = int(job.state.get("bad_answers", 0)) + 1
        if bad > GARBLED_POLLS:
            return False
        log.warning("%s sent a status answer we couldn't read (%s so far)", self.label, bad)
        job.save_state(bad_answers=bad, **state)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "configured": not self.missing_settings(),
            "mode": "sandbox" if self.is_sandboxed() else ("live" if not self.missing_settings() else "off"),
            "missing": self.missing_settings(),
        }
