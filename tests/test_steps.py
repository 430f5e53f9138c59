"""Waiting costs nothing: a vendor job waits for its vendor parked in the job table, not in a worker.

With one worker per cluster, vendor jobs all wait at once while a local
retouch runs, and each is polled again inside Perfect Corp's polling window
(the emulator drops a task left unpolled longer: none is lost). A webhook
makes a parked job's next step due, and sent, at once.
"""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from studio import webhooks
from studio.jobs import steps
from studio.jobs.create import job_create
from studio.jobs.run import job_claim, job_claim_step
from studio.models import Job
from studio.operations import get_operation
from studio.photos import photo_create
from studio.vendors import sandbox
from studio.vendors.emulators.host import EmulatorHost
from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator
from tests import images
from tests.test_recovery import OWNER, _colorize_jobs

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE_SECONDS = 6.0
WINDOW_SECONDS = 4  # the emulator drops a task not polled for 4 s (Perfect Corp's rule is 10 s)
FAST = {
    "PERFECTCORP_RATE_PER_TOKEN": "100000",
    "PERFECTCORP_RATE_PER_IP": "100000",
    "PERFECTCORP_TASK_LOST_AFTER_S": str(WINDOW_SECONDS),
}


@pytest.fixture
def host(settings):
    emulator = PerfectCorpEmulator()
    emulator.engine_seconds = ENGINE_SECONDS
    emulator.lost_after = float(WINDOW_SECONDS)
    emulator.polling_interval_ms = 500
    emulator.rate_per_token = emulator.rate_per_ip = (100_000, 60.0)
    served = EmulatorHost({"perfectcorp": emulator})
    with served.serve() as url:
        settings.STUDIO_SANDBOX = True
        settings.STUDIO_SANDBOX_URL = url
        settings.PERFECTCORP_TASK_LOST_AFTER_S = WINDOW_SECONDS
        sandbox.reset()
        yield served
    sandbox.reset()


@pytest.mark.qcluster
def test_with_one_worker_vendor_jobs_wait_together_and_a_local_job_runs_meanwhile(host, clusters):
    emulator: PerfectCorpEmulator = host.emulators["perfectcorp"]
    machine = clusters(name="one", workers=1, env=FAST).start()
    vendor_jobs = _colorize_jobs(6)
    started = time.monotonic()
    photo = vendor_jobs[0].photo
    retouch = job_create(
        owner=OWNER, photo=photo, operation=get_operation("studio_retouch"), params={"strength": 0.8}
    )

    # Watch the jobs: all six vendor tasks wait at the vendor at once though the vendor
    # cluster has one worker (a waiting job holds none), and the retouch does not wait for them.
    ids = [j.pk for j in vendor_jobs]
    most_parked, local_done = 0, None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parked = Job.objects.filter(pk__in=ids, status="running", step_due_at__isnull=False).count()
        most_parked = max(most_parked, parked)
        if local_done is None and Job.objects.filter(pk=retouch.pk, status__in=("succeeded", "failed")).exists():
            local_done = time.monotonic() - started
        if Job.objects.filter(pk__in=ids, status__in=("succeeded", "failed")).count() == len(ids):
            break
        time.sleep(0.05)
    local = Job.objects.get(pk=retouch.pk)
    assert local.status == "succeeded", local.error_message
    assert local_done is not None and local_done < ENGINE_SECONDS, local_done
    assert most_parked == len(ids), most_parked

    finished = machine.wait_for_jobs([j.pk for j in vendor_jobs], timeout=60)
    elapsed = time.monotonic() - started
    assert [j.status for j in finished] == ["succeeded"] * 6, [(j.status, j.error_message) for j in finished]
    # One worker holding each job for its whole run would need 6 × 6 s.
    assert elapsed < 2.5 * ENGINE_SECONDS, elapsed
    assert all(j.attempts == 1 and j.step_due_at is None and j.results.count() == 1 for j in finished)
    # Re-scheduled inside the polling window every time: the emulator lost no task,
    # and each job was polled while running (a 6 s task, a poll at least every 3.4 s).
    assert emulator.counters["lost"] == 0
    polls = sum(1 for method, path in emulator.log if method == "GET" and "/task/colorize" in path)
    assert polls >= 2 * len(vendor_jobs)
    assert emulator.counters["charges"] == 6


def _parked_wavespeed_job(seconds: float) -> Job:
    photo = photo_create(owner=OWNER, data=images.to_bytes(images.astronaut(), "JPEG", quality=90))
    now = timezone.now()
    return Job.objects.create(
        **OWNER.fields(),
        photo=photo,
        operation="ws_portrait",
        provider="wavespeed",
        params={},
        request_id="r1",
        status=Job.Status.RUNNING,
        attempts=1,
        heartbeat_at=now,
        vendor_task_id="pred-1",
        stage="Generating",
        step_due_at=now + timezone.timedelta(seconds=seconds),
    )


def _mark_ran(pk, *, first):
    """Stands for a step: leaves a trace the test can read (which thread, a new run or not)."""
    import threading

    Job.objects.filter(pk=pk).update(stage=f"step ran on {threading.current_thread().name} first={first}")
    time.sleep(0.3)


def _wait_idle(*steppers) -> None:
    deadline = time.monotonic() + 10
    while any(stepper.busy() for stepper in steppers) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_webhook_makes_the_next_step_due_at_once_and_one_runner_runs_it(monkeypatch):
    monkeypatch.setattr("studio.jobs.run.job_step", _mark_ran)
    job = _parked_wavespeed_job(300)  # the backstop poll is five minutes away
    first, second = steps.Stepper(at_once=2), steps.Stepper(at_once=2)
    assert first.tick() == 0

    assert webhooks.wavespeed_delivery(webhooks.wavespeed_token(job.pk)) is True
    job.refresh_from_db()
    assert job.step_due_at <= timezone.now()
    # The next tick of any runner runs it, on a thread of its own, and only one runner does.
    assert first.tick() + second.tick() == 1
    _wait_idle(first, second)
    job.refresh_from_db()
    assert job.stage.startswith("step ran on step") and job.stage.endswith("first=False"), job.stage
    assert job.status == "running" and job.step_due_at is None  # claimed: the step has it
    assert job.step_owner in (first.owner, second.owner) and job.attempts == 1
    # The same webhook again finds nothing parked to wake.
    assert webhooks.wavespeed_delivery(webhooks.wavespeed_token(job.pk)) is True
    assert steps.due_job_ids(10) == []


def test_a_parked_job_is_no_orphan_and_a_runner_takes_no_more_than_it_has_room_for(monkeypatch):
    from studio.jobs import recovery

    monkeypatch.setattr("studio.jobs.run.job_step", _mark_ran)
    jobs = [_parked_wavespeed_job(-1) for _ in range(3)]  # due a second ago
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    assert recovery._requeue_orphans(timezone.now()) == 0  # no worker, no heartbeat: not an orphan
    assert job_claim(jobs[0].pk) is False  # nor claimable as one

    stepper = steps.Stepper(at_once=2)
    assert stepper.tick() == 2  # two steps running: the third job stays parked and due
    assert stepper.tick() == 0 and len(steps.due_job_ids(10)) == 1
    _wait_idle(stepper)  # the two steps end
    assert stepper.tick() == 1
    _wait_idle(stepper)
    assert all(j.stage.startswith("step ran on ") for j in Job.objects.filter(pk__in=[j.pk for j in jobs]))


def _slow_step(pk, *, first):
    Job.objects.filter(pk=pk).update(stage="slow call")
    time.sleep(1.0)


def test_slow_synchronous_calls_have_threads_of_their_own(monkeypatch):
    """Headshot jobs (one call of up to 3 minutes) never take the threads that polls need."""
    monkeypatch.setattr("studio.jobs.run.job_step", lambda pk, *, first: (_slow_step if Job.objects.get(pk=pk).provider == "headshot" else _mark_ran)(pk, first=first))
    headshots = []
    for _ in range(3):
        job = _parked_wavespeed_job(-1)
        Job.objects.filter(pk=job.pk).update(provider="headshot", operation="headshot_ai", status="queued", attempts=0)
        headshots.append(job.pk)
    polls = [_parked_wavespeed_job(-1) for _ in range(2)]
    stepper = steps.Stepper(at_once=2, slow_at_once=1)
    assert stepper.tick() == 3  # two polls and one slow call; two slow calls wait their turn
    assert Job.objects.filter(pk__in=headshots, status="running").count() == 1
    _wait_idle(stepper)
    for _ in range(4):
        stepper.tick()
        _wait_idle(stepper)
    assert Job.objects.filter(pk__in=headshots, stage="slow call", attempts=1).count() == 3
    assert all(Job.objects.get(pk=j.pk).stage.endswith("first=False") for j in polls)


def test_the_steps_of_a_runner_that_died_come_back_at_once_as_new_runs():
    job = _parked_wavespeed_job(-1)
    assert job_claim_step(job.pk, owner="dead-runner") is False  # its poll was in flight
    other = _parked_wavespeed_job(-1)
    assert job_claim_step(other.pk, owner="live-runner") is False
    assert steps.release_steps_of("dead-runner") == 1
    job.refresh_from_db()
    assert job.status == "queued" and job.step_due_at <= timezone.now() and job.stage.startswith("Resuming")
    # The next claim starts a new run, which resumes the persisted vendor task.
    assert job_claim_step(job.pk, owner="new-runner") is True
    job.refresh_from_db()
    assert job.status == "running" and job.attempts == 2 and job.vendor_task_id == "pred-1"
    other.refresh_from_db()
    assert other.status == "running" and other.step_owner == "live-runner"


def test_a_vendor_job_goes_to_the_step_runner_not_the_broker(settings, monkeypatch):
    from django_q.conf import Conf

    from studio.jobs import recovery

    monkeypatch.setattr(Conf, "SYNC", False)
    settings.STUDIO_SANDBOX = True
    sandbox.reset()
    photo = photo_create(owner=OWNER, data=images.to_bytes(images.astronaut(), "JPEG", quality=90))
    job = job_create(owner=OWNER, photo=photo, operation=get_operation("pc_colorize"), params={})
    job.refresh_from_db()
    assert job.status == "queued" and job.step_due_at is not None
    assert str(job.pk) not in (recovery.waiting_job_ids() or set())
    assert steps.due_job_ids(10) == [job.pk]
    # Long queued, it is still not "lost": the step runner has it, not the broker.
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    assert recovery._resend_lost_messages(timezone.now()) == 0
    local = job_create(owner=OWNER, photo=photo, operation=get_operation("studio_retouch"), params={})
    local.refresh_from_db()
    assert local.step_due_at is None and str(local.pk) in recovery.waiting_job_ids()
    sandbox.reset()


def test_a_webhook_rings_every_step_runner_so_none_waits_for_its_tick():
    """The doorbell (Unix sockets on one machine, Redis publish when scaled) reaches each runner."""
    import threading

    from studio.jobs import doorbell

    rung = [threading.Event(), threading.Event()]
    # Two runner processes (on one machine each has a socket of its own, named by its pid).
    listeners = [doorbell.Listener(on_ring=event.set, name=f"test-{n}") for n, event in enumerate(rung)]
    try:
        assert all(listener.start() for listener in listeners)
        time.sleep(0.2)  # a Redis subscription is confirmed asynchronously
        job = _parked_wavespeed_job(300)
        assert not any(event.is_set() for event in rung)

        assert webhooks.wavespeed_delivery(webhooks.wavespeed_token(job.pk)) is True
        assert all(event.wait(5) for event in rung)

        # A webhook for a job that is not parked wakes no step and rings no one.
        for event in rung:
            event.clear()
        Job.objects.filter(pk=job.pk).update(step_due_at=None)
        assert steps.job_wake(job.pk) is False
        time.sleep(0.3)
        assert not any(event.is_set() for event in rung)
    finally:
        for listener in listeners:
            listener.close()


def test_a_ring_removes_the_socket_of_a_runner_that_is_gone(settings):
    import socket

    from studio.jobs import doorbell

    if settings.REDIS_URL:
        pytest.skip("scaled: the doorbell is a Redis channel, with no sockets")
    directory = doorbell._socket_dir()
    directory.mkdir(parents=True, exist_ok=True)
    gone = directory / "steps-999999999.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(gone))  # bound, then closed: the file stays, nobody listens
    assert gone.exists()
    doorbell.ring()
    assert not gone.exists()



def test_due_steps_come_most_urgent_first_and_only_when_due():
    """The query is built once and run with each look's own "now" (steps._due_sql)."""
    now = timezone.now()
    later = _parked_wavespeed_job(3600)  # its backstop poll is an hour away
    download = _parked_wavespeed_job(-2)  # a webhook made its next step due
    new_run = Job.objects.create(**OWNER.fields(), operation="ws_portrait", provider="wavespeed", params={},
                                 status=Job.Status.QUEUED, step_due_at=now - timezone.timedelta(seconds=5))
    pc_poll = Job.objects.create(**OWNER.fields(), operation="pc_colorize", provider="perfectcorp", params={},
                                 status=Job.Status.RUNNING, attempts=1, step_due_at=now)
    assert steps.due_steps(10) == [(pc_poll.pk, False, 0), (download.pk, False, 1), (new_run.pk, True, 2)]
    assert steps.due_job_ids(2) == [pc_poll.pk, download.pk]
    in_two_hours = now + timezone.timedelta(hours=2)
    assert [pk for pk, _, _ in steps.due_steps(10, now=in_two_hours)] == [pc_poll.pk, download.pk, later.pk, new_run.pk]
    assert steps.due_steps(10, now=now - timezone.timedelta(minutes=1)) == []
