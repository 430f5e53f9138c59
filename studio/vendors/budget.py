"""One request budget for a vendor's rate limits, shared by every process.

Perfect Corp allows 100 requests a minute per access token and 100 per five
minutes per client IP (vendor-apis.md §1.9.2), counting every call, status
polls included, and a task that is not polled for 10 s is lost. So all web
and worker processes behind one IP must draw from one budget, and a new job
may start only when the budget can also carry the polls of the jobs already
running. This module keeps that budget in Django's cache (a DatabaseCache
now, Redis later): a log of recent request times plus the requests each
admitted job has reserved, updated under a short mutex built on
`cache.add` — the one operation both backends perform atomically.

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

log = logging.getLogger(__name__)


class BudgetTimeout(Exception):
    """The budget had no room before the caller's deadline."""


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
                wait = max(wait, 0.5)
            else:
                wait = max(wait, in_window[over - 1] + window.seconds - now + 0.01)
        return wait

    # --- the public operations -------------------------------------------------------------

    def admit(
        self,
        job_key: str,
        expected: int,
        *,
        deadline: float,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        """Reserve `expected` requests for a new job, waiting until the budget can carry them.

        Raises BudgetTimeout when the deadline passes first. Re-admitting a job
        that already holds a reservation tops it up to `expected`.
        """
        waited = False
        while True:
            now = self.clock()
            with self._locked() as state:
                self._prune(state, now)
                held = state["jobs"].get(job_key, {}).get("left", 0)
                wait = max(0.0, state["paused_until"] - now)
                if not wait:
                    wait = self._wait_for(
                        state, now, max(0, expected - held), exclude=job_key, reserve=True, headroom=self.headroom
                    )
                if wait <= 0:
                    state["jobs"][job_key] = {"left": max(expected, held), "expires": now + self.reservation_ttl}
                    return
            if now + wait > deadline:
                raise BudgetTimeout
            if on_wait and not waited:
                on_wait()
            waited = True
            self.sleep(min(wait, 2.0))

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
            with self._locked() as state:
                self._prune(state, now)
                job = state["jobs"].get(job_key) if job_key else None
                pause = max(0.0, state["paused_until"] - now)
                if poll:
                    # The 10-second rule keeps running: a poll waits out a pause only briefly.
                    if poll_pause_until is None:
                        poll_pause_until = now + min(pause, self.poll_pause_cap)
                    pause = max(0.0, poll_pause_until - now)
                if pause:
                    wait = pause
                elif job is not None and job["left"] > 0:
                    wait = self._wait_for(state, now, 1, exclude=job_key, reserve=True, headroom=0)
                elif urgent or poll or job_key:
                    wait = self._wait_for(state, now, 1, exclude=None, reserve=True, headroom=0)
                else:
                    wait = self._wait_for(state, now, 1, exclude=None, reserve=True, headroom=self.headroom)
                if wait <= 0:
                    state["log"].append(now)
                    if job is not None:
                        job["left"] = max(0, job["left"] - 1)
                        job["expires"] = now + self.reservation_ttl
                    return
            if deadline is not None and now + wait > deadline:
                raise BudgetTimeout
            self.sleep(min(wait, 1.0))

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
