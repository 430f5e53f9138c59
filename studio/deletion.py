"""Deleting people's work, here and at its vendors: a result, everything of an owner, an account, expired photos."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Q

from studio import retention, vendor_deletion
from studio.models import Job, Photo, Result, ShareLink
from studio.ownership import Owner

log = logging.getLogger(__name__)


def result_delete(*, result: Result) -> None:
    """Delete a result here, and ask its vendor to delete the job's copies there."""
    job = result.job
    with transaction.atomic():
        vendor_deletion.deletions_request([job])
        result.delete()
        if not job.results.exists():
            job.delete()


def _drop_vendor_copies(jobs) -> None:
    """Delete the local files made only to send to a vendor (masks) of these jobs."""
    for job in jobs:
        if job.mask:
            name, storage = job.mask.name, job.mask.storage
            Job.objects.filter(pk=job.pk).update(mask="")
            transaction.on_commit(lambda storage=storage, name=name: storage.delete(name))


def photos_purge_expired(*, now=None, batch: int = 200) -> int:
    """Delete photos past retention, with their vendor-bound copies; results stay.

    Idempotent and safe to run in several processes at once: each photo is
    re-checked inside its own transaction, so one that another purge already
    deleted, or that a new job just started using, is skipped.
    """
    purged = 0
    for pk in list(retention.expired_photos(now).values_list("pk", flat=True)[:batch]):
        with transaction.atomic():
            photo = retention.expired_photos(now).select_for_update().filter(pk=pk).first()
            if photo is None:
                continue
            jobs = list(Job.objects.filter(Q(photo=photo) | Q(reference_photo=photo)))
            _drop_vendor_copies(jobs)
            vendor_deletion.deletions_request(jobs)
            photo.delete()  # files go after commit (signals.py)
            purged += 1
    if purged:
        log.info("retention: deleted %d photo(s)", purged)
    return purged


def owner_delete_everything(*, owner: Owner) -> dict[str, int]:
    """Delete all of an owner's photos, results, share links and jobs, files included.

    Vendors that offer deletion are asked to delete their copies too (in the
    background, after this commits). Returns what was deleted, for the message.
    """
    with transaction.atomic():
        jobs = list(Job.objects.filter(owner.q()))
        results = Result.objects.filter(job__in=[job.pk for job in jobs])
        counts = {
            "photos": Photo.objects.filter(owner.q()).count(),
            "jobs": len(jobs),
            "results": results.count(),
            "shares": ShareLink.objects.filter(result__in=results).count(),
        }
        vendor_deletion.deletions_request(jobs)
        # Rows one by one through the ORM, so every file is deleted by its post_delete handler.
        ShareLink.objects.filter(result__in=results).delete()
        results.delete()
        Job.objects.filter(pk__in=[job.pk for job in jobs]).delete()
        Photo.objects.filter(owner.q()).delete()
    return counts


def account_delete(*, user) -> dict[str, int]:
    """Delete an account: first everything it owns ("Delete everything"), then the user.

    One transaction: either the account and all its work go, or nothing does.
    allauth's e-mail addresses and confirmations go with the user (cascade).
    """
    with transaction.atomic():
        counts = owner_delete_everything(owner=Owner(user_id=user.pk))
        user.delete()
    return counts
