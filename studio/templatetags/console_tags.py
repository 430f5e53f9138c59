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


@register.filter
def units(value):
    """Vendor credit units as "12" or "1.5"; "—" when none were recorded."""
    if value is None or value == "":
        return "—"
    return f"{Decimal(value).normalize():f}"


@register.filter
def fact(value) -> str:
    """A provider status value as readable text: request windows as "3 of 100 per 60 s", others plainly."""
    if isinstance(value, dict):
        if {"limit", "used"} <= value.keys():
            per = f" per {value['seconds']:g} s" if isinstance(value.get("seconds"), (int, float)) else ""
            return f"{value['used']} of {value['limit']}{per}"
        return "; ".join(f"{str(key).replace('_', ' ')}: {fact(item)}" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(fact(item) for item in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None or value == "" else str(value)
