"""New jobs: a submission (or a rerun) checked, written as queued jobs, and handed to what runs them."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from studio import costs
from studio.errors import OperationUnavailable, ServiceError
from studio.jobs import doorbell
from studio.models import Job, Photo
from studio.operations import Operation
from studio.ownership import Owner
from studio.photos import read_stored
from studio.vendors.base import get_provider

log = logging.getLogger(__name__)


def job_create(
    *,
    owner: Owner,
    photo: Photo | None,
    operation: Operation,
    params: dict[str, Any],
    reference_photo: Photo | None = None,
    mask: bytes | None = None,
    rerun_of: Job | None = None,
    batch: uuid.UUID | None = None,
    style_template=None,
    notify_email: bool = False,
) -> Job:
    """Queue a job and enqueue its task once the row is committed."""
    provider = get_provider(operation.provider)
    reason = provider.unavailable_reason()
    if reason:
        # The reason names server settings: it is for staff (logs, console), not visitors.
        log.info("operation %s refused: %s", operation.key, reason)
        raise OperationUnavailable(reason)
    if photo is None:
        if operation.inputs.selfie:
            raise ServiceError("Upload a photo first.")
    else:
        problems = operation.limits.problems(faces=photo.face_boxes, source_format=photo.source_format)
        if problems:
            raise ServiceError(problems[0])
    job = Job.objects.create(
        **owner.fields(),
        photo=photo,
        reference_photo=reference_photo,
        operation=operation.key,
        provider=operation.provider,
        params=params,
        # Local operations are real work even in sandbox mode; vendor ones are emulated.
        sandbox=settings.STUDIO_SANDBOX and not provider.runs_locally,
        # A fresh request id per deliberate run; retries of one run reuse it.
        request_id=uuid.uuid4().hex,
        rerun_of=rerun_of,
        batch=batch,
        style_template=style_template,
        notify_email=notify_email,
        stage="Waiting for a worker",
        # The vendor's price for one run as the user saw it (studio.costs), and which
        # of the vendor's APIs the job goes to (vendor-side deletion depends on it).
        units=costs.unit_cost(operation, ask=False),
        vendor_meta=provider.submission_meta(),
    )
    if mask is not None:
        job.mask.save(f"{job.pk}.png", ContentFile(mask), save=True)
    transaction.on_commit(lambda: enqueue_job(job.pk))
    return job


def job_create_batch(
    *,
    owner: Owner,
    photo: Photo | None,
    runs: list[tuple],
    reference_photo: Photo | None = None,
    mask: bytes | None = None,
    notify_email: bool = False,
) -> list[Job]:
    """Several jobs from one submission (several styles, templates or providers).

    Each run is (operation, params) or (operation, params, style_template).

    All or nothing: if any run is refused (unavailable vendor, photo limits),
    no job is created and the first refusal is raised.
    """
    if not runs:
        raise ServiceError("Pick at least one option to run.")
    batch = uuid.uuid4() if len(runs) > 1 else None
    with transaction.atomic():
        return [
            job_create(
                owner=owner,
                photo=photo,
                operation=operation,
                params=params,
                reference_photo=reference_photo,
                mask=mask,
                batch=batch,
                style_template=template[0] if template else None,
                notify_email=notify_email,
            )
            for operation, params, *template in runs
        ]


def job_rerun(*, owner: Owner, job: Job, params: dict[str, Any]) -> Job:
    if job.photo is None and job.operation_spec and job.operation_spec.inputs.selfie:
        raise ServiceError("The original photo of this job was deleted; upload it again to run it.")
    return job_create(
        owner=owner,
        photo=job.photo,
        operation=job.operation_spec,
        params=params,
        reference_photo=job.reference_photo,
        mask=read_stored(job.mask) if job.mask else None,
        rerun_of=job,
    )


def job_delete(*, job: Job) -> None:
    job.delete()


def enqueue_job(job_id, *, group: str = "jobs") -> None:
    """Hand a queued job to what runs it; `group` tells staff why (recovery uses its own).

    A vendor job is made due for the step runner (studio/jobs/steps.py), so its
    waits hold no worker; a local, CPU-bound one goes to django-q2's broker. In
    sync mode (tests, scripts) there is no step runner: django-q2 runs either
    here and now.
    """
    from django_q.conf import Conf
    from django_q.tasks import async_task

    provider = Job.objects.filter(pk=job_id).values_list("provider", flat=True).first()
    if provider and not get_provider(provider).runs_locally and not Conf.SYNC:
        Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(step_due_at=timezone.now())
        transaction.on_commit(doorbell.ring)  # a runner submits it now, not at its next tick
        return
    async_task(
        "studio.tasks.run_job",
        str(job_id),
        hook="studio.tasks.run_job_finished",
        task_name=f"job-{job_id}",
        group=group,
    )
