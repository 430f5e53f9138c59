"""The job runner, from claim to stored results.

A run claims its job (job_claim, or job_claim_step for a step the step
runner took), submits it to its vendor or runs it locally, polls between
parked waits (job_park), and stores the results (_store_outputs) or fails
with a message. Job state changes through conditional updates so two
workers can never both claim a job, and every failure ends in a terminal
state with a message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from studio import imaging, templates_library, wakeup
from studio.errors import GENERIC_FAILURE, TIMED_OUT
from studio.jobs import create, heartbeat
from studio.models import Job, Photo, Result
from studio.photos import read_stored
from studio.vendors.base import JobInput, Output, Progress, VendorError, get_provider

log = logging.getLogger(__name__)


# --- claiming a job, or one of its steps -------------------------------------------------


def job_claim(job_id) -> bool:
    """Move a queued job to running; True only for the one worker that did it.

    A job left "running" by a worker that died (no heartbeat for
    STUDIO_JOB_ORPHAN_SECONDS: a live worker beats far more often, see
    studio/jobs/heartbeat.py) can be claimed again, so it resumes instead of waiting for
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
    return claimable.update(**_new_run(now)) == 1


def _new_run(now) -> dict[str, Any]:
    """The fields a claim sets when it starts a run (a first run, or one resuming a dead one's)."""
    return {
        "status": Job.Status.RUNNING,
        "started_at": now,
        "heartbeat_at": now,
        "attempts": F("attempts") + 1,
        "stage": "Starting",
        "step_due_at": None,
    }


def job_claim_step(job_id, *, owner: str = "", due_only: bool = True, new_run: bool | None = None) -> bool | None:
    """Take a job's due step (studio/jobs/steps.py) for the one caller that gets it.

    True: a queued job, whose new run starts (attempts + 1, as job_claim);
    False: the next step of the run in progress (a poll, or the download);
    None: not taken (another runner has it, it is not due, or it ended).
    `owner` names the step runner, so a dead runner's steps can be given back;
    due_only=False takes a step before its time (a wait a webhook cut short).
    `new_run`, when the caller saw the job's status, says which of the two claims to try.
    """
    now = timezone.now()
    due = Job.objects.filter(pk=job_id, step_due_at__isnull=False)
    if due_only:
        due = due.filter(step_due_at__lte=now)

    def start_run() -> bool:
        return bool(due.filter(status=Job.Status.QUEUED).update(**_new_run(now), step_owner=owner))

    def take_step() -> bool:
        return bool(due.filter(status=Job.Status.RUNNING).update(step_due_at=None, heartbeat_at=now, step_owner=owner))

    if new_run is not None:
        # One write, even for a claim another runner won: a job whose status changed since
        # the caller looked is seen as it is now at its next look.
        return (True if start_run() else None) if new_run else (False if take_step() else None)
    return True if start_run() else False if take_step() else None


def job_park(job: Job, seconds: float, *, progress: Progress | None = None) -> bool:
    """End this step: the job waits for its vendor holding nothing, its next step due in `seconds`.

    The stage and fraction of `progress` are written in the same update (one write per poll).
    """
    now = timezone.now()
    # Due one tick early: the runner finds it within a tick, so the step is sent no later than asked.
    seconds = max(0.0, seconds - settings.STUDIO_STEP_TICK_MS / 1000)
    values: dict[str, Any] = {"step_due_at": now + timezone.timedelta(seconds=seconds), "heartbeat_at": now}
    if progress is not None:
        values["stage"] = (progress.stage or "Processing")[:80]
        if progress.fraction is not None:
            values["progress"] = max(0.0, min(1.0, float(progress.fraction)))
    parked = (
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts, step_due_at__isnull=True)
        .update(**values)
        == 1
    )
    # A webhook that came while this step ran found no parked job to wake: its
    # signal waits in wakeup, so take it now (after parking, or one could slip between).
    # Only a job that registered a webhook can have one.
    if parked and (progress is None or progress.webhook) and wakeup.wait(job.pk, 0):
        from studio.jobs import steps

        steps.job_wake(job.pk)
    return parked


def job_report(job_id, stage: str, fraction: float | None = None) -> None:
    """Record the running job's stage; the heartbeat proves its worker is alive."""
    values: dict[str, Any] = {"stage": stage[:80], "heartbeat_at": timezone.now()}
    if fraction is not None:
        values["progress"] = max(0.0, min(1.0, float(fraction)))
    Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(**values)


# --- running it ---------------------------------------------------------------------------


RAN, SKIPPED = "ran", "skipped"
PHOTO_DELETED = "The photo for this job was deleted. Upload it again to run the job."
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
    outcome = job_step(job_id, first=True)
    while outcome == PARKED:
        due = Job.objects.filter(pk=job_id).values_list("step_due_at", flat=True).first()
        if due is not None:
            wakeup.wait(job_id, (due - timezone.now()).total_seconds())
        if job_claim_step(job_id, due_only=False) is not False:
            break  # ended meanwhile (the sweeper), or a step runner took the step
        outcome = job_step(job_id, first=False)
    return RAN


def job_step(job_id, *, first: bool) -> str | None:
    """One claimed step: the start (or resumption) of a run, a poll, or the download."""
    # The photo's rows are read only by a step that uses them (a submit): see _run_claimed.
    job = Job.objects.get(pk=job_id)
    # "claimed" once per run (the exactly-once test counts these lines), "step" for each later step.
    log.info("job %s %s (attempt %s)", job.pk, "claimed" if first else "step", job.attempts)
    with heartbeat.beating(job.pk, job.attempts):
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
    except Photo.DoesNotExist:  # deleted while this step ran (its rows are read on first use)
        job_mark_failed(job.pk, PHOTO_DELETED)
    except Exception:
        log.exception("job %s crashed", job.pk)
        job_mark_failed(job.pk, GENERIC_FAILURE)
    else:
        # A staff preview of a style template: its result becomes the template's cover.
        try:
            templates_library.template_cover_from_preview(job.pk)
        except Exception:  # the job itself succeeded; a cover can be made again
            log.exception("making a template cover from job %s failed", job.pk)


def _run_claimed(job: Job, *, resumed: bool = True) -> str | None:
    """One step: submit (or, for a job that has its vendor task, one poll), then either
    park the job until the next poll is useful (PARKED) or fetch and store the results."""
    operation = job.operation_spec
    if operation is None:
        raise VendorError("This operation is no longer offered. Please pick another one.")
    has_photo = job.photo_id is not None
    if not has_photo and operation.inputs.selfie:
        raise VendorError(PHOTO_DELETED)
    provider = get_provider(job.provider)
    job_input = JobInput(
        job_id=str(job.pk),
        operation=operation,
        params=job.params,
        # The photo (its row, its file) is read when a provider first uses it; a poll doesn't: see JobInput.
        image=(lambda: read_stored(job.photo.image)) if has_photo else b"",  # b"": a text-only operation
        faces=(lambda: job.photo.face_boxes) if has_photo else [],
        request_id=job.request_id,
        reference=(lambda: read_stored(job.reference_photo.image)) if job.reference_photo_id else None,
        mask=(lambda: read_stored(job.mask)) if job.mask else None,
        source_meta=(lambda: _source_meta(job)) if has_photo else {},
        photo_id=str(job.photo_id) if has_photo else "",
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
    if not progress.finished:
        if time.time() > deadline:
            raise VendorError(TIMED_OUT, permanent=True)
        if job_park(job, _pause_before_poll(progress, deadline), progress=progress):
            return PARKED
        return None  # ended meanwhile (the sweeper): nothing more to do
    job_report(job.pk, "Saving results", 0.97)
    _record_vendor_report(job, progress)
    _store_outputs(job, provider.fetch_results(job_input, progress))


def _source_meta(job: Job) -> dict[str, Any]:
    """The vendor's bookkeeping of the result this job's photo came from (e.g. Perfect Corp's dst_id)."""
    source = job.photo.source_result
    return {**source.job.vendor_meta, **source.meta, "provider": source.job.provider} if source else {}


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


# --- storing the results ------------------------------------------------------------------


class _JobNoLongerRunning(Exception):
    """Rolls back storing results for a job that ended meanwhile."""


def _store_outputs(job: Job, outputs: list[Output]) -> None:
    """Verify each output decodes as an image, then store it with a thumbnail.

    The images are checked and their files written before the transaction
    that adds their rows and ends the job: on SQLite that transaction holds
    the one write lock every process shares, and decoding and thumbnailing
    inside it (tens of milliseconds a result) made every other job's writes
    wait. On any failure the files written so far are deleted too: a
    rollback alone would leave them orphaned.
    """
    if not outputs:
        raise VendorError("The service returned no image. Please try again.", permanent=False)
    results: list[Result] = []
    try:
        for index, output in enumerate(outputs):
            results.append(_result_with_files(job, index, output))
        with transaction.atomic():
            # Only the run that holds the job now may store: a worker given up for dead (its
            # job claimed again under a new attempt), or a job the sweeper failed meanwhile,
            # rolls back here. The job ends first and its rows go in with it: readers see
            # both at the commit, and the guard is the update itself (no separate read).
            updated = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, attempts=job.attempts).update(
                status=Job.Status.SUCCEEDED, stage="Done", progress=1.0, finished_at=timezone.now()
            )
            if updated != 1:
                raise _JobNoLongerRunning
            if job.attempts > 1:
                # Results are only ever written here, with the job's end, so a first run
                # has none; a later one replaces any a lost run might have left.
                job.results.all().delete()
            for result in results:
                result.save()
            _after_job_ended(job.pk, asked_for_email=job.notify_email)
    except BaseException as exc:
        for result in results:
            for field in (result.image, result.thumbnail):
                if field:
                    field.storage.delete(field.name)
        if isinstance(exc, _JobNoLongerRunning):
            return
        raise


def _result_with_files(job: Job, index: int, output: Output) -> Result:
    """One output checked and written to storage with its thumbnail, as an unsaved Result.

    Its files are deleted by the caller if the row is never saved (`_store_outputs`).
    """
    try:
        # Untrusted until decoded; stored upright and without any metadata.
        data, content_type, image = imaging.clean_output(output.data)
    except imaging.ImageRejected:
        raise VendorError("The service returned a damaged image. Please try again.", permanent=False) from None
    # From the image clean_output decoded: a cut-out keeps its transparency in a PNG
    # thumbnail (shown on a checkerboard), anything opaque gets a JPEG one.
    thumbnail, ext = imaging.result_thumbnail(image)
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
    try:
        result.thumbnail.save(f"{index + 1}-thumb.{ext}", ContentFile(thumbnail), save=False)
    except BaseException:
        result.image.storage.delete(result.image.name)
        raise
    return result


# --- ending a run otherwise ---------------------------------------------------------------


def job_requeue(job_id, stage: str) -> bool:
    """Put a running job back in the queue to be run again by another worker; True if done."""
    updated = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
        status=Job.Status.QUEUED, stage=stage[:80], heartbeat_at=timezone.now()
    )
    if updated:
        transaction.on_commit(lambda: create.enqueue_job(job_id))
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


def _after_job_ended(job_id, *, asked_for_email: bool = True) -> None:
    """Once the job's end is committed: the 'done' e-mail, if its batch asked for one and is finished.

    `asked_for_email=False` (the caller read the job's notify_email, set once at creation)
    skips the check, a query per job.
    """
    if not asked_for_email:
        return

    def notify():
        from studio import done_email

        try:
            done_email.notify_if_finished(job_id)
        except Exception:  # the job's own outcome stands whatever happens to the e-mail
            log.exception("'done' e-mail check for job %s failed", job_id)

    transaction.on_commit(notify)
