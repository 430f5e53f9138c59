"""Every read that depends on who is asking.

Each owned model has one access helper: it returns the object when the
requester owns it and raises Http404 otherwise, so another person's photo,
job or result is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import hmac

from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import Http404
from django.utils import timezone

from studio.models import Job, Photo, Result, ShareLink
from studio.ownership import Owner


def photo_get_for_owner(owner: Owner, photo_id) -> Photo:
    return _get_or_404(Photo.objects.filter(owner.q()), photo_id)


def job_get_for_owner(owner: Owner, job_id) -> Job:
    return _get_or_404(Job.objects.filter(owner.q()).select_related("photo"), job_id)


def result_get_for_owner(owner: Owner, result_id) -> Result:
    return _get_or_404(Result.objects.filter(owner.q("job__")).select_related("job", "job__photo"), result_id)


SHARE_LOOKUP_PREFIX = 8  # characters (48 bits) used to find the row; the rest is compared in constant time


def share_get_active(token: str) -> ShareLink:
    """The active share link with this token, or 404 (revoked and expired too).

    The database finds candidates by a short prefix only; the whole token is
    then compared with hmac.compare_digest, so response time says nothing
    about how much of a guessed token was right beyond that public prefix
    (the remaining 144 bits are still far above 128).
    """
    now = timezone.now()
    if not isinstance(token, str) or len(token) < 32 or len(token) > 64:
        raise Http404("No such shared portrait.")
    candidates = ShareLink.objects.select_related("result", "result__job", "result__job__photo").filter(
        token__startswith=token[:SHARE_LOOKUP_PREFIX], revoked_at__isnull=True
    )
    link = None
    for candidate in candidates:
        if hmac.compare_digest(candidate.token.encode(), token.encode()):
            link = candidate
    if link is None or (link.expires_at is not None and link.expires_at <= now):
        raise Http404("No such shared portrait.")
    return link


def _get_or_404(queryset, pk):
    try:
        return queryset.get(pk=pk)
    except (queryset.model.DoesNotExist, ValidationError, ValueError, TypeError):
        # A malformed id is just another unknown id.
        raise Http404("Not found.") from None


def photos_recent(owner: Owner, limit: int = 8):
    return list(Photo.objects.filter(owner.q())[:limit])


def gallery_page(owner: Owner, *, operation: str = "", status: str = "", page: int | str = 1, per_page: int = 12):
    """The owner's jobs, newest first, with results prefetched (constant query count)."""
    jobs = Job.objects.filter(owner.q()).select_related("photo", "style_template").prefetch_related(
        Prefetch("results", queryset=Result.objects.order_by("index"))
    )
    if operation:
        jobs = jobs.filter(operation=operation)
    if status:
        jobs = jobs.filter(status=status)
    return Paginator(jobs, per_page).get_page(page)


# --- Style templates and comparisons ---------------------------------------------


def templates_for_operation(operation_key: str):
    """The active templates users can pick for an operation, in the staff's order."""
    from studio.models import StyleTemplate

    return list(StyleTemplate.objects.filter(operation=operation_key, active=True).order_by("order", "name"))


def operations_with_templates() -> set[str]:
    from studio.models import StyleTemplate

    return set(StyleTemplate.objects.filter(active=True).values_list("operation", flat=True).distinct())


def batch_jobs_for_owner(owner: Owner, batch) -> list[Job]:
    """The jobs of one submission, in submission order; 404 unless the requester owns them."""
    jobs = list(
        Job.objects.filter(owner.q(), batch=batch)
        .select_related("photo", "style_template")
        .prefetch_related(Prefetch("results", queryset=Result.objects.order_by("index")))
        .order_by("created_at", "pk")
    )
    if not jobs:
        raise Http404("No such comparison.")
    return jobs


# --- Typical durations (the "usually takes about N s" hint) -------------------

TYPICAL_MIN_JOBS = 3  # fewer finished jobs than this: no estimate yet
TYPICAL_WINDOW_DAYS = 30
TYPICAL_CACHE_SECONDS = 60
_typical_cache: dict[str, tuple[float, float | None]] = {}


def operation_typical_seconds(operation: str) -> float | None:
    """How long recent successful jobs of this operation ran (started → finished), or None.

    One aggregate query per operation, remembered for a minute in this process:
    the job card is polled every second and the figure barely moves.
    """
    import time

    from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F

    now = time.monotonic()
    cached = _typical_cache.get(operation)
    if cached and cached[0] > now:
        return cached[1]
    since = timezone.now() - timezone.timedelta(days=TYPICAL_WINDOW_DAYS)
    figures = Job.objects.filter(
        operation=operation, status=Job.Status.SUCCEEDED, started_at__isnull=False,
        finished_at__isnull=False, finished_at__gte=since,
    ).aggregate(
        count=Count("id"),
        average=Avg(ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())),
    )
    seconds = None
    if figures["count"] >= TYPICAL_MIN_JOBS and figures["average"] is not None:
        average = figures["average"]
        seconds = average.total_seconds() if hasattr(average, "total_seconds") else float(average) / 1e6
    _typical_cache[operation] = (now + TYPICAL_CACHE_SECONDS, seconds)
    return seconds


def typical_cache_clear() -> None:
    _typical_cache.clear()
