"""Webhooks first, polling as the backstop: wake-ups, both endpoints, a real run, one private-address rule."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from studio import wakeup, webhook_signatures, webhooks
from studio.jobs.create import job_create
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import http as vendor_http
from studio.vendors import sandbox
from studio.vendors.base import VendorError, get_provider
from studio.vendors.emulators.fetch import django_client_deliver
from studio.vendors.emulators.perfectcorp import SANDBOX_WEBHOOK_SECRET
from studio.vendors.emulators.wavespeed import WaveSpeedEmulator
from tests import images

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-webhooks")
SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXRoZS13ZWJob29rLWVuZHBvaW50"
PC_URL = "/webhooks/perfectcorp/"


@pytest.fixture(autouse=True)
def _clean(settings, monkeypatch):
    settings.PERFECTCORP_WEBHOOK_SECRET = SECRET
    settings.WAVESPEED_API_KEY = ""
    monkeypatch.setattr(vendor_http, "backoff_delay", lambda *a, **k: 0)
    sandbox.reset()
    yield
    sandbox.reset()


def _job(provider="perfectcorp", task_id="task-1", status=Job.Status.RUNNING) -> Job:
    return Job.objects.create(
        **OWNER.fields(), operation="pc_hairstyle", provider=provider, vendor_task_id=task_id, status=status
    )


def _delivery(body: dict | bytes, *, secret=SECRET, message_id=None, at=None, signature=None):
    message_id = message_id or f"msg_{uuid.uuid4().hex}"  # the seen-ids cache outlives a test
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    at = int(time.time()) if at is None else at
    sig = signature or webhook_signatures.sign(secret, message_id, at, raw)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(at), "webhook-signature": sig}
    return raw, headers


def _post(client, raw, headers):
    return client.post(PC_URL, data=raw, content_type="application/json", headers=headers)


def _woken(job) -> bool:
    return wakeup.wait(job.pk, 0)


PAYLOAD = {"created_at": 1761112848, "data": {"task_id": "task-1", "task_status": "success"}}


# --- wake-up -----------------------------------------------------------------------------------


def test_a_wake_before_the_wait_counts_once_and_a_wait_without_one_times_out():
    key = uuid.uuid4().hex
    wakeup.wake(key)
    wakeup.wake(key)  # a repeated webhook: one poll answers both
    assert wakeup.wait(key, 0) is True
    assert wakeup.wait(key, 0.3) is False
    assert wakeup.wait(uuid.uuid4().hex, 0) is False


def test_a_wake_from_another_thread_ends_the_wait_early():
    key = uuid.uuid4().hex
    threading.Timer(0.3, wakeup.wake, args=(key,)).start()
    assert wakeup.wait(key, 60) is True  # a wait that ended without its timeout: woken


def test_a_long_wait_is_not_cut_short_by_a_socket_timeout():
    # redis-py 8 reuses its 5 s connect timeout as the read timeout unless told
    # otherwise, which crashed every wait between two polls longer than that.
    key = uuid.uuid4().hex
    threading.Timer(6.0, wakeup.wake, args=(key,)).start()
    started = time.monotonic()
    assert wakeup.wait(key, 30) is True
    assert time.monotonic() - started >= 5.9


def test_an_unreachable_redis_makes_the_wait_a_plain_pause(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    wakeup.redis_client.cache_clear()
    try:
        started = time.monotonic()
        assert wakeup.wait(uuid.uuid4().hex, 0.5) is False
        assert time.monotonic() - started >= 0.45
    finally:
        wakeup.redis_client.cache_clear()


# --- Perfect Corp: Standard Webhooks -------------------------------------------------------------


def test_a_valid_delivery_wakes_the_running_job_of_that_task(client):
    job, other, done = _job(), _job(task_id="task-2"), _job(status=Job.Status.SUCCEEDED)
    response = _post(client, *_delivery(PAYLOAD))
    assert response.status_code == 200
    assert _woken(job) and not _woken(other) and not _woken(done)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and not job.results.exists(), "a webhook never stores anything"


def test_several_signatures_one_of_them_valid(client):
    job = _job()
    raw, headers = _delivery(PAYLOAD)
    headers["webhook-signature"] = "v1,AAAAbm90LXRoaXMtb25l " + headers["webhook-signature"]
    assert _post(client, raw, headers).status_code == 200 and _woken(job)


@pytest.mark.parametrize(
    "case",
    ["forged", "wrong secret", "body changed", "stale", "future", "missing header", "bad timestamp", "malformed"],
)
def test_refused_deliveries_get_400_and_change_nothing(client, case):
    job = _job()
    now = int(time.time())
    raw, headers = _delivery(PAYLOAD)
    if case == "forged":
        headers["webhook-signature"] = "v1,bm90IGEgc2lnbmF0dXJlIGF0IGFsbCBidXQgbG9uZyBlbm91Z2g="
    elif case == "wrong secret":
        raw, headers = _delivery(PAYLOAD, secret="whsec_b3RoZXItc2VjcmV0")
    elif case == "body changed":
        raw = raw.replace(b"success", b"error")
    elif case == "stale":
        raw, headers = _delivery(PAYLOAD, at=now - 360)  # well past 300 s, so a slow test run cannot bring it back inside
    elif case == "future":
        raw, headers = _delivery(PAYLOAD, at=now + 360)
    elif case == "missing header":
        del headers["webhook-id"]
    elif case == "bad timestamp":
        raw, headers = _delivery(PAYLOAD, signature="v1,x")
        headers["webhook-timestamp"] = "soon"
    elif case == "malformed":
        raw, headers = _delivery(b'{"data": "not an object"}')
    response = _post(client, raw, headers)
    assert response.status_code == 400
    assert not _woken(job)
    if case in ("stale", "future", "malformed"):
        # Its id was not used up: the genuine, timely delivery is still accepted.
        assert _post(client, *_delivery(PAYLOAD)).status_code == 200 and _woken(job)


def test_a_replayed_delivery_is_acknowledged_but_wakes_nothing(client):
    job = _job()
    raw, headers = _delivery(PAYLOAD, message_id="msg_replayed_" + uuid.uuid4().hex)
    assert _post(client, raw, headers).status_code == 200 and _woken(job)
    assert _post(client, raw, headers).status_code == 200  # the vendor retrying: ack it
    assert not _woken(job)
    # A new delivery (new id) about the same task is a new event.
    assert _post(client, *_delivery(PAYLOAD, message_id=None)).status_code == 200 and _woken(job)


def test_concurrent_duplicates_wake_once(client):
    job = _job()
    raw, headers = _delivery(PAYLOAD, message_id="msg_race_" + uuid.uuid4().hex)
    woken = []
    results = []

    def deliver():
        results.append(webhooks.perfectcorp_delivery(secret=SECRET, headers=headers, body=raw))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    woken.append(_woken(job))
    assert sorted(results) == [0, 0, 0, 1] and woken == [True]


def test_unknown_task_is_acknowledged(client):
    body = {"created_at": 1, "data": {"task_id": "never-ours", "task_status": "error"}}
    assert _post(client, *_delivery(body)).status_code == 200


def test_oversized_body_unconfigured_secret_and_get_are_refused(client, settings):
    big = b"{" + b" " * (webhooks.MAX_BODY_BYTES + 1) + b"}"
    assert _post(client, *_delivery(big)).status_code == 413
    assert client.get(PC_URL).status_code == 405
    settings.PERFECTCORP_WEBHOOK_SECRET = ""
    assert _post(client, *_delivery(PAYLOAD)).status_code == 400


def test_sandbox_mode_uses_the_emulators_secret(client, settings):
    settings.STUDIO_SANDBOX = True
    settings.STUDIO_SANDBOX_URL = ""
    job = _job()
    assert _post(client, *_delivery(PAYLOAD)).status_code == 400  # the live secret is not the sandbox's
    assert _post(client, *_delivery(PAYLOAD, secret=SANDBOX_WEBHOOK_SECRET)).status_code == 200 and _woken(job)


# --- WaveSpeed: a per-job signed callback ----------------------------------------------------------


def test_wavespeed_token_wakes_its_own_job_only(client):
    job, other = _job("wavespeed", "p1"), _job("wavespeed", "p2")
    url = webhooks.wavespeed_callback_url(job.pk)
    assert url.startswith("http://127.0.0.1:8000/webhooks/wavespeed/")
    path = url.split("8000", 1)[1]
    assert client.post(path, data=b'{"id":"p2","status":"completed"}', content_type="application/json").status_code == 200
    assert _woken(job) and not _woken(other), "the body is only a hint: the token decides"
    token = webhooks.wavespeed_token(job.pk)
    for bad in (token[:-2] + "xx", token.replace(str(job.pk), str(other.pk)), "nonsense"):
        assert client.post(f"/webhooks/wavespeed/{bad}/").status_code == 404
    assert not _woken(other)
    salted = webhook_signatures  # a token of another salt (e.g. a signed photo link) is refused
    from studio import signed_media

    assert client.post(f"/webhooks/wavespeed/{signed_media.photo_token(other.pk)}/").status_code == 404
    assert salted and not _woken(other)


# --- a real run against the WaveSpeed emulator ----------------------------------------------------


def _run(photo, emulator) -> tuple[Job, int]:
    op = get_operation("ws_portrait")
    params, _ = op.clean_params({"prompt": "warm light", "seed": 5})
    with sandbox.use("wavespeed", emulator):
        job = job_create(owner=OWNER, photo=photo, operation=op, params=params)
    job.refresh_from_db()
    polls = sum(1 for method, path in emulator.log if method == "GET" and "/predictions/" in path)
    return job, polls


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def test_a_webhook_wakes_the_job_and_saves_polls(settings, photo):
    settings.WAVESPEED_POLL_MS = 100
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 300  # only the webhook can end the wait soon
    hooked = WaveSpeedEmulator(stage_seconds=0.4, deliverer=django_client_deliver())
    job, polls_with = _run(photo, hooked)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert hooked.counters["webhooks_delivered"] == 1
    (task,) = hooked.tasks.values()
    assert "/webhooks/wavespeed/" in task.webhook
    assert polls_with == 1, "woken once, polled once: the app read the result itself"

    settings.WAVESPEED_WEBHOOKS = False
    plain = WaveSpeedEmulator(stage_seconds=0.4)
    job, polls_without = _run(photo, plain)
    assert job.status == Job.Status.SUCCEEDED
    assert next(iter(plain.tasks.values())).webhook == ""
    assert polls_without > polls_with


@pytest.mark.parametrize("fault, value", [("webhook_repeated", 2), ("webhook_delay", 0.5)])
def test_repeated_and_delayed_webhooks(settings, photo, fault, value):
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 300
    emu = WaveSpeedEmulator(stage_seconds=0.2, deliverer=django_client_deliver())
    emu.faults[fault] = value
    job, polls = _run(photo, emu)
    assert job.status == Job.Status.SUCCEEDED and job.results.count() == 1
    assert polls <= 2  # a repeat arriving after the poll may wake at most one more (a finished job waits no more)


def test_a_lost_webhook_is_caught_by_the_backstop_poll(settings, photo):
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 1
    emu = WaveSpeedEmulator(stage_seconds=0.2, deliverer=django_client_deliver())
    emu.faults["webhook_lost"] = 1
    job, polls = _run(photo, emu)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert emu.counters["webhooks_lost"] == 1 and emu.counters["webhooks_delivered"] == 0
    assert polls >= 1


def test_webhook_over_real_http_to_a_live_server(settings, live_server, photo):
    settings.STUDIO_PUBLIC_URL = live_server.url
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 300
    emu = WaveSpeedEmulator(stage_seconds=0.3)  # http_deliver: a real POST to 127.0.0.1
    op = get_operation("ws_portrait")
    params, _ = op.clean_params({"prompt": "soft light", "seed": 2})
    with emu.serve(), sandbox.use("wavespeed", emu, over_http=True):
        job = job_create(owner=OWNER, photo=photo, operation=op, params=params)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert emu.counters["webhooks_delivered"] == 1
    assert next(iter(emu.tasks.values())).webhook.startswith(live_server.url + "/webhooks/wavespeed/")


def test_live_mode_with_a_loopback_public_url_registers_no_webhook(settings, photo):
    emu = WaveSpeedEmulator(api_keys={"ws_live"})
    with emu.serve() as url:
        settings.WAVESPEED_BASE_URL, settings.WAVESPEED_API_KEY = url, "ws_live"
        settings.WAVESPEED_POLL_MS = 100
        op = get_operation("ws_portrait")
        params, _ = op.clean_params({"prompt": "soft light", "seed": 2})
        job = job_create(owner=OWNER, photo=photo, operation=op, params=params)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert next(iter(emu.tasks.values())).webhook == "", "a real vendor cannot call 127.0.0.1"


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "public_url, reachable",
    [
        ("http://127.0.0.1:8000", False),
        ("http://localhost:8000", False),
        ("http://10.0.0.5", False),
        ("http://[::1]:8000", False),
        ("https://studio.example.com", True),
        ("https://93.184.216.34", True),
    ],
)
def test_which_public_urls_a_real_vendor_can_call(settings, public_url, reachable):
    settings.STUDIO_PUBLIC_URL = public_url
    assert webhooks.vendor_can_call_back(sandboxed=False) is reachable
    assert webhooks.vendor_can_call_back(sandboxed=True) is True


# --- one private-address rule for every adapter -----------------------------------------------------

JPEG = images.to_bytes(images.astronaut(), "JPEG")


class _Files(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(JPEG)))
        self.end_headers()
        self.wfile.write(JPEG)

    def log_message(self, *args):
        pass


@pytest.fixture
def two_local_servers():
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Files) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.backend_free
@pytest.mark.parametrize("vendor", ["perfectcorp", "wavespeed", "vtrix", "headshot"])
def test_private_links_only_on_the_vendors_own_host_and_port(settings, two_local_servers, vendor):
    own, other = two_local_servers
    provider = get_provider(vendor)
    setattr(settings, provider.base_url_setting, own)  # a self-hosted or staging endpoint on loopback
    http = provider.http(retries=0)
    try:
        assert http.download(f"{own}/results/a.jpg")[0] == JPEG
        with pytest.raises(VendorError, match="link we don't follow"):
            http.download(f"{other}/results/a.jpg")  # loopback, another port: not the vendor
        with pytest.raises(VendorError, match="link we don't follow"):
            http.download("http://169.254.169.254/latest/meta-data/")
    finally:
        http.close()
    # Served by its emulator (sandbox mode, tests), the emulator's own address is the one trusted.
    with sandbox.use(vendor, WaveSpeedEmulator(base_url=other), over_http=True):
        http = provider.http(retries=0)
        try:
            assert http.download(f"{other}/files/b.jpg")[0] == JPEG
            with pytest.raises(VendorError, match="link we don't follow"):
                http.download(f"{own}/results/a.jpg")
        finally:
            http.close()
