"""When stored photos are due for deletion.

An uploaded photo (and any copy of it made for a vendor, such as a painted
mask) is kept STUDIO_RETENTION_HOURS after its last use: its upload or the end
of the last job that read it, as the selfie or as the reference photo.
Results are not covered: they stay until their owner deletes them.

The purge itself is `deletion.photos_purge_expired`; this module only
answers "when", for the purge and for the page that shows each photo's date.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from studio.models import Job, Photo


def retention() -> timedelta:
    return timedelta(hours=settings.STUDIO_RETENTION_HOURS)


def _jobs_reading(photo_ref) -> QuerySet:
    return Job.objects.filter(Q(photo=photo_ref) | Q(reference_photo=photo_ref))


def with_last_used(photos: QuerySet) -> QuerySet:
    """Annotate `last_used_at` (upload or the latest end of a job that read the photo)."""
    last_job = (
        _jobs_reading(OuterRef("pk"))
        .annotate(used_at=Coalesce("finished_at", "created_at"))
        .order_by("-used_at")
        .values("used_at")[:1]
    )
    return photos.annotate(last_used_at=Greatest("created_at", Coalesce(Subquery(last_job), "created_at")))


def expired_photos(now: datetime | None = None) -> QuerySet:
    """Photos past retention with no job still queued or running on them."""
    cutoff = (now or timezone.now()) - retention()
    busy = _jobs_reading(OuterRef("pk")).exclude(status__in=Job.TERMINAL)
    return with_last_used(Photo.objects.all()).filter(last_used_at__lt=cutoff).exclude(Exists(busy))


def photo_due_at(photo: Photo) -> datetime:
    """When this photo will be deleted, if nothing uses it before then."""
    last_used = getattr(photo, "last_used_at", None)
    if last_used is None:
        last_used = with_last_used(Photo.objects.filter(pk=photo.pk)).values_list("last_used_at", flat=True).first()
    return (last_used or photo.created_at) + retention()
