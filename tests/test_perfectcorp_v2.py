"""Perfect Corp v2 (API key, v2 file API, tasks by path) against the emulator's v2 family.

The real adapter with PERFECTCORP_API_VERSION=v2 talks to the emulator over
real HTTP on 127.0.0.1 or in-process; every one of the twelve operations
runs on the astronaut portrait, and the no-double-charge rule is checked
with the emulator's create counter.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.core.cache import cache
from PIL import Image

from studio import imaging
from studio.vendors import perfectcorp_v2 as v2
from studio.vendors.base import VendorError
from studio.vendors.emulators.perfectcorp import SANDBOX_KEY
from studio.vendors.perfectcorp import (
    EXPIRED,
    TIMED_OUT_THERE,
    UNAVAILABLE,
    UNCONFIRMED_CREATE,
    PerfectCorpProvider,
    unconfirmed_creates,
)
from tests import images
from tests.pc_support import job_input, new_emulator, routed, run

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _v2(settings):
    settings.PERFECTCORP_API_VERSION = "v2"
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    settings.PERFECTCORP_V2_FEATURES = ""


@pytest.fixture
def emulator():
    cache.clear()
    return new_emulator()


@pytest.fixture(params=[True, False], ids=["http", "in-process"])
def pc(request, emulator):
    with routed(emulator, over_http=request.param):
        yield PerfectCorpProvider(sleep=lambda s: None)


@pytest.fixture
def pc_local(emulator):
    with routed(emulator, over_http=False):
        yield PerfectCorpProvider(sleep=lambda s: None)


def decode(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def v2_calls(emulator) -> list[tuple[str, str]]:
    return [(m, p) for m, p in emulator.log if p.startswith("/s2s/")]


def template(emulator, path="2.1/hair-transfer", index=0) -> dict:
    return {"style_id": emulator.template_ids(path)[index]}


# --- every operation on v2 ---------------------------------------------------------------------

CASES = [
    ("pc_hairstyle", "2.1/hair-transfer"),
    ("pc_wig", "2.0/wig"),
    ("pc_hair_extension", "2.0/hair-ext"),
    ("pc_bangs", "2.0/hair-bang"),
    ("pc_hair_volume", "2.0/hair-vol"),
]


@pytest.mark.parametrize("key,path", CASES)
def test_template_features_run_with_the_api_key_and_no_token_exchange(pc, emulator, portrait_jpeg, key, path):
    outputs, progress = run(pc, job_input(key, portrait_jpeg, params=template(emulator, path)))
    assert len(outputs) == 1 and decode(outputs[0].data).size == (1024, 1024)
    calls = v2_calls(emulator)
    assert ("POST", "/s2s/v2.0/file") in calls and ("POST", f"/s2s/v{path.replace('/', '/task/')}") in calls
    assert not any("/client/auth" in p for _, p in emulator.log), "v2 has no token exchange"
    assert any(p.startswith(f"/s2s/v{path.replace('/', '/task/')}/") for m, p in calls if m == "GET"), "polled by path"
    assert emulator.counters["v2_creates"] == 1 and emulator.counters["charges"] == 1
    assert progress.meta["perfectcorp_feature"] == f"v{path}"


def test_hairstyle_from_a_reference_photo_takes_the_references_hair_colour(pc_local, emulator, portrait_jpeg):
    red = images.astronaut(1)
    arr = np.asarray(red, np.uint8).copy()
    arr[..., 0] = np.clip(arr[..., 0].astype(int) + 120, 0, 255)  # a much redder reference
    reference = images.to_bytes(Image.fromarray(arr), "JPEG")
    job = job_input("pc_hairstyle", portrait_jpeg, params={"style_id": ""}, reference=reference)
    outputs, _ = run(pc_local, job)
    (task,) = emulator.tasks.values()
    assert "ref_ids" in task.inputs and task.params["style_ids"] == ["ref"], "sent as ref_file_id, no template_id"
    before = np.asarray(imaging.load_image(portrait_jpeg), np.float32)
    after = np.asarray(decode(outputs[0].data).convert("RGB"), np.float32)
    face = imaging.detect_faces(imaging.load_image(portrait_jpeg))[0]
    crown = (slice(max(0, face.y - face.h // 4), face.y), slice(face.x, face.x + face.w))
    assert np.abs(after[crown] - before[crown]).mean() > 15
    assert (after[crown][..., 0] - after[crown][..., 2]).mean() > (before[crown][..., 0] - before[crown][..., 2]).mean()


def test_aging_series_from_output_list_is_ordered_and_labelled(pc, emulator, portrait_jpeg):
    outputs, _ = run(pc, job_input("pc_aging", portrait_jpeg))
    ages = [o.meta["age"] for o in outputs]
    assert len(outputs) >= 4 and ages == sorted(ages)
    assert [o.label for o in outputs] == [f"Age {a}" for a in ages]
    assert sum(1 for o in outputs if o.meta.get("original")) == 1


def test_colorize_output_list(pc_local, emulator):
    emulator.faults["colorize_variants"] = 3
    grey = images.to_bytes(images.astronaut(2).convert("L").convert("RGB"), "JPEG")
    outputs, _ = run(pc_local, job_input("pc_colorize", grey))
    assert [o.label for o in outputs] == ["Variant 1", "Variant 2", "Variant 3"]
    rgb = np.asarray(decode(outputs[0].data).convert("RGB"), np.float32)
    assert rgb[..., 0].mean() > rgb[..., 2].mean() + 10


def test_makeup_transfer_is_mu_transfer_with_ref_file_id(pc_local, emulator, portrait_jpeg):
    outputs, _ = run(pc_local, job_input("pc_makeup_transfer", portrait_jpeg, reference=portrait_jpeg))
    assert len(outputs) == 1
    assert ("POST", "/s2s/v2.0/task/mu-transfer") in v2_calls(emulator)
    (task,) = emulator.tasks.values()
    assert set(task.inputs) == {"src_ids", "ref_ids"}


def test_object_removal_is_generative_fill_with_a_mask_of_the_photos_size(pc_local, emulator, portrait_jpeg):
    size = imaging.load_image(portrait_jpeg).size
    mask = Image.new("L", size, 0)
    mask.paste(255, (10, 10, 80, 80))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    outputs, _ = run(pc_local, job_input("pc_object_removal", portrait_jpeg, mask=buffer.getvalue()))
    assert len(outputs) == 1
    assert ("POST", "/s2s/v2.0/task/generative-fill") in v2_calls(emulator)


def test_background_removal_enhance_and_image_generator(pc_local, emulator, portrait_jpeg):
    cutout, _ = run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert cutout[0].content_type == "image/png" and decode(cutout[0].data).mode == "RGBA"
    small = images.to_bytes(images.astronaut(1).resize((256, 256)), "JPEG")
    bigger, _ = run(pc_local, job_input("pc_enhance", small, params={"scale": "2"}))
    assert decode(bigger[0].data).size == (512, 512)
    params = {"prompt": "a ceramic fox", **template(emulator, "2.0/text-to-image", 3)}
    generated, _ = run(pc_local, job_input("pc_image_generator", params=params))
    assert decode(generated[0].data).size[0] >= 512
    bodies = {p for m, p in v2_calls(emulator) if m == "POST"}
    assert {"/s2s/v2.0/task/sod", "/s2s/v2.0/task/enhance", "/s2s/v2.0/task/text-to-image"} <= bodies


def test_unconfirmed_paths_are_settings(pc_local, emulator, portrait_jpeg, settings):
    assert not v2.V2_FEATURES["pc_wig"].documented
    settings.PERFECTCORP_V2_FEATURES = json.dumps({"pc_object_removal": "v2.0/obj-removal"})
    assert v2.task_path("pc_object_removal") == "/s2s/v2.0/task/obj-removal"
    settings.PERFECTCORP_V2_FEATURES = json.dumps({"pc_wig": "../../etc"})
    assert v2.task_path("pc_wig") == "/s2s/v2.0/task/wig", "a malformed override is ignored"


# --- auth, limits, errors ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["error", "error_code", "prose", "live"])
def test_every_401_shape_ends_the_job_before_anything_is_created(pc_local, emulator, portrait_jpeg, shape):
    emulator.api_keys = {"another-key"}
    emulator.faults["v2_401_shape"] = shape
    with pytest.raises(VendorError) as caught:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert caught.value.message == UNAVAILABLE and caught.value.permanent
    assert emulator.counters["v2_creates"] == 0


@pytest.mark.parametrize("state", ["inactive", "expired"])
def test_inactive_or_expired_key(pc_local, emulator, portrait_jpeg, state):
    emulator.faults["api_key_state"] = state
    with pytest.raises(VendorError, match="not available"):
        run(pc_local, job_input("pc_colorize", portrait_jpeg))


def test_the_sandbox_key_is_sent_as_bearer(pc_local):
    assert pc_local.v2_auth_headers() == {"Authorization": f"Bearer {SANDBOX_KEY}"}


def test_v2_budget_is_250_per_300_seconds(pc_local, settings):
    windows = pc_local.budget().windows
    assert {(w.limit, w.seconds) for w in windows} == {(250, 300)}
    settings.PERFECTCORP_API_VERSION = "v1"
    assert {(w.limit, w.seconds) for w in pc_local.budget().windows} == {(100, 60), (100, 300)}


def test_the_emulator_enforces_250_per_300_seconds(pc_local, emulator, portrait_jpeg):
    emulator.rate_v2 = (2, 300.0)  # the upload slot and the create; the poll is refused
    with pytest.raises(VendorError):
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert emulator.counters["429"] >= 1
    assert emulator.counters["v2_creates"] == 1


def test_engine_error_is_http_200_with_data_error_mapped_to_a_user_message(pc_local, emulator, portrait_jpeg):
    emulator.faults["engine_error"] = "error_no_shoulder"
    with pytest.raises(VendorError, match="shoulders"):
        run(pc_local, job_input("pc_hairstyle", portrait_jpeg, params=template(emulator)))
    assert emulator.counters["charges"] == 0


def test_retryable_engine_error_runs_once_more(pc_local, emulator, portrait_jpeg):
    emulator.faults.update(engine_error="error_inference", engine_error_count=1)
    outputs, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert len(outputs) == 1
    assert emulator.counters["v2_creates"] == 2 and emulator.counters["charges"] == 1, "the failed task cost nothing"


@pytest.mark.parametrize("shape", ["error_code", "error"])
def test_an_expired_task_is_not_run_again(pc_local, emulator, portrait_jpeg, shape):
    emulator.faults.update(lost_task=1, invalid_task_shape=shape)
    with pytest.raises(VendorError) as caught:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert caught.value.message == EXPIRED
    assert emulator.counters["v2_creates"] == 1


def test_task_timeout(pc_local, emulator, portrait_jpeg):
    emulator.faults["task_timeout"] = 1
    with pytest.raises(VendorError) as caught:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert caught.value.message == TIMED_OUT_THERE


def test_a_polling_interval_in_the_answer_caps_the_gap(pc_local, emulator, portrait_jpeg):
    emulator.engine_seconds = 30.0
    emulator.faults["v2_polling_interval"] = True
    emulator.polling_interval_ms = 2000
    job = job_input("pc_colorize", portrait_jpeg)
    pc_local.submit(job)
    progress = pc_local.poll(job, job.state["task_id"])
    assert not progress.finished and progress.poll_after <= 2.0


# --- no double charge without request_id -------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset_after", "read_timeout", "500", "502", "malformed_json"])
def test_a_create_that_may_have_reached_the_vendor_is_never_sent_again(pc_local, emulator, portrait_jpeg, fault):
    emulator.faults.update({fault: 1, "fault_path": r"/task/colorize\Z"})
    job = job_input("pc_colorize", portrait_jpeg)
    with pytest.raises(VendorError) as caught:
        pc_local.submit(job)
    assert caught.value.message == UNCONFIRMED_CREATE and caught.value.permanent
    sent = [p for m, p in emulator.log if m == "POST" and p.endswith("/task/colorize")]
    assert len(sent) + emulator.counters[f"fault_{fault}"] <= 2
    assert emulator.counters["v2_creates"] <= 1, "at most the one create that went out"
    assert job.state["create_unconfirmed"] is True


@pytest.mark.parametrize("fault", ["connect_timeout", "429"])
def test_a_create_that_never_arrived_or_was_refused_is_sent_again(pc_local, emulator, portrait_jpeg, fault):
    emulator.faults.update({fault: 1, "fault_path": r"/task/colorize\Z"})
    outputs, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert len(outputs) == 1
    assert emulator.counters["v2_creates"] == 1 and emulator.counters["charges"] == 1


def test_a_job_resumed_with_a_create_in_flight_ends_without_a_second_task(pc_local, emulator, portrait_jpeg):
    job = job_input("pc_colorize", portrait_jpeg)
    job.state.update(creating=1.0)  # the worker died after marking, before saving a task id
    with pytest.raises(VendorError) as caught:
        pc_local.submit(job)
    assert caught.value.message == UNCONFIRMED_CREATE
    assert emulator.counters["v2_creates"] == 0
    assert job.state["create_unconfirmed"] is True


def test_a_job_resumed_after_its_task_id_was_saved_keeps_polling_that_task(pc_local, emulator, portrait_jpeg):
    job = job_input("pc_colorize", portrait_jpeg)
    pc_local.submit(job)
    again = job_input("pc_colorize", portrait_jpeg, state=dict(job.state))
    again.job_id = job.job_id
    submission = pc_local.submit(again)
    assert submission.task_id == job.state["task_id"]
    assert emulator.counters["v2_creates"] == 1


def test_unconfirmed_creates_are_counted_for_the_console(pc_local, emulator):
    from studio.models import Job
    from tests.test_webhooks import OWNER

    Job.objects.create(**OWNER.fields(), operation="pc_colorize", provider="perfectcorp",
                       vendor_state={"create_unconfirmed": True}, status=Job.Status.FAILED)
    Job.objects.create(**OWNER.fields(), operation="pc_colorize", provider="perfectcorp", status=Job.Status.FAILED)
    assert unconfirmed_creates() == 1
    status = pc_local.status()
    assert status["unconfirmed_creates_24h"] == 1 and status["api_version"] == "v2"


# --- templates ----------------------------------------------------------------------------------


def test_templates_are_listed_page_by_page_and_grouped_by_category(pc, emulator):
    groups = list(pc.list_style_groups("hair-style"))
    assert [g["title"] for g in groups] == ["Trending", "Classic", "Bold"]
    styles = [s for g in groups for s in pc.list_styles("hair-style", g["id"])]
    assert [s["id"] for s in styles] == emulator.template_ids("2.1/hair-transfer")
    assert all(s["thumb"] for s in styles)
    pages = [p for m, p in emulator.log if p == "/s2s/v2.1/task/template/hair-transfer"]
    assert len(pages) == 2, "26 templates at page_size 20, listed once per sync"


@pytest.mark.backend_free
def test_v2_needs_only_the_api_key(settings):
    from studio.vendors import sandbox

    settings.STUDIO_SANDBOX = False
    sandbox.reset()
    settings.PERFECTCORP_CLIENT_ID = settings.PERFECTCORP_CLIENT_SECRET = ""
    settings.PERFECTCORP_API_KEY = ""
    provider = PerfectCorpProvider()
    assert "PERFECTCORP_API_KEY" in provider.unavailable_reason()
    assert "CLIENT_ID" not in provider.unavailable_reason()
    settings.PERFECTCORP_API_KEY = "sk-live-example"
    assert provider.unavailable_reason() is None
    assert provider.http().base_url == settings.PERFECTCORP_V2_BASE_URL
    settings.PERFECTCORP_API_VERSION = "v1"
    assert "PERFECTCORP_CLIENT_ID" in provider.unavailable_reason()


def test_templates_sync_into_the_catalogue_with_cached_thumbnails(pc_local, emulator, settings):
    from studio import styles
    from studio.models import Style, StyleGroup

    settings.PERFECTCORP_API_VERSION = "v1"
    (report,) = styles.styles_sync(feature="hair-style")
    assert not report.error and report.styles == 35
    settings.PERFECTCORP_API_VERSION = "v2"
    (report,) = styles.styles_sync(feature="hair-style")
    assert not report.error, report
    assert (report.groups, report.styles, report.thumbnails) == (3, 26, 26)
    assert report.vanished == 35, "the v1 styles are no longer offered"
    offered = styles.offered_groups("perfectcorp", "hair-style")
    assert [g.name for g in offered] == ["Trending", "Classic", "Bold"]
    ids = [s.style_id for g in offered for s in g.offered_styles]
    assert sorted(ids) == sorted(emulator.template_ids("2.1/hair-transfer"))
    style = Style.objects.get(style_id=ids[0])
    with style.thumbnail.open("rb") as fh:
        assert Image.open(fh).size[0] <= 256
    assert StyleGroup.objects.filter(feature="hair-style", available=True).count() == 3
    pages = [p for m, p in emulator.log if p == "/s2s/v2.1/task/template/hair-transfer"]
    assert len(pages) == 2
    # The sync drew its listing requests from the shared v2 budget (250 / 300 s).
    windows = pc_local.budget().snapshot()["windows"]
    assert windows[0]["limit"] == 250 and windows[0]["used"] >= 2


# --- one upload for a batch on one photo ------------------------------------------------------------------


def test_a_batch_on_one_photo_uploads_it_once(pc, emulator, portrait_jpeg):
    """Three jobs on one photo (a user trying three looks): one upload, three tasks."""
    for _ in range(3):
        outputs, _ = run(pc, job_input("pc_colorize", portrait_jpeg))
        assert len(outputs) == 1
    assert emulator.counters["uploads"] == 1 and emulator.counters["v2_creates"] == 3
    sources = {tuple(task.inputs["src_ids"]) for task in emulator.tasks.values()}
    assert len(sources) == 1
    other = images.to_bytes(images.astronaut(2), "JPEG")  # another photo is a file of its own
    run(pc, job_input("pc_colorize", other))
    assert emulator.counters["uploads"] == 2


def test_a_create_refused_on_a_file_the_vendor_no_longer_has_uploads_it_again(pc_local, emulator, portrait_jpeg):
    run(pc_local, job_input("pc_colorize", portrait_jpeg))
    emulator.files.clear()  # the vendor let the file go (retention, deletion, another account)
    job = job_input("pc_colorize", portrait_jpeg)
    outputs, _ = run(pc_local, job)
    assert len(outputs) == 1
    assert emulator.counters["uploads"] == 2 and emulator.counters["v2_creates"] == 2
    assert job.state["reuploaded"] is True
    run(pc_local, job_input("pc_colorize", portrait_jpeg))  # the new upload is the one remembered
    assert emulator.counters["uploads"] == 2


def test_a_create_refused_for_another_reason_is_tried_once_on_a_fresh_upload_then_fails(
    pc_local, emulator, portrait_jpeg
):
    run(pc_local, job_input("pc_colorize", portrait_jpeg))
    emulator.credits = 0
    with pytest.raises(VendorError) as caught:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert caught.value.message.startswith("This feature is temporarily unavailable")  # out of units
    assert emulator.counters["uploads"] == 2 and emulator.counters["v2_creates"] == 1
