"""The Vtrix adapter against its emulator, which fetches our signed photo links like the vendor."""

from __future__ import annotations

import io
from decimal import Decimal

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from studio import signed_media
from studio.errors import OperationUnavailable, ServiceError
from studio.imaging import FaceBox
from studio.jobs.create import job_create
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import http as vendor_http
from studio.vendors import sandbox
from studio.vendors import vtrix as adapter
from studio.vendors.base import JobInput, VendorError, get_provider
from studio.vendors.emulators.fetch import django_client_fetch
from studio.vendors.emulators.vtrix import SANDBOX_KEY, VtrixEmulator
from tests import images

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-vtrix")
OP = get_operation("vtrix_spark_portrait")
AUTH = {"Authorization": f"Bearer {SANDBOX_KEY}"}
PUBLIC = "http://studio.test"


@pytest.fixture(autouse=True)
def _clean(settings, monkeypatch):
    settings.VTRIX_API_KEY = ""
    settings.VTRIX_POLL_MS = 100
    settings.STUDIO_PUBLIC_URL = PUBLIC
    monkeypatch.setattr(vendor_http, "backoff_delay", lambda *a, **k: 0)
    sandbox.reset()
    yield
    sandbox.reset()


@pytest.fixture
def emulator():
    emu = VtrixEmulator(fetcher=django_client_fetch())
    with emu.serve(read_timeout_sleep=0.5), sandbox.use("vtrix", emu, over_http=True):
        yield emu


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def run(photo, **raw) -> Job:
    params, errors = OP.clean_params(raw)
    assert not errors, errors
    job = job_create(owner=OWNER, photo=photo, operation=OP, params=params)
    job.refresh_from_db()
    return job


def pixels(result) -> np.ndarray:
    with result.image.open("rb") as fh:
        return np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"), dtype=np.float32)


def sent_params(emu: VtrixEmulator, index: int = -1) -> dict:
    body = emu.bodies[index]
    return body["input"][0]["params"] if "input" in body else {k: v for k, v in body.items() if k != "model"}


# --- end to end ----------------------------------------------------------------------------------


def test_defaults_end_to_end_with_signed_link_cost_and_seed(emulator, photo):
    job = run(photo, seed=1234)

    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    assert (result.width, result.height) == (1328, 1328)
    assert result.meta == {"seed": 1234}
    assert job.cost == Decimal("0.0300")
    assert job.vendor_meta["usage"] == {"cost": "0.0300", "discount": 0}
    body = emulator.bodies[-1]
    assert body["model"] == "spark_edit_portrait" and len(body["input"]) == 1  # wrapped, the default
    params = body["input"][0]["params"]
    assert params["image_input"].startswith(f"{PUBLIC}/v/")
    assert {k: params[k] for k in ("width", "height", "gpen", "skin", "skin_unifi", "seed")} == {
        "width": 1328,
        "height": 1328,
        "gpen": 0.4,
        "skin": 0.3,
        "skin_unifi": 0.0,
        "seed": "1234",
    }
    assert "gen_mode" not in params and "prompt" not in params  # automatic mode
    assert emulator.fetched == [(params["image_input"], 200)]


def test_flat_body_mode_prompt_and_explicit_mode(settings, emulator, photo):
    settings.VTRIX_BODY_MODE = "flat"
    job = run(photo, prompt="sunny beach", gen_mode="creative", width=640, height=768, seed=5)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    body = emulator.bodies[-1]
    assert "input" not in body and body["prompt"] == "sunny beach" and body["gen_mode"] == "creative"
    result = job.results.get()
    assert (result.width, result.height) == (640, 768)
    top = pixels(result)[:30].reshape(-1, 3).mean(axis=0)
    assert top[2] > top[0] + 40, "creative mode paints the prompt's scene (a blue beach sky)"


def _face(arr: np.ndarray, box=(0.36, 0.25, 0.28, 0.3)) -> np.ndarray:
    h, w = arr.shape[:2]
    x, y, fw, fh = box
    return arr[int(y * h) : int((y + fh) * h), int(x * w) : int((x + fw) * w)]


def _detail(arr: np.ndarray) -> float:
    grey = cv2.cvtColor(arr.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def test_each_slider_visibly_does_its_job(emulator, photo):
    base = dict(seed=11, gen_mode="reference", width=768, height=768)
    plain = pixels(run(photo, gpen=0, skin=0, skin_unifi=0, **base).results.get())
    sharp = pixels(run(photo, gpen=1, skin=0, skin_unifi=0, **base).results.get())
    smooth = pixels(run(photo, gpen=0, skin=1, skin_unifi=0, **base).results.get())
    even = pixels(run(photo, gpen=0, skin=0, skin_unifi=1, **base).results.get())

    assert _detail(_face(sharp)) > _detail(_face(plain)) * 1.3, "gpen sharpens the face"
    assert _detail(_face(smooth)) < _detail(_face(plain)) * 0.8, "skin smooths the face"
    tone = lambda a: _face(a).reshape(-1, 3).std(axis=0).mean()  # noqa: E731
    assert tone(even) < tone(plain) - 1, "skin_unifi evens the skin tone"
    assert [sent_params(emulator, i)["gpen"] for i in range(4)] == [0.0, 1.0, 0.0, 0.0]


def test_reference_char_replaces_the_background_reference_keeps_it(emulator, photo):
    keep = pixels(run(photo, seed=3, gen_mode="reference", width=512, height=512).results.get())
    char = pixels(run(photo, seed=3, gen_mode="reference_char", width=512, height=512).results.get())
    corner = lambda a: a[5:40, 5:40].reshape(-1, 3).mean(axis=0)  # noqa: E731
    assert np.abs(corner(keep) - corner(char)).max() > 15
    assert np.ptp(corner(char)) < 8, "a plain grey studio tone behind the person"


def test_same_seed_same_picture_empty_seed_random_and_reported(emulator, photo):
    a = run(photo, seed=77, width=512, height=512).results.get()
    b = run(photo, seed=77, width=512, height=512).results.get()
    assert np.array_equal(pixels(a), pixels(b))
    r = run(photo, width=512, height=512).results.get()
    assert isinstance(r.meta["seed"], int) and r.meta["seed"] >= 1
    assert sent_params(emulator)["seed"] == str(r.meta["seed"])


def test_in_process_transport_instant_answer_and_variant_spellings(photo):
    emu = VtrixEmulator(fetcher=django_client_fetch())
    emu.faults.update(instant=True, created_at="iso")
    with sandbox.use("vtrix", emu):
        job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert not any(path.startswith("/model/v1/generation/task/") for _, path in emu.log), "no polling needed"

    emu = VtrixEmulator(fetcher=django_client_fetch())
    emu.faults.update(status_spelling="alt")
    with sandbox.use("vtrix", emu):
        job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.SUCCEEDED, job.error_message


def test_live_server_fetch_over_real_http(settings, live_server, photo):
    """The default fetcher: a real GET of the signed link on the running app."""
    settings.STUDIO_PUBLIC_URL = live_server.url
    emu = VtrixEmulator()  # http_fetch
    with emu.serve(), sandbox.use("vtrix", emu, over_http=True):
        job = run(photo, seed=2, width=512, height=512)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert emu.fetched[0][0].startswith(live_server.url + "/v/") and emu.fetched[0][1] == 200


def test_live_configuration_sends_the_configured_key(settings, photo):
    emu = VtrixEmulator(api_keys={"vx_live"}, fetcher=django_client_fetch())
    with emu.serve() as url:
        settings.VTRIX_BASE_URL = url
        settings.VTRIX_API_KEY = "vx_live"
        job = run(photo, seed=2, width=512, height=512)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.sandbox is False


def test_unconfigured_vendor_is_unavailable_with_the_reason(photo):
    reason = get_provider("vtrix").unavailable_reason()
    assert reason and "VTRIX_API_KEY" in reason
    # Visitors get a calm message; the reason with the setting's name is kept for staff.
    with pytest.raises(OperationUnavailable) as refused:
        job_create(owner=OWNER, photo=photo, operation=OP, params=OP.defaults())
    assert "VTRIX_API_KEY" in refused.value.reason and "VTRIX_API_KEY" not in refused.value.message


# --- the signed link ---------------------------------------------------------------------------


def test_an_expired_signed_link_fails_with_the_vendors_error(settings, monkeypatch, photo):
    settings.STUDIO_SIGNED_URL_SECONDS = 60
    real_fetch = django_client_fetch()
    real_clock = signed_media.clock

    def late_fetch(url):
        # The vendor downloads the photo two minutes after we handed it the link.
        monkeypatch.setattr(signed_media, "clock", lambda: real_clock() + 120)
        return real_fetch(url)

    emu = VtrixEmulator(fetcher=late_fetch)
    with emu.serve(), sandbox.use("vtrix", emu, over_http=True):
        job = run(photo, seed=2, width=512, height=512)
    assert job.status == Job.Status.FAILED
    assert job.error_message == adapter.FETCH_FAILED
    assert emu.fetched[0][1] == 404


def test_photos_breaking_the_input_rules_are_refused_before_sending(two_faces_jpeg, portrait_jpeg):
    two = photo_create(owner=OWNER, data=two_faces_jpeg, filename="two.jpg")
    with sandbox.use("vtrix", VtrixEmulator()), pytest.raises(ServiceError, match="2 faces"):
        job_create(owner=OWNER, photo=two, operation=OP, params=OP.defaults())

    face = [FaceBox(10, 10, 50, 50)]

    def check(image: bytes, faces=face):
        adapter._check_input(
            JobInput(job_id="j", operation=OP, params={}, image=image, faces=faces, request_id="r", photo_id="p")
        )

    check(portrait_jpeg)
    check(images.to_bytes(images.astronaut(), "PNG"))
    with pytest.raises(VendorError, match="exactly one face"):
        check(portrait_jpeg, faces=face * 2)
    with pytest.raises(VendorError, match="JPG or PNG"):
        check(images.to_bytes(images.astronaut(), "WEBP"))
    with pytest.raises(VendorError, match="4096"):
        check(images.to_bytes(Image.new("RGB", (4100, 64)), "JPEG"))
    with pytest.raises(VendorError, match="5 MB"):
        check(portrait_jpeg + b"\0" * (5 * 1024 * 1024))


# --- errors and faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, message",
    [
        ("003010001", "Please upload a photo first."),
        ("003010002", adapter.SETTINGS_REJECTED),
        ("003010003", "Please use a JPG or PNG photo."),
    ],
)
def test_permanent_task_error_codes_map_to_advice_without_retry(emulator, photo, code, message):
    emulator.faults["task_error"] = code
    job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.FAILED and job.error_message == message
    assert emulator.counters["creates"] == 1


@pytest.mark.parametrize("code", ["003010095", "003010096", "003010097", "003010098", "003010099"])
def test_transient_task_error_codes_are_resubmitted_once(emulator, photo, code):
    emulator.faults.update(task_error=code, task_error_times=1)
    job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert emulator.counters["creates"] == 2

    emulator.faults.update(task_error=code, task_error_times=2)
    job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.FAILED and job.error_message == adapter.VENDOR_FAILED
    assert emulator.counters["creates"] == 4


@pytest.mark.parametrize("error_format", ["object", "string", "message"])
def test_every_error_shape_is_read(emulator, photo, error_format):
    emulator.faults.update(moderation=True, error_format=error_format)
    job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.FAILED and job.error_message == adapter.UNSAFE


@pytest.mark.parametrize(
    "faults, message, creates",
    [
        ({"no_balance": True}, adapter.UNAVAILABLE, 0),
        ({"rate_limited": True}, "too many requests", 0),
        ({"server_error": True}, "having trouble", 0),
        ({"create_timeout": 1}, "broke off", 1),  # created, answer lost: never sent twice
        ({"output_ttl": -1}, "expired", 1),
    ],
)
def test_http_faults_end_in_a_failed_job(emulator, photo, faults, message, creates):
    emulator.faults.update(faults)
    job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.FAILED
    assert message.lower() in job.error_message.lower()
    assert emulator.counters["creates"] == creates


def test_transient_http_errors_are_retried(emulator, photo):
    emulator.faults.update(server_error=2)
    job = run(photo, seed=1, width=512, height=512)
    assert job.status == Job.Status.SUCCEEDED, job.error_message


def test_wrong_key_and_stuck_task(settings, photo):
    emu = VtrixEmulator(api_keys={"other"}, fetcher=django_client_fetch())
    with emu.serve(), sandbox.use("vtrix", emu, over_http=True):
        assert run(photo, seed=1).error_message == adapter.UNAVAILABLE
    settings.VTRIX_JOB_DEADLINE_S = 1
    emu = VtrixEmulator(fetcher=django_client_fetch())
    emu.faults["stuck"] = True
    with emu.serve(), sandbox.use("vtrix", emu, over_http=True):
        assert run(photo, seed=1, width=512, height=512).error_message == adapter.TIMED_OUT


# --- the emulator's protocol, on the wire --------------------------------------------------------------


def _served(data: bytes, status: int = 200):
    return lambda url: (status, data, "image/jpeg")


def _create(client, params, *, flat=False):
    body = (
        {"model": "spark_edit_portrait", **params}
        if flat
        else {"model": "spark_edit_portrait", "input": [{"params": params}]}
    )
    return client.post("/model/v1/generation", json=body)


@pytest.mark.backend_free
def test_protocol_progression_output_and_usage(portrait_jpeg):
    emu = VtrixEmulator(fetcher=_served(portrait_jpeg))
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        task = _create(client, {"image_input": "http://x/p.jpg", "width": 600, "height": 700, "seed": 9}).json()
        assert task["status"] == "pending" and isinstance(task["created_at"], int) and "output" not in task
        seen = [client.get(f"/model/v1/generation/task/{task['id']}").json() for _ in range(2)]
        content = seen[1]["output"][0]["content"][0]
        image = client.get(content["url"])
    assert [s["status"] for s in seen] == ["processing", "completed"]
    assert [task["progress"], seen[0]["progress"], seen[1]["progress"]] == [0, 0.5, 1]
    assert seen[1]["usage"] == {"cost": "0.0300", "discount": 0} and "completed_at" in seen[1]["metadata"]
    assert content["type"] == "image" and content["size"] == len(image.content) and content["jobId"]
    assert Image.open(io.BytesIO(image.content)).size == (600, 700)


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "params, code",
    [
        ({}, "003010001"),
        ({"image_input": "http://x/p.jpg", "width": 511}, "003010002"),
        ({"image_input": "http://x/p.jpg", "height": 2049}, "003010002"),
        ({"image_input": "http://x/p.jpg", "gpen": 0.35}, "003010002"),
        ({"image_input": "http://x/p.jpg", "skin": 1.1}, "003010002"),
        ({"image_input": "http://x/p.jpg", "gen_mode": "wild"}, "003010002"),
        ({"image_input": "http://x/p.jpg", "seed": "abc"}, "003010002"),
    ],
)
def test_protocol_bad_values_become_task_errors(portrait_jpeg, params, code):
    emu = VtrixEmulator(fetcher=_served(portrait_jpeg))
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        task = _create(client, params, flat=True).json()
    assert task["status"] == "failed" and task["error"]["code"] == code and task["error"]["error_message"]


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "served, code",
    [
        (_served(b"GIF89a" + b"\0" * 100), "003010003"),
        (_served(b"", 404), "003010001"),
        (_served(b"\xff\xd8\xff" + b"\0" * (5 * 1024 * 1024)), "003010002"),
    ],
)
def test_protocol_checks_the_downloaded_image(served, code):
    emu = VtrixEmulator(fetcher=served)
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        task = _create(client, {"image_input": "http://x/p"}).json()
    assert task["status"] == "failed" and task["error"]["code"] == code


@pytest.mark.backend_free
def test_protocol_refuses_oversized_resolution():
    big = images.to_bytes(Image.new("RGB", (4100, 32), (90, 90, 90)), "JPEG")
    emu = VtrixEmulator(fetcher=_served(big))
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        task = _create(client, {"image_input": "http://x/p.jpg"}).json()
    assert task["error"] == {"code": "003010002", "error_message": "image resolution exceeds 4096 * 4096"}


@pytest.mark.backend_free
def test_protocol_http_refusals(portrait_jpeg):
    emu = VtrixEmulator(fetcher=_served(portrait_jpeg))
    with emu.serve() as url:

        def post(body, headers=AUTH):
            return httpx.post(url + "/model/v1/generation", json=body, headers=headers, timeout=10)

        assert post({"model": "spark_edit_portrait"}, headers={}).status_code == 401
        assert post({"model": "other"}).status_code == 400
        assert post({"image_input": "http://x"}).status_code == 400
        assert post({"model": "spark_edit_portrait", "input": [1, 2]}).status_code == 400
        emu.faults["params_as_http_400"] = True
        assert post({"model": "spark_edit_portrait", "image_input": "http://x", "width": 1}).status_code == 400
        assert httpx.get(url + "/model/v1/generation/task/nope", headers=AUTH, timeout=10).status_code == 404


@pytest.mark.backend_free
def test_protocol_per_minute_cap(portrait_jpeg):
    emu = VtrixEmulator(fetcher=_served(portrait_jpeg))
    emu.faults["rate_per_minute"] = 2
    with emu.serve() as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        codes = [_create(client, {"image_input": "http://x/p.jpg"}).status_code for _ in range(3)]
        emu.clock.advance(61)
        codes.append(_create(client, {"image_input": "http://x/p.jpg"}).status_code)
    assert codes == [200, 200, 429, 200]
