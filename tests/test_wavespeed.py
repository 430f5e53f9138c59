"""The WaveSpeed adapter (Portrait, InstantCharacter) against its emulator, on the wire and in-process."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from studio.errors import OperationUnavailable
from studio.jobs.create import job_create
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import http as vendor_http
from studio.vendors import sandbox
from studio.vendors import wavespeed as adapter
from studio.vendors.base import JobInput, get_provider
from studio.vendors.emulators.wavespeed import SANDBOX_KEY, WaveSpeedEmulator

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-wavespeed")
PORTRAIT = get_operation("ws_portrait")
CHARACTER = get_operation("ws_character")
AUTH = {"Authorization": f"Bearer {SANDBOX_KEY}"}


@pytest.fixture(autouse=True)
def _clean(settings, monkeypatch):
    settings.WAVESPEED_API_KEY = ""
    settings.WAVESPEED_POLL_MS = 100
    monkeypatch.setattr(vendor_http, "backoff_delay", lambda *a, **k: 0)
    sandbox.reset()
    yield
    sandbox.reset()


@pytest.fixture
def emulator():
    emu = WaveSpeedEmulator(rate_per_minute=1000)
    with emu.serve(read_timeout_sleep=0.5), sandbox.use("wavespeed", emu, over_http=True):
        yield emu


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def run(photo, op=PORTRAIT, **raw) -> Job:
    params, errors = op.clean_params(raw)
    assert not errors, errors
    job = job_create(owner=OWNER, photo=photo, operation=op, params=params)
    job.refresh_from_db()
    return job


def pixels(field) -> np.ndarray:
    with field.open("rb") as fh:
        return np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"), dtype=np.float32)


# --- end to end ------------------------------------------------------------------------------


def test_portrait_applies_the_instruction_and_records_timings(emulator, photo):
    job = run(photo, prompt="warm golden sunset light", seed=42)

    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    before, after = pixels(photo.image), pixels(result.image)
    assert before.shape == after.shape  # Portrait keeps the input size
    warmth = lambda a: a[..., 0].mean() - a[..., 2].mean()  # noqa: E731
    assert warmth(after) > warmth(before) + 8, "a warm instruction must visibly warm the photo"
    assert result.meta == {"seed": 42}
    assert result.content_type == "image/png"
    assert job.vendor_meta["inference_ms"] > 0 and job.vendor_meta["model"] == "wavespeed-ai/portrait"
    task = next(iter(emulator.tasks.values()))
    assert task.body["image"].startswith("data:image/jpeg;base64,")
    assert {k: task.body[k] for k in ("prompt", "seed", "enable_base64_output")} == {
        "prompt": "warm golden sunset light",
        "seed": 42,
        "enable_base64_output": False,
    }


def test_character_uploads_the_photo_and_renders_the_requested_size(emulator, photo):
    job = run(photo, CHARACTER, prompt="waving on a beach, happy", width=832, height=1216, seed=7)

    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    assert (result.width, result.height) == (832, 1216)
    task = next(iter(emulator.tasks.values()))
    assert task.body["size"] == "832*1216" and task.body["seed"] == 7
    assert task.body["image"] == job.vendor_state["image_url"]
    assert task.body["image"].startswith(emulator.base_url + "/files/")
    assert ("POST", "/api/v3/media/upload/binary") in emulator.log
    # The beach scene: sky blue at the top of the picture.
    top = pixels(result.image)[:40].reshape(-1, 3).mean(axis=0)
    assert top[2] > top[0] + 40


def test_same_seed_same_picture_and_empty_seed_is_random_and_reported(emulator, photo):
    a = run(photo, prompt="cool blue tone", seed=42).results.get()
    b = run(photo, prompt="cool blue tone", seed=42).results.get()
    assert np.array_equal(pixels(a.image), pixels(b.image))
    r1 = run(photo, prompt="cool blue tone").results.get()
    r2 = run(photo, prompt="cool blue tone").results.get()
    sent = [t.body["seed"] for t in emulator.tasks.values()]
    assert sent[2:] == [r1.meta["seed"], r2.meta["seed"]]
    assert r1.meta["seed"] != r2.meta["seed"] and all(0 <= s <= 2**31 - 1 for s in sent)
    assert not np.array_equal(pixels(r1.image), pixels(r2.image))


def test_nsfw_flag_is_kept_on_the_output(emulator, photo):
    emulator.faults["nsfw"] = True
    job = run(photo, prompt="brighter", seed=1)
    assert job.status == Job.Status.SUCCEEDED
    assert job.results.get().meta == {"seed": 1, "nsfw": True}
    assert job.vendor_meta["nsfw_outputs"] == 1


def test_in_process_transport_and_unknown_status_are_handled(photo):
    emu = WaveSpeedEmulator()
    emu.faults["unknown_status"] = "pending"  # not terminal: keep polling
    with sandbox.use("wavespeed", emu):
        job = run(photo, prompt="vivid colours", seed=3)
    assert job.status == Job.Status.SUCCEEDED, job.error_message


def test_live_configuration_sends_the_configured_key(settings, photo):
    emu = WaveSpeedEmulator(api_keys={"ws_live_1"})
    with emu.serve() as url:
        settings.WAVESPEED_BASE_URL = url
        settings.WAVESPEED_API_KEY = "ws_live_1"
        job = run(photo, prompt="soft light", seed=2)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.sandbox is False


def test_unconfigured_vendor_is_unavailable_with_the_reason(photo):
    reason = get_provider("wavespeed").unavailable_reason()
    assert reason and "WAVESPEED_API_KEY" in reason
    # Visitors get a calm message; the reason with the setting's name is kept for staff.
    with pytest.raises(OperationUnavailable) as refused:
        job_create(owner=OWNER, photo=photo, operation=PORTRAIT, params=PORTRAIT.defaults())
    assert "WAVESPEED_API_KEY" in refused.value.reason and "WAVESPEED_API_KEY" not in refused.value.message


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults, message",
    [
        ({"rate_limited": True}, "too many requests"),
        ({"submit_error": True}, "having trouble"),
        ({"task_error": "image could not be downloaded"}, adapter.UNREADABLE_PHOTO),
        ({"task_error": "NSFW content detected in output"}, adapter.UNSAFE),
        ({"task_error": "out of memory"}, adapter.FAILED),
        ({"insufficient_balance": True}, adapter.UNAVAILABLE),
        ({"insufficient_balance": True, "balance_status": 400}, adapter.UNAVAILABLE),
        ({"inactive_key": True}, adapter.UNAVAILABLE),
        ({"output_ttl": -1}, "expired"),
    ],
)
def test_faults_end_in_a_failed_job_with_advice(emulator, photo, faults, message):
    emulator.faults.update(faults)
    job = run(photo, prompt="brighter", seed=1)
    assert job.status == Job.Status.FAILED
    assert message.lower() in job.error_message.lower()


def test_transient_poll_errors_are_retried(emulator, photo):
    emulator.faults["poll_error"] = 2
    emulator.faults["rate_limited"] = 1
    job = run(photo, prompt="brighter", seed=1)
    assert job.status == Job.Status.SUCCEEDED, job.error_message


def test_a_submit_whose_answer_is_lost_is_not_sent_twice(emulator, photo):
    emulator.faults["submit_timeout"] = 1
    job = run(photo, prompt="brighter", seed=1)
    assert job.status == Job.Status.FAILED
    assert emulator.counters["submits"] == 1, "no idempotency key: a second submit could bill twice"


def test_a_stuck_task_fails_at_the_vendor_deadline(settings, emulator, photo):
    settings.WAVESPEED_JOB_DEADLINE_S = 1
    emulator.faults["stuck"] = True
    job = run(photo, prompt="brighter", seed=1)
    assert job.status == Job.Status.FAILED
    assert job.error_message == adapter.TIMED_OUT


@pytest.mark.backend_free
def test_base64_outputs_are_accepted_plain_and_as_data_uri(portrait_jpeg):
    provider = get_provider("wavespeed")
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(png, "PNG")
    encoded = base64.b64encode(png.getvalue()).decode()
    job = JobInput(
        job_id="j", operation=PORTRAIT, params={}, image=portrait_jpeg, faces=[], request_id="r", state={"seed": 9}
    )
    data = {
        "status": "completed",
        "outputs": [encoded, "data:image/png;base64," + encoded],
        "has_nsfw_contents": [False, True],
        "timings": {"inference": 12},
        "model": "m",
    }
    progress = provider._progress(None, job, data)
    assert progress.finished and [o.data for o in progress.outputs] == [png.getvalue()] * 2
    assert [o.meta for o in progress.outputs] == [{"seed": 9}, {"seed": 9, "nsfw": True}]
    assert progress.meta["inference_ms"] == 12


# --- the emulator's protocol, on the wire --------------------------------------------------------


def _image_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


@pytest.mark.backend_free
def test_status_progression_both_result_paths_and_envelope(portrait_jpeg):
    emu = WaveSpeedEmulator()
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        created = client.post(
            "/api/v3/wavespeed-ai/portrait",
            json={"prompt": "warm", "image": _image_uri(portrait_jpeg), "enable_base64_output": True},
        ).json()
        data = created["data"]
        assert created["code"] == 200 and created["message"] == "success"
        assert data["status"] == "created" and data["outputs"] == [] and data["has_nsfw_contents"] == []
        assert set(data) == {
            "id",
            "model",
            "outputs",
            "urls",
            "has_nsfw_contents",
            "status",
            "created_at",
            "error",
            "timings",
        }
        assert int(data["id"], 16) and data["created_at"].endswith("Z") and len(data["created_at"]) == 24
        statuses = [client.get(f"/api/v3/predictions/{data['id']}/result").json()["data"]["status"]]
        final = client.get(f"/api/v3/predictions/{data['id']}").json()["data"]
        statuses.append(final["status"])
    assert statuses == ["processing", "completed"]
    assert len(final["outputs"]) == len(final["has_nsfw_contents"]) == 1
    assert Image.open(io.BytesIO(base64.b64decode(final["outputs"][0]))).size == (1024, 1024)
    assert final["timings"]["inference"] > 0


@pytest.mark.backend_free
def test_concurrency_cap_keeps_extra_tasks_created(portrait_jpeg):
    emu = WaveSpeedEmulator(concurrency=1)
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        ids = [
            client.post(
                "/api/v3/wavespeed-ai/portrait", json={"prompt": "x", "image": _image_uri(portrait_jpeg)}
            ).json()["data"]["id"]
            for _ in range(2)
        ]
        status = lambda i: client.get(f"/api/v3/predictions/{i}/result").json()["data"]["status"]  # noqa: E731
        assert status(ids[0]) == "processing"
        assert status(ids[1]) == "created"  # waits for the slot
        assert status(ids[0]) == "completed"
        assert status(ids[1]) == "processing"


@pytest.mark.backend_free
def test_per_minute_start_limit(portrait_jpeg):
    emu = WaveSpeedEmulator(rate_per_minute=2)
    body = {"prompt": "x", "image": _image_uri(portrait_jpeg)}
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        codes = [client.post("/api/v3/wavespeed-ai/portrait", json=body).status_code for _ in range(3)]
        emu.clock.advance(61)
        codes.append(client.post("/api/v3/wavespeed-ai/portrait", json=body).status_code)
    assert codes == [200, 200, 429, 200]


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "path, body, status, text",
    [
        ("/api/v3/wavespeed-ai/portrait", {"image": "x"}, 400, "prompt"),
        ("/api/v3/wavespeed-ai/portrait", {"prompt": "x"}, 400, "image"),
        ("/api/v3/wavespeed-ai/portrait", {"prompt": "x", "image": "aGk=", "seed": 2**31}, 400, "seed"),
        ("/api/v3/wavespeed-ai/portrait", {"prompt": "x", "image": "aGk=", "seed": -2}, 400, "seed"),
        ("/api/v3/wavespeed-ai/instant-character", {"prompt": "x", "image": "aGk="}, 400, "URL"),
        (
            "/api/v3/wavespeed-ai/instant-character",
            {"prompt": "x", "image": "http://a/b.jpg", "size": "1024x1024"},
            400,
            "width*height",
        ),
        (
            "/api/v3/wavespeed-ai/instant-character",
            {"prompt": "x", "image": "http://a/b.jpg", "size": "1537*512"},
            400,
            "256 and 1536",
        ),
        (
            "/api/v3/wavespeed-ai/instant-character",
            {"prompt": "x", "image": "http://a/b.jpg", "size": "255*512"},
            400,
            "256 and 1536",
        ),
        ("/api/v3/nobody/unknown-model", {"prompt": "x", "image": "aGk="}, 404, "not found"),
    ],
)
def test_emulator_validates_the_documented_fields(path, body, status, text):
    emu = WaveSpeedEmulator()
    with emu.serve() as url:
        response = httpx.post(url + path, json=body, headers=AUTH, timeout=10)
    assert response.status_code == status
    assert response.json()["code"] == status and text in response.json()["message"]


@pytest.mark.backend_free
def test_emulator_checks_the_bearer_key_everywhere():
    emu = WaveSpeedEmulator()
    with emu.serve() as url:
        assert httpx.post(url + "/api/v3/wavespeed-ai/portrait", json={}, timeout=10).status_code == 401
        assert (
            httpx.get(
                url + "/api/v3/predictions/abc/result", headers={"Authorization": "Bearer nope"}, timeout=10
            ).status_code
            == 401
        )
        assert httpx.post(url + "/api/v3/media/upload/binary", timeout=10).status_code == 401


@pytest.mark.backend_free
def test_an_unfetchable_image_url_fails_the_task_with_a_download_error():
    emu = WaveSpeedEmulator()
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        task = client.post(
            "/api/v3/wavespeed-ai/instant-character", json={"prompt": "x", "image": "http://127.0.0.1:9/none.jpg"}
        ).json()["data"]
        client.get(f"/api/v3/predictions/{task['id']}/result")
        final = client.get(f"/api/v3/predictions/{task['id']}/result").json()["data"]
    assert final["status"] == "failed" and "download" in final["error"] and final["outputs"] == []
