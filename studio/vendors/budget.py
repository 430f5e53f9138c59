"""One request budget for a vendor's rate limits, shared by every process.

Perfect Corp allows 100 requests a minute per access token and 100 per five
minutes per client IP (vendor-apis.md §1.9.2), counting every call, status
polls included, and a task that is not polled for 10 s is lost. So all web
and worker processes behind one IP must draw from one budget, and a new job
may start only when the budget can also carry the polls of the jobs already
running. This module keeps that budget in Django's cache (the database
cache by default, Redis with REDIS_URL, so every machine shares it): a log
of recent request times plus the requests each admitted job has reserved,
updated under a short mutex built on `cache.add` — the one operation both
backends perform atomically (an INSERT that may fail; SET NX on Redis).

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

from django.core.cache import cache as default_cache

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
        self._state_key = f"budget:{namespace}:state"
        self._lock_key = f"budget:{namespace}:lock"

    # --- the shared state, under a cache mutex ------------------------------------------

    @contextmanager
    def _locked(self):
        token = uuid.uuid4().hex
        started = time.monotonic()
        # cache.add is atomic on the database cache and on Redis; the timeout frees
        # the lock if its holder died (holders keep it for a few milliseconds).
        while not self.cache.add(self._lock_key, token, timeout=5):
            if time.monotonic() - started > 10:
                log.warning("budget %s: lock held too long; taking it over", self.namespace)
                self.cache.set(self._lock_key, token, timeout=5)
                break
            time.sleep(random.uniform(0.002, 0.01))
        try:
            state = self.cache.get(self._state_key) or {}
            state.setdefault("log", [])
            state.setdefault("jobs", {})
            state.setdefault("paused_until", 0.0)
            state.setdefault("strikes", 0)
            yield state
            self.cache.set(self._state_key, state, timeout=max(w.seconds for w in self.windows) * 4 + 3600)
        finally:
            if self.cache.get(self._lock_key) == token:
                self.cache.delete(self._lock_key)

    def _peek(self, now: float) -> dict:
        """The state without taking the lock: waiters look here first, so they don't queue on the mutex."""
        state = self.cache.get(self._state_key) or {}
        state.setdefault("log", [])
        state.setdefault("jobs", {})
        state.setdefault("paused_until", 0.0)
        self._prune(state, now)
        return state

    def _prune(self, state: dict, now: float) -> None:
        longest = max(w.seconds for w in self.windows)
        state["log"] = [t for t in state["log"] if t > now - longest]
        state["jobs"] = {k: v for k, v in state["jobs"].items() if v["expires"] > now and v["left"] > 0}

    def _wait_for(
        self, state: dict, now: float, need: int, *, exclude: str | None, reserve: bool, headroom: int
    ) -> float:
        """Seconds until `need` more requests fit (0: they fit now)."""
        reserved = sum(v["left"] for k, v in state["jobs"].items() if k != exclude) if reserve else 0
        wait = 0.0
        for window in self.windows:
            in_window = sorted(t for t in state["log"] if t > now - window.seconds)
            over = len(in_window) + reserved + need - (window.limit - headroom)
            if over <= 0:
                continue
            if over > len(in_window):
                # Reservations alone block it: look again when running jobs have moved on.
                wait = max(wait, self.recheck)
            else:
                wait = max(wait, in_window[over - 1] + window.seconds - now + 0.01)
        return wait

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
        while True:
            now = self.clock()
            if poll and poll_pause_until is None:
                # The 10-second rule keeps running: a poll waits out a pause only briefly.
                poll_pause_until = now + min(max(0.0, self._peek(now)["paused_until"] - now), self.poll_pause_cap)
            wait = self._take_wait(self._peek(now), now, job_key, urgent, poll, poll_pause_until)
            if wait <= 0:
                with self._locked() as state:
                    self._prune(state, now)
                    wait = self._take_wait(state, now, job_key, urgent, poll, poll_pause_until)
                    if wait <= 0:
                        state["log"].append(now)
                        job = state["jobs"].get(job_key) if job_key else None
                        if job is not None:
                            job["left"] = max(0, job["left"] - 1)
                            job["expires"] = now + self.reservation_ttl
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
            state["log"].append(now)
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
        state = self.cache.get(self._state_key) or {"log": [], "jobs": {}, "paused_until": 0.0}
        return {
            "windows": [
                {"limit": w.limit, "seconds": w.seconds, "used": sum(1 for t in state["log"] if t > now - w.seconds)}
                for w in self.windows
            ],
            "reserved": sum(v["left"] for v in state["jobs"].values() if v["expires"] > now),
            "jobs": len([v for v in state["jobs"].values() if v["expires"] > now]),
            "paused_for": max(0.0, state["paused_until"] - now),
        }
