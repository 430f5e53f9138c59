"""What an operation costs at its vendor, shown before the user runs it.

Perfect Corp publishes machine-readable prices (`GET /s2s/v2.0/credit/feature-cost`,
perfectcorp-v2.md §4). A daily task (and the first worker start) reads them through
the adapter and keeps them in the shared cache; pages only read that copy, so
rendering the studio never calls a vendor.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from django.core.cache import cache
from django.utils import timezone

log = logging.getLogger(__name__)

CACHE_KEY = "studio:unit-costs"
# Kept well past the daily refresh, so one failed refresh still shows yesterday's prices.
KEEP_SECONDS = 3 * 86400


def unit_costs_refresh() -> dict[str, float]:
    """Read every vendor's published unit costs and keep them; returns what was stored.

    A vendor that is off or fails keeps the copy it had (prices rarely change).
    """
    from studio.vendors.base import get_provider

    provider = get_provider("perfectcorp")
    if provider.unavailable_reason() is not None:
        return {}
    try:
        costs = {key: float(units) for key, units in provider.feature_costs().items()}
    except Exception as exc:  # noqa: BLE001 - a price list must never break anything else
        log.warning("reading Perfect Corp's unit costs failed: %s", type(exc).__name__)
        return {}
    if costs:
        cache.set(CACHE_KEY, {"costs": costs, "at": timezone.now().isoformat()}, KEEP_SECONDS)
    return costs


def unit_cost(operation_key: str) -> Decimal | None:
    """Units one run of this operation costs, from the kept copy; None when unknown."""
    kept = cache.get(CACHE_KEY) or {}
    units = kept.get("costs", {}).get(operation_key)
    return None if units is None else Decimal(str(units))
