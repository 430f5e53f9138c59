"""Formatting for the staff console."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def duration_seconds(value):
    """A timedelta (or microseconds, as some databases return) in seconds; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value) / 1_000_000


@register.filter
def money(value):
    """A vendor cost as "$0.1234"; "—" when unknown."""
    if value is None or value == "":
        return "—"
    return f"${Decimal(value):.4f}".rstrip("0").rstrip(".") if Decimal(value) else "$0"
