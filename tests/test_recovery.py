"""Crash recovery with real qcluster processes: SIGKILL a worker mid-job, lose nothing, charge once.

First, the liveness signal it rests on: a job busy in one long vendor call
still looks alive, because its worker's heartbeat thread beats on.

The Perfect Corp emulator is served by the test process (emulators/host.py)
and every cluster reaches it through STUDIO_SANDBOX_URL, so a task submitted
by one worker is there for whichever worker resumes the job, and the test
reads the emulator's own books: tasks, charges, de-duplicated request_ids,
lost tasks. The host holds some answers back so each kill lands where it
should: after the vendor created the task but before the worker heard its id
(submit), while the vendor is still working (polling), and while the result
file is on its way (download).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import time
from urllib.parse import parse_qs

import numpy as np
import pytest
from PIL import Image

from django.db import connection

from studio.jobs import recovery
from studio.jobs.create import job_create
from studio.jobs.run import job_run
from studio.photos import photo_create
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.vendors import sandbox
from studio.vendors.emulators.headshot import HeadshotEmulator
from studio.vendors.emulators.host import EmulatorHost
from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator
from tests import images

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-recovery")
TASK_PATH = r"/perfectcorp/s2s/v1\.0/task/colorize"  # POST submits the task, GET asks its status
FAST_RECOVERY = {
    # Short recovery thresholds, so a test takes seconds rather than minutes.
    "STUDIO_JOB_ORPHAN_SECONDS": "3",
    "STUDIO_RECOVERY_EVERY_SECONDS": "1",
    "STUDIO_JOB_REQUEUE_SECONDS": "6",
    # A status check at most every 2 s: a running task is polled several times.
    "PERFECTCORP_POLL_CEILING_MS": "2000",
    # A budget that never makes a job wait: these tests are about crashes, not rate limits.
    "PERFECTCORP_RATE_PER_TOKEN": "100000",
    "PERFECTCORP_RATE_PER_IP": "100000",
}


@pytest.fixture
def host(settings):
    """The Perfect Corp emulator on 127.0.0.1, shared by this process and every cluster."""
    emulator = PerfectCorpEmulator()
    emulator.engine_seconds = 6.0  # polled at about 3 and 5 s (running), done at 7 s
    emulator.polling_interval_ms = 500
    emulator.rate_per_token = emulator.rate_per_ip = (100_000, 60.0)
    served = EmulatorHost({"perfectcorp": emulator})
    with served.serve() as url:
        settings.STUDIO_SANDBOX = True
        settings.STUDIO_SANDBOX_URL = url
        sandbox.reset()
        yield served
    sandbox.reset()


def _colorize_jobs(count: int) -> list[Job]:
    photo = photo_create(owner=OWNER, data=images.to_bytes(images.astronaut(), "JPEG", quality=90))
    operation = get_operation("pc_colorize")
    return [job_create(owner=OWNER, photo=photo, operation=operation, params={}) for _ in range(count)]


def _request_base(job: Job) -> int:
    """The Perfect Corp request_id of a job's first run, divided by 8 (the adapter adds its re-run index)."""
    return int(hashlib.sha256(job.request_id.encode()).hexdigest()[:12], 16)


class Books:
    """What the emulator knows, told per job: its tasks, and which of them were charged."""

    def __init__(self, emulator: PerfectCorpEmulator, jobs: list[Job]):
        self.emulator = emulator
        self.job_by_base = {_request_base(job): job.pk for job in jobs}

    def job_of_request_id(self, request_id) -> object | None:
        return self.job_by_base.get(int(request_id) // 8) if request_id is not None else None

    def tasks_of(self, job_pk) -> list:
        with self.emulator.lock:
            seen = list(self.emulator.requests_seen.items())
        return [self.emulator.tasks[task_id] for key, task_id in seen if self.job_of_request_id(key[3]) == job_pk]

    def task_of_request(self, request) -> tuple[object, object] | None:
        """(job pk, task) a poll or download request is about."""
        if request.path.startswith("/storage/result/"):
            token = request.path.rsplit("/", 1)[1].split(".")[0]
            tasks = [t for t in list(self.emulator.tasks.values()) if any(token in r["url"] for r in t.results)]
        else:
            task_id = parse_qs(request.query).get("task_id", [""])[0]
            tasks = [self.emulator.tasks[task_id]] if task_id in self.emulator.tasks else []
        for task in tasks:
            for key, task_id in list(self.emulator.requests_seen.items()):
                if task_id == task.id:
                    return self.job_of_request_id(key[3]), task
        return None


def _catch(host, workers, match, *, timeout=60.0):
    """Wait for a request in flight that `match` accepts; returns (cluster, pid, job pk, request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for request in host.requests_in_flight("perfectcorp"):
            job_pk = match(request)
            if job_pk is None or Job.objects.get(pk=job_pk).attempts != 1:
                continue  # only a job on its first run: each kill strikes a fresh one
            for worker in workers:
                pid = worker.pid_for_port(request.client_port)
                if pid is not None:
                    return worker, pid, job_pk, request
        time.sleep(0.02)
    jobs = [(str(j.pk)[:8], j.status, j.stage, j.error_message) for j in Job.objects.all()]
    raise AssertionError(f"no request to strike within {timeout:.0f} s; jobs: {jobs}")


def test_a_long_synchronous_vendor_call_keeps_its_job_alive(settings, monkeypatch, portrait_jpeg):
    """The Headshot API answers only when it is done; its job must not look orphaned meanwhile."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)  # the job runs in the thread below, not inline on commit
    settings.STUDIO_JOB_ORPHAN_SECONDS = 2  # a heartbeat every 0.67 s
    emulator = HeadshotEmulator()
    emulator.faults["latency_per_image"] = 6.0  # one call three times as long as the orphan threshold
    photo = photo_create(owner=OWNER, data=portrait_jpeg)
    operation = get_operation("ai_headshot")
    params, errors = operation.clean_params({"prompt": "A studio portrait, soft light", "num_images": "1"})
    assert not errors, errors

    def work(job_id):
        try:
            job_run(job_id)
        finally:
            connection.close()

    beats = set()
    with emulator.serve(), sandbox.use("headshot", emulator, over_http=True):
        job = job_create(owner=OWNER, photo=photo, operation=operation, params=params)
        worker = threading.Thread(target=work, args=(job.pk,))
        worker.start()
        while worker.is_alive():
            assert recovery.jobs_recover()["orphans"] == 0
            row = Job.objects.get(pk=job.pk)
            if row.status == Job.Status.RUNNING:
                beats.add(row.heartbeat_at)
            time.sleep(0.3)
        worker.join()
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.attempts == 1, job.error_message
    assert emulator.counters["requests"] == 1  # one call, never sent again
    assert len(beats) >= 5  # fresh all along the call


@pytest.mark.qcluster
def test_sigkill_at_submit_polling_and_download_loses_no_job_and_charges_once(host, clusters):
    emulator: PerfectCorpEmulator = host.emulators["perfectcorp"]
    # Each step lasts long enough to be struck: the task is created, then its id is
    # held back 1 s; each status answer takes 0.6 s; each result file 2 s.
    host.hold[f"^POST {TASK_PATH}$"] = 1.0
    host.hold[f"^GET {TASK_PATH}$"] = 0.6
    emulator.faults["slow_download"] = 2.0
    workers = [clusters(name=name, workers=4, env=FAST_RECOVERY) for name in ("a", "b")]
    for worker in workers:
        worker.start()
    jobs = _colorize_jobs(20)
    books = Books(emulator, jobs)

    # 1. At submit: the vendor has the task, the worker never learns its id.
    def submitted(request):
        request_id = request.json().get("request_id") if request.method == "POST" else None
        with emulator.lock:
            created = any(key[3] == request_id for key in emulator.requests_seen)
        return books.job_of_request_id(request_id) if request_id is not None and created else None

    worker, _, at_submit, _ = _catch(host, workers, submitted)
    worker.kill()  # the whole machine: sentinel, pusher, monitor and every worker
    worker.start()

    # 2. While polling a task the vendor is still working on: one worker process dies,
    # its cluster's sentinel starts a new one.
    def running_poll(request):
        if request.method != "GET" or "task_id=" not in request.query:
            return None
        found = books.task_of_request(request)
        if found and found[1].status == "running" and emulator.clock.now() - found[1].created < 5.0:
            return found[0]
        return None

    _, pid, at_polling, _ = _catch(host, workers, running_poll)
    os.kill(pid, signal.SIGKILL)

    # 3. During the download of a finished (and charged) task.
    def downloading(request):
        found = books.task_of_request(request) if request.path.startswith("/storage/result/") else None
        return found[0] if found else None

    worker, _, at_download, download = _catch(host, workers, downloading)
    downloaded_task = books.task_of_request(download)[1].id
    worker.kill()
    worker.start()

    finished = workers[0].wait_for_jobs([job.pk for job in jobs], timeout=100)
    assert [job.status for job in finished] == ["succeeded"] * 20, [(j.pk, j.status, j.error_message) for j in finished]
    by_pk = {job.pk: job for job in finished}
    for struck in (at_submit, at_polling, at_download):
        assert by_pk[struck].attempts >= 2, "the struck job was not run again"
    # Submit: the re-run sent the same request_id and the vendor gave back the task it already had.
    assert emulator.counters["duplicate_requests"] >= 1
    # Download: the re-run resumed the persisted, finished task instead of starting another.
    assert by_pk[at_download].vendor_state["task_id"] == downloaded_task
    # Never charged twice: one charged task per job (a lost task is never charged), 20 in all.
    for job in finished:
        charged = [t for t in books.tasks_of(job.pk) if t.status == "success"]
        assert len(charged) == 1, (job.pk, [(t.id, t.status) for t in books.tasks_of(job.pk)])
    assert emulator.counters["charges"] == 20
    # Every job stored its colorized picture.
    original = np.asarray(Image.open(io.BytesIO(images.to_bytes(images.astronaut(), "JPEG"))).convert("RGB"), float)
    for job in finished:
        (result,) = job.results.all()
        with result.image.open("rb") as fh:
            picture = np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"), float)
        assert picture.shape == original.shape
        assert np.abs(picture - original).mean() > 10, "the result is not the colorized picture"


@pytest.mark.qcluster
def test_a_task_lost_while_its_worker_was_dead_runs_again_and_is_charged_once(host, clusters):
    """Perfect Corp drops a task not polled for 10 s; recovery slower than that re-runs it, once.

    The whole machine dies during a poll (a step runner that dies alone is
    replaced at once and its steps resume before the task is lost); the job
    is given up only after 12 s, longer than the vendor's 10-second rule.
    """
    emulator: PerfectCorpEmulator = host.emulators["perfectcorp"]
    emulator.engine_seconds = 4.0
    host.hold[f"^GET {TASK_PATH}$"] = 0.6
    worker = clusters(name="solo", workers=2, env={**FAST_RECOVERY, "STUDIO_JOB_ORPHAN_SECONDS": "12"}).start()
    jobs = _colorize_jobs(1)
    books = Books(emulator, jobs)

    def running_poll(request):
        found = books.task_of_request(request) if "task_id=" in request.query else None
        return found[0] if found and found[1].status == "running" else None

    _, _, struck, _ = _catch(host, [worker], running_poll)
    worker.kill()
    worker.start()

    (job,) = worker.wait_for_jobs([struck], timeout=60)
    assert job.status == "succeeded", job.error_message
    assert job.attempts == 2
    assert emulator.counters["lost"] == 1
    tasks = books.tasks_of(struck)
    assert sorted(t.status for t in tasks) == ["lost", "success"]  # a new request_id, a new task
    assert emulator.counters["charges"] == 1  # the lost task cost nothing


V2_TASK_PATH = r"/perfectcorp/s2s/v2\.0/task/colorize"
V2 = {**FAST_RECOVERY, "PERFECTCORP_API_VERSION": "v2", "PERFECTCORP_V2_RATE_LIMIT": "100000"}


@pytest.mark.qcluster
def test_v2_sigkill_at_submit_ends_the_job_without_a_second_task(host, clusters):
    """v2 has no request_id: a job resumed with its create in flight must not create again.

    The task is created, its id held back 1 s, and the whole machine dies in
    that second. The resumed job finds its "creating" mark without a task id
    and ends with a message saying why; the emulator's create counter shows
    one create per job, and staff see the job counted.
    """
    from studio.vendors.perfectcorp import UNCONFIRMED_CREATE, unconfirmed_creates

    emulator: PerfectCorpEmulator = host.emulators["perfectcorp"]
    emulator.engine_seconds = 1.0
    emulator.rate_v2 = (100_000, 300.0)
    host.hold[f"^POST {V2_TASK_PATH}$"] = 1.0
    # One step at a time: one create in flight when the machine dies.
    one_step = {"STUDIO_STEP_PROCESSES": "1", "STUDIO_STEPS_AT_ONCE": "1"}
    worker = clusters(name="v2", workers=1, env={**V2, **one_step}).start()
    jobs = _colorize_jobs(3)

    def created(request):
        if request.method != "POST":
            return None
        src = request.json().get("src_file_id")
        with emulator.lock:
            known = any(t.inputs.get("src_ids") == [src] for t in emulator.tasks.values())
        if not known:
            return None
        for job in Job.objects.filter(pk__in=[j.pk for j in jobs]):
            if (job.vendor_state.get("uploads") or {}).get("src_file_id", [None])[0] == src:
                return job.pk
        return None

    _, _, struck, _ = _catch(host, [worker], created)
    worker.kill()
    worker.start()
    finished = worker.wait_for_jobs([job.pk for job in jobs], timeout=60)
    by_pk = {job.pk: job for job in finished}
    assert by_pk[struck].status == "failed" and by_pk[struck].error_message == UNCONFIRMED_CREATE
    assert by_pk[struck].attempts >= 2 and by_pk[struck].vendor_state.get("create_unconfirmed") is True
    others = [job for pk, job in by_pk.items() if pk != struck]
    assert [job.status for job in others] == ["succeeded"] * len(others), [(j.status, j.error_message) for j in others]
    assert emulator.counters["v2_creates"] == len(jobs), "one create per job: the struck one was not sent again"
    assert emulator.counters["creates"] == len(jobs)
    assert unconfirmed_creates() == 1


def test_recovery_is_also_scheduled_every_minute():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="recover-jobs")
    assert schedule.func == "studio.tasks.recover_jobs"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 1 and schedule.repeats == -1


def test_sync_mode_starts_no_recovery_thread_in_the_calling_process(monkeypatch):
    """django-q2 sends post_spawn inline in sync mode (a web process, a test): no ticker there."""
    from django_q.conf import Conf
    from django_q.signals import post_spawn

    from studio.jobs import recovery

    monkeypatch.setattr(Conf, "SYNC", True)
    monkeypatch.setattr(recovery, "_ticker", None)
    post_spawn.send(sender="django_q", proc_name="inline")
    assert recovery._ticker is None
