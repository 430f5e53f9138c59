"""Every write the product makes: photos, jobs, results, share links.

Views and tasks call these; they never touch models' state directly. Job
state changes through conditional updates so two workers can never both
claim a job, and every failure ends in a terminal state with a message.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.text import slugify

from studio import costs, imaging, vendor_deletion, wakeup
from studio.errors import UserFacingError
from studio.models import Job, Photo, Result, ShareLink, StyleTemplate
from studio.operations import Operation
from studio.ownership import Owner
from studio.vendors.base import JobInput, Output, Progress, VendorError, get_provider

log = logging.getLogger(__name__)

GENERIC_FAILURE = (
    "Something went wrong on our side while processing this photo. "
    "Please try again in a minute; your photo is safe."
)
TIMED_OUT = "This job took too long and was stopped. Please try again; if it keeps happening, pick another operation."


UNAVAILABLE = "This operation isn't set up on this server right now. Please pick another one."


class ServiceError(UserFacingError):
    """A request that cannot be carried out; `message` is safe to show."""


class OperationUnavailable(ServiceError):
    """The operation's provider cannot run here. `message` is for visitors; `reason`
    (which names the missing settings) is for staff: logs and the console."""

    def __init__(self, reason: str):
        super().__init__(UNAVAILABLE)
        self.reason = reason


# --- Photos -----------------------------------------------------------------


def _clean_filename(name: str) -> str:
    """A display-only version of the client's filename: no path, no control chars."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:120]


def photo_create(*, owner: Owner, data: bytes, filename: str = "", source_result=None) -> Photo:
    """Ingest uploaded bytes into a stored, normalized Photo (raises ImageRejected)."""
    ingested = imaging.ingest(data, max_bytes=settings.STUDIO_MAX_UPLOAD_MB * 1024 * 1024)
    photo = Photo(
        **owner.fields(),
        width=ingested.width,
        height=ingested.height,
        byte_size=len(ingested.jpeg),
        source_format=ingested.source_format,
        faces=[box.as_list() for box in ingested.faces],
        original_name=_clean_filename(filename),
        source_result=source_result,
    )
    photo.image.save("photo.jpg", ContentFile(ingested.jpeg), save=False)
    photo.thumbnail.save("thumb.jpg", ContentFile(ingested.thumbnail), save=False)
    photo.save()
    return photo


def photo_from_result(*, owner: Owner, result: Result) -> Photo:
    """Chaining: make a result the input photo of another operation."""
    return photo_create(
        owner=owner, data=_read(result.image), filename=f"{result.label or 'result'}.jpg", source_result=result
    )


def photo_delete(*, photo: Photo) -> None:
    photo.delete()  # files go in the post_delete handler, after commit


# --- Jobs -------------------------------------------------------------------


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


def enqueue_job(job_id, *, group: str = "jobs") -> None:
    """Hand a queued job to what runs it; `group` tells staff why (recovery uses its own).

    A vendor job is made due for the step runner (studio/steps.py), so its
    waits hold no worker; a local, CPU-bound one goes to django-q2's broker. In
    sync mode (tests, scripts) there is no step runner: django-q2 runs either
    here and now.
    """
    from django_q.conf import Conf
    from django_q.tasks import async_task

    provider = Job.objects.filter(pk=job_id).values_list("provider", flat=True).first()
    if provider and not get_provider(provider).runs_locally and not Conf.SYNC:
        Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(step_due_at=timezone.now())
        return
    async_task(
        "studio.tasks.run_job",
        str(job_id),
        hook="studio.tasks.run_job_finished",
        task_name=f"job-{job_id}",
        group=group,
    )


def job_claim(job_id) -> bool:
    """Move a queued job to running; True only for the one worker that did it.

    A job left "running" by a worker that died (no heartbeat for
    STUDIO_JOB_ORPHAN_SECONDS: a live worker beats far more often, see
    `_heartbeat`) can be claimed again, so it resumes instead of waiting for
    the sweeper. A duplicate message for a job that is running or finished
    finds nothing to claim: that is what makes a re-sent message harmless.
    """
    now = timezone.now()
    stale_before = now - timezone.timedelta(seconds=settings.STUDIO_JOB_ORPHAN_SECONDS)
    claimable = Job.objects.filter(pk=job_id).filter(
        Q(status=Job.Status.QUEUED)
        # A parked job (waiting for its vendor, between two steps) beats no heartbeat and is no orphan.
        | Q(status=Job.Status.RUNNING, heartbeat_at__lt=stale_before, step_due_at__isnull=True)
    )
    return (
        claimable.update(
            status=Job.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            stage="Starting",
            step_due_at=None,
        )
        == 1
    )


def job_claim_step(job_id, *, owner: str = "", due_only: bool = True) -> bool | None:
    """Take a job's due step (studio/steps.py) for the one caller that gets it.

    True: a queued job, whose new run starts (attempts + 1, as job_claim);
    False: the next step of the run in progress (a poll, or the download);
    None: not taken (another runner has it, it is not due, or it ended).
    `owner` names the step runner, so a dead runner's steps can be given back;
    due_only=False takes a step before its time (a wait a webhook cut short).
    """
    now = timezone.now()
    due = Job.objects.filter(pk=job_id, step_due_at__isnull=False)
    if due_only:
        due = due.filter(step_due_at__lte=now)
    started = due.filter(status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
        stage="Starting",
        step_due_at=None,
        step_owner=owner,
    )
    if started:
        return True
    if due.filter(status=Job.Status.RUNNING).update(step_due_at=None, heartbeat_at=now, step_owner=owner):
        return False
    return None


def job_park(job: Job, seconds: float) -> bool:
    """End this step: the job waits for its vendor holding nothing, its next step due in `seconds`."""
    now = timezone.now()
    # Due one tick early: the runner finds it within a tick, so the step is sent no later than asked.
    seconds = max(0.0, seconds - settings.STUDIO_STEP_TICK_MS / 1000)
    parked = (
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts, step_due_at__isnull=True)
        .update(step_due_at=now + timezone.timedelta(seconds=seconds), heartbeat_at=now)
        == 1
    )
    # A webhook that came while this step ran found no parked job to wake: its
    # signal waits in wakeup, so take it now (after parking, or one could slip between).
    if parked and wakeup.wait(job.pk, 0):
        from studio import steps

        steps.job_wake(job.pk)
    return parked


def job_report(job_id, stage: str, fraction: float | None = None) -> None:
    """Record the running job's stage; the heartbeat proves its worker is alive."""
    values: dict[str, Any] = {"stage": stage[:80], "heartbeat_at": timezone.now()}
    if fraction is not None:
        values["progress"] = max(0.0, min(1.0, float(fraction)))
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(**values)


@contextmanager
def _heartbeat(job_id, attempt: int):
    """Keep a running job's heartbeat fresh from a side thread, whatever the job is doing.

    A long synchronous vendor call (the Headshot API may take 3 minutes to
    answer) must not look like a dead worker, and a worker killed with SIGKILL
    must stop beating at once: this thread does both. It stops by itself when
    the job is no longer this run's (finished, or claimed again elsewhere
    after this worker was given up for dead).
    """
    stop = threading.Event()
    every = settings.STUDIO_JOB_ORPHAN_SECONDS / 3

    def beat():
        try:
            while not stop.wait(every):
                try:
                    mine = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING, attempts=attempt).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception:  # e.g. the database briefly unreachable: try again next beat
                    log.warning("heartbeat of job %s failed", job_id, exc_info=True)
                    continue
                if not mine:
                    return
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def job_requeue(job_id, stage: str) -> bool:
    """Put a running job back in the queue to be run again by another worker; True if done."""
    updated = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
        status=Job.Status.QUEUED, stage=stage[:80], heartbeat_at=timezone.now()
    )
    if updated:
        transaction.on_commit(lambda: enqueue_job(job_id))
    return updated == 1


def job_mark_failed(job_id, message: str) -> bool:
    """Fail a job that is not yet terminal; True if this call did it."""
    failed = (
        Job.objects.filter(pk=job_id)
        .exclude(status__in=Job.TERMINAL)
        .update(status=Job.Status.FAILED, error_message=message, finished_at=timezone.now(), stage="")
        == 1
    )
    if failed:
        _after_job_ended(job_id)
    return failed


def _after_job_ended(job_id) -> None:
    """Once the job's end is committed: the 'done' e-mail, if its batch asked for one and is finished."""

    def notify():
        from studio import done_email

        try:
            done_email.notify_if_finished(job_id)
        except Exception:  # the job's own outcome stands whatever happens to the e-mail
            log.exception("'done' e-mail check for job %s failed", job_id)

    transaction.on_commit(notify)


class _JobNoLongerRunning(Exception):
    """Rolls back storing results for a job that ended meanwhile."""


def _store_outputs(job: Job, outputs: list[Output]) -> None:
    """Verify each output decodes as an image, then store it with a thumbnail.

    Files are written before their rows commit, so on any failure the files
    written so far are deleted too: a rollback alone would leave them orphaned.
    """
    if not outputs:
        raise VendorError("The service returned no image. Please try again.", permanent=False)
    written: list = []
    try:
        with transaction.atomic():
            # Only the run that holds the job now may store: a worker given up for
            # dead (its job claimed again under a new attempt) rolls back here.
            if not Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).exists():
                raise _JobNoLongerRunning
            job.results.all().delete()  # a resumed run replaces partial results
            for index, output in enumerate(outputs):
                written += _store_output(job, index, output)
            updated = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(
                status=Job.Status.SUCCEEDED, stage="Done", progress=1.0, finished_at=timezone.now()
            )
            if updated != 1:
                # The sweeper failed the job, or another run took it over, meanwhile; keep that.
                raise _JobNoLongerRunning
            _after_job_ended(job.pk)
    except BaseException as exc:
        for field in written:
            field.storage.delete(field.name)
        if isinstance(exc, _JobNoLongerRunning):
            return
        raise


def _store_output(job: Job, index: int, output: Output) -> list:
    """Save one output as a Result; returns the file fields it wrote."""
    try:
        # Untrusted until decoded; stored upright and without any metadata.
        data, content_type, image = imaging.clean_output(output.data)
    except imaging.ImageRejected:
        raise VendorError("The service returned a damaged image. Please try again.", permanent=False) from None
    result = Result(
        job=job,
        index=index,
        content_type=content_type,
        width=image.width,
        height=image.height,
        label=output.label,
        meta=output.meta,
    )
    name = f"{index + 1}.{'png' if content_type == 'image/png' else 'jpg'}"
    result.image.save(name, ContentFile(data), save=False)
    if content_type == "image/png":
        # A cut-out keeps its transparency in the thumbnail too (shown on a checkerboard).
        result.thumbnail.save(f"{index + 1}-thumb.png", ContentFile(imaging.make_png_thumbnail(data)), save=False)
    else:
        result.thumbnail.save(f"{index + 1}-thumb.jpg", ContentFile(imaging.make_jpeg_thumbnail(data)), save=False)
    result.save()
    return [result.image, result.thumbnail]


RAN, SKIPPED = "ran", "skipped"
PARKED = "parked"  # a step ended with the job waiting for its vendor


def job_run(job_id) -> str:
    """Run a queued job to a terminal state in this process (a django-q2 task).

    Local operations always run so. A vendor job comes here only in sync mode
    (tests, scripts) or from a message queued before the step runner existed:
    it then waits between its steps here instead of parked.

    Returns RAN, or SKIPPED when another delivery has the job: django-q2
    keeps it as the task's result, a record of every delivery that staff
    (and the exactly-once test) can count independently of the job row.
    """
    if not job_claim(job_id):
        log.info("job %s already claimed or finished; skipping", job_id)
        return SKIPPED
    outcome = _step(job_id, first=True)
    while outcome == PARKED:
        due = Job.objects.filter(pk=job_id).values_list("step_due_at", flat=True).first()
        if due is not None:
            wakeup.wait(job_id, (due - timezone.now()).total_seconds())
        if job_claim_step(job_id, due_only=False) is not False:
            break  # ended meanwhile (the sweeper), or a step runner took the step
        outcome = _step(job_id, first=False)
    return RAN


def job_step(job_id, *, first: bool) -> str | None:
    """One step that studio.steps claimed: the start (or resumption) of a run, a poll, or the download."""
    return _step(job_id, first=first)


def _step(job_id, *, first: bool) -> str | None:
    job = Job.objects.select_related("photo", "photo__source_result__job", "reference_photo").get(pk=job_id)
    # "claimed" once per run (the exactly-once test counts these lines), "step" for each later step.
    log.info("job %s %s (attempt %s)", job.pk, "claimed" if first else "step", job.attempts)
    with _heartbeat(job.pk, job.attempts):
        return _run_claimed_to_the_end(job, resumed=first)


def _run_claimed_to_the_end(job: Job, *, resumed: bool = True) -> str | None:
    """Every ending of a claimed step becomes a terminal state, a requeue or a parked wait."""
    try:
        if _run_claimed(job, resumed=resumed) == PARKED:
            return PARKED
    except VendorError as exc:
        # A provider still waiting for vendor capacity when its worker's time runs
        # out hands the job back to the queue (it has sent nothing yet).
        if not (getattr(exc, "requeue", False) and job_requeue(job.pk, exc.message)):
            job_mark_failed(job.pk, exc.message)
    except Exception:
        log.exception("job %s crashed", job.pk)
        job_mark_failed(job.pk, GENERIC_FAILURE)
    else:
        # A staff preview of a style template: its result becomes the template's cover.
        try:
            template_cover_from_preview(job.pk)
        except Exception:  # the job itself succeeded; a cover can be made again
            log.exception("making a template cover from job %s failed", job.pk)


def _read(field) -> bytes:
    with field.open("rb") as fh:
        return fh.read()


def _run_claimed(job: Job, *, resumed: bool = True) -> str | None:
    """One step: submit (or, for a job that has its vendor task, one poll), then either
    park the job until the next poll is useful (PARKED) or fetch and store the results."""
    operation = job.operation_spec
    if operation is None:
        raise VendorError("This operation is no longer offered. Please pick another one.")
    if job.photo is None and operation.inputs.selfie:
        raise VendorError("The photo for this job was deleted. Upload it again to run the job.")
    provider = get_provider(job.provider)
    source = job.photo.source_result if job.photo else None
    job_input = JobInput(
        job_id=str(job.pk),
        operation=operation,
        params=job.params,
        # Files are read when a provider first uses them (a poll doesn't): see JobInput.
        image=(lambda: _read(job.photo.image)) if job.photo else b"",  # b"": a text-only operation
        faces=job.photo.face_boxes if job.photo else [],
        request_id=job.request_id,
        reference=(lambda: _read(job.reference_photo.image)) if job.reference_photo else None,
        mask=(lambda: _read(job.mask)) if job.mask else None,
        source_meta={**source.job.vendor_meta, **source.meta, "provider": source.job.provider} if source else {},
        photo_id=str(job.photo.pk) if job.photo else "",
        sandbox=job.sandbox,
        state=dict(job.vendor_state),
        report=lambda stage, fraction=None: job_report(job.pk, stage, fraction),
        save_state_callback=lambda state: Job.objects.filter(pk=job.pk).update(vendor_state=state),
        deadline=job.created_at.timestamp() + settings.STUDIO_JOB_DEADLINE_SECONDS,
    )
    deadline = job_input.deadline
    progress: Progress | None = None
    if not job.vendor_task_id:
        submission = provider.submit(job_input)
        Job.objects.filter(pk=job.pk).update(vendor_task_id=submission.task_id[:200])
        job.vendor_task_id = submission.task_id
        progress = submission.progress
    elif resumed:
        job_report(job.pk, "Resuming", None)
    if progress is None:  # a resumed run or a later step: ask the vendor now
        if time.time() > deadline:
            raise VendorError(TIMED_OUT, permanent=True)
        progress = provider.poll(job_input, job.vendor_task_id)
        job_report(job.pk, progress.stage or "Processing", progress.fraction)
    if not progress.finished:
        if time.time() > deadline:
            raise VendorError(TIMED_OUT, permanent=True)
        if job_park(job, _pause_before_poll(progress, deadline)):
            return PARKED
        return None  # ended meanwhile (the sweeper): nothing more to do
    job_report(job.pk, "Saving results", 0.97)
    _record_vendor_report(job, progress)
    _store_outputs(job, provider.fetch_results(job_input, progress))


def _pause_before_poll(progress: Progress, deadline: float) -> float:
    """Seconds to wait before the next poll (a webhook's wake cuts it short).

    What the provider asks, at most 10 s, or at most the webhook backstop
    while a webhook is registered; never past the job's deadline.
    """
    cap = settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS if progress.webhook else 10.0
    return max(0.2, min(progress.poll_after, cap, deadline - time.time()))


def _record_vendor_report(job: Job, progress: Progress) -> None:
    """Keep what the vendor reported (cost, timings) on the job, for users and staff."""
    values: dict[str, Any] = {}
    if progress.cost is not None:
        values["cost"] = progress.cost
    if progress.meta:
        values["vendor_meta"] = {**job.vendor_meta, **progress.meta}
    if values:
        Job.objects.filter(pk=job.pk).update(**values)
        for name, value in values.items():
            setattr(job, name, value)


def job_rerun(*, owner: Owner, job: Job, params: dict[str, Any]) -> Job:
    if job.photo is None and job.operation_spec and job.operation_spec.inputs.selfie:
        raise ServiceError("The original photo of this job was deleted; upload it again to run it.")
    return job_create(
        owner=owner,
        photo=job.photo,
        operation=job.operation_spec,
        params=params,
        reference_photo=job.reference_photo,
        mask=_read(job.mask) if job.mask else None,
        rerun_of=job,
    )


def job_delete(*, job: Job) -> None:
    job.delete()


def jobs_sweep_stale() -> int:
    """Fail every job still unfinished past its deadline. Safe to run anywhere, any time."""
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.STUDIO_JOB_DEADLINE_SECONDS)
    stale = Job.objects.exclude(status__in=Job.TERMINAL).filter(created_at__lt=cutoff)
    ids = list(stale.values_list("pk", flat=True))
    swept = 0
    for job_id in ids:  # one by one: each may finish a batch that asked to be told
        swept += job_mark_failed(job_id, TIMED_OUT)
    return swept


# --- Results and sharing ----------------------------------------------------


def result_delete(*, result: Result) -> None:
    """Delete a result here, and ask its vendor to delete the job's copies there."""
    job = result.job
    with transaction.atomic():
        vendor_deletion.deletions_request([job])
        result.delete()
        if not job.results.exists():
            job.delete()


def share_enable(
    *, result: Result, show_before: bool = False, allow_download: bool = False, expires_at=None
) -> ShareLink:
    """The active share link of a result, created if there is none (optionally expiring)."""
    wanted = {"show_before": show_before, "allow_download": allow_download, "expires_at": expires_at}
    with transaction.atomic():
        link = next((link for link in result.share_links.all() if link.is_active), None)
        if link is None:
            link = ShareLink.objects.create(result=result, **wanted)
        elif any(getattr(link, name) != value for name, value in wanted.items()):
            for name, value in wanted.items():
                setattr(link, name, value)
            link.save(update_fields=list(wanted))
    return link


def share_disable(*, result: Result) -> int:
    return result.share_links.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())


def owner_adopt_visitor_work(*, user, visitor_id: str) -> int:
    """On sign-up or log-in, move a visitor's photos and jobs to the account."""
    if not visitor_id:
        return 0
    moved = 0
    for model in (Photo, Job):
        moved += model.objects.filter(owner_user__isnull=True, owner_visitor=visitor_id).update(
            owner_user=user, owner_visitor=""
        )
    return moved


# --- Privacy: retention and deleting everything ----------------------------------


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
    from studio import retention

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
    from studio.ownership import Owner

    with transaction.atomic():
        counts = owner_delete_everything(owner=Owner(user_id=user.pk))
        user.delete()
    return counts


# --- Style templates (saved prompt + seed + parameters) ------------------------------

SAMPLE_PORTRAIT = Path(__file__).resolve().parent / "assets" / "sample-portrait.jpg"
COVER_LONG_SIDE = 640
SEED_MAX = 2_147_483_647  # every vendor that takes a seed accepts 1 … 2^31 − 1


def seed_pick() -> int:
    """A random seed chosen here, so it can be shown (and locked) before the job runs."""
    return secrets.randbelow(SEED_MAX) + 1


def _unique_template_slug(name: str) -> str:
    base = slugify(name)[:70] or "template"
    slug, n = base, 2
    while StyleTemplate.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def template_save_from_result(*, result: Result, name: str = "") -> StyleTemplate:
    """A new (inactive) template with the prompt, seed and parameters that made `result`.

    The result image itself is not used as the cover: it shows a user's face.
    Staff make the cover with the preview action, which runs on the sample portrait.
    """
    job = result.job
    if job.operation_spec is None:
        raise ServiceError("This result's operation is no longer offered.")
    if not {p.name for p in job.operation_spec.params} & {"prompt", "seed"}:
        raise ServiceError(f"{job.operation_label} takes no prompt or seed, so there is no look to save.")
    params = {k: v for k, v in job.params.items() if k not in ("prompt", "seed")}
    seed = result.meta.get("seed", job.params.get("seed"))
    name = (name or "").strip()[:80] or f"{job.operation_label} {str(result.pk)[:6]}"
    template = StyleTemplate(
        name=name,
        slug=_unique_template_slug(name),
        operation=job.operation,
        provider=job.provider,
        prompt=str(job.params.get("prompt") or ""),
        seed=int(seed) if seed not in (None, "", -1) else None,
        params=params,
        active=False,  # staff check it (and make a cover) before users see it
        source_result=result,
    )
    template.full_clean()
    template.save()
    return template


def template_preview(*, template: StyleTemplate, user) -> Job:
    """Run the template on the sample portrait as `user`; the result becomes its cover."""
    op = template.operation_spec
    if op is None:
        raise ServiceError(f"{template.name}: its operation is no longer offered.")
    params, errors = op.clean_params(template.run_params())
    if errors:
        raise ServiceError(f"{template.name}: " + " ".join(errors.values()))
    owner = Owner(user_id=user.pk)
    with transaction.atomic():  # the link is committed before the job can run (on_commit)
        photo = None
        if op.inputs.selfie:
            photo = photo_create(owner=owner, data=SAMPLE_PORTRAIT.read_bytes(), filename="sample-portrait.jpg")
        job = job_create(owner=owner, photo=photo, operation=op, params=params, style_template=template)
        StyleTemplate.objects.filter(pk=template.pk).update(preview_job=job)
        template.preview_job = job
    return job


def template_cover_from_preview(job_id) -> bool:
    """If this finished job is a template preview, make its first safe result the cover."""
    template = StyleTemplate.objects.filter(preview_job_id=job_id).first()
    if template is None:
        return False
    results = Result.objects.filter(job_id=job_id, job__status=Job.Status.SUCCEEDED).order_by("index")
    result = next((r for r in results if not r.meta.get("nsfw")), None)
    if result is None:
        return False
    image = imaging.load_image(_read(result.image))
    old = template.cover.name if template.cover else ""
    template.cover.save(
        f"cover-{str(job_id)[:8]}.jpg",
        ContentFile(imaging.encode_jpeg(imaging.resize_long_side(image, COVER_LONG_SIDE), quality=85)),
        save=False,
    )
    StyleTemplate.objects.filter(pk=template.pk).update(cover=template.cover.name)
    if old and old != template.cover.name:
        storage = template.cover.storage
        transaction.on_commit(lambda: storage.delete(old))
    return True
