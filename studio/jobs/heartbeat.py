"""Heartbeats of the runs this process has in hand: one thread beats for all of them.

A running step keeps its job's heartbeat fresh whatever it is doing (the
Headshot API may take 3 minutes to answer a call), so only a dead process
looks dead: recovery claims a job again when its heartbeat is stale. A
process killed with SIGKILL stops beating at once, with its thread.

One thread per process, not one per step: the step runner runs hundreds of
short steps a second, and a thread started and joined for each cost more
than many of the steps themselves (each start and join waits for the GIL
among the runner's busy threads). The thread beats every run in hand in one
UPDATE every STUDIO_JOB_ORPHAN_SECONDS / 3, and ends when none is left.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from functools import reduce
from operator import or_

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

log = logging.getLogger(__name__)


class _Beater:
    def __init__(self):
        self._lock = threading.Lock()
        self._runs: Counter = Counter()  # (job id, attempt) → steps of this run in hand
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._last_beat = 0.0
        self._sleeping_until = 0.0

    def add(self, job_id, attempt: int) -> None:
        every = _every()
        with self._lock:
            self._runs[(job_id, attempt)] += 1
            # After a fork the parent's thread is not here: start this process's own.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid, self._last_beat = os.getpid(), time.monotonic()
                self._thread = threading.Thread(target=self._beat_while_busy, name="heartbeats", daemon=True)
                self._thread.start()
            elif self._sleeping_until > time.monotonic() + every:
                self._wake.notify()  # asleep for longer than a beat now lasts (the setting changed)

    def remove(self, job_id, attempt: int) -> None:
        with self._lock:
            self._runs[(job_id, attempt)] -= 1
            if self._runs[(job_id, attempt)] <= 0:
                del self._runs[(job_id, attempt)]

    def _beat_while_busy(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                due = self._last_beat + _every()
                now = time.monotonic()
                if now < due:
                    self._sleeping_until = due
                    self._wake.wait(timeout=due - now)
                    continue
                runs = list(self._runs)
                if not runs:
                    if self._thread is me:
                        self._thread = None  # the next run starts a new thread
                    return
                self._last_beat = now
            self._beat(runs)

    @staticmethod
    def _beat(runs: list) -> None:
        from studio.models import Job

        try:
            for start in range(0, len(runs), 100):
                mine = reduce(or_, (Q(pk=job_id, attempts=attempt) for job_id, attempt in runs[start:start + 100]))
                Job.objects.filter(mine, status=Job.Status.RUNNING).update(heartbeat_at=timezone.now())
        except Exception:  # e.g. the database briefly unreachable: try again next beat
            log.warning("heartbeat of %d jobs failed", len(runs), exc_info=True)
        finally:
            # Beats are seconds apart: no connection held between them (a test database
            # could not be dropped while this thread kept one open).
            connection.close()


def _every() -> float:
    """Seconds between beats, read each time: tests (and staff) may change the threshold."""
    return settings.STUDIO_JOB_ORPHAN_SECONDS / 3


_beater = _Beater()


@contextmanager
def beating(job_id, attempt: int):
    """Keep the heartbeat of run `attempt` of job `job_id` fresh for the duration of the block."""
    _beater.add(job_id, attempt)
    try:
        yield
    finally:
        _beater.remove(job_id, attempt)
