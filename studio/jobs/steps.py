"""Waiting costs nothing: a vendor job is a sequence of short steps, not a process.

django-q2's workers run local (CPU-bound) operations only. A vendor job is
never a worker's: it waits in the job table with `step_due_at` set to when
its next step is useful (submit: at once; a poll: when the vendor may be
done), and the step runner (`manage.py runsteps`, started by runstudio, one
or more per machine) claims steps as they fall due and runs each on one of
its threads: a submit, one poll, or the download and storing once the vendor
is done. Between two steps the job holds nothing, not even a thread; a
webhook makes its next step due at once (`job_wake`).

Why threads in one long-lived process, not a process per step or a
django-q2 task per step (docs/architecture.md has the measurements):
- a vendor step is almost all waiting on a socket, which a thread does for a
  few hundred kilobytes; a forked process per step paid about 2 s of new
  PostgreSQL, Redis and S3 connections on the scaled configuration;
- django-q2's scheduler fires about every 30 s, too coarse for Perfect Corp's
  10-second rule, and a poll sent as a task waits behind every new job.

Slow calls (the Headshot API answers synchronously, after up to 3 minutes)
run on a pool of their own, so they can never take the threads polls need.

Exactly once: a step is claimed by a conditional update (due → not due,
this runner's id written on the job), so of all runners on all machines one
runs it. If the runner process dies (SIGKILL, out of memory), its parent
puts the jobs whose step was in flight back at once as new runs, which
resume from the persisted vendor task; if the whole machine dies,
studio.jobs.recovery finds them by their stale heartbeat, as for any worker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, connections, router, transaction
from django.db.models import Case, Value, When
from django.utils import timezone

from studio.jobs import doorbell, run
from studio.models import Job

log = logging.getLogger(__name__)

READY = "Step runner ready"


def _parked():
    return Job.objects.filter(status=Job.Status.RUNNING, step_due_at__isnull=False)


def job_wake(job_id) -> bool:
    """A webhook says the vendor is done: the parked job's next step is due now.

    A job whose step is running now is not parked: job_park finds the wake-up signal.
    """
    woken = _parked().filter(pk=job_id).update(step_due_at=timezone.now()) == 1
    if woken:
        transaction.on_commit(doorbell.ring)  # the runners look now, not at their next tick
    return woken


@functools.cache
def providers_with(flag: str) -> tuple[str, ...]:
    """Keys of the providers whose `flag` (slow_calls, polls_expire) is set."""
    from studio.vendors.base import PROVIDERS, get_provider

    return tuple(key for key in PROVIDERS if getattr(get_provider(key), flag))


def due_steps(limit: int, *, slow: bool | None = None, now=None) -> list[tuple[Any, bool, int]]:
    """(job id, whether it is a new run, urgency) of the jobs whose next step is due, most
    urgent first; `slow` picks the slow-call providers' (or the others)."""
    if slow and not providers_with("slow_calls"):
        return []
    alias = router.db_for_read(Job)
    sql, params, now_at = _due_sql(alias, slow, limit)
    params = list(params)  # the cached list stays as built
    params[now_at] = connections[alias].ops.adapt_datetimefield_value(now or timezone.now())
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    to_pk = Job._meta.pk.to_python
    return [(to_pk(pk), status == Job.Status.QUEUED, rank) for pk, status, rank in rows]


def _due_queryset(slow: bool | None, now):
    due = Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING), step_due_at__lte=now)
    if slow is not None:
        slow_keys = providers_with("slow_calls")
        due = due.filter(provider__in=slow_keys) if slow else due.exclude(provider__in=slow_keys)
    # Polls that expire first (Perfect Corp's 10-second rule), then the other steps of runs
    # in progress (a poll, a download), then new runs (a submit): a poll that waits behind a
    # wave of submits can break the rule and lose a task.
    urgency = Case(
        When(status=Job.Status.RUNNING, provider__in=providers_with("polls_expire"), then=Value(0)),
        When(status=Job.Status.RUNNING, then=Value(1)),
        default=Value(2),
    )
    return due.annotate(urgency=urgency).order_by("urgency", "step_due_at").values_list("pk", "status", "urgency")


_PLACEHOLDER_NOW = datetime(2000, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@functools.lru_cache(maxsize=256)
def _due_sql(alias: str, slow: bool | None, limit: int) -> tuple[str, list, int]:
    """The due-steps query as SQL, built by the ORM once per process (per class and limit),
    and where in its parameters "now" goes. The runner looks up to 50 times a second, and
    building the query took about 20 times as long as running it (2.5 ms a look, 0.1 ms)."""
    query = _due_queryset(slow, _PLACEHOLDER_NOW)[:limit].query
    sql, params = query.get_compiler(using=alias).as_sql()
    placeholder = connections[alias].ops.adapt_datetimefield_value(_PLACEHOLDER_NOW)
    return sql, list(params), list(params).index(placeholder)


def due_job_ids(limit: int, *, slow: bool | None = None, now=None) -> list:
    """Ids of the jobs whose next step is due, most urgent first (see due_steps)."""
    return [pk for pk, _, _ in due_steps(limit, slow=slow, now=now)]


class Stepper:
    """Claims due steps and runs each on a thread, never more at once than it has threads."""

    def __init__(self, at_once: int, slow_at_once: int = 1, owner: str = ""):
        self.owner = owner or new_owner_id()
        self.capacity = {False: at_once, True: slow_at_once}
        self.pools = {
            slow: ThreadPoolExecutor(max_workers=size, thread_name_prefix="slow-step" if slow else "step")
            for slow, size in self.capacity.items()
        }
        self.in_flight = {False: 0, True: 0}
        self.lock = threading.Lock()
        # Set when the runner should look for due steps now: a ring, or a step's end while the
        # last look left due steps waiting (its thread can take the next at once). A step that
        # ends when nothing was waiting sets nothing: the next ring or tick finds new work, and
        # at a steady trickle of jobs most looks would otherwise find nothing.
        self.freed = threading.Event()
        self.backlog = True

    def tick(self) -> int:
        """Claim and start the due steps there is room for; how many it started."""
        started = 0
        started_now = {False: 0, True: 0}
        waiting = False
        for slow in (False, True):
            with self.lock:
                free = self.capacity[slow] - self.in_flight[slow]
            if free <= 0:
                waiting = True  # not looked at: there may be steps waiting for a thread
                continue
            # Other runners look at the same rows at the same moments: each takes from a few
            # times more than it has room for, in its own order within each urgency, so two
            # seldom reach for the same job (a claim that loses costs a write for nothing).
            candidates = due_steps(free * 3, slow=slow)
            random.shuffle(candidates)
            candidates.sort(key=lambda step: step[2])  # stable: still shuffled within an urgency
            for pk, new_run, _ in candidates:
                if started_now[slow] == free:
                    break
                first = run.job_claim_step(pk, owner=self.owner, new_run=new_run)
                if first is None:
                    continue  # another runner took it, or it ended
                with self.lock:
                    self.in_flight[slow] += 1
                self.pools[slow].submit(self._run, pk, first, slow)
                started += 1
                started_now[slow] += 1
            waiting = waiting or len(candidates) > started_now[slow]
        self.backlog = waiting
        return started

    def _run(self, pk, first: bool, slow: bool) -> None:
        try:
            close_old_connections()
            run.job_step(pk, first=first)
        except BaseException:  # job_step ends the job itself; this is a last resort
            log.exception("step of job %s failed", pk)
        finally:
            with self.lock:
                self.in_flight[slow] -= 1
            if self.backlog:
                self.freed.set()

    def busy(self) -> int:
        with self.lock:
            return sum(self.in_flight.values())

    def shutdown(self) -> None:
        """Stop taking steps; the steps in hand finish."""
        for pool in self.pools.values():
            pool.shutdown(wait=True)


def new_owner_id() -> str:
    return f"{os.uname().nodename[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def release_steps_of(owner: str) -> int:
    """Jobs whose step was in flight in a runner that died go back as new runs, due now.

    The next run resumes from what the dead one persisted (run._run_claimed);
    a run that was creating a vendor task without request_id ends instead of
    creating it again (the Perfect Corp v2 "creating" mark).
    """
    from studio.jobs.recovery import RESUMING

    now = timezone.now()
    return Job.objects.filter(status=Job.Status.RUNNING, step_due_at__isnull=True, step_owner=owner).update(
        status=Job.Status.QUEUED, stage=RESUMING, step_due_at=now, heartbeat_at=now
    )


# --- the step runner process: `manage.py runsteps` ---------------------------------------
#
# Not threads inside django-q2's workers: an idle worker waits for tasks holding
# its cluster's queue lock, and one killed there leaves the lock held and the
# whole cluster deaf. So the runner is a process of its own, whose parent only
# restarts it if it dies (and gives back the steps it had in flight).


def run_forever(*, processes: int, at_once: int, slow_at_once: int, stdout=None) -> None:
    """Supervise the step-runner children: start them, restart one that dies (giving back
    the steps it had in flight), stop them all on SIGTERM/SIGINT.

    More than one child because a step is not all waiting: preparing an upload and
    storing a result decode and encode pictures, which one interpreter does one at a
    time; a child per core lets them run side by side.
    """
    import multiprocessing

    from django.db import connections

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    context = multiprocessing.get_context("fork")
    _warm_up()  # once, before forking: the children share these pages
    children: list = [None] * processes  # (process, owner id) per slot
    while not stopping.is_set():
        for slot, running in enumerate(children):
            if running is not None and running[0].is_alive():
                continue
            if running is not None:
                child, owner = running
                released = _release_after_death(owner)
                log.critical(
                    "step runner %s died (exit code %s); %s steps in flight resume; starting another",
                    child.pid,
                    child.exitcode,
                    released,
                )
            connections.close_all()  # a forked child must not share the parent's connections
            owner = new_owner_id()
            child = context.Process(
                target=_child, args=(at_once, slow_at_once, owner), name="studio-steps", daemon=False
            )
            child.start()
            children[slot] = (child, owner)
            if stdout is not None:
                stdout.write(f"{READY} (pid {child.pid}, {at_once} steps and {slow_at_once} slow calls at once)\n")
                stdout.flush()
        stopping.wait(0.2)
    for child, _ in filter(None, children):
        if child.is_alive():
            child.terminate()  # SIGTERM: the child stops claiming and finishes the steps in hand
    for child, _ in filter(None, children):
        child.join(60)


def _release_after_death(owner: str) -> int:
    try:
        return release_steps_of(owner)
    except Exception:  # the database away: recovery finds them by their heartbeat later
        log.exception("could not give back the steps of a dead step runner")
        return 0
    finally:
        connection.close()


def _warm_up() -> None:
    """Load, once, what the first steps would otherwise load one after another: the
    providers' modules and the media storage's client (boto3 takes a good part of a second)."""
    from django.core.files.storage import default_storage

    from studio.vendors.base import PROVIDERS, get_provider

    for key in PROVIDERS:
        with contextlib.suppress(Exception):
            get_provider(key)
    with contextlib.suppress(Exception):
        getattr(default_storage, "connection", None)  # S3: the boto3 resource, no request made


def _child(at_once: int, slow_at_once: int, owner: str) -> None:
    stepper = Stepper(at_once, slow_at_once, owner=owner)
    stopping = threading.Event()

    def stop(*_):
        stopping.set()
        stepper.freed.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    # A webhook or a new job rings: look at once instead of at the next tick.
    bell = doorbell.Listener(on_ring=stepper.freed.set)
    bell.start()
    every = settings.STUDIO_STEP_TICK_MS / 1000
    looked = 0.0
    while not stopping.is_set():
        # Never more than 50 looks a second; a ring after a quiet spell is answered at once.
        time.sleep(max(0.0, looked + 0.02 - time.monotonic()))
        stepper.freed.clear()
        looked = time.monotonic()
        try:
            close_old_connections()
            stepper.tick()
        except Exception:  # a database hiccup must not end the runner
            log.exception("running due job steps failed")
        # A tick, or less when a step ends (its thread can take a due step at once)
        # or the doorbell rings.
        stepper.freed.wait(every)
    bell.close()
    stepper.shutdown()
    connection.close()
