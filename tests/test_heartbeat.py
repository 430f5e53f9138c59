"""One thread per process keeps the heartbeat of every run in hand fresh (studio/jobs/heartbeat.py)."""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import pytest
from django.utils import timezone

from studio.jobs import heartbeat
from studio.models import Job
from tests.test_webhooks import OWNER

pytestmark = pytest.mark.django_db(transaction=True)  # the beating thread has its own connection


def _running(attempts: int = 1) -> Job:
    an_hour_ago = timezone.now() - timezone.timedelta(hours=1)
    return Job.objects.create(**OWNER.fields(), operation="pc_colorize", provider="perfectcorp",
                              status=Job.Status.RUNNING, attempts=attempts, heartbeat_at=an_hour_ago)


def _beating_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "heartbeats" and t.is_alive()]


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_one_thread_beats_every_run_in_hand_and_ends_when_none_is_left(settings):
    settings.STUDIO_JOB_ORPHAN_SECONDS = 0.6  # a beat every 0.2 s
    jobs = [_running() for _ in range(3)]
    taken_over = _running(attempts=2)  # claimed again elsewhere: this process's run 1 is not its run
    started = timezone.now()
    with ExitStack() as steps:
        for job in jobs:
            steps.enter_context(heartbeat.beating(job.pk, 1))
        steps.enter_context(heartbeat.beating(taken_over.pk, 1))
        assert _wait_for(lambda: all(j.heartbeat_at > started for j in Job.objects.filter(pk__in=[j.pk for j in jobs])))
        assert len(_beating_threads()) == 1, "one thread for all runs, not one per step"
        Job.objects.filter(pk=jobs[0].pk).update(status=Job.Status.SUCCEEDED)
        finished = timezone.now()
        time.sleep(0.5)  # two beats more
    assert Job.objects.get(pk=jobs[0].pk).heartbeat_at <= finished, "a finished job is not beaten"
    assert Job.objects.get(pk=jobs[1].pk).heartbeat_at > finished, "the others are"
    taken_over.refresh_from_db()
    assert taken_over.heartbeat_at < started
    assert _wait_for(lambda: not _beating_threads()), "no run in hand: the thread ends"


def test_a_run_in_hand_again_after_the_thread_ended_is_beaten_by_a_new_one(settings):
    settings.STUDIO_JOB_ORPHAN_SECONDS = 0.6
    first, second = _running(), _running()
    with heartbeat.beating(first.pk, 1):
        pass
    assert _wait_for(lambda: not _beating_threads())
    started = timezone.now()
    with heartbeat.beating(second.pk, 1):
        assert _wait_for(lambda: Job.objects.get(pk=second.pk).heartbeat_at > started)


def test_a_shorter_threshold_takes_effect_while_the_thread_sleeps(settings):
    """The thread may be asleep for a long beat (the default threshold) when a run that needs
    short beats comes: it wakes up for it instead of letting it look dead."""
    settings.STUDIO_JOB_ORPHAN_SECONDS = 60  # a beat every 20 s
    sleeper, job = _running(), _running()
    with heartbeat.beating(sleeper.pk, 1):
        time.sleep(0.2)  # the thread is asleep for 20 s now
        settings.STUDIO_JOB_ORPHAN_SECONDS = 0.6
        started = timezone.now()
        with heartbeat.beating(job.pk, 1):
            assert _wait_for(lambda: Job.objects.get(pk=job.pk).heartbeat_at > started, seconds=2.0)
