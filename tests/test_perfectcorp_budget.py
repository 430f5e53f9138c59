"""The shared Perfect Corp request budget: windows, admission control, 429 pauses, processes sharing it.

The budget lives in Django's cache (the database cache here), so two budget
objects — or two adapters — with the same namespace behave like two
processes of one deployment.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from django.core.cache import cache
from django.db import connection

from studio.vendors.base import VendorError
from studio.vendors.budget import BudgetTimeout, RequestBudget, Window
from studio.vendors.perfectcorp import BUSY, WAITING, PerfectCorpProvider
from tests.pc_support import job_input, new_emulator, routed, run


class FakeTime:
    """A clock that moves only when someone sleeps."""

    def __init__(self):
        self.now = 1_000_000.0
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def budget(fake: FakeTime, *, limit=10, window=100.0, headroom=1, namespace="t") -> RequestBudget:
    return RequestBudget(namespace, (Window(limit, window),), headroom=headroom, clock=fake.clock, sleep=fake.sleep)


@pytest.fixture(autouse=True)
def _clean_cache(db):
    cache.clear()


def test_a_full_window_makes_the_next_request_wait_until_the_oldest_expires():
    fake = FakeTime()
    b = budget(fake)
    for _ in range(10):
        b.take(urgent=True)
        fake.now += 1
    assert fake.slept == 0
    b.take(urgent=True)
    assert fake.slept == pytest.approx(100 - 10, abs=0.1)  # the first request left the window


def test_two_processes_share_one_budget():
    fake = FakeTime()
    first, second = budget(fake, namespace="shared"), budget(fake, namespace="shared")
    for _ in range(6):
        first.take(urgent=True)
    for _ in range(4):
        second.take(urgent=True)
    with pytest.raises(BudgetTimeout):
        first.take(urgent=True, deadline=fake.now + 5)
    assert budget(fake, namespace="other").snapshot()["windows"][0]["used"] == 0


def test_both_windows_must_hold():
    fake = FakeTime()
    b = RequestBudget("w", (Window(5, 10.0), Window(8, 100.0)), headroom=0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(8):
        b.take(urgent=True)  # the short window refills after 10 s, twice
    assert 10 <= fake.slept < 20
    started = fake.slept
    b.take(urgent=True)  # now the long window is full: wait until its first request leaves it
    assert fake.slept - started > 70


def test_admission_reserves_the_requests_of_running_jobs():
    fake = FakeTime()
    b = budget(fake, limit=10, headroom=1)
    b.admit("a", 4, deadline=fake.now + 1)
    b.admit("b", 5, deadline=fake.now + 1)
    with pytest.raises(BudgetTimeout):  # 4 + 5 + 1 > 10 - 1
        b.admit("c", 1, deadline=fake.now + 1)
    # Nobody else can eat the reservations: a background call waits…
    with pytest.raises(BudgetTimeout):
        b.take(None, deadline=fake.now + 1)
    # …an urgent one (auth, an extra poll) may use the headroom only.
    b.take(None, urgent=True)
    with pytest.raises(BudgetTimeout):
        b.take(None, urgent=True, deadline=fake.now + 1)
    # The reserved jobs always get their requests at once.
    before = fake.slept
    for _ in range(4):
        b.take("a")
    for _ in range(5):
        b.take("b")
    assert fake.slept == before
    assert b.snapshot()["reserved"] == 0


def test_a_waiting_job_is_admitted_when_the_window_moves_on_and_says_it_waits():
    fake = FakeTime()
    b = budget(fake, limit=10, headroom=1)
    for _ in range(9):
        b.take(urgent=True)
    waits = []
    b.admit("late", 3, deadline=fake.now + 1000, on_wait=lambda: waits.append(fake.now))
    assert fake.slept >= 99
    # Said once, then repeated every 10 s: it keeps the job's heartbeat fresh while it waits.
    assert len(waits) >= 9 and all(later - earlier >= 10 for earlier, later in zip(waits, waits[1:], strict=False))


def test_release_gives_back_unused_requests():
    fake = FakeTime()
    b = budget(fake, limit=10, headroom=1)
    b.admit("a", 9, deadline=fake.now + 1)
    b.release("a")
    b.admit("b", 9, deadline=fake.now + 1)
    assert fake.slept == 0


def test_reservations_of_dead_workers_expire():
    fake = FakeTime()
    b = RequestBudget("dead", (Window(10, 100.0),), headroom=1, reservation_ttl=30, clock=fake.clock, sleep=fake.sleep)
    b.admit("crashed", 9, deadline=fake.now + 1)
    b.admit("next", 9, deadline=fake.now + 100)
    assert 29 < fake.slept < 33


def test_a_429_pauses_everyone_with_growing_jittered_backoff_but_polls_only_briefly():
    fake = FakeTime()
    b = budget(fake, limit=100)
    pauses = [b.rate_limited(base=2.0) for _ in range(4)]
    assert pauses[0] <= 2.0 and pauses[3] > 4.0  # 2, 4, 8, 16 s × jitter in [0.5, 1]
    paused_for = b.snapshot()["paused_for"]
    b.take("job", poll=True)
    assert fake.slept <= b.poll_pause_cap + 0.01  # the 10-second rule keeps running
    b.take(None)
    assert fake.slept >= paused_for - 0.01
    b.succeeded()
    assert cache.get(b._state_key)["strikes"] == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_takers_never_exceed_the_limit():
    """Eight threads (own database connections) race for 100 slots: exactly 100 win."""
    b = RequestBudget("race", (Window(100, 3600.0),), headroom=0)
    won, refused = [], []

    def worker():
        try:
            for _ in range(20):
                try:
                    b.take(urgent=True, deadline=time.time())
                    won.append(1)
                except BudgetTimeout:
                    refused.append(1)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 100 and len(refused) == 60
    assert b.snapshot()["windows"][0]["used"] == 100


def test_the_state_stays_small_whatever_the_limit():
    fake = FakeTime()
    b = RequestBudget("big", (Window(10_000_000, 60.0), Window(10_000_000, 300.0)), clock=fake.clock, sleep=fake.sleep)
    for _ in range(3000):
        b.take("job")
        fake.now += 0.1  # 10 requests a second for 300 s
    state = cache.get(b._state_key)
    assert len(state["counts"]) <= 300 / b.bucket + 1  # one entry per bucket, not one per request
    short, long = (w["used"] for w in b.snapshot()["windows"])
    # The bucket the short window starts in counts whole (its requests as sent at its latest).
    assert 600 <= short <= 600 + 10 and long == 3000
    assert fake.slept == 0


def test_requests_counted_per_bucket_never_exceed_any_window():
    """Random bursts against two windows: at every request, the real count in each window stays within its limit."""
    rng = random.Random(7)
    fake = FakeTime()
    windows = (Window(12, 6.0), Window(30, 30.0))
    b = RequestBudget("buckets", windows, headroom=0, clock=fake.clock, sleep=fake.sleep)
    sent = []
    for _ in range(150):
        b.take(urgent=True)
        sent.append(fake.now)
        fake.now += rng.choice((0.0, 0.01, 0.03, 0.2, 1.5))
    for at in sent:
        for window in windows:
            assert sum(1 for t in sent if at - window.seconds < t <= at) <= window.limit
    # And nobody waited for nothing: over 150 requests the long window (30 per 30 s) sets the pace.
    assert sent[-1] - sent[0] < (150 / 30) * 30 + 10


def test_a_wait_ends_when_the_next_request_fits():
    fake = FakeTime()
    b = budget(fake, limit=3, window=60.0, headroom=0)
    for offset in (0.0, 0.2, 0.4):  # one bucket (1 s)
        fake.now = 1_000_000.0 + offset
        b.take(urgent=True)
    b.take(urgent=True)
    # The bucket counts all three as sent at 0.4 s: never before the real 60 s are up, and not long after.
    assert 1_000_060.0 <= fake.now <= 1_000_060.0 + b.bucket + b.max_sleep


def test_a_state_written_as_a_request_log_is_still_counted():
    fake = FakeTime()
    b = budget(fake, limit=10, window=100.0, headroom=0)
    cache.set(b._state_key, {"log": [fake.now - 50 + i for i in range(10)], "jobs": {}, "paused_until": 0.0})
    assert b.snapshot()["windows"][0]["used"] == 10
    b.take(urgent=True)
    assert fake.slept == pytest.approx(50, abs=0.1)  # the oldest logged request had to leave first
    assert "log" not in cache.get(b._state_key)


class CountingCache:
    """The cache, counting round trips by operation."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        operation = getattr(cache, name)

        def counted(*args, **kwargs):
            self.calls.append(name)
            return operation(*args, **kwargs)

        return counted


def test_a_take_with_room_costs_four_round_trips():
    counting = CountingCache()

    def fresh():  # the adapter builds a budget object per call
        return RequestBudget("trips", (Window(1000, 60.0),), cache=counting)

    fresh().take("job")
    counting.calls.clear()
    fresh().take("job")  # the last take saw plenty of room: straight to the lock
    assert counting.calls == ["add", "get", "set", "delete"]
    fresh().take("job", poll=True)  # a poll looks once (for a pause), then takes the lock
    assert counting.calls[4:] == ["get", "add", "get", "set", "delete"]


def test_a_full_budget_is_looked_at_without_the_lock():
    fake = FakeTime()
    counting = CountingCache()
    b = RequestBudget("full", (Window(4, 60.0),), headroom=0, cache=counting, clock=fake.clock, sleep=fake.sleep)
    for _ in range(4):
        b.take(urgent=True)
    counting.calls.clear()
    with pytest.raises(BudgetTimeout):
        b.take(urgent=True, deadline=fake.now + 1)
    assert counting.calls == ["get"]  # no room: the waiter never queued on the mutex


def test_a_lock_that_expired_under_a_slow_holder_is_left_to_its_new_holder(monkeypatch):
    from types import SimpleNamespace

    from studio.vendors import budget as module

    monotonic = [100.0]
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: monotonic[0], sleep=time.sleep))
    b = RequestBudget("slow", (Window(10, 60.0),))
    with b._locked():
        monotonic[0] += b.LOCK_TIMEOUT + 1  # stalled past the lock's timeout…
        cache.set(b._lock_key, "another process", timeout=5)  # …which let another process take it
    assert cache.get(b._lock_key) == "another process"
    cache.delete(b._lock_key)
    with b._locked():
        monotonic[0] += 0.01
    assert cache.get(b._lock_key) is None  # a quick holder frees it

    class SlowAdd:  # an add that waited on a busy database for most of the lock's timeout
        def __getattr__(self, name):
            return getattr(cache, name)

        def add(self, *args, **kwargs):
            monotonic[0] += b.LOCK_TIMEOUT - 0.5
            return cache.add(*args, **kwargs)

    slow = RequestBudget("slow", (Window(10, 60.0),), cache=SlowAdd())
    with slow._locked():
        monotonic[0] += 0.6  # briefly held, but the lock may have expired meanwhile
        cache.set(b._lock_key, "another process", timeout=5)
    assert cache.get(b._lock_key) == "another process"


@pytest.mark.django_db(transaction=True)
def test_concurrent_takers_with_plenty_of_room_lose_no_request():
    """Eight threads take 40 requests each straight through the lock: every one is counted."""
    b = RequestBudget("crowd", (Window(10_000_000, 3600.0),))

    def worker():
        try:
            mine = RequestBudget("crowd", (Window(10_000_000, 3600.0),))  # a process of its own
            for _ in range(40):
                mine.take("job")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert b.snapshot()["windows"][0]["used"] == 320


# --- through the adapter ---------------------------------------------------------------------------


@pytest.fixture
def small_limits(settings):
    settings.PERFECTCORP_RATE_PER_IP = 8
    settings.PERFECTCORP_RATE_WINDOW_IP_S = 3
    settings.PERFECTCORP_RATE_PER_TOKEN = 100
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    settings.PERFECTCORP_POLL_CEILING_MS = 300


@pytest.mark.django_db(transaction=True)
def test_two_adapter_processes_share_the_limit_and_never_meet_a_429(small_limits, portrait_jpeg):
    emulator = new_emulator()
    emulator.rate_per_ip = (8, 3.0)  # the vendor's limit, as small as ours
    failures = []

    def process(provider):
        try:
            for _ in range(2):
                outputs, _ = run(provider, job_input("pc_colorize", portrait_jpeg))
                assert outputs
        except Exception as exc:  # reported below
            failures.append(exc)
        finally:
            connection.close()

    with routed(emulator, over_http=True):
        workers = [threading.Thread(target=process, args=(PerfectCorpProvider(),)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert not failures
    assert emulator.counters["charges"] == 4
    assert emulator.counters["429"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_job_waits_for_capacity_and_says_so(small_limits, portrait_jpeg):
    emulator = new_emulator()
    stages = []
    with routed(emulator, over_http=False):
        provider = PerfectCorpProvider(sleep=lambda s: None)
        for _ in range(8):
            provider.budget().take(urgent=True)  # other processes used the whole window
        job = job_input("pc_colorize", portrait_jpeg, report=lambda stage, fraction=None: stages.append(stage))
        outputs, _ = run(provider, job)
    assert outputs and stages[0] == WAITING


@pytest.mark.django_db(transaction=True)
def test_a_job_that_cannot_get_capacity_before_its_deadline_fails_with_try_later(small_limits, portrait_jpeg):
    emulator = new_emulator()
    with routed(emulator, over_http=False):
        provider = PerfectCorpProvider(sleep=lambda s: None)
        for _ in range(8):
            provider.budget().take(urgent=True)
        job = job_input("pc_colorize", portrait_jpeg, deadline=time.time() + 0.5)
        with pytest.raises(VendorError) as failure:
            provider.submit(job)
    assert failure.value.message == BUSY and not failure.value.permanent
    assert emulator.counters["requests"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_429_from_a_stricter_vendor_is_backed_off_and_retried(small_limits, settings, portrait_jpeg):
    settings.PERFECTCORP_RATE_PER_IP = 100  # we believe in more than the vendor grants
    emulator = new_emulator()
    emulator.rate_per_ip = (3, 2.0)
    with routed(emulator, over_http=False):
        provider = PerfectCorpProvider()
        outputs, _ = run(provider, job_input("pc_colorize", portrait_jpeg))
        state = cache.get(provider.budget()._state_key)
    assert outputs and emulator.counters["429"] >= 1 and emulator.counters["charges"] == 1
    assert state["paused_until"] > 0  # every process backed off


@pytest.mark.django_db(transaction=True)
def test_on_sqlite_a_transaction_is_the_mutex_and_no_lock_key_is_written(monkeypatch):
    """Embedded: BEGIN IMMEDIATE holds the database's write lock, so the cache mutex's three writes
    (add, set, delete) become one; with Redis the cache mutex is still used."""
    from django.conf import settings

    b = RequestBudget("sqlite-mutex", (Window(1000, 60.0),))
    if settings.REDIS_URL:
        assert b._sqlite_alias() is None
        pytest.skip("scaled: the budget's mutex is the cache's (Redis SET NX)")
    added = []
    real_add = cache.add
    monkeypatch.setattr(cache, "add", lambda key, *a, **kw: added.append(key) or real_add(key, *a, **kw))
    assert b._sqlite_alias() == "default"
    for _ in range(5):
        b.take("job")
    assert b.snapshot()["windows"][0]["used"] == 5
    assert not [key for key in added if key.endswith(":lock")]
