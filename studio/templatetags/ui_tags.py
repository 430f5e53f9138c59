"""Interface helpers: icons from the static sprite, the typical-duration hint."""

from __future__ import annotations

import math
import re
from functools import cache

from django import template
from django.contrib.staticfiles import finders
from django.templatetags.static import static
from django.utils.html import format_html

from studio import selectors

register = template.Library()

SPRITE = "studio/icons.svg"


@cache
def sprite_names() -> frozenset[str]:
    """The icon names the sprite defines (its <symbol id="icon-NAME"> elements)."""
    path = finders.find(SPRITE)
    if not path:
        return frozenset()
    with open(path, encoding="utf-8") as fh:
        return frozenset(re.findall(r'<symbol id="icon-([\w-]+)"', fh.read()))


@register.simple_tag
def icon(name: str, css_class: str = "icon"):
    """An inline <svg> using one symbol of the static sprite; decorative (hidden from screen readers)."""
    return format_html(
        '<svg class="{}" width="24" height="24" aria-hidden="true" focusable="false">'
        '<use href="{}#icon-{}"></use></svg>',
        css_class,
        static(SPRITE),
        name,
    )


@register.simple_tag
def op_icon(op):
    """An operation's icon: a sprite icon when `op.icon` names one, else its text (an emoji) as it was."""
    name = getattr(op, "icon", "") or "sparkle"
    if name in sprite_names():
        return format_html('<span class="op-icon" aria-hidden="true">{}</span>', icon(name))
    return format_html('<span class="op-icon" aria-hidden="true">{}</span>', name)


@register.filter
def typical_seconds(job) -> int | None:
    """Whole seconds that finished jobs of this job's operation usually take, or None without history."""
    seconds = selectors.operation_typical_seconds(job.operation)
    return None if seconds is None else max(1, math.ceil(seconds))


@register.inclusion_tag("studio/partials/toasts.html", takes_context=True)
def toast_feed(context):
    """The gallery's finished-job feed; it polls only while the owner has unfinished jobs."""
    from django.utils import timezone

    from studio.notifications import POLL_SECONDS, has_unfinished_jobs
    from studio.ownership import owner_for

    owner = owner_for(context["request"])
    return {
        "since": f"{timezone.now().timestamp():.6f}",
        "polling": has_unfinished_jobs(owner),
        "finished": [],
        "poll_seconds": POLL_SECONDS,
    }


@register.simple_tag
def cost_quote(op, values=None):
    """What running `op` costs at its vendor (studio.costs), or None when unknown.

    {"units": per run, "multiple": the name of a pick-several parameter (one run
    each) or "", "runs": runs picked so far (at least 1), "total": units × runs}.
    """
    from studio.costs import unit_cost

    units = unit_cost(op)
    if units is None:
        return None
    multiple = next((p.name for p in op.params if p.multiple), "")
    picked = (values or {}).get(multiple) if multiple else None
    if isinstance(picked, (list, tuple)):
        runs = len(set(map(str, picked)))
    else:
        runs = 1 if picked not in (None, "") else 0
    runs = max(1, runs)
    return {"units": _plain(units), "multiple": multiple, "runs": runs, "total": _plain(units * runs)}


def _plain(number) -> str:
    """2.00 → "2", 1.50 → "1.5", 20 → "20" (normalize alone would give "2E+1")."""
    return f"{number.normalize():f}"


@register.filter
def segmentation_label(result) -> str:
    """How the person was separated from the background for this result ("" when not a cut-out job)."""
    from studio.segmentation import METHOD_LABELS

    return METHOD_LABELS.get((getattr(result, "meta", None) or {}).get("segmentation"), "")
