"""Asking vendors to delete their copies of a job's photos and results, with bounded retries.

Deleting work here (a result, "delete everything", the retention purge) writes one
VendorDeletion row per job that went to a vendor, in the same transaction as the
deletion itself, so a request can never be lost. A background task then calls the
provider's `delete_remote`; a vendor that is down, or a task that is still running
there (Perfect Corp answers `OperationInvalid` until it has finished), is tried again
later with growing, jittered pauses, at most MAX_ATTEMPTS times in all. Vendor calls
never run inside a web request or a database transaction.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from studio.models import Job, VendorDeletion
from studio.vendors.base import PROVIDERS, VendorError, get_provider

log = logging.getLogger(__name__)

# Pauses before the 2nd, 3rd, … attempt: a minute, then longer, about a day in all.
BACKOFF = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=2), timedelta(hours=12))
MAX_ATTEMPTS = len(BACKOFF) + 1
# A processor that claimed a row and died leaves it claimed this long, then another tries.
CLAIM_LEASE = timedelta(minutes=10)


def _remote_provider(key: str):
    """The provider behind a job if the photo went off this server, else None."""
    if key not in PROVIDERS:
        return None  # no longer configured: nothing we could call
    provider = get_provider(key)
    return None if provider.runs_locally else provider


def job_snapshot(job: Job) -> dict[str, Any]:
    """What a provider needs to delete its copies of a job, after our rows are gone."""
    return {
        "id": str(job.pk),
        "provider": job.provider,
        "operation": job.operation,
        "sandbox": job.sandbox,
        "vendor_task_id": job.vendor_task_id,
        "vendor_state": job.vendor_state,
        "vendor_meta": job.vendor_meta,
        "request_id": job.request_id,
    }


def _job_from_snapshot(snap: dict[str, Any]) -> Job:
    return Job(
        pk=snap["id"],
        provider=snap["provider"],
        operation=snap["operation"],
        sandbox=snap.get("sandbox", False),
        vendor_task_id=snap.get("vendor_task_id", ""),
        vendor_state=snap.get("vendor_state") or {},
        vendor_meta=snap.get("vendor_meta") or {},
        request_id=snap.get("request_id", ""),
    )


def deletions_request(jobs) -> int:
    """Record that the vendors of these jobs must delete their copies; returns how many rows.

    Call inside the transaction that deletes the jobs: the rows commit with it, and
    the first attempt is queued once it has committed.
    """
    candidates = [
        job for job in jobs if _remote_provider(job.provider) and (job.vendor_task_id or job.vendor_state)
    ]
    # Deleting two results of one job asks once: the vendor deletes the job's tasks whole.
    asked = set(
        VendorDeletion.objects.filter(job_ref__in=[str(job.pk) for job in candidates])
        .exclude(status=VendorDeletion.Status.FAILED)
        .values_list("job_ref", flat=True)
    )
    rows = [
        VendorDeletion(provider=job.provider, job_ref=str(job.pk), snapshot=job_snapshot(job))
        for job in candidates
        if str(job.pk) not in asked
    ]
    if not rows:
        return 0
    VendorDeletion.objects.bulk_create(rows)

    def enqueue():
        from django_q.tasks import async_task

        async_task("studio.tasks.process_vendor_deletions", task_name="vendor-deletions", group="privacy")

    transaction.on_commit(enqueue)
    return len(rows)


def snapshots_adopt(snapshots: list[dict[str, Any]]) -> int:
    """Queue snapshots that the previous release handed to a one-shot task.

    Before this queue existed, deletions travelled as a task argument
    (`studio.tasks.delete_remote_copies`); such tasks may still sit in a
    broker during an upgrade. They become rows here, with the same retries.
    """
    rows = [
        VendorDeletion(provider=snap["provider"], job_ref=str(snap["id"]), snapshot=snap)
        for snap in snapshots
        if isinstance(snap, dict) and snap.get("id") and _remote_provider(snap.get("provider", ""))
    ]
    with transaction.atomic():
        VendorDeletion.objects.bulk_create(rows)
    return len(rows)


def _claim(row: VendorDeletion, now) -> bool:
    """Take a due row for this processor; another processor running at once skips it."""
    return (
        VendorDeletion.objects.filter(pk=row.pk, status=VendorDeletion.Status.PENDING, attempts=row.attempts)
        .filter(next_attempt_at=row.next_attempt_at)
        .update(next_attempt_at=now + CLAIM_LEASE)
        == 1
    )


def _finish(row: VendorDeletion, status: str, error: str = "") -> None:
    VendorDeletion.objects.filter(pk=row.pk).update(
        status=status,
        attempts=row.attempts + 1,
        last_error=error[:200],
        finished_at=timezone.now(),
        # Done or given up: the vendor task ids are no longer needed here.
        snapshot={},
    )


def _try_later(row: VendorDeletion, error: str, now) -> None:
    attempts = row.attempts + 1
    if attempts >= MAX_ATTEMPTS:
        log.warning("gave up deleting %s's copies of job %s after %s attempts", row.provider, row.job_ref, attempts)
        _finish(row, VendorDeletion.Status.FAILED, error)
        return
    pause = BACKOFF[attempts - 1]
    jittered = pause * (0.5 + random.random())  # noqa: S311 - spreading retries, not security
    VendorDeletion.objects.filter(pk=row.pk).update(
        attempts=attempts, last_error=error[:200], next_attempt_at=now + jittered
    )


def deletions_process(*, now=None, limit: int = 100) -> dict[str, int]:
    """Try every due deletion once; returns counts of what happened (for logs and tests)."""
    now = now or timezone.now()
    outcome = {"done": 0, "retry": 0, "failed": 0}
    due = VendorDeletion.objects.filter(status=VendorDeletion.Status.PENDING, next_attempt_at__lte=now)
    for row in list(due.order_by("next_attempt_at")[:limit]):
        if not _claim(row, now):
            continue
        provider = _remote_provider(row.provider)
        if provider is None:
            _finish(row, VendorDeletion.Status.FAILED, "This vendor is no longer configured.")
            outcome["failed"] += 1
            continue
        try:
            provider.delete_remote(_job_from_snapshot(row.snapshot))
        except VendorError as exc:
            if exc.permanent:
                log.warning("%s refused to delete its copies of job %s: %s", row.provider, row.job_ref, exc.message)
                _finish(row, VendorDeletion.Status.FAILED, exc.message)
                outcome["failed"] += 1
            else:
                _try_later(row, exc.message, now)
                outcome["retry"] += 1
        except Exception as exc:  # noqa: BLE001 - one vendor must not block the rest
            # The vendor's answer is not logged: it could echo credentials.
            log.warning("deleting %s's copies of job %s failed: %s", row.provider, row.job_ref, type(exc).__name__)
            _try_later(row, type(exc).__name__, now)
            outcome["retry"] += 1
        else:
            _finish(row, VendorDeletion.Status.DONE)
            outcome["done"] += 1
    return outcome


def deletions_summary() -> dict[str, dict[str, int]]:
    """Per provider: how many deletions are pending, done and given up (staff console)."""
    summary: dict[str, dict[str, int]] = {}
    for row in VendorDeletion.objects.values("provider", "status").annotate(n=Count("id")):
        summary.setdefault(row["provider"], {s: 0 for s in VendorDeletion.Status.values})[row["status"]] = row["n"]
    return summary
