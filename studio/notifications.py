"""Toasts for jobs that finish while their owner browses the gallery.

The gallery carries a small feed element (see ui_tags.toast_feed) only while
the owner has unfinished jobs. It polls `finished_feed` every few seconds with
the time of its last answer; each answer lists the owner's jobs finished since
then as toasts (swapped out of band into #toasts) and replaces the feed with
one carrying the new time. When nothing is left unfinished, the answer is a
feed that no longer polls, sent with htmx's stop-polling status 286.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseStopPolling

from studio.models import Job
from studio.ownership import Owner, owner_for

POLL_SECONDS = 2
MAX_TOASTS = 5


def has_unfinished_jobs(owner: Owner) -> bool:
    return Job.objects.filter(owner.q()).exclude(status__in=Job.TERMINAL).exists()


def feed_context(owner: Owner, since: float) -> dict:
    now = timezone.now()
    finished = list(
        Job.objects.filter(owner.q(), finished_at__gt=datetime.fromtimestamp(since, tz=UTC), finished_at__lte=now)
        .prefetch_related("results")
        .order_by("-finished_at")[:MAX_TOASTS]
    )
    return {
        "since": f"{now.timestamp():.6f}",
        "polling": has_unfinished_jobs(owner),
        "finished": finished,
        "poll_seconds": POLL_SECONDS,
    }


@require_GET
def finished_feed(request):
    owner = owner_for(request)
    try:
        since = float(request.GET.get("since", ""))
    except ValueError:
        since = timezone.now().timestamp()
    # Never further back than a day: a stale or forged value cannot list old jobs.
    since = max(since, timezone.now().timestamp() - 86400)
    context = feed_context(owner, since)
    response = render(request, "studio/partials/toasts.html", context)
    if not context["polling"]:
        response.status_code = HttpResponseStopPolling.status_code
    return response
