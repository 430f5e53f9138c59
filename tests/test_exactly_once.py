"""Two real clusters on the Redis broker, 200 jobs, duplicate and lost messages: each job runs once.

The Redis broker has no receipts: a message a cluster popped is gone if that
cluster dies, and nothing stops the same job being sent twice. So the test
makes both happen before the clusters start: 30 messages are popped off the
queue (as a cluster killed right after taking them would), and 100 jobs get a
second message (as recovery or a retried enqueue may send). Exactly-once is
then proven three ways that don't depend on each other: the job rows
(attempts == 1, one result), django-q2's task table (every delivery's
outcome, written by the clusters' monitors: exactly one "ran" per job), and
the two clusters' own logs (each job claimed once, across both).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter

import pytest

from studio.jobs import recovery
from studio.jobs.create import enqueue_job, job_create
from studio.jobs.run import RAN, SKIPPED
from studio.models import Result
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from tests import images

pytestmark = [pytest.mark.qcluster, pytest.mark.django_db(transaction=True)]

OWNER = Owner(visitor_id="visitor-exactly-once")
REDIS_URL = os.environ.get("STUDIO_TEST_REDIS_URL", "redis://127.0.0.1:6379/2")
JOBS, LOST, DUPLICATED = 200, 30, 100


@pytest.fixture
def redis_queue(monkeypatch):
    """A queue of this test's own on Redis, which this process enqueues to as the web does."""
    import redis
    from django_q.conf import Conf

    connection = redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.ConnectionError:
        pytest.skip(f"needs Redis at {REDIS_URL} (STUDIO_TEST_REDIS_URL)")
    name = f"recovery-exactly-once-{os.getpid()}"
    for attribute, value in (("REDIS", REDIS_URL), ("ORM", None), ("PREFIX", name), ("CLUSTER_NAME", name)):
        monkeypatch.setattr(Conf, attribute, value)
    key = f"django_q:{name}:q"
    connection.delete(key)
    try:
        yield name, connection, key
    finally:
        connection.delete(key)


def test_two_clusters_on_redis_run_each_of_200_jobs_exactly_once(redis_queue, clusters):
    from django_q.models import Task

    name, connection, key = redis_queue
    photo = photo_create(owner=OWNER, data=images.to_bytes(images.astronaut(), "JPEG", quality=90))
    crop = get_operation("headshot_crop")
    jobs = [
        job_create(owner=OWNER, photo=photo, operation=crop, params={"preset": "1:1"}) for _ in range(JOBS)
    ]
    assert connection.llen(key) == JOBS  # one message per job, sent when its row committed

    popped = connection.lpop(key, LOST)  # taken by a cluster that died: gone without a trace
    assert len(popped) == LOST
    lost = {str(job.pk) for job in jobs[:LOST]}
    assert lost.isdisjoint(recovery.waiting_job_ids())
    duplicated = {str(job.pk) for job in jobs[-DUPLICATED:]}
    for job_id in duplicated:
        enqueue_job(job_id)
    assert connection.llen(key) == JOBS - LOST + DUPLICATED

    env = {
        "REDIS_URL": REDIS_URL,
        "STUDIO_QUEUE_NAME": name,
        "CACHE_KEY_PREFIX": name,
        "STUDIO_RECOVERY_EVERY_SECONDS": "1",
        "STUDIO_JOB_REQUEUE_SECONDS": "10",
        "STUDIO_JOB_ORPHAN_SECONDS": "10",
    }
    workers = [clusters(name=n, workers=2, env=env) for n in ("a", "b")]
    for worker in workers:
        worker.start()

    finished = workers[0].wait_for_jobs([job.pk for job in jobs], timeout=100)
    assert Counter(job.status for job in finished) == {"succeeded": JOBS}

    # Every delivery's outcome reaches the task table through a cluster's monitor, a little after
    # the job row changes: wait until each job's run and each second message are on record.
    deliveries = Task.objects.filter(func="studio.tasks.run_job")
    deadline = time.monotonic() + 30
    while True:
        outcomes = list(deliveries.values_list("name", "result", "group", "success"))
        per_job = Counter(task_name[4:] for task_name, *_ in outcomes)
        ran_recorded = {task_name[4:] for task_name, result, *_ in outcomes if result == RAN}
        if len(ran_recorded) == JOBS and all(per_job[job_id] >= 2 for job_id in duplicated):
            break
        assert time.monotonic() < deadline, f"{len(outcomes)} deliveries recorded, {connection.llen(key)} waiting"
        time.sleep(0.2)
    assert len(outcomes) < 500, "the task table keeps 500 successes: older outcomes may be gone"
    assert all(success for *_, success in outcomes)

    # 1. The job rows: each claimed once, with one stored result.
    assert Counter(job.attempts for job in finished) == {1: JOBS}
    assert Counter(Result.objects.filter(job__in=jobs).values_list("job_id", flat=True)) == {j.pk: 1 for j in jobs}

    # 2. The task table: exactly one delivery per job ran it; every other one found it taken.
    ran = Counter(task_name[4:] for task_name, result, *_ in outcomes if result == RAN)
    assert ran == {str(job.pk): 1 for job in jobs}
    skipped = Counter(task_name[4:] for task_name, result, *_ in outcomes if result == SKIPPED)
    assert set(skipped) >= duplicated  # each second message was delivered, and refused
    assert sum(skipped.values()) == len(outcomes) - JOBS
    # The lost jobs ran from the message recovery sent them.
    recovered = {task_name[4:] for task_name, result, group, _ in outcomes if group == recovery.RECOVERY_GROUP}
    assert lost <= recovered

    # 3. The clusters' own logs: both took part, and no job was claimed twice across them.
    claims = Counter()
    for worker in workers:
        found = re.findall(r"job ([0-9a-f-]{36}) claimed \(attempt", worker.log())
        assert found, f"cluster {worker.name} ran no job"
        claims.update(found)
    assert claims == {str(job.pk): 1 for job in jobs}
