"""Vendor-side deletion: requested with our own deletion, tried in the background, retried a bounded number of times."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from studio import vendor_deletion
from studio.deletion import owner_delete_everything, result_delete
from studio.models import Job, Result, VendorDeletion
from studio.ownership import Owner
from studio.vendors import base as vendors_base
from studio.vendors.base import Provider, VendorError


class FlakyVendor(Provider):
    """Deletes what it is asked to, after failing as often as `failures` says."""

    key = "flakyvendor"
    label = "Flaky Vendor"
    runs_locally = False
    failures: list[Exception] = []
    deleted: list[str] = []
    calls = 0

    def submit(self, job):  # pragma: no cover - never run here
        raise AssertionError

    def delete_remote(self, job):
        FlakyVendor.calls += 1
        if FlakyVendor.failures:
            raise FlakyVendor.failures.pop(0)
        FlakyVendor.deleted.append(job.vendor_task_id)


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setitem(vendors_base.PROVIDERS, "flakyvendor", "tests.test_vendor_deletion.FlakyVendor")
    monkeypatch.delitem(vendors_base._instances, "flakyvendor", raising=False)
    FlakyVendor.failures, FlakyVendor.deleted, FlakyVendor.calls = [], [], 0
    yield FlakyVendor
    vendors_base._instances.pop("flakyvendor", None)


def _job(task_id: str, provider: str = "flakyvendor") -> Job:
    return Job.objects.create(
        owner_visitor="v" * 32,
        operation="studio_retouch",
        provider=provider,
        vendor_task_id=task_id,
        status=Job.Status.SUCCEEDED,
    )


def _later(minutes: float):
    return timezone.now() + timedelta(minutes=minutes)


@pytest.mark.django_db
def test_a_vendor_that_is_down_is_asked_again_later_until_it_deletes(flaky):
    flaky.failures = [VendorError("down", permanent=False), RuntimeError("reset")]
    job = _job("task-1")
    vendor_deletion.deletions_request([job])
    (row,) = VendorDeletion.objects.all()
    assert row.status == "pending" and row.snapshot["vendor_task_id"] == "task-1"

    assert vendor_deletion.deletions_process() == {"done": 0, "retry": 1, "failed": 0}
    # Not due again at once: the pause grows and is jittered, at least half of a minute.
    assert vendor_deletion.deletions_process() == {"done": 0, "retry": 0, "failed": 0}
    assert vendor_deletion.deletions_process(now=_later(2)) == {"done": 0, "retry": 1, "failed": 0}
    row.refresh_from_db()
    assert row.attempts == 2 and row.last_error == "RuntimeError"
    assert row.next_attempt_at > _later(2)  # second pause: at least 2.5 of 5 minutes
    assert vendor_deletion.deletions_process(now=_later(10)) == {"done": 1, "retry": 0, "failed": 0}

    row.refresh_from_db()
    assert flaky.deleted == ["task-1"] and flaky.calls == 3
    assert row.status == "done" and row.attempts == 3 and row.snapshot == {}  # no vendor ids kept


@pytest.mark.django_db
def test_retries_are_bounded_and_end_as_given_up(flaky):
    flaky.failures = [VendorError("still down", permanent=False)] * 20
    vendor_deletion.deletions_request([_job("task-2")])
    minutes = 0
    for _ in range(30):
        minutes += 24 * 60
        vendor_deletion.deletions_process(now=_later(minutes))
    (row,) = VendorDeletion.objects.all()
    assert flaky.calls == vendor_deletion.MAX_ATTEMPTS
    assert row.status == "failed" and row.last_error == "still down" and row.snapshot == {}


@pytest.mark.django_db
def test_a_permanent_refusal_is_not_retried(flaky):
    flaky.failures = [VendorError("not allowed", permanent=True)]
    vendor_deletion.deletions_request([_job("task-3")])
    assert vendor_deletion.deletions_process()["failed"] == 1
    assert vendor_deletion.deletions_process(now=_later(24 * 60)) == {"done": 0, "retry": 0, "failed": 0}
    assert flaky.calls == 1


@pytest.mark.django_db
def test_a_row_claimed_by_another_processor_is_skipped(flaky):
    vendor_deletion.deletions_request([_job("task-4")])
    (row,) = VendorDeletion.objects.all()
    now = timezone.now()
    assert vendor_deletion._claim(row, now)
    # A second processor that read the same row before the claim finds it taken.
    assert not vendor_deletion._claim(row, now)
    assert vendor_deletion.deletions_process(now=now) == {"done": 0, "retry": 0, "failed": 0}
    # If the first one died, the lease runs out and the row is tried again.
    assert vendor_deletion.deletions_process(now=now + vendor_deletion.CLAIM_LEASE + timedelta(seconds=1))["done"] == 1
    assert flaky.deleted == ["task-4"]


@pytest.mark.django_db
def test_local_jobs_and_jobs_that_never_reached_the_vendor_ask_nothing(flaky):
    local = _job("local-task", provider="local")
    unsent = _job("")
    assert vendor_deletion.deletions_request([local, unsent]) == 0
    assert not VendorDeletion.objects.exists()


@pytest.mark.django_db
def test_deleting_results_asks_the_vendor_once_per_job(flaky, django_capture_on_commit_callbacks):
    job = _job("task-5")
    first = Result.objects.create(job=job, index=0, width=8, height=8)
    second = Result.objects.create(job=job, index=1, width=8, height=8)

    with django_capture_on_commit_callbacks(execute=True):
        result_delete(result=first)
    assert flaky.deleted == ["task-5"]  # the first attempt runs right after the commit
    with django_capture_on_commit_callbacks(execute=True):
        result_delete(result=second)
    assert not Job.objects.filter(pk=job.pk).exists()
    assert VendorDeletion.objects.count() == 1 and flaky.calls == 1


@pytest.mark.django_db
def test_delete_everything_records_deletions_that_survive_a_vendor_outage(flaky, django_capture_on_commit_callbacks):
    flaky.failures = [VendorError("down", permanent=False)]
    owner = Owner(visitor_id="v" * 32)
    _job("task-6"), _job("task-7")
    with django_capture_on_commit_callbacks(execute=True):
        owner_delete_everything(owner=owner)
    assert not Job.objects.exists()
    assert VendorDeletion.objects.filter(status="pending").count() == 1  # one failed, waits for its retry
    assert vendor_deletion.deletions_process(now=_later(3))["done"] == 1
    assert sorted(flaky.deleted) == ["task-6", "task-7"]
    assert vendor_deletion.deletions_summary() == {"flakyvendor": {"pending": 0, "done": 2, "failed": 0}}


@pytest.mark.django_db
def test_the_retry_schedule_exists():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="vendor-deletions")
    assert schedule.func == "studio.tasks.process_vendor_deletions" and schedule.minutes == 1


@pytest.mark.django_db
def test_a_deletion_task_queued_by_the_previous_release_still_deletes(flaky):
    # The old release sent snapshots as the argument of a one-shot task.
    from studio import tasks

    old_queue = [
        {"id": "7f0c1d2e-0000-4000-8000-000000000001", "provider": "flakyvendor", "operation": "x",
         "sandbox": False, "vendor_task_id": "task-old", "vendor_state": {}, "vendor_meta": {}, "request_id": ""},
        {"id": "7f0c1d2e-0000-4000-8000-000000000002", "provider": "local", "operation": "x"},
    ]
    FlakyVendor.failures = [VendorError("down", permanent=False)]
    assert tasks.delete_remote_copies(old_queue) == 1  # the local job has nothing at a vendor
    row = VendorDeletion.objects.get()
    assert row.status == VendorDeletion.Status.PENDING and row.attempts == 1  # the outage is retried later
    vendor_deletion.deletions_process(now=timezone.now() + timedelta(hours=1))
    row.refresh_from_db()
    assert row.status == VendorDeletion.Status.DONE and FlakyVendor.deleted == ["task-old"]
