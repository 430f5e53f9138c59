"""Every read that depends on who is asking.

Each owned model has one access helper: it returns the object when the
requester owns it and raises Http404 otherwise, so another person's photo,
job or result is indistinguishable from one that does not exist.
"""

from __future__ import annotations

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


def share_get_active(token: str) -> ShareLink:
    """The active share link with this token, or 404 (revoked and expired too)."""
    now = timezone.now()
    link = (
        ShareLink.objects.select_related("result", "result__job", "result__job__photo")
        .filter(token=token, revoked_at__isnull=True)
        .first()
    )
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
    jobs = Job.objects.filter(owner.q()).select_related("photo").prefetch_related(
        Prefetch("results", queryset=Result.objects.order_by("index"))
    )
    if operation:
        jobs = jobs.filter(operation=operation)
    if status:
        jobs = jobs.filter(status=status)
    return Paginator(jobs, per_page).get_page(page)
