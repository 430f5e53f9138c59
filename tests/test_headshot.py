"""The Headshot API adapter against its emulator, over real HTTP on 127.0.0.1 and in-process."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from studio.errors import OperationUnavailable
from studio.jobs.create import job_create
from studio.models import Job, StyleTemplate
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import headshot as adapter
from studio.vendors import http as vendor_http
from studio.vendors import sandbox
from studio.vendors.base import get_provider
from studio.vendors.emulators.headshot import SANDBOX_KEY, HeadshotEmulator
from tests import images

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-headshot")
OP = get_operation("ai_headshot")
PROMPT = "corporate headshot, navy blazer, soft grey studio backdrop"


@pytest.fixture(autouse=True)
def _clean(settings, monkeypatch):
    settings.HEADSHOT_API_KEY = ""
    settings.HEADSHOT_API_JOB_DEADLINE_S = 30
    monkeypatch.setattr(vendor_http, "backoff_delay", lambda *a, **k: 0)  # retries without waiting
    sandbox.reset()
    yield
    sandbox.reset()


@pytest.fixture
def emulator():
    emu = HeadshotEmulator()
    with emu.serve(read_timeout_sleep=2.0), sandbox.use("headshot", emu, over_http=True):
        yield emu


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


@pytest.fixture
def other_person():
    """A different-looking person: the portrait mirrored, with its colour channels swapped."""
    arr = images.astronaut_array()[:, ::-1, ::-1]
    data = images.to_bytes(Image.fromarray(np.ascontiguousarray(arr)).resize((1024, 1024)), "JPEG", quality=92)
    return photo_create(owner=OWNER, data=data, filename="other.jpg")


@pytest.fixture
def template():
    return StyleTemplate.objects.create(
        name="Corporate",
        slug="corporate-test",
        operation="ai_headshot",
        provider="headshot",
        prompt=PROMPT,
        seed=48213,
    )


def run(photo, **raw) -> Job:
    params, errors = OP.clean_params(raw)
    assert not errors, errors
    job = job_create(owner=OWNER, photo=photo, operation=OP, params=params)
    job.refresh_from_db()  # ran inline on commit (sync mode)
    return job


def pixels(result) -> np.ndarray:
    with result.image.open("rb") as fh:
        return np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"), dtype=np.float32)


def corner(arr: np.ndarray) -> np.ndarray:
    """Mean colour of the top-left backdrop patch."""
    return arr[5:45, 5:45].reshape(-1, 3).mean(axis=0)


# --- end to end -------------------------------------------------------------------------


def test_template_run_gives_sample_number_results_with_seed(emulator, photo, template):
    job = run(photo, template=template.slug, num_images=4, size="1:1")

    assert job.status == Job.Status.SUCCEEDED, job.error_message
    results = list(job.results.order_by("index"))
    assert len(results) == 4
    assert all((r.width, r.height) == (768, 768) for r in results)
    assert all(r.meta["seed"] == 48213 and r.meta["template"] == template.slug for r in results)
    assert job.vendor_meta["images_returned"] == 4 and job.vendor_meta["seed"] == 48213
    sent = emulator.requests[-1]
    assert sent == {
        "prompt": PROMPT,
        "seed": 48213,
        "sampleNumber": 4,
        "identityScale": 0.8,
        "outputImageWidth": 768,
        "outputImageHeight": 768,
    }
    # Four different images of the same look (index varies light and framing).
    assert np.abs(pixels(results[0]) - pixels(results[1])).mean() > 1.0


def test_same_template_and_seed_give_the_same_look_for_anyone(emulator, photo, other_person, template):
    first = run(photo, template=template.slug).results.get()
    again = run(photo, template=template.slug).results.get()
    other = run(other_person, template=template.slug).results.get()
    reseeded = run(photo, template=template.slug, seed=999).results.get()

    assert np.array_equal(pixels(first), pixels(again)), "same person, template and seed: same picture"
    # Another person: different picture, same backdrop (the style).
    assert np.abs(pixels(first) - pixels(other)).mean() > 5
    assert np.abs(corner(pixels(first)) - corner(pixels(other))).max() < 6
    # Another seed: another look.
    assert np.abs(corner(pixels(first)) - corner(pixels(reseeded))).max() > 6
    assert reseeded.meta["seed"] == 999


def test_empty_seed_picks_a_random_one_and_reports_it(emulator, photo):
    a = run(photo, prompt=PROMPT).results.get()
    b = run(photo, prompt=PROMPT).results.get()
    sent = [r["seed"] for r in emulator.requests]
    assert sent == [a.meta["seed"], b.meta["seed"]]
    assert all(1 <= s <= 2**31 - 1 for s in sent)
    assert sent[0] != sent[1]


def test_size_presets_and_custom_size(emulator, photo):
    tall = run(photo, prompt=PROMPT, seed=5).results.get()
    custom = run(photo, prompt=PROMPT, seed=5, size="custom", width=600, height=904).results.get()
    assert (tall.width, tall.height) == (768, 1024)  # the vendor's default, 3:4
    assert (custom.width, custom.height) == (600, 904)


def test_identity_strength_is_sent_and_changes_the_picture(emulator, photo):
    strong = run(photo, prompt=PROMPT, seed=7, identity_scale=1.0).results.get()
    weak = run(photo, prompt=PROMPT, seed=7, identity_scale=0.0).results.get()
    assert [r["identityScale"] for r in emulator.requests] == [1.0, 0.0]
    assert np.abs(pixels(strong) - pixels(weak)).mean() > 1.0


def test_large_photos_are_reduced_to_our_sending_policy(emulator):
    big = photo_create(owner=OWNER, data=images.to_bytes(images.astronaut(scale=6), "JPEG"), filename="b.jpg")
    assert max(big.width, big.height) > 2048
    job = run(big, prompt=PROMPT, seed=3)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert emulator.input_sizes == [(2048, 2048)]


def test_in_process_transport_runs_the_same_protocol(photo):
    emu = HeadshotEmulator()
    with sandbox.use("headshot", emu):
        job = run(photo, prompt=PROMPT, num_images=2)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.results.count() == 2


def test_live_configuration_sends_the_configured_key(settings, photo):
    emu = HeadshotEmulator(api_keys={"hs_live_123"})
    with emu.serve() as url:
        settings.HEADSHOT_API_BASE_URL = url
        settings.HEADSHOT_API_KEY = "hs_live_123"
        assert get_provider("headshot").unavailable_reason() is None
        job = run(photo, prompt=PROMPT)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.sandbox is False


def test_sandbox_mode_uses_the_sandbox_key_and_marks_the_job(settings, photo):
    settings.STUDIO_SANDBOX = True
    job = run(photo, prompt=PROMPT)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.sandbox is True


def test_unconfigured_vendor_is_unavailable_with_the_reason(photo):
    reason = get_provider("headshot").unavailable_reason()
    assert reason and "HEADSHOT_API_KEY" in reason
    # Visitors get a calm message; the reason with the setting's name is kept for staff.
    with pytest.raises(OperationUnavailable) as refused:
        job_create(owner=OWNER, photo=photo, operation=OP, params=OP.defaults())
    assert "HEADSHOT_API_KEY" in refused.value.reason and "HEADSHOT_API_KEY" not in refused.value.message


def test_no_prompt_and_no_template_fails_with_advice(emulator, photo):
    job = run(photo)
    assert job.status == Job.Status.FAILED
    assert "template" in job.error_message
    assert emulator.requests == []


# --- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault, value, message, requests",
    [
        ("server_error", 1, adapter.VENDOR_FAULT, 1),  # maybe billed: not retried on our own
        ("hang", 1, "did not answer in time", 1),
        ("reset", 1, "broke off", 1),
        ("truncated", 1, "couldn't read", 1),
        ("empty_outputs", 1, adapter.NO_OUTPUT, 1),
        ("quota_exhausted", 1, adapter.UNAVAILABLE, 1),
        ("unsafe", 1, adapter.UNSAFE, 1),
        ("rate_limited", True, "too many requests", 3),  # 1 + 2 retries, then give up
    ],
)
def test_faults_end_in_a_failed_job_with_advice(settings, emulator, photo, fault, value, message, requests):
    settings.HEADSHOT_API_JOB_DEADLINE_S = 1  # the read timeout of the call
    emulator.faults[fault] = value
    job = run(photo, prompt=PROMPT)
    assert job.status == Job.Status.FAILED
    assert message.lower() in job.error_message.lower()
    assert emulator.counters["requests"] == requests


def test_rate_limit_is_retried_with_backoff(emulator, photo):
    emulator.faults["rate_limited"] = 2
    job = run(photo, prompt=PROMPT)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert emulator.counters["429"] == 2


def test_slow_generation_past_the_timeout_fails(settings, emulator, photo):
    settings.HEADSHOT_API_JOB_DEADLINE_S = 1
    emulator.faults["latency_per_image"] = 0.4
    job = run(photo, prompt=PROMPT, num_images=4)  # 1.6 s of emulated work
    assert job.status == Job.Status.FAILED
    assert "did not answer in time" in job.error_message


def test_fewer_images_than_asked_keeps_what_arrived(emulator, photo):
    emulator.faults["fewer_outputs"] = 1
    job = run(photo, prompt=PROMPT, num_images=3)
    assert job.status == Job.Status.SUCCEEDED
    assert job.results.count() == 2
    assert job.vendor_meta["images_requested"] == 3 and job.vendor_meta["images_returned"] == 2


def test_wrong_key_is_refused_and_reported_as_unavailable(photo):
    emu = HeadshotEmulator(api_keys={"someone-else"})
    with emu.serve(), sandbox.use("headshot", emu, over_http=True):
        job = run(photo, prompt=PROMPT)
    assert job.status == Job.Status.FAILED
    assert job.error_message == adapter.UNAVAILABLE


# --- the emulator's documented limits, on the wire --------------------------------------------


def _body(portrait_jpeg, **changes):
    body = {
        "apiKey": SANDBOX_KEY,
        "prompt": PROMPT,
        "seed": 3,
        "sampleNumber": 1,
        "identityScale": 0.8,
        "inputImages": ["data:image/jpeg;base64," + base64.b64encode(portrait_jpeg).decode()],
        "outputImageWidth": 512,
        "outputImageHeight": 640,
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "changes, status, text",
    [
        ({"apiKey": "wrong"}, 401, "invalid api key"),
        ({"prompt": ""}, 400, "prompt"),
        ({"seed": 0}, 400, "seed"),
        ({"seed": 2**31}, 400, "seed"),
        ({"sampleNumber": 0}, 400, "sampleNumber"),
        ({"sampleNumber": 9}, 400, "sampleNumber"),
        ({"identityScale": 1.5}, 400, "identityScale"),
        ({"outputImageWidth": 511}, 400, "outputImageWidth"),
        ({"outputImageHeight": 2025}, 400, "outputImageHeight"),
        ({"inputImages": []}, 400, "inputImages"),
        ({"inputImages": ["data:image/jpeg;base64,bm90IGFuIGltYWdl"]}, 400, "decodable"),
    ],
)
def test_emulator_enforces_the_documented_ranges(portrait_jpeg, changes, status, text):
    emu = HeadshotEmulator()
    with emu.serve() as url:
        response = httpx.post(f"{url}/api/generate-portrait", json=_body(portrait_jpeg, **changes), timeout=30)
    assert response.status_code == status
    assert text in response.json()["error"]


@pytest.mark.backend_free
def test_emulator_answers_exact_count_and_size_and_random_seed_varies(portrait_jpeg):
    emu = HeadshotEmulator()
    with emu.serve() as url:
        answers = [
            httpx.post(f"{url}/api/generate-portrait", json=_body(portrait_jpeg, seed=-1, sampleNumber=2), timeout=60)
            for _ in range(2)
        ]
    decoded = []
    for answer in answers:
        assert answer.status_code == 200
        outs = answer.json()["outputImages"]
        assert len(outs) == 2 and all(o.startswith("data:image/jpeg;base64,") for o in outs)
        pics = [Image.open(io.BytesIO(base64.b64decode(o.split(",", 1)[1]))) for o in outs]
        assert all(p.format == "JPEG" and p.size == (512, 640) for p in pics)
        decoded.append(np.asarray(pics[0], dtype=np.float32))
    assert np.abs(decoded[0] - decoded[1]).mean() > 1.0, "seed -1 must give a new picture each call"
