"""Wake a job that is waiting between two polls of its vendor, from any process.

A webhook arrives in a web process; the job it concerns waits in a worker,
perhaps on another machine. `wake(job_id)` leaves a signal for that job and
`wait(job_id, seconds)` returns as soon as one is there (True), or after
`seconds` without one (False). A signal left before the wait began counts
too, so a webhook that beats the job to its wait is not lost.

- Scaled (REDIS_URL): the signal is an item on a per-job Redis list and the
  wait is a blocking pop on it: instant, and no polling at all.
- Embedded (the database cache): the signal is a cache key, and the wait
  looks for it CHECKS_PER_SECOND times a second (one indexed read each).

Either way a signal expires after SIGNAL_TTL, so a wake for a job that is
never waited on again leaves nothing behind for long. A wake is only a
hint: the job re-reads the vendor's task before it stores anything.
"""

from __future__ import annotations

import functools
import logging
import time

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

SIGNAL_TTL = 600  # seconds; longer than any wait between two polls
CHECKS_PER_SECOND = 4  # embedded configuration only


def _key(job_id) -> str:
    return f"studio:wake:{job_id}"


def wake(job_id) -> None:
    """Signal the job: its current (or next) wait returns at once."""
    if settings.REDIS_URL:
        import redis

        key = _redis_key(job_id)
        try:
            with redis_client().pipeline(transaction=True) as pipe:
                pipe.rpush(key, "1").expire(key, SIGNAL_TTL).execute()
        except redis.RedisError:
            # Lost, like a lost webhook: the job's backstop poll still comes.
            logger.warning("wake-up for job %s: Redis unavailable, the job will poll", job_id, exc_info=True)
    else:
        cache.set(_key(job_id), 1, timeout=SIGNAL_TTL)


def wait(job_id, seconds: float) -> bool:
    """Wait up to `seconds` for a wake of this job; True when woken (the signal is used up)."""
    seconds = max(0.0, float(seconds))
    if settings.REDIS_URL:
        return _wait_redis(job_id, seconds)
    return _wait_cache(job_id, seconds)


def _wait_cache(job_id, seconds: float) -> bool:
    key = _key(job_id)
    until = time.monotonic() + seconds
    while True:
        # A read first: deleting (a write) four times a second would take
        # SQLite's write lock for nothing.
        if cache.get(key) is not None:
            cache.delete(key)
            return True
        left = until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 1.0 / CHECKS_PER_SECOND))


def _wait_redis(job_id, seconds: float) -> bool:
    import redis

    key = _redis_key(job_id)
    client = redis_client()
    started = time.monotonic()
    try:
        if seconds <= 0:
            popped = client.lpop(key)
        else:
            # BLPOP's timeout 0 means "forever"; a float timeout needs Redis ≥ 6.
            popped = client.blpop([key], timeout=max(seconds, 0.01))
        if popped is None:
            return False
        client.delete(key)  # repeated webhooks for one event: one poll answers them all
        return True
    except redis.RedisError:
        # A wake is only a hint: with Redis unreachable the job still waits
        # out its pause and polls, as it would without webhooks.
        logger.warning("wake-up wait for job %s: Redis unavailable, polling instead", job_id, exc_info=True)
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        return False


def _redis_key(job_id) -> str:
    return cache.make_key(_key(job_id))  # the cache's prefix: sites sharing a Redis stay apart


@functools.cache
def redis_client():
    """One client per process, with no read timeout: a blocking pop is meant to block.

    socket_timeout=None must be said outright: redis-py 8 otherwise reuses the
    connect timeout as the read timeout and cuts every wait at 5 seconds.
    """
    import redis

    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=None, socket_keepalive=True
    )
