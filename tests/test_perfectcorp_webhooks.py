"""Perfect Corp v2 webhooks end to end: the emulator signs and delivers, the endpoint wakes the job.

Real jobs run through the job runner (sync mode) against the v2 emulator;
its deliveries go through Django's test client to POST /webhooks/perfectcorp/
with real Standard Webhooks signatures. The endpoint's own cases (forged,
replayed, stale, duplicate…) are in tests/test_webhooks.py.
"""

from __future__ import annotations

import time

import pytest

from studio.jobs.create import job_create
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import sandbox
from studio.vendors.emulators.fetch import django_client_deliver
from studio.vendors.emulators.perfectcorp import SANDBOX_WEBHOOK_SECRET, PerfectCorpEmulator
from studio.vendors.perfectcorp import PerfectCorpProvider
from tests.pc_support import job_input

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-pc-webhooks")
HOOK_URL = "http://testserver/webhooks/perfectcorp/"


@pytest.fixture(autouse=True)
def _v2(settings):
    settings.PERFECTCORP_API_VERSION = "v2"
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    sandbox.reset()
    yield
    sandbox.reset()


def emulator(engine_seconds: float, **faults) -> PerfectCorpEmulator:
    emu = PerfectCorpEmulator()
    emu.engine_seconds = engine_seconds
    emu.webhook_url = HOOK_URL
    emu.deliverer = django_client_deliver()
    emu.faults.update(faults)
    return emu


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def _eventually(check, seconds: float = 5.0) -> bool:
    """The emulator counts a delivery once the app has answered it, which may be after the job ended."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _run(photo, emu) -> tuple[Job, int]:
    op = get_operation("pc_colorize")
    with sandbox.use("perfectcorp", emu):
        job = job_create(owner=OWNER, photo=photo, operation=op, params={})
    job.refresh_from_db()
    polls = sum(1 for method, path in emu.log if method == "GET" and "/task/colorize/" in path)
    return job, polls


def test_a_delivered_webhook_wakes_the_job_and_saves_polls(settings, photo):
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 300  # only the webhook can end the wait early
    hooked = emulator(1.5)
    job, polls_with = _run(photo, hooked)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert _eventually(lambda: hooked.counters["webhooks_delivered"] == 1) and job.vendor_state["webhook"] is True
    assert polls_with == 1, "woken once, polled once: the app read the result itself"
    assert job.results.count() == 1

    settings.PERFECTCORP_WEBHOOKS = False
    settings.PERFECTCORP_POLL_CEILING_MS = 400
    plain = emulator(1.5)
    job, polls_without = _run(photo, plain)
    assert job.status == Job.Status.SUCCEEDED
    assert job.vendor_state["webhook"] is False
    assert polls_without > polls_with


def test_a_lost_webhook_is_caught_by_the_backstop_poll(settings, photo):
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 1
    emu = emulator(0.3, webhook_lost=1)
    job, polls = _run(photo, emu)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert emu.counters["webhooks_lost"] == 1 and emu.counters["webhooks_delivered"] == 0
    assert polls >= 1


def test_repeated_deliveries_of_one_event_wake_once(settings, photo):
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 300
    emu = emulator(0.5, webhook_repeated=2)
    job, polls = _run(photo, emu)
    assert job.status == Job.Status.SUCCEEDED and job.results.count() == 1
    assert _eventually(lambda: emu.counters["webhooks_delivered"] == 3)  # acknowledged every time
    assert polls == 1, "the same webhook-id is acted on once"
    assert emu.counters["charges"] == 1 and emu.counters["v2_creates"] == 1


def test_with_a_webhook_the_backstop_still_keeps_inside_the_polling_window(settings, portrait_jpeg):
    """§3: a running task must be polled within its window; a webhook does not lift that rule."""
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 300
    emu = emulator(30.0)
    emu.webhook_url = ""  # no deliveries in this unit test
    with sandbox.use("perfectcorp", emu):
        pc = PerfectCorpProvider(sleep=lambda s: None)
        job = job_input("pc_colorize", portrait_jpeg)
        submission = pc.submit(job)
        assert submission.progress.webhook and submission.progress.poll_after <= 8.5
        emu.advance(8.4)
        progress = pc.poll(job, submission.task_id)
        assert not progress.finished and progress.webhook and progress.poll_after <= 8.5
        emu.advance(11)  # a client that trusted the webhook alone: the task expires
        with pytest.raises(Exception):
            pc.poll(job, submission.task_id)
    assert emu.counters["lost"] == 1


def test_deliveries_carry_a_valid_standard_webhooks_signature(client, settings):
    """The emulator's deliveries pass the real endpoint's verification, and a tampered copy does not."""
    emu = emulator(0.0)
    captured = []
    emu.deliverer = lambda url, body, headers: captured.append((body, headers)) or 204
    emu.notify("task-x", "success")
    ((body, headers),) = captured
    settings.PERFECTCORP_WEBHOOK_SECRET = SANDBOX_WEBHOOK_SECRET
    post = {k: v for k, v in headers.items() if k != "Content-Type"}
    sent = client.post("/webhooks/perfectcorp/", data=body, content_type="application/json", headers=post)
    assert sent.status_code == 200
    forged = body.replace(b"success", b"error")
    assert (
        client.post("/webhooks/perfectcorp/", data=forged, content_type="application/json", headers=post).status_code
        == 400
    )
