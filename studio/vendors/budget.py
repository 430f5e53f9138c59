"""One request budget for a vendor's rate limits, shared by every process.

Perfect Corp allows 100 requests a minute per access token and 100 per five
minutes per client IP (vendor-apis.md §1.9.2), counting every call, status
polls included, and a task that is not polled for 10 s is lost. So all web
and worker processes behind one IP must draw from one budget, and a new job
may start only when the budget can also carry the polls of the jobs already
running. This module keeps that budget in Django's cache (the database
cache by default, Redis with REDIS_URL, so every machine shares it): counts
of recent requests per short time bucket plus the requests each admitted
job has reserved, updated under a short mutex built on `cache.add` — the one
operation both backends perform atomically (an INSERT that may fail; SET NX
on Redis). On SQLite (the embedded default) the mutex is a transaction
instead: BEGIN IMMEDIATE takes the database's one write lock, so reading
and writing the state inside it is one write where the cache mutex took
three (add, set, delete), each waiting its turn for that same lock.

The counts stay small whatever the limits (a few hundred buckets at most,
not one timestamp per request) and err on the safe side: a bucket keeps the
time of its latest request, and all its requests count as sent then, so
they leave a window no earlier than they really do.

Priorities, from most to least protected:
  - a job's own reserved requests (admission made room for them);
  - "urgent" requests (auth, extra polls beyond a reservation) may use the
    headroom kept back from admissions, never other jobs' reservations;
  - admissions and background calls (style listing) wait until the window
    can hold them on top of every reservation and the headroom.
A 429 pauses the whole budget for a jittered, growing back-off.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from django.core.cache import DEFAULT_CACHE_ALIAS, caches
from django.core.cache import cache as default_cache
from django.core.cache.backends.db import DatabaseCache
from django.db import connections, router, transaction

from studio.vendors.base import VendorError

log = logging.getLogger(__name__)


class BudgetTimeout(Exception):
    """The budget had no room before the caller's deadline."""


class CapacityWait(VendorError):
    """No room in the budget before this worker's time runs out: run the job again later.

    The job runner puts a job that fails with this back in the queue
    (`requeue`) instead of failing it; it has sent nothing to the vendor yet.
    """

    requeue = True


@dataclass(frozen=True)
class Window:
    limit: int  # requests
    seconds: float


# Per budget namespace: whether the state this process saw last had plenty of
# room. Then a take goes straight to the lock instead of first looking without
# it (adapters build a RequestBudget per call, so this lives in the module).
_roomy: dict[str, bool] = {}


class RequestBudget:
    def __init__(
        self,
        namespace: str,
        windows: tuple[Window, ...],
        *,
        headroom: int | None = None,
        reservation_ttl: float = 180.0,
        cache=None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_pause_cap: float = 1.5,
    ):
        self.namespace = namespace
        self.windows = windows
        smallest = min(w.limit for w in windows)
        # Kept back from admissions for extra polls and auth (5 of 100 by default).
        self.headroom = max(2, smallest // 20) if headroom is None else headroom
        self.reservation_ttl = reservation_ttl
        self.cache = cache or default_cache
        self.clock = clock
        self.sleep = sleep
        self.poll_pause_cap = poll_pause_cap  # a paused budget delays a poll at most this long
        # How often a waiter looks again: a small share of the shortest window
        # (0.5 s for a 60 s window), so a scaled-down clock keeps the same behaviour.
        shortest = min(w.seconds for w in windows)
        self.recheck = min(0.5, shortest / 120)
        self.max_sleep = min(2.0, shortest / 30)
        # Requests are counted per bucket of this length (1 s for a 60 s window).
        self.bucket = shortest / 60
        self._state_key = f"budget:{namespace}:state"
        self._lock_key = f"budget:{namespace}:lock"

    # --- the shared state, under a cache mutex ------------------------------------------

    LOCK_TIMEOUT = 5.0  # seconds: frees the lock of a holder that died

    @contextmanager
    def _locked(self):
        """The state, read and written back under the budget's mutex."""
        alias = self._sqlite_alias()
        # On SQLite, BEGIN IMMEDIATE takes the write lock: the transaction is the mutex.
        with transaction.atomic(using=alias) if alias is not None else self._cache_mutex():
            state = self._loaded(self.cache.get(self._state_key))
            state.setdefault("strikes", 0)
            yield state
            self.cache.set(self._state_key, state, timeout=max(w.seconds for w in self.windows) * 4 + 3600)

    def _sqlite_alias(self) -> str | None:
        """The database alias when the cache is the database cache on SQLite whose transactions
        take the write lock at BEGIN (settings: transaction_mode IMMEDIATE); else None."""
        backend = caches[DEFAULT_CACHE_ALIAS] if self.cache is default_cache else self.cache  # not the proxy
        if not isinstance(backend, DatabaseCache):
            return None
        alias = router.db_for_write(backend.cache_model_class)
        database = connections[alias]
        immediate = database.settings_dict.get("OPTIONS", {}).get("transaction_mode") == "IMMEDIATE"
        return alias if database.vendor == "sqlite" and immediate else None

    @contextmanager
    def _cache_mutex(self):
        """A mutex built on cache.add (Redis, or the database cache off SQLite)."""
        token = uuid.uuid4().hex
        started = time.monotonic()
        taken_over = False
        while True:
            # Timed before the call: the lock's expiry counts from no earlier than this.
            acquired = time.monotonic()
            # cache.add is atomic on the database cache and on Redis; the timeout frees
            # the lock if its holder died (holders keep it for a few milliseconds).
            if self.cache.add(self._lock_key, token, timeout=self.LOCK_TIMEOUT):
                break
            if acquired - started > 10:
                log.warning("budget %s: lock held too long; taking it over", self.namespace)
                self.cache.set(self._lock_key, token, timeout=self.LOCK_TIMEOUT)
                taken_over = True
                break
            time.sleep(random.uniform(0.002, 0.01))
        try:
            yield
        finally:
            # Held for well under its timeout (counted from before the add, which may
            # have waited on the database), the lock is still ours: delete it without
            # reading it first. Held longer, it may have expired and gone to another
            # process, whose lock must stay.
            surely_ours = not taken_over and time.monotonic() - acquired < self.LOCK_TIMEOUT / 5
            if surely_ours or self.cache.get(self._lock_key) == token:
                self.cache.delete(self._lock_key)

    def _loaded(self, state: dict | None) -> dict:
        state = state or {}
        state.setdefault("counts", [])  # [[time of the bucket's latest request, requests], …], oldest first
        state.setdefault("jobs", {})
        state.setdefault("paused_until", 0.0)
        if "log" in state:  # a state written before requests were counted per bucket
            for sent in sorted(state.pop("log")):
                self._count(state, sent)
        return state

    def _peek(self, now: float) -> dict:
        """The state without taking the lock: waiters look here first, so they don't queue on the mutex."""
        state = self._loaded(self.cache.get(self._state_key))
        self._prune(state, now)
        return state

    def _prune(self, state: dict, now: float) -> None:
        longest = max(w.seconds for w in self.windows)
        counts = state["counts"]
        first = 0
        while first < len(counts) and counts[first][0] <= now - longest:
            first += 1
        if first:
            del counts[:first]
        state["jobs"] = {k: v for k, v in state["jobs"].items() if v["expires"] > now and v["left"] > 0}

    def _count(self, state: dict, now: float) -> None:
        """One request sent at `now`, added to its time bucket."""
        counts = state["counts"]
        if counts and now // self.bucket <= counts[-1][0] // self.bucket:
            # Its bucket, or (a process whose clock runs behind) a later one: a
            # request counted later than it was sent leaves the window later, never early.
            counts[-1][0] = max(counts[-1][0], now)
            counts[-1][1] += 1
        else:
            counts.append([now, 1])

    def _wait_for(
        self, state: dict, now: float, need: int, *, exclude: str | None, reserve: bool, headroom: int
    ) -> float:
        """Seconds until `need` more requests fit (0: they fit now)."""
        reserved = sum(v["left"] for k, v in state["jobs"].items() if k != exclude) if reserve else 0
        wait = 0.0
        for window in self.windows:
            in_window = [(sent, n) for sent, n in state["counts"] if sent > now - window.seconds]
            used = self._used(state, now, window)
            over = used + reserved + need - (window.limit - headroom)
            if over <= 0:
                continue
            if over > used:
                # Reservations alone block it: look again when running jobs have moved on.
                wait = max(wait, self.recheck)
                continue
            # Room comes when the oldest `over` requests have left the window.
            leaving = 0
            for sent, n in in_window:
                leaving += n
                if leaving >= over:
                    wait = max(wait, sent + window.seconds - now + 0.01)
                    break
        return wait

    @staticmethod
    def _used(state: dict, now: float, window: Window) -> int:
        """Requests counted in `window` up to `now`."""
        return sum(n for sent, n in state["counts"] if sent > now - window.seconds)

    def _has_plenty_of_room(self, state: dict, now: float) -> bool:
        """Not paused, and every window a quarter empty on top of reservations and headroom."""
        if state["paused_until"] > now:
            return False
        reserved = sum(v["left"] for v in state["jobs"].values())
        for window in self.windows:
            if self._used(state, now, window) + reserved + self.headroom > window.limit * 3 // 4:
                return False
        return True

    # --- the public operations -------------------------------------------------------------

    def admit(
        self,
        job_key: str,
        expected: int | Callable[[], int],
        *,
        deadline: float,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        """Reserve `expected` requests for a new job, waiting until the budget can carry them.

        `expected` may be a function, asked again on every try, so a job that
        waits long reserves what recent jobs needed. Raises BudgetTimeout when
        the deadline passes first. Re-admitting a job that already holds a
        reservation tops it up to `expected`.
        """
        estimate = expected if callable(expected) else (lambda: expected)
        waited = False
        while True:
            now = self.clock()
            # A job never needs more than a window can hold; polls beyond it come from the headroom.
            expected = max(1, min(estimate(), min(w.limit for w in self.windows) - self.headroom))
            wait = self._admission_wait(self._peek(now), now, job_key, expected)
            if wait <= 0:
                with self._locked() as state:
                    self._prune(state, now)
                    wait = self._admission_wait(state, now, job_key, expected)
                    if wait <= 0:
                        held = state["jobs"].get(job_key, {}).get("left", 0)
                        state["jobs"][job_key] = {"left": max(expected, held), "expires": now + self.reservation_ttl}
                        return
            if now >= deadline:
                raise BudgetTimeout
            # Waits until the deadline even when the room comes later: a worker spends its time waiting.
            wait = min(wait, deadline - now)
            if on_wait and (waited is False or now - waited >= 10):
                on_wait()  # says so on the job, and every 10 s keeps its heartbeat fresh
                waited = now
            self.sleep(min(wait, self.max_sleep))

    def _admission_wait(self, state: dict, now: float, job_key: str, expected: int) -> float:
        held = state["jobs"].get(job_key, {}).get("left", 0)
        pause = max(0.0, state["paused_until"] - now)
        if pause:
            return pause
        return self._wait_for(
            state, now, max(0, expected - held), exclude=job_key, reserve=True, headroom=self.headroom
        )

    def take(
        self, job_key: str | None = None, *, urgent: bool = False, poll: bool = False, deadline: float | None = None
    ) -> None:
        """Record one request about to be sent, waiting until it fits.

        A job's request comes out of its reservation while it lasts; beyond it
        (and for `urgent` calls) the headroom is used; calls without a job wait
        behind every reservation.
        """
        poll_pause_until: float | None = None
        first_try = True
        while True:
            now = self.clock()
            if first_try and _roomy.get(self.namespace) and not poll:
                wait = 0.0  # room was plenty a moment ago: the check under the lock decides
            else:
                peeked = self._peek(now)
                if poll and poll_pause_until is None:
                    # The 10-second rule keeps running: a poll waits out a pause only briefly.
                    poll_pause_until = now + min(max(0.0, peeked["paused_until"] - now), self.poll_pause_cap)
                wait = self._take_wait(peeked, now, job_key, urgent, poll, poll_pause_until)
            first_try = False
            if wait <= 0:
                with self._locked() as state:
                    self._prune(state, now)
                    wait = self._take_wait(state, now, job_key, urgent, poll, poll_pause_until)
                    if wait <= 0:
                        self._count(state, now)
                        job = state["jobs"].get(job_key) if job_key else None
                        if job is not None:
                            job["left"] = max(0, job["left"] - 1)
                            job["expires"] = now + self.reservation_ttl
                    _roomy[self.namespace] = self._has_plenty_of_room(state, now)
                if wait <= 0:
                    return
            if deadline is not None and now + wait > deadline:
                raise BudgetTimeout
            self.sleep(min(wait, self.max_sleep / 2))

    def _take_wait(self, state, now, job_key, urgent, poll, poll_pause_until) -> float:
        pause = max(0.0, state["paused_until"] - now)
        if poll:
            pause = max(0.0, (poll_pause_until or now) - now)
        if pause:
            return pause
        job = state["jobs"].get(job_key) if job_key else None
        if job is not None and job["left"] > 0:
            return self._wait_for(state, now, 1, exclude=job_key, reserve=True, headroom=0)
        if urgent or poll or job_key:
            return self._wait_for(state, now, 1, exclude=None, reserve=True, headroom=0)
        return self._wait_for(state, now, 1, exclude=None, reserve=True, headroom=self.headroom)

    def extend(self, job_key: str, more: int) -> None:
        """Add requests to a running job's reservation (e.g. a resubmission), without waiting."""
        now = self.clock()
        with self._locked() as state:
            job = state["jobs"].setdefault(job_key, {"left": 0, "expires": now + self.reservation_ttl})
            job["left"] += more
            job["expires"] = now + self.reservation_ttl

    def release(self, job_key: str) -> None:
        """Give back what a finished job did not use."""
        with self._locked() as state:
            state["jobs"].pop(job_key, None)

    def rate_limited(self, *, base: float = 2.0, cap: float = 30.0) -> float:
        """A 429 arrived: pause everyone for a growing, jittered back-off; returns the pause."""
        now = self.clock()
        with self._locked() as state:
            state["strikes"] = min(state["strikes"] + 1, 6)
            pause = random.uniform(0.5, 1.0) * min(cap, base * 2 ** (state["strikes"] - 1))
            state["paused_until"] = max(state["paused_until"], now + pause)
            # The refused call counted at the vendor too.
            self._count(state, now)
            _roomy[self.namespace] = False
        log.warning("budget %s: 429, pausing %.1f s", self.namespace, pause)
        return pause

    def succeeded(self) -> None:
        """A call went through: forget earlier 429 strikes."""
        state = self.cache.get(self._state_key)
        if state and state.get("strikes"):
            with self._locked() as state:
                state["strikes"] = 0

    def snapshot(self) -> dict:
        """For the staff console and tests: use per window, reservations, pause."""
        now = self.clock()
        state = self._loaded(self.cache.get(self._state_key))
        return {
            "windows": [
                {
                    "limit": w.limit,
                    "seconds": w.seconds,
                    "used": self._used(state, now, w),
                }
                for w in self.windows
            ],
            "reserved": sum(v["left"] for v in state["jobs"].values() if v["expires"] > now),
            "jobs": len([v for v in state["jobs"].values() if v["expires"] > now]),
            "paused_for": max(0.0, state["paused_until"] - now),
        }
