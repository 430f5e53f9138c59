"""Crash recovery: jobs stranded by a dead worker or a lost queue message run again.

A job can be stranded two ways, and each is recognised from our own table:

- Orphaned: RUNNING, but its heartbeat is older than STUDIO_JOB_ORPHAN_SECONDS.
  A side thread in the worker keeps the heartbeat fresh whatever the job is
  doing (studio/jobs/heartbeat.py), so only a dead worker (SIGKILL, out of memory,
  a machine gone) lets it go stale. The job goes back to QUEUED and is sent
  again; the next run resumes polling the vendor task it persisted, or
  re-submits with the same request_id, which the vendor de-duplicates.
- Lost message: QUEUED for STUDIO_JOB_REQUEUE_SECONDS since it was last sent,
  and its message is not waiting in the broker. The Redis broker has no
  receipts: a message popped by a cluster that then died is gone. The ORM
  broker would hand it out again, but only after `retry` (minutes).

Sending a message twice is harmless: job_claim's conditional update lets one
delivery run the job and the other finds nothing to claim. A job waiting in a
live cluster's in-memory buffer longer than STUDIO_JOB_REQUEUE_SECONDS may get
such a duplicate; it costs one skipped task.

When it runs. Every worker process has a small thread (started on django-q2's
`post_spawn`) that ticks soon after the worker starts and then every
STUDIO_RECOVERY_EVERY_SECONDS; one tick per interval, across all machines,
wins a lease in the shared cache and does the pass. Not the schedule alone:
django-q2's scheduler fires at most once a minute, only in the cluster that
has the site's default name, and its task waits for a free worker, which is
what a crash leaves short of. Not `post_spawn` alone: a killed worker is
respawned at once, before its job's heartbeat has gone stale, and when a
whole machine dies nothing spawns on the others. The minutely schedule runs
the same pass as a safety net.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from studio.errors import TIMED_OUT
from studio.jobs import create, run
from studio.models import Job

log = logging.getLogger(__name__)

RESUMING = "Resuming after its worker stopped"
RECOVERY_GROUP = "jobs-recovery"  # the group of the tasks recovery sends (visible in the admin)
LEASE_KEY = "studio:recovery:lease"
BATCH = 500  # jobs handled per pass and per kind; the next pass takes the rest
BROKER_SCAN_LIMIT = 10_000  # waiting messages read to tell which jobs still have one


def jobs_recover(*, now=None) -> dict[str, int]:
    """One recovery pass: fail jobs past their deadline, resend orphaned and lost jobs.

    Safe to run in several processes at once: every change is a conditional update.
    """
    swept = jobs_sweep_stale()
    now = now or timezone.now()
    orphans = _requeue_orphans(now)
    resent = _resend_lost_messages(now)
    if swept or orphans or resent:
        log.warning("recovery: %s past deadline failed, %s orphaned requeued, %s lost resent", swept, orphans, resent)
    return {"swept": swept, "orphans": orphans, "resent": resent}


def jobs_sweep_stale() -> int:
    """Fail every job still unfinished past its deadline. Safe to run anywhere, any time."""
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.STUDIO_JOB_DEADLINE_SECONDS)
    stale = Job.objects.exclude(status__in=Job.TERMINAL).filter(created_at__lt=cutoff)
    ids = list(stale.values_list("pk", flat=True))
    swept = 0
    for job_id in ids:  # one by one: each may finish a batch that asked to be told
        swept += run.job_mark_failed(job_id, TIMED_OUT)
    return swept


def _stale(field: str, before) -> Q:
    """`field` older than `before`; a row without one counts from its creation."""
    return Q(**{f"{field}__lt": before}) | Q(**{f"{field}__isnull": True, "created_at__lt": before})


def _requeue_orphans(now) -> int:
    stale = _stale("heartbeat_at", now - timezone.timedelta(seconds=settings.STUDIO_JOB_ORPHAN_SECONDS))
    # A parked vendor job (studio.jobs.steps) is between two steps and beats no heartbeat: not an orphan.
    running = Job.objects.filter(status=Job.Status.RUNNING, step_due_at__isnull=True)
    count = 0
    for pk in list(running.filter(stale).values_list("pk", flat=True)[:BATCH]):
        # Conditional: a worker that beat meanwhile keeps its job, and of two
        # recovery passes only one requeues it.
        if running.filter(stale, pk=pk).update(status=Job.Status.QUEUED, stage=RESUMING, heartbeat_at=now) == 1:
            log.warning("job %s lost its worker; queued again to resume", pk)
            _send(pk)
            count += 1
    return count


def _resend_lost_messages(now) -> int:
    # On a queued job, heartbeat_at is when its message was last sent (job_requeue and this module set it).
    stale = _stale("heartbeat_at", now - timezone.timedelta(seconds=settings.STUDIO_JOB_REQUEUE_SECONDS))
    # A vendor job due for the step runner has no message to lose (studio.jobs.steps).
    queued = Job.objects.filter(status=Job.Status.QUEUED, step_due_at__isnull=True)
    candidates = list(queued.filter(stale).values_list("pk", flat=True)[:BATCH])
    if not candidates:
        return 0
    waiting = waiting_job_ids()
    if waiting is None:
        return 0
    count = 0
    for pk in candidates:
        if str(pk) in waiting:
            continue  # its message is still in the queue: it is only waiting its turn
        if queued.filter(stale, pk=pk).update(heartbeat_at=now) == 1:
            log.warning("job %s has no message in the queue; sent again", pk)
            _send(pk)
            count += 1
    return count


def _send(pk) -> None:
    try:
        create.enqueue_job(pk, group=RECOVERY_GROUP)
    except Exception:  # the broker is down: the job stays queued and a later pass sends it again
        log.exception("recovery could not enqueue job %s", pk)


def waiting_job_ids() -> set[str] | None:
    """Ids of the jobs whose message waits in the broker; None when that can't be told now.

    Only messages no cluster has taken count: a taken one is in a cluster's
    memory or a worker, and lost if that process died. A broker this module
    can't read (neither ORM nor Redis) counts as holding none, so stranded jobs
    are resent on time alone; a backlog longer than BROKER_SCAN_LIMIT gives
    None, so nothing is resent until it drains.
    """
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage

    broker = get_broker()
    kind = type(broker).__name__
    if kind == "ORM":
        from django_q.conf import Conf
        from django_q.models import OrmQ

        # The ORM broker stamps a message it hands out with a lock in the future.
        payloads = list(
            OrmQ.objects.using(Conf.ORM)
            .filter(key=broker.list_key, lock__lte=timezone.now())
            .values_list("payload", flat=True)[: BROKER_SCAN_LIMIT + 1]
        )
    elif kind == "Redis":
        payloads = broker.connection.lrange(broker.list_key, 0, BROKER_SCAN_LIMIT)
    else:
        return set()
    if len(payloads) > BROKER_SCAN_LIMIT:
        log.info("recovery: more than %s messages waiting; lost ones are resent once it drains", BROKER_SCAN_LIMIT)
        return None
    ids = set()
    for payload in payloads:
        try:
            task = SignedPackage.loads(payload)
        except Exception:  # another site's or a damaged message: not ours to judge
            continue
        name = str(task.get("name") or "")
        if name.startswith("job-"):
            ids.add(name[4:])
    return ids


# --- when it runs --------------------------------------------------------------------


def tick() -> dict[str, int] | None:
    """A pass, unless another process did one within the interval (a lease in the shared cache)."""
    if not cache.add(LEASE_KEY, f"{os.uname().nodename}:{os.getpid()}", timeout=settings.STUDIO_RECOVERY_EVERY_SECONDS):
        return None
    return jobs_recover()


_ticker: threading.Thread | None = None


def start_ticker() -> None:
    """Start this process's recovery thread, once (django-q2 calls it in each new worker)."""
    global _ticker
    if _ticker is not None and _ticker.is_alive():
        return
    _ticker = threading.Thread(target=_tick_forever, name="studio-recovery", daemon=True)
    _ticker.start()


def _tick_forever() -> None:
    # Soon after the worker starts, but not all workers of a cluster in the same instant.
    time.sleep(random.uniform(0.2, 1.0))
    while True:
        try:
            close_old_connections()
            tick()
        except Exception:  # a database or cache hiccup must not end the thread
            log.exception("recovery pass failed")
        finally:
            connection.close()  # this thread's own connection; the next pass opens a fresh one
        time.sleep(settings.STUDIO_RECOVERY_EVERY_SECONDS)
