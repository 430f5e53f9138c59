"""What an operation costs at its vendor, shown before the user runs it.

Perfect Corp publishes machine-readable prices (`GET /s2s/v2.0/credit/feature-cost`,
perfectcorp-v2.md §4; studio/vendors/perfectcorp_account.py reads them). A daily
task (and the first worker start) reads them through the adapter and keeps them
in the shared cache; pages only read that copy, so rendering the studio never
calls a vendor. When the copy is missing, older than a day or was read for
another mode (sandbox or live, v1 or v2), a refresh is queued, at most once
every ASK_EVERY seconds, and the page shows no price until it has landed.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from studio.vendors.base import PROVIDERS, get_provider

log = logging.getLogger(__name__)

CACHE_KEY = "studio:unit-costs"
ASKED_KEY = "studio:unit-costs:asked"
# Kept well past the daily refresh, so one failed refresh still shows yesterday's prices.
KEEP_SECONDS = 3 * 86400
FRESH_FOR = timedelta(days=1)
ASK_EVERY = 600
# Providers that publish a price list (they have `feature_costs()`).
PRICED = ("perfectcorp",)


def _mode(provider) -> str:
    """What the prices were read for: the emulator's prices are not the vendor's."""
    meta = ",".join(f"{k}={v}" for k, v in sorted(provider.submission_meta().items()))
    return f"{'sandbox' if provider.is_sandboxed() else 'live'}:{meta}"


def unit_costs_refresh() -> dict[str, Decimal]:
    """Read every priced vendor's unit costs and keep them; returns {operation: units} read.

    A vendor that is off or fails keeps the copy it had (prices rarely change).
    """
    kept = dict(cache.get(CACHE_KEY) or {})
    read: dict[str, Decimal] = {}
    for key in PRICED:
        if key not in PROVIDERS:
            continue
        provider = get_provider(key)
        if provider.unavailable_reason() is not None:
            continue
        try:
            costs = provider.feature_costs()
        except Exception as exc:  # noqa: BLE001 - a price list must never break anything else
            reason = getattr(exc, "message", type(exc).__name__)
            log.warning("reading %s's unit costs failed: %s", provider.label, reason)
            continue
        kept[key] = {
            "mode": _mode(provider),
            "at": timezone.now().isoformat(),
            "costs": {op: str(units) for op, units in costs.items()},
        }
        read.update(costs)
    if kept:
        cache.set(CACHE_KEY, kept, KEEP_SECONDS)
    return read


def _ask_refresh() -> None:
    """Queue one refresh (after the current transaction), unless one was asked for lately."""
    if not cache.add(ASKED_KEY, 1, ASK_EVERY):
        return

    def enqueue():
        from django_q.tasks import async_task

        async_task("studio.tasks.refresh_unit_costs", task_name="refresh-unit-costs", group="costs")

    transaction.on_commit(enqueue)


def unit_cost(operation, *, ask: bool = True) -> Decimal | None:
    """Units one run of this operation costs, from the kept copy; None when unknown.

    `ask`: queue a refresh when the copy is missing or stale (the studio page does;
    creating a job only reads, so it never adds vendor calls to a job's path).
    """
    if operation is None or operation.provider not in PRICED or operation.provider not in PROVIDERS:
        return None
    provider = get_provider(operation.provider)
    if provider.unavailable_reason() is not None:
        return None
    kept = (cache.get(CACHE_KEY) or {}).get(operation.provider)
    current = kept is not None and kept.get("mode") == _mode(provider)
    read_at = parse_datetime(kept.get("at") or "") if kept else None
    if ask and (not current or read_at is None or timezone.now() - read_at > FRESH_FOR):
        _ask_refresh()
    if not current:
        return None
    units = kept["costs"].get(operation.key)
    return None if units is None else Decimal(units)


def kept_summary() -> dict[str, dict]:
    """Per priced provider: how many operations have a kept price, when and for what mode they
    were read (staff console)."""
    summary = {}
    for key, kept in (cache.get(CACHE_KEY) or {}).items():
        read_at = parse_datetime(kept.get("at") or "")
        summary[key] = {"priced": len(kept.get("costs") or {}), "at": read_at, "mode": kept.get("mode", "")}
    return summary
