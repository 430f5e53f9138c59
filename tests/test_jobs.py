"""The job path: create → claim → run on a provider → results stored → terminal state."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image

from studio import effects
from studio.deletion import result_delete
from studio.errors import GENERIC_FAILURE, TIMED_OUT, ServiceError
from studio.jobs.create import job_create
from studio.jobs.recovery import jobs_sweep_stale
from studio.jobs.run import _store_outputs, job_claim, job_mark_failed, job_report, job_run
from studio.models import Job, Result
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create, photo_from_result
from studio.tasks import run_job_finished
from studio.vendors import base as vendor_base
from studio.vendors import local
from studio.vendors.base import Output, Progress, Provider, Submission, VendorError

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-a")


def retouch(photo, strength=0.5) -> Job:
    """Create (and, in sync mode, run) a retouch job on the photo."""
    return job_create(
        owner=OWNER, photo=photo, operation=get_operation("studio_retouch"), params={"strength": strength}
    )


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def _pixels(field) -> np.ndarray:
    with field.open("rb") as fh:
        return np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize(
    "operation, params",
    [
        ("studio_retouch", {"strength": 0.8}),
        ("headshot_crop", {"preset": "passport"}),
        ("background_blur", {"strength": 0.7}),
    ],
)
def test_each_local_operation_runs_to_a_stored_result(photo, operation, params):
    job = job_create(owner=OWNER, photo=photo, operation=get_operation(operation), params=params)
    job.refresh_from_db()  # ran inline on commit (sync mode)

    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.started_at and job.finished_at and job.finished_at >= job.started_at
    assert job.vendor_task_id == f"local-{job.pk}"
    result = job.results.get()
    after = _pixels(result.image)
    assert (result.width, result.height) == (after.shape[1], after.shape[0])
    if operation == "headshot_crop":
        assert (result.width, result.height) == (827, 1063)  # 35×45 mm at 600 dpi
    else:
        before = _pixels(photo.image)
        assert before.shape == after.shape
        assert np.abs(before - after).mean() > 1.0, "the operation must visibly change the photo"
    assert Image.open(result.thumbnail.open("rb")).size[0] <= 480


def test_job_records_running_stages(photo, monkeypatch):
    seen = []
    real_report = job_report

    def spy(job_id, stage, fraction=None):
        real_report(job_id, stage, fraction)
        seen.append((Job.objects.get(pk=job_id).status, Job.objects.get(pk=job_id).stage))

    monkeypatch.setattr("studio.jobs.run.job_report", spy)
    retouch(photo)
    assert seen, "the runner must report stages"
    assert all(status == Job.Status.RUNNING for status, _ in seen)
    assert len({stage for _, stage in seen}) >= 3  # e.g. reading, retouch stages, saving


def test_refused_before_any_work_when_limits_fail(two_faces_jpeg):
    photo = photo_create(owner=OWNER, data=two_faces_jpeg)
    crop = get_operation("headshot_crop")
    with pytest.raises(ServiceError, match="2 faces"):
        job_create(owner=OWNER, photo=photo, operation=crop, params={"preset": "1:1"})
    assert not Job.objects.exists()


def test_effect_failure_ends_failed_with_its_message(photo, monkeypatch):
    def refuse(*args, **kwargs):
        raise effects.EffectError("The face is turned too far away. Use a front-facing photo.")

    monkeypatch.setitem(local.EFFECTS, "studio_retouch", refuse)
    job = retouch(photo)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_message == "The face is turned too far away. Use a front-facing photo."
    assert job.finished_at is not None
    assert not Result.objects.exists()


def test_unexpected_crash_ends_failed_with_a_safe_message(photo, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("internal detail that must not reach the user")

    monkeypatch.setitem(local.EFFECTS, "studio_retouch", crash)
    job = retouch(photo)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_message == GENERIC_FAILURE
    assert "internal detail" not in job.error_message


class _PollingProvider(Provider):
    """A provider that needs polls before finishing, to exercise the poll loop."""

    key = "test-polling"
    label = "Polling test provider"

    def __init__(self, polls_needed=2, outputs=None, fail_with=None):
        self.polls = 0
        self.polls_needed = polls_needed
        self.outputs = outputs
        self.fail_with = fail_with

    def submit(self, job):
        return Submission(task_id="task-123")

    def poll(self, job, task_id):
        assert task_id == "task-123"
        self.polls += 1
        if self.fail_with:
            raise self.fail_with
        if self.polls < self.polls_needed:
            return Progress(finished=False, stage=f"Vendor step {self.polls}", fraction=0.3, poll_after=0.2)
        return Progress(finished=True, outputs=tuple(self.outputs or ()))


@pytest.fixture
def polling_provider(monkeypatch):
    def install(**kwargs):
        provider = _PollingProvider(**kwargs)
        monkeypatch.setitem(vendor_base._instances, "local", provider)
        return provider

    return install


def test_poll_loop_runs_until_finished_and_stores_every_output(photo, polling_provider, portrait_jpeg):
    outputs = [Output(data=portrait_jpeg, label="first"), Output(data=portrait_jpeg, label="second")]
    provider = polling_provider(polls_needed=3, outputs=outputs)
    job = retouch(photo)
    job.refresh_from_db()
    assert provider.polls == 3
    assert job.status == Job.Status.SUCCEEDED
    assert [r.label for r in job.results.order_by("index")] == ["first", "second"]


def test_damaged_vendor_output_fails_the_job(photo, polling_provider):
    polling_provider(polls_needed=1, outputs=[Output(data=b"<html>not an image</html>")])
    job = retouch(photo)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "damaged image" in job.error_message
    assert not Result.objects.exists()


def test_vendor_error_while_polling_fails_the_job(photo, polling_provider):
    polling_provider(fail_with=VendorError("The service is busy. Try again in a few minutes.", permanent=False))
    job = retouch(photo)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_message == "The service is busy. Try again in a few minutes."


def test_job_past_its_deadline_stops_polling(photo, polling_provider, settings):
    settings.STUDIO_JOB_DEADLINE_SECONDS = 0
    provider = polling_provider(polls_needed=10_000)
    job = retouch(photo)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error_message == TIMED_OUT
    assert provider.polls <= 1


def _queued_job(photo) -> Job:
    return Job.objects.create(
        **OWNER.fields(), photo=photo, operation="studio_retouch", provider="local", params={"strength": 0.5}
    )


def test_a_job_is_claimed_exactly_once(photo):
    job = _queued_job(photo)
    assert job_claim(job.pk) is True
    assert job_claim(job.pk) is False
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.attempts == 1


def test_a_job_abandoned_by_a_dead_worker_can_be_claimed_again(photo, settings):
    job = _queued_job(photo)
    assert job_claim(job.pk)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    assert job_claim(job.pk) is True
    job.refresh_from_db()
    assert job.attempts == 2


def test_running_a_finished_job_again_changes_nothing(photo):
    job = retouch(photo)
    job.refresh_from_db()
    finished_at = job.finished_at
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.finished_at == finished_at
    assert job.results.count() == 1


def test_sweeper_fails_jobs_past_their_deadline_only(photo, settings):
    old = _queued_job(photo)
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - timezone.timedelta(hours=2))
    fresh = _queued_job(photo)
    assert jobs_sweep_stale() == 1
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.status == Job.Status.FAILED and old.error_message == TIMED_OUT
    assert fresh.status == Job.Status.QUEUED
    assert jobs_sweep_stale() == 0  # idempotent


def test_task_hook_fails_a_job_killed_by_the_worker_timeout(photo):
    job = _queued_job(photo)
    job_claim(job.pk)

    class FakeTask:
        success = False
        args = (str(job.pk),)
        result = "Task exceeded maximum timeout value (300 seconds) : Traceback ..."

    run_job_finished(FakeTask())
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.error_message == TIMED_OUT


def test_chaining_uses_a_result_as_a_new_photo(photo):
    crop = get_operation("headshot_crop")
    first = job_create(owner=OWNER, photo=photo, operation=crop, params={"preset": "1:1"})
    result = first.results.get()
    chained = photo_from_result(owner=OWNER, result=result)
    assert chained.source_result == result
    assert (chained.width, chained.height) == (result.width, result.height)
    assert len(chained.faces) == 1  # the face is found again on the cropped result
    blur = get_operation("background_blur")
    second = job_create(owner=OWNER, photo=chained, operation=blur, params={"strength": 0.5})
    second.refresh_from_db()
    assert second.status == Job.Status.SUCCEEDED


def _files_under(directory: str) -> list[str]:
    """Files stored under a directory, on disk or on S3 (where a directory is only a key prefix)."""
    try:
        dirs, files = default_storage.listdir(directory)
    except FileNotFoundError:
        return []
    return [f"{directory}/{f}" for f in files] + [f for d in dirs for f in _files_under(f"{directory}/{d}")]


def test_deleting_a_result_removes_its_files(photo):
    job = retouch(photo)
    result = job.results.get()
    names = [result.image.name, result.thumbnail.name]
    assert all(default_storage.exists(name) for name in names)
    result_delete(result=result)
    assert not Job.objects.filter(pk=job.pk).exists()  # its only result: the job goes too
    assert not any(default_storage.exists(name) for name in names)


def test_sweeper_is_scheduled_every_minute_once():
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("migrate", verbosity=0)  # a second migrate must not duplicate it
    schedule = Schedule.objects.get(name="sweep-stale-jobs")
    assert schedule.func == "studio.tasks.sweep_stale_jobs"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 1


def test_a_damaged_second_output_leaves_no_files_behind(photo, polling_provider, portrait_jpeg, settings):
    polling_provider(polls_needed=1, outputs=[Output(data=portrait_jpeg), Output(data=b"not an image")])
    job = retouch(photo)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and not Result.objects.exists()
    assert _files_under(f"results/{job.pk}") == []


def test_results_of_a_job_the_sweeper_failed_meanwhile_are_dropped(photo, polling_provider, portrait_jpeg, settings):
    provider = polling_provider(polls_needed=1, outputs=[Output(data=portrait_jpeg)])
    real_poll = provider.poll

    def poll_then_get_swept(job_input, task_id):
        progress = real_poll(job_input, task_id)
        job_mark_failed(job_input.job_id, TIMED_OUT)
        return progress

    provider.poll = poll_then_get_swept
    job = retouch(photo)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.error_message == TIMED_OUT
    assert not Result.objects.exists()
    assert _files_under(f"results/{job.pk}") == []


def test_a_run_given_up_for_dead_stores_nothing_beside_the_run_that_took_over(photo):
    """A worker that was only slow (its job was claimed again under a new
    attempt) must not store results or finish the job it no longer holds."""
    job = job_create(
        owner=OWNER, photo=photo, operation=get_operation("studio_retouch"), params={"strength": 0.5}
    )
    job.refresh_from_db()
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, finished_at=None)
    job.results.all().delete()
    job.refresh_from_db()
    stale_run = Job.objects.get(pk=job.pk)
    # Recovery hands the job to another worker: a new claim, a new attempt.
    Job.objects.filter(pk=job.pk).update(attempts=stale_run.attempts + 1)
    files_before = _result_files(job)

    _store_outputs(stale_run, [Output(data=photo.image.open("rb").read())])

    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING  # still the new run's to finish
    assert job.results.count() == 0
    assert _result_files(job) == files_before


def _result_files(job) -> set[str]:
    try:
        return set(default_storage.listdir(f"results/{job.pk}")[1])
    except FileNotFoundError:
        return set()


def test_a_job_whose_photo_was_deleted_ends_with_a_message_saying_so(photo):
    job = _queued_job(photo)
    photo.delete()
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "photo for this job was deleted" in job.error_message


def test_a_photo_deleted_while_its_step_runs_ends_the_job_with_that_message(photo, monkeypatch):
    """A step reads the photo's row when it first needs it: one deleted in between is said so, not a crash."""
    from studio.jobs import run as job_runner
    from studio.models import Photo

    job = _queued_job(photo)
    read = job_runner.Job.objects.get

    def read_then_lose_the_photo(*args, **kwargs):
        loaded = read(*args, **kwargs)
        Photo.objects.filter(pk=photo.pk).delete()  # the job row already read says it has one
        return loaded

    monkeypatch.setattr(job_runner.Job.objects, "get", read_then_lose_the_photo)
    job_run(job.pk)
    monkeypatch.undo()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "photo for this job was deleted" in job.error_message
