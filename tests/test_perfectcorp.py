"""The Perfect Corp adapter against its emulator: every endpoint, error and fault.

The real adapter (studio/vendors/perfectcorp.py) talks to the emulator
(studio/vendors/emulators/perfectcorp.py) over real HTTP on 127.0.0.1 or
through the in-process transport; images are the astronaut portrait.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from django.core.cache import cache
from PIL import Image

from studio import imaging
from studio.vendors.base import VendorError
from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator
from studio.vendors.perfectcorp import ENGINE_MESSAGES, LOST, STYLE_GONE, UNAVAILABLE, PerfectCorpProvider
from tests import images
from tests.pc_support import hair_params, job_input, new_emulator, routed, run

pytestmark = pytest.mark.django_db


@pytest.fixture
def emulator():
    cache.clear()
    return new_emulator()


@pytest.fixture(params=[True, False], ids=["http", "in-process"])
def over_http(request):
    return request.param


@pytest.fixture
def pc(emulator, over_http, settings):
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    with routed(emulator, over_http=over_http):
        yield PerfectCorpProvider(sleep=lambda s: None)


@pytest.fixture
def pc_local(emulator, settings):
    """In-process only: for tests whose point is not the wire."""
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    with routed(emulator, over_http=False):
        yield PerfectCorpProvider(sleep=lambda s: None)


def decode(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def uploaded_images(emulator: PerfectCorpEmulator) -> list[Image.Image]:
    return [decode(f["data"]) for f in emulator.files.values() if f["kind"] == "upload" and f["data"]]


# --- every feature, end to end ---------------------------------------------------------


def test_hairstyle_recolours_the_hair_and_reports_style_and_dst_id(pc, emulator, portrait_jpeg):
    params = hair_params(emulator)
    outputs, progress = run(pc, job_input("pc_hairstyle", portrait_jpeg, params=params))
    assert len(outputs) == 1 and outputs[0].content_type == "image/jpeg"
    before = np.asarray(imaging.load_image(portrait_jpeg), np.float32)
    after = np.asarray(decode(outputs[0].data).convert("RGB"), np.float32)
    face = imaging.detect_faces(imaging.load_image(portrait_jpeg))[0]
    crown = (slice(max(0, face.y - face.h // 4), face.y), slice(face.x, face.x + face.w))
    chin_down = (slice(face.y + face.h + 40, before.shape[0]), slice(0, before.shape[1]))
    assert np.abs(after[crown] - before[crown]).mean() > 25  # the hair changed…
    assert np.abs(after[chin_down] - before[chin_down]).mean() < 4  # …the rest did not
    assert outputs[0].meta["style_id"] == params["style_id"]
    assert outputs[0].meta["dst_id"] in emulator.files
    assert emulator.counters["charges"] == 1


def test_different_styles_give_different_hair(pc_local, emulator, portrait_jpeg):
    a, _ = run(pc_local, job_input("pc_hairstyle", portrait_jpeg, params=hair_params(emulator, index=0)))
    b, _ = run(pc_local, job_input("pc_hairstyle", portrait_jpeg, params=hair_params(emulator, index=1)))
    diff = np.abs(np.asarray(decode(a[0].data), np.float32) - np.asarray(decode(b[0].data), np.float32))
    assert diff.mean() > 1.0


@pytest.mark.parametrize(
    "key,feature",
    [("pc_wig", "wig"), ("pc_hair_extension", "hair-ext"), ("pc_bangs", "hair-bang"), ("pc_hair_volume", "hair-vol")],
)
def test_every_hair_feature_runs(pc_local, emulator, portrait_jpeg, key, feature):
    outputs, _ = run(pc_local, job_input(key, portrait_jpeg, params=hair_params(emulator, feature)))
    assert decode(outputs[0].data).size == (1024, 1024)
    assert emulator.log[-3][1].endswith(f"/task/{feature}")  # run, poll, then the download


def test_aging_gives_an_ordered_labelled_series_including_the_original(pc, emulator, portrait_jpeg):
    outputs, _ = run(pc, job_input("pc_aging", portrait_jpeg))
    ages = [o.meta["age"] for o in outputs]
    assert len(outputs) >= 4 and ages == sorted(ages)
    assert [o.label for o in outputs] == [f"Age {a}" for a in ages]
    assert sum(1 for o in outputs if o.meta.get("original")) == 1
    oldest, youngest = decode(outputs[-1].data).convert("HSV"), decode(outputs[0].data).convert("HSV")
    # Older means less saturated.
    assert np.asarray(oldest)[..., 1].mean() < np.asarray(youngest)[..., 1].mean()


def test_aging_reads_custom_info_at_either_place(pc_local, emulator, portrait_jpeg):
    emulator.faults["custom_info_at"] = "result"
    outputs, _ = run(pc_local, job_input("pc_aging", portrait_jpeg))
    assert sum(1 for o in outputs if o.meta.get("original")) == 1


def test_background_removal_returns_a_png_with_transparent_background(pc, emulator, portrait_jpeg):
    outputs, _ = run(pc, job_input("pc_background_removal", portrait_jpeg))
    picture = decode(outputs[0].data)
    assert outputs[0].content_type == "image/png" and picture.mode == "RGBA"
    alpha = np.asarray(picture)[..., 3]
    face = imaging.detect_faces(imaging.load_image(portrait_jpeg))[0]
    assert alpha[: face.y // 3, : face.x // 3].mean() < 40  # top-left background is cut away
    assert alpha[face.y + face.h // 2, face.x + face.w // 2] > 200  # the face is kept


def test_colorize_turns_grey_into_warm_colour(pc_local, emulator):
    grey = images.to_bytes(images.astronaut(2).convert("L").convert("RGB"), "JPEG")
    outputs, _ = run(pc_local, job_input("pc_colorize", grey))
    rgb = np.asarray(decode(outputs[0].data).convert("RGB"), np.float32)
    assert rgb[..., 0].mean() > rgb[..., 2].mean() + 10


def test_colorize_with_several_variants_labels_each(pc_local, emulator, portrait_jpeg):
    emulator.faults["colorize_variants"] = 4
    outputs, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert [o.label for o in outputs] == ["Variant 1", "Variant 2", "Variant 3", "Variant 4"]


@pytest.mark.parametrize("scale", ["1", "2", "4"])
def test_enhance_scales_by_the_chosen_factor(pc_local, emulator, scale):
    photo = images.to_bytes(images.astronaut(1), "JPEG")
    outputs, _ = run(pc_local, job_input("pc_enhance", photo, params={"scale": scale}))
    assert decode(outputs[0].data).size == (512 * int(scale), 512 * int(scale))


def test_enhance_reduces_a_large_photo_so_the_result_stays_within_4096(pc_local, emulator):
    photo = images.to_bytes(images.astronaut(4), "JPEG")  # 2048 px
    outputs, _ = run(pc_local, job_input("pc_enhance", photo, params={"scale": "4"}))
    assert decode(outputs[0].data).size == (4096, 4096)


def test_object_removal_fills_the_masked_area_and_fits_the_mask_to_the_photo(pc, emulator, portrait_jpeg):
    # The mask is painted at half size; the adapter resizes it to the photo's exact size.
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (400, 60, 470, 200))  # the rocket on the right
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    outputs, _ = run(pc, job_input("pc_object_removal", portrait_jpeg, mask=buffer.getvalue()))
    before = np.asarray(imaging.load_image(portrait_jpeg), np.float32)
    after = np.asarray(decode(outputs[0].data).convert("RGB"), np.float32)
    assert np.abs(after[130:390, 810:930] - before[130:390, 810:930]).mean() > 10
    assert np.abs(after[600:, :400] - before[600:, :400]).mean() < 4
    sent_mask = next(decode(f["data"]) for f in emulator.files.values() if f["content_type"] == "image/png")
    assert sent_mask.size == (1024, 1024)


def test_makeup_transfer_moves_the_reference_colours(pc_local, emulator, portrait_jpeg):
    tinted = np.asarray(images.astronaut(2), np.float32) * np.array([0.6, 0.8, 1.3])
    reference = images.to_bytes(Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8)), "JPEG")
    outputs, _ = run(pc_local, job_input("pc_makeup_transfer", portrait_jpeg, reference=reference))
    face = imaging.detect_faces(imaging.load_image(portrait_jpeg))[0]
    region = (
        slice(face.y + face.h // 4, face.y + 3 * face.h // 4),
        slice(face.x + face.w // 4, face.x + 3 * face.w // 4),
    )
    before = np.asarray(imaging.load_image(portrait_jpeg), np.float32)[region]
    after = np.asarray(decode(outputs[0].data).convert("RGB"), np.float32)[region]
    assert after[..., 2].mean() - after[..., 0].mean() > before[..., 2].mean() - before[..., 0].mean() + 15
    assert emulator.files and len(uploaded_images(emulator)) == 2  # the selfie and the look


def test_image_generator_draws_a_1024_square_without_any_upload(pc, emulator):
    params = {"prompt": "studio portrait of a ceramic fox", **hair_params(emulator, "text-to-image")}
    outputs, _ = run(pc, job_input("pc_image_generator", params=params))
    assert decode(outputs[0].data).size == (1024, 1024)
    assert emulator.counters["uploads"] == 0 and emulator.counters["file_slots"] == 0
    other, _ = run(pc, job_input("pc_image_generator", params={**params, "prompt": "a red bicycle"}))
    assert outputs[0].data != other[0].data


# --- auth ------------------------------------------------------------------------------------


def test_one_token_serves_many_jobs_and_adapters(pc_local, emulator, portrait_jpeg):
    run(pc_local, job_input("pc_colorize", portrait_jpeg))
    run(PerfectCorpProvider(sleep=lambda s: None), job_input("pc_colorize", portrait_jpeg))
    assert emulator.counters["auth"] == 1


def test_expired_token_is_refreshed_once_on_401(pc, emulator, portrait_jpeg):
    run(pc, job_input("pc_colorize", portrait_jpeg))
    emulator.expire_tokens()
    outputs, _ = run(pc, job_input("pc_colorize", portrait_jpeg))
    assert outputs and emulator.counters["auth"] == 2


def test_token_is_refreshed_before_its_two_hours_run_out(pc_local, emulator, portrait_jpeg, settings):
    run(pc_local, job_input("pc_colorize", portrait_jpeg))
    key = next(k for k in ["perfectcorp:token:" + pc_local._namespace()])
    entry = cache.get(key)
    cache.set(key, {**entry, "refresh_at": 0}, timeout=600)  # as if 110 minutes had passed
    run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert emulator.counters["auth"] == 2 and emulator.counters["401"] == 0


def test_a_second_401_is_a_configuration_failure(pc_local, emulator, portrait_jpeg):
    emulator.faults.update({"401": 5, "fault_path": "/file/|/task/"})  # every token, even a fresh one, is refused
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert failure.value.message == UNAVAILABLE and failure.value.permanent
    assert emulator.counters["auth"] == 2


def test_oaep_padding_is_a_setting(pc_local, emulator, portrait_jpeg, settings):
    emulator.faults["padding"] = "oaep-sha1"
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert failure.value.message == UNAVAILABLE and emulator.counters["auth_rejected"] == 1
    settings.PERFECTCORP_RSA_PADDING = "oaep-sha1"
    outputs, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert outputs


def test_emulator_verifies_the_id_token(emulator):
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")

    def auth(**token_args):
        body = {"client_id": emulator.client_id, "id_token": emulator.id_token(**token_args)}
        return client.post("/s2s/v1.0/client/auth", json=body)

    assert auth().status_code == 200
    assert auth(client_id="someone-else").status_code == 401
    stale = int((emulator.clock.now() - 600) * 1000)
    assert auth(timestamp_ms=stale).status_code == 401
    garbage = client.post("/s2s/v1.0/client/auth", json={"client_id": emulator.client_id, "id_token": "bm90IHJzYQ=="})
    assert garbage.status_code == 401 and garbage.json()["error_code"] == "InvalidAccessToken"
    # Every other endpoint needs the bearer token.
    assert client.get("/s2s/v1.0/task/style-group/hair-style").status_code == 401
    token = auth().json()["result"]["access_token"]
    ok = client.get("/s2s/v1.0/task/style-group/hair-style", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    emulator.clock.advance(7201)
    late = client.get("/s2s/v1.0/task/style-group/hair-style", headers={"Authorization": f"Bearer {token}"})
    assert late.status_code == 401


def test_sandbox_mode_configures_the_adapter_with_the_emulator_keys(settings, portrait_jpeg):
    from studio.vendors import sandbox

    cache.clear()
    settings.STUDIO_SANDBOX = True
    settings.PERFECTCORP_CLIENT_ID = settings.PERFECTCORP_CLIENT_SECRET = ""
    sandbox.reset()
    try:
        provider = PerfectCorpProvider(sleep=lambda s: None)
        emulator = sandbox.emulator_for("perfectcorp")
        emulator.engine_seconds = 0.0
        assert provider.unavailable_reason() is None
        assert provider.credentials() == (emulator.client_id, emulator.public_key_b64)
        outputs, _ = run(provider, job_input("pc_colorize", portrait_jpeg))
        assert outputs and emulator.counters["auth"] == 1
    finally:
        sandbox.reset()


# --- file API and pre-signed upload ---------------------------------------------------------------


def _token(client, emulator) -> dict:
    body = {"client_id": emulator.client_id, "id_token": emulator.id_token()}
    return {
        "Authorization": "Bearer " + client.post("/s2s/v1.0/client/auth", json=body).json()["result"]["access_token"]
    }


def test_upload_url_is_checked_like_s3(emulator, portrait_jpeg):
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")
    auth = _token(client, emulator)
    files = [{"content_type": "image/jpeg", "file_name": "a.jpg"}]
    slot = client.post("/s2s/v1.0/file/hair-style", json={"files": files}, headers=auth).json()["result"]["files"][0]
    put = slot["requests"][0]
    assert "+" in slot["file_id"] and "/" in slot["file_id"]
    assert put["method"] == "PUT" and put["headers"] == {"Content-Type": "image/jpeg"}
    assert client.put(put["url"], content=portrait_jpeg, headers={**put["headers"], **auth}).status_code == 400
    assert client.put(put["url"], content=portrait_jpeg, headers={"Content-Type": "image/png"}).status_code == 403
    assert client.put(put["url"] + "x", content=portrait_jpeg, headers=put["headers"]).status_code == 403
    assert client.put(put["url"], content=portrait_jpeg, headers=put["headers"]).status_code == 200
    # Content types per feature: hair-style takes JPG only.
    png = [{"content_type": "image/png", "file_name": "a.png"}]
    assert client.post("/s2s/v1.0/file/hair-style", json={"files": png}, headers=auth).status_code == 400
    assert client.post("/s2s/v1.0/file/hair-vol", json={"files": png}, headers=auth).status_code == 200
    # The slot's URL expires.
    slot = client.post("/s2s/v1.0/file/sod", json={"files": files}, headers=auth).json()["result"]["files"][0]
    emulator.clock.advance(7201)
    late = client.put(slot["requests"][0]["url"], content=portrait_jpeg, headers=slot["requests"][0]["headers"])
    assert late.status_code == 403 and b"expired" in late.content


def test_file_api_v11_sends_file_size(pc, emulator, portrait_jpeg, settings):
    settings.PERFECTCORP_FILE_API = "v1.1"
    outputs, _ = run(pc, job_input("pc_colorize", portrait_jpeg))
    assert outputs and ("POST", "/s2s/v1.1/file/colorize") in emulator.log


def test_emulator_v11_requires_file_size(emulator):
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")
    auth = _token(client, emulator)
    files = [{"content_type": "image/jpeg", "file_name": "a.jpg"}]
    assert client.post("/s2s/v1.1/file/sod", json={"files": files}, headers=auth).status_code == 400
    files[0]["file_size"] = 1234
    slot = client.post("/s2s/v1.1/file/sod", json={"files": files}, headers=auth).json()["result"]["files"][0]
    assert slot["requests"][0]["headers"]["Content-Length"] == "1234"


def test_a_task_on_a_never_uploaded_file_fails_in_the_engine(emulator):
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")
    auth = _token(client, emulator)
    files = [{"content_type": "image/jpeg", "file_name": "a.jpg"}]
    file_id = client.post("/s2s/v1.0/file/sod", json={"files": files}, headers=auth).json()["result"]["files"][0][
        "file_id"
    ]
    body = {
        "request_id": 1,
        "payload": {"file_sets": {"src_ids": [file_id]}, "actions": [{"id": 0}], "output_ext": "png"},
    }
    task_id = client.post("/s2s/v1.0/task/sod", json=body, headers=auth).json()["result"]["task_id"]
    status = client.get("/s2s/v1.0/task/sod", params={"task_id": task_id}, headers=auth).json()["result"]
    assert status == {"polling_interval": 100, "status": "error", "error": "unknown_internal_error"}


def test_run_answering_404_for_a_missing_upload_is_uploaded_again(pc_local, emulator, portrait_jpeg, monkeypatch):
    emulator.faults["never_uploaded"] = "http_404"
    real_upload = PerfectCorpProvider._upload
    calls = []

    def first_upload_loses_its_bytes(self, job, feature, data, name, content_type, budget):
        calls.append(1)
        if len(calls) > 1:
            return real_upload(self, job, feature, data, name, content_type, budget)
        files = [{"content_type": content_type, "file_name": name}]
        _, body = self._call("POST", "/s2s/v1.0/file/sod", job_key=job.job_id, budget=budget, json={"files": files})
        return body["result"]["files"][0]["file_id"]  # a slot whose PUT never happens

    monkeypatch.setattr(PerfectCorpProvider, "_upload", first_upload_loses_its_bytes)
    outputs, _ = run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert outputs and len(calls) == 2 and emulator.counters["charges"] == 1


# --- style catalogue ----------------------------------------------------------------------------------


VARIANTS = [
    {},
    {"group_key": "style_groups"},
    {"title_style": "flat"},
    {"title_style": "name", "thumb_position": "flat"},
    {"end_token": "null"},
    {"end_token": "empty"},
    {"envelope": "data"},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_style_listing_pages_through_every_style_with_exact_ids(pc, emulator, variant):
    emulator.faults.update(variant)
    groups = list(pc.list_style_groups("pc_hairstyle"))
    assert [g["id"] for g in groups] == [str(g["id"]) for g in emulator.catalogue["hair-style"]]
    assert [g["title"] for g in groups] == ["Women", "Men", "Short"]
    styles = list(pc.list_styles("pc_hairstyle", groups[0]["id"]))
    expected = emulator.catalogue["hair-style"][0]["styles"]
    assert len(styles) == 23 > 20  # two pages
    assert [s["id"] for s in styles] == [str(s["id"]) for s in expected]
    assert all(int(s["id"]) > 2**53 and int(s["id"]) % 2 == 1 for s in styles)  # a float would lose these
    assert styles[0]["name"] == expected[0]["title"] and styles[0]["thumb"].endswith(f"/{expected[0]['id']}.jpg")
    assert all(s["group_id"] == groups[0]["id"] for s in styles)


def test_style_thumbnails_are_served(pc, emulator):
    group = next(iter(pc.list_style_groups("hair-style")))
    style = next(iter(pc.list_styles("hair-style", group["id"])))
    http = pc.http()
    data, content_type = http.download(style["thumb"], allow_private=True)
    assert content_type == "image/jpeg" and decode(data).size == (160, 160)


def test_emulator_refuses_bad_page_sizes_and_unknown_groups(emulator):
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")
    auth = _token(client, emulator)
    for size in ("0", "21", "x"):
        assert client.get("/s2s/v1.0/task/style-group/wig", params={"page_size": size}, headers=auth).status_code == 400
    unknown = client.get("/s2s/v1.0/task/style/wig", params={"style_group_id": "123"}, headers=auth)
    assert unknown.status_code == 400 and unknown.json()["error_code"] == "InvalidStyleGroup"
    assert client.get("/s2s/v1.0/task/style-group/sod", headers=auth).status_code == 404


def test_big_style_ids_travel_exactly_from_listing_to_the_run(pc, emulator, portrait_jpeg):
    group = list(pc.list_style_groups("pc_hairstyle"))[1]
    style = list(pc.list_styles("pc_hairstyle", group["id"]))[-1]
    # Only the style id, as a string: the adapter finds its group from the listing it made.
    outputs, _ = run(pc, job_input("pc_hairstyle", portrait_jpeg, params={"style_id": style["id"]}))
    assert outputs[0].meta["style_id"] == style["id"]
    assert emulator.tasks[next(iter(emulator.tasks))].params == {
        "style_group_id": int(group["id"]),
        "style_ids": [int(style["id"])],
    }


def test_a_style_with_no_known_group_is_looked_up_in_the_catalogue(pc_local, emulator, portrait_jpeg):
    _, style_id = emulator.style_ids("hair-style")[-1]
    outputs, _ = run(pc_local, job_input("pc_hairstyle", portrait_jpeg, params={"style_id": str(style_id)}))
    assert outputs


def test_withdrawn_styles_fail_with_a_pick_another_message(pc_local, emulator, portrait_jpeg):
    group_id, style_id = emulator.style_ids("hair-style")[0]
    with pytest.raises(VendorError) as failure:
        run(
            pc_local,
            job_input(
                "pc_hairstyle",
                portrait_jpeg,
                params={"style_id": str(style_id + 2 * 10**6), "style_group_id": str(group_id)},
            ),
        )
    assert failure.value.message == STYLE_GONE
    with pytest.raises(VendorError) as failure:
        run(
            pc_local,
            job_input("pc_hairstyle", portrait_jpeg, params={"style_id": str(style_id), "style_group_id": "1"}),
        )
    assert failure.value.message == STYLE_GONE
    assert emulator.counters["charges"] == 0


# --- request_id: retries are never charged twice ---------------------------------------------------


def test_a_lost_answer_to_the_run_is_retried_with_the_same_request_id(pc, emulator, portrait_jpeg):
    emulator.faults.update({"reset_after": 1, "fault_path": "/task/sod$"})
    outputs, _ = run(pc, job_input("pc_background_removal", portrait_jpeg))
    assert outputs
    assert emulator.counters["tasks"] == 1 and emulator.counters["duplicate_requests"] == 1
    assert emulator.counters["charges"] == 1


def test_a_resumed_submit_reuses_the_upload_and_request_id(pc_local, emulator, portrait_jpeg):
    job = job_input("pc_colorize", portrait_jpeg)
    first = pc_local.submit(job)
    again = pc_local.submit(job)  # a worker died after the run call; another claims the job
    assert first.task_id == again.task_id
    assert emulator.counters["uploads"] == 1 and emulator.counters["tasks"] == 1
    progress = pc_local.poll(job, again.task_id)
    assert progress.finished and emulator.counters["charges"] == 1


@pytest.mark.parametrize("variant", ["same_task", "error"])
def test_duplicate_request_variants(emulator, variant):
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")
    auth = _token(client, emulator)
    emulator.faults["duplicate_request"] = variant
    body = {
        "request_id": 5,
        "payload": {
            "actions": [
                {
                    "id": 0,
                    "params": {
                        "prompt": "a fox",
                        "style_group_id": emulator.style_ids("text-to-image")[0][0],
                        "style_ids": [emulator.style_ids("text-to-image")[0][1]],
                    },
                }
            ]
        },
    }
    first = client.post("/s2s/v1.0/task/text-to-image", json=body, headers=auth)
    second = client.post("/s2s/v1.0/task/text-to-image", json=body, headers=auth)
    if variant == "same_task":
        assert second.json()["result"]["task_id"] == first.json()["result"]["task_id"]
    else:
        assert second.status_code == 400
    assert emulator.counters["tasks"] == 1


# --- engine errors ------------------------------------------------------------------------------------


PERMANENT_CODES = sorted(
    set(ENGINE_MESSAGES)
    - {"error_inference", "error_upload", "unknown_internal_error", "error_download_image", "error_download_mask"}
)


@pytest.mark.parametrize("code", PERMANENT_CODES)
def test_each_engine_error_fails_with_its_own_advice(pc_local, emulator, portrait_jpeg, code):
    emulator.faults["engine_error"] = code
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert failure.value.message == ENGINE_MESSAGES[code] and failure.value.permanent
    assert emulator.counters["tasks"] == 1 and emulator.counters["charges"] == 0


@pytest.mark.parametrize(
    "code", ["error_inference", "error_upload", "unknown_internal_error", "error_download_image", "error_download_mask"]
)
def test_transient_engine_errors_are_run_once_more_with_a_new_request_id(pc_local, emulator, portrait_jpeg, code):
    emulator.faults.update({"engine_error": code, "engine_error_count": 1})
    outputs, _ = run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert outputs and emulator.counters["tasks"] == 2 and emulator.counters["charges"] == 1
    request_ids = {key[3] for key in emulator.requests_seen}
    assert len(request_ids) == 2


def test_a_transient_error_twice_ends_the_job(pc_local, emulator, portrait_jpeg):
    emulator.faults["engine_error"] = "error_inference"
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert failure.value.message == ENGINE_MESSAGES["error_inference"]
    assert emulator.counters["tasks"] == 2 and emulator.counters["charges"] == 0


def test_an_unknown_engine_error_says_try_another_photo(pc_local, emulator, portrait_jpeg):
    emulator.faults["engine_error"] = "error_something_new"
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert "different photo" in failure.value.message


def test_the_engine_checks_the_input_itself(emulator, portrait_jpeg, no_face_jpeg):
    """Engine-side checks, for clients that skip pre-flight (ours does not send such inputs)."""
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")
    auth = _token(client, emulator)
    emulator.engine_seconds = 0

    def result_of(feature: str, data: bytes, params=None):
        ct = "image/jpeg"
        slot = client.post(
            f"/s2s/v1.0/file/{feature}", json={"files": [{"content_type": ct, "file_name": "a.jpg"}]}, headers=auth
        ).json()["result"]["files"][0]
        client.put(slot["requests"][0]["url"], content=data, headers=slot["requests"][0]["headers"])
        action = {"id": 0, **({"params": params} if params else {})}
        body = {"request_id": 1, "payload": {"file_sets": {"src_ids": [slot["file_id"]]}, "actions": [action]}}
        task = client.post(f"/s2s/v1.0/task/{feature}", json=body, headers=auth).json()["result"]["task_id"]
        return client.get(f"/s2s/v1.0/task/{feature}", params={"task_id": task}, headers=auth).json()["result"]

    group, style = emulator.style_ids("hair-style")[0]
    hair = {"style_group_id": group, "style_ids": [style]}
    assert result_of("hair-style", no_face_jpeg, hair)["error"] == "error_no_face"
    assert (
        result_of("hair-style", images.to_bytes(images.two_faces(), "JPEG"), hair)["error"] == "error_multiple_people"
    )
    big = images.to_bytes(images.astronaut(3), "JPEG")
    assert result_of("hair-style", big, hair)["error"] == "error_exceed_max_image_size"
    assert result_of("colorize", b"not an image at all")["error"] == "error_decode_image"
    small_face = images.to_bytes(images.astronaut(1), "JPEG")
    assert result_of("hair-style", small_face, hair)["error"] == "error_src_face_too_small"


def test_zero_credits_fails_without_charging(pc_local, emulator, portrait_jpeg):
    emulator.faults["zero_credits"] = True
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert "temporarily unavailable" in failure.value.message


def test_credit_ledger_debits_only_on_success(pc_local, emulator, portrait_jpeg):
    emulator.credits = 2
    run(pc_local, job_input("pc_colorize", portrait_jpeg))
    emulator.faults["engine_error"] = "error_no_face"
    with pytest.raises(VendorError):
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert emulator.credits == 1


# --- polling: the 10-second rule, unknown states, hangs -------------------------------------------------


def test_a_task_left_unpolled_for_10_s_is_lost_and_run_once_more(pc, emulator, portrait_jpeg):
    emulator.engine_seconds = 5
    advanced = []

    def late_first_poll(progress):
        if not advanced:
            advanced.append(1)
            emulator.clock.advance(11)  # the worker stalled
        else:
            emulator.clock.advance(6)

    outputs, _ = run(pc, job_input("pc_colorize", portrait_jpeg), between_polls=late_first_poll)
    assert outputs and emulator.counters["lost"] == 1
    assert emulator.counters["tasks"] == 2 and emulator.counters["charges"] == 1


def test_a_task_lost_twice_fails_with_try_again(pc_local, emulator, portrait_jpeg):
    emulator.engine_seconds = 5
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_colorize", portrait_jpeg), between_polls=lambda p: emulator.clock.advance(11))
    assert failure.value.message == LOST and emulator.counters["charges"] == 0


def test_lost_task_fault_and_strict_polling(pc_local, emulator, portrait_jpeg):
    emulator.faults["lost_task"] = 1
    outputs, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert outputs and emulator.counters["lost"] == 1
    emulator.faults.update({"strict_polling": True})
    emulator.engine_seconds = 5
    with pytest.raises(VendorError):  # 1.5 s between polls exceeds a 100 ms polling_interval
        run(pc_local, job_input("pc_colorize", portrait_jpeg), between_polls=lambda p: emulator.clock.advance(1.5))


def test_poll_waits_follow_the_expected_engine_time_within_the_10_s_rule(pc_local, emulator, settings):
    feature = pc_local.feature("pc_hairstyle")
    settings.PERFECTCORP_POLL_CEILING_MS = 60_000
    cache.set("perfectcorp:engine-time:hair-style", 8.0)
    assert pc_local._poll_after(feature, 0.0, 1.0) == pytest.approx(8.0)
    assert pc_local._poll_after(feature, 7.5, 1.0) == pytest.approx(1.0)  # overdue: the vendor's interval
    cache.set("perfectcorp:engine-time:hair-style", 30.0)
    assert pc_local._poll_after(feature, 0.0, 1.0) == pytest.approx(8.5)  # never near the 10 s rule
    settings.PERFECTCORP_POLL_CEILING_MS = 5000
    assert pc_local._poll_after(feature, 0.0, 1.0) == pytest.approx(5.0)
    settings.PERFECTCORP_POLL_FLOOR_MS = 2000
    cache.set("perfectcorp:engine-time:hair-style", 0.5)
    assert pc_local._poll_after(feature, 0.0, 0.1) == pytest.approx(2.0)


def test_the_expected_engine_time_is_learned_from_jobs(pc_local, emulator):
    feature = pc_local.feature("pc_colorize")
    cache.set("perfectcorp:engine-time:colorize", 8.0)
    pc_local._learn(feature, finished_at=8.2, last_running_at=None, interval=1.0)
    assert 7.8 < pc_local.expected_seconds(feature) < 8.0  # done at first poll: probe a little earlier
    pc_local._learn(feature, finished_at=9.0, last_running_at=8.4, interval=1.0)
    assert pc_local.expected_seconds(feature) == pytest.approx(9.4)  # still running at 8.4: a poll interval later


def test_unknown_status_strings_mean_still_running(pc_local, emulator, portrait_jpeg):
    emulator.faults["unknown_status"] = "queued"
    emulator.engine_seconds = 3600
    job = job_input("pc_colorize", portrait_jpeg)
    submission = pc_local.submit(job)
    for _ in range(3):
        assert not pc_local.poll(job, submission.task_id).finished
    emulator.engine_seconds = 0
    emulator.tasks[submission.task_id].duration = 0
    assert pc_local.poll(job, submission.task_id).finished


def test_a_hanging_task_is_stopped_at_the_deadline(pc_local, emulator, portrait_jpeg, settings):
    emulator.faults["hang"] = True
    job = job_input("pc_colorize", portrait_jpeg)
    submission = pc_local.submit(job)
    assert not pc_local.poll(job, submission.task_id).finished
    job.state["run_at"] -= settings.PERFECTCORP_JOB_DEADLINE_S + 1
    with pytest.raises(VendorError) as failure:
        pc_local.poll(job, submission.task_id)
    assert "took too long" in failure.value.message and emulator.counters["charges"] == 0


def test_task_ids_are_percent_encoded_on_the_wire(emulator, portrait_jpeg):
    client = httpx.Client(transport=emulator.transport(), base_url="http://pc")
    auth = _token(client, emulator)
    group, style = emulator.style_ids("text-to-image")[0]
    body = {
        "request_id": 1,
        "payload": {
            "actions": [{"id": 0, "params": {"prompt": "a fox", "style_group_id": group, "style_ids": [style]}}]
        },
    }
    task_id = client.post("/s2s/v1.0/task/text-to-image", json=body, headers=auth).json()["result"]["task_id"]
    assert "+" in task_id and "/" in task_id and "=" in task_id
    raw = client.get(f"/s2s/v1.0/task/text-to-image?task_id={task_id}", headers=auth)
    assert raw.status_code == 400 and raw.json()["error_code"] == "InvalidTaskId"  # "+" read as a space
    emulator.faults["lenient_task_id"] = True
    assert client.get(f"/s2s/v1.0/task/text-to-image?task_id={task_id}", headers=auth).status_code == 200


# --- HTTP faults ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "read_timeout", "connect_timeout", "reset"])
def test_transient_http_faults_are_retried(pc, emulator, portrait_jpeg, fault):
    emulator.faults[fault] = 2
    outputs, _ = run(pc, job_input("pc_background_removal", portrait_jpeg))
    assert outputs and emulator.counters["charges"] == 1 and emulator.counters["tasks"] == 1


def test_persistent_5xx_fails_with_try_again(pc_local, emulator, portrait_jpeg):
    emulator.faults["503"] = 50
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert not failure.value.permanent and "try again" in failure.value.message.lower()


def test_a_429_pauses_the_shared_budget(pc_local, emulator, portrait_jpeg):
    emulator.faults.update({"429": 1, "fault_path": "/file/"})
    run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert emulator.counters["fault_429"] == 1
    state = cache.get(pc_local.budget()._state_key)
    assert state["paused_until"] > 0


def test_a_garbled_status_answer_is_polled_again(pc_local, emulator, portrait_jpeg):
    job = job_input("pc_background_removal", portrait_jpeg)
    submission = pc_local.submit(job)
    emulator.faults.update({"malformed_json": 1, "fault_path": r"/task/sod$"})
    progress = pc_local.poll(job, submission.task_id)
    assert not progress.finished  # the garbled answer
    assert pc_local.poll(job, submission.task_id).finished


def test_garbled_answers_to_the_run_fail_the_job_with_a_message(pc_local, emulator, portrait_jpeg):
    emulator.faults.update({"malformed_json": 5, "fault_path": "/file/"})
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_background_removal", portrait_jpeg))
    assert "couldn't read" in failure.value.message


def test_configured_feature_paths_reach_renamed_features(pc_local, emulator, settings):
    emulator.faults["feature_names"] = {"text-to-image": "image-gen"}
    params = {"prompt": "a fox", **hair_params(emulator, "text-to-image")}
    with pytest.raises(VendorError):
        run(pc_local, job_input("pc_image_generator", params=params))
    settings.PERFECTCORP_FEATURE_PATHS = json.dumps({"pc_image_generator": "image-gen"})
    outputs, _ = run(pc_local, job_input("pc_image_generator", params=params))
    assert outputs and ("POST", "/s2s/v1.0/task/image-gen") in emulator.log


# --- result URLs ---------------------------------------------------------------------------------------------


def test_expired_result_urls_fail_with_run_again(pc, emulator, portrait_jpeg):
    emulator.faults["expired_urls"] = True
    with pytest.raises(VendorError) as failure:
        run(pc, job_input("pc_colorize", portrait_jpeg))
    assert "expired" in failure.value.message


def test_result_urls_expire_after_two_hours(pc_local, emulator, portrait_jpeg):
    job = job_input("pc_colorize", portrait_jpeg)
    submission = pc_local.submit(job)
    pc_local.poll(job, submission.task_id)
    url = emulator.tasks[submission.task_id].results[0]["url"]
    client = httpx.Client(transport=emulator.transport())
    assert client.get(url).status_code == 200
    emulator.clock.advance(7201)
    assert client.get(url).status_code == 403


def test_oversized_and_slow_downloads_are_refused(pc_local, emulator, portrait_jpeg, monkeypatch):
    import studio.vendors.perfectcorp as module

    monkeypatch.setattr(module, "DOWNLOAD_MAX_BYTES", 2 * 1024 * 1024)
    emulator.faults["oversized_download"] = 3 * 1024 * 1024
    with pytest.raises(VendorError) as failure:
        run(pc_local, job_input("pc_colorize", portrait_jpeg))
    assert "too large" in failure.value.message


def test_slow_download_over_http_is_cut_off(emulator, portrait_jpeg, monkeypatch, settings):
    import studio.vendors.perfectcorp as module

    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    monkeypatch.setattr(module, "DOWNLOAD_MAX_SECONDS", 0.5)
    emulator.faults["slow_download"] = 1.0
    with routed(emulator, over_http=True), pytest.raises(VendorError) as failure:
        run(PerfectCorpProvider(sleep=lambda s: None), job_input("pc_colorize", portrait_jpeg))
    assert "did not answer in time" in failure.value.message or "took too long" in failure.value.message


# --- pre-flight: fixed or refused before any credit (or request) ---------------------------------------------


def test_two_faces_are_refused_before_any_request(pc_local, emulator, two_faces_jpeg):
    with pytest.raises(VendorError) as failure:
        pc_local.submit(job_input("pc_hairstyle", two_faces_jpeg, params=hair_params(emulator)))
    assert "2 faces" in failure.value.message and emulator.counters["requests"] == 0


def test_no_face_is_refused_before_any_request(pc_local, emulator, no_face_jpeg):
    with pytest.raises(VendorError) as failure:
        pc_local.submit(job_input("pc_aging", no_face_jpeg))
    assert "couldn't find a face" in failure.value.message and emulator.counters["requests"] == 0


def test_a_face_under_128_px_is_refused_for_hair_but_fine_for_aging(pc_local, emulator):
    small = images.to_bytes(images.astronaut(1), "JPEG")  # the face is about 95 px wide
    with pytest.raises(VendorError) as failure:
        pc_local.submit(job_input("pc_hairstyle", small, params=hair_params(emulator)))
    assert "too small" in failure.value.message and emulator.counters["requests"] == 0
    outputs, _ = run(pc_local, job_input("pc_aging", small))
    assert outputs


def test_large_photos_are_reduced_to_1024_for_hair_features(pc, emulator):
    big = images.to_bytes(images.astronaut(4), "JPEG")  # 2048 px, face ~380 px
    outputs, _ = run(pc, job_input("pc_hairstyle", big, params=hair_params(emulator)))
    assert [im.size for im in uploaded_images(emulator)] == [(1024, 1024)]
    assert decode(outputs[0].data).size == (1024, 1024)


def test_a_batch_on_one_photo_prepares_it_once_with_each_jobs_own_faces(pc_local, emulator, monkeypatch):
    from studio.vendors import perfectcorp as module

    module._prepared_photos.clear()
    decoded = []
    real_load = imaging.load_image
    monkeypatch.setattr(imaging, "load_image", lambda data, **kw: decoded.append(len(data)) or real_load(data, **kw))
    big = images.to_bytes(images.astronaut(4), "JPEG")  # 2048 px, face ~380 px
    face = imaging.detect_faces(real_load(big))[0]
    hair = module.FEATURES["pc_hairstyle"]
    params = hair_params(emulator)
    first = pc_local.preflight(job_input("pc_hairstyle", big, params=params, faces=[face]), hair)
    # Another job on the same photo: no decode, the same bytes, its own face boxes scaled as before.
    shifted = imaging.FaceBox(face.x + 40, face.y, 40, 40)  # too small once halved: refused
    with pytest.raises(VendorError) as failure:
        pc_local.preflight(job_input("pc_hairstyle", big, params=params, faces=[shifted]), hair)
    assert "too small (20 px wide at 1024×1024" in failure.value.message
    second = pc_local.preflight(job_input("pc_hairstyle", big, params=params, faces=[face]), hair)
    assert decoded == [len(big)]
    assert second.image == first.image and second.size == first.size == (1024, 1024)
    assert second.notes == first.notes == ("resized to 1024×1024",)
    # Other limits (colorize keeps up to 4096 px) prepare the photo again, at its own size.
    colorize = pc_local.preflight(job_input("pc_colorize", big, faces=[face]), module.FEATURES["pc_colorize"])
    assert colorize.size == (2048, 2048) and colorize.notes == () and len(decoded) == 2


def test_prepared_photos_are_few_and_short_lived():
    from studio.vendors.recent_photos import RecentlyPrepared

    now = [0.0]
    made = []
    recent = RecentlyPrepared(entries=2, ttl=60.0, clock=lambda: now[0])

    def prepare(photo: bytes, limit: int = 1024):
        return recent.get_or_make(photo, limit, lambda: made.append(photo) or photo.upper())

    assert prepare(b"a") == prepare(b"a") == b"A" and made == [b"a"]
    prepare(b"a", limit=512)  # other limits: made again
    prepare(b"b")  # a third entry pushes out the least recently used one
    assert len(recent) == 2 and made == [b"a", b"a", b"b"]
    prepare(b"a")
    assert made == [b"a", b"a", b"b", b"a"]
    now[0] = 61.0  # a minute later nothing is kept
    assert len(recent) == 0
    prepare(b"b")
    assert made[-1] == b"b"

    def fails():
        raise VendorError("no", permanent=True)

    with pytest.raises(VendorError):
        recent.get_or_make(b"c", 1024, fails)
    assert len(recent) == 1  # failures are not kept


def test_missing_inputs_are_refused_with_what_to_do(pc_local, emulator, portrait_jpeg, no_face_jpeg):
    cases = [
        (job_input("pc_hairstyle", portrait_jpeg), "Pick a style"),
        (job_input("pc_image_generator", params={"style_id": "1"}), "Describe the picture"),
        (job_input("pc_makeup_transfer", portrait_jpeg), "look you want to copy"),
        (job_input("pc_makeup_transfer", portrait_jpeg, reference=no_face_jpeg), "reference look"),
        (job_input("pc_object_removal", portrait_jpeg), "Paint over"),
        (
            job_input("pc_object_removal", portrait_jpeg, mask=images.to_bytes(Image.new("L", (64, 64)), "PNG")),
            "Paint over",
        ),
    ]
    for job, expected in cases:
        with pytest.raises(VendorError) as failure:
            pc_local.submit(job)
        assert expected in failure.value.message
    assert emulator.counters["requests"] == 0


# --- chaining through dst_id -----------------------------------------------------------------------------------


def chained(job_key, image, outputs, emulator, **params):
    meta = {**outputs[0].meta, "provider": "perfectcorp"}
    return job_input(job_key, image, params=params, source_meta=meta)


def test_a_result_is_chained_by_dst_id_without_uploading_again(pc, emulator, portrait_jpeg):
    first, _ = run(pc, job_input("pc_hairstyle", portrait_jpeg, params=hair_params(emulator)))
    uploads = emulator.counters["uploads"]
    second, _ = run(pc, chained("pc_bangs", first[0].data, first, emulator, **hair_params(emulator, "hair-bang")))
    assert second and emulator.counters["uploads"] == uploads
    task = list(emulator.tasks.values())[-1]
    assert task.inputs["src_ids"] == [first[0].meta["dst_id"]]


def test_a_dst_id_older_than_30_days_is_not_used(pc_local, emulator, portrait_jpeg):
    first, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    job = chained("pc_enhance", first[0].data, first, emulator, scale="1")
    job.source_meta["dst_id_at"] -= 31 * 86400
    run(pc_local, job)
    assert emulator.counters["uploads"] == 2


def test_a_dst_id_the_vendor_no_longer_has_falls_back_to_an_upload(pc_local, emulator, portrait_jpeg):
    first, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    emulator.files[first[0].meta["dst_id"]]["uploaded"] -= 31 * 86400  # the vendor deleted it; our record looks fresh
    second, _ = run(pc_local, chained("pc_enhance", first[0].data, first, emulator, scale="1"))
    assert second and emulator.counters["uploads"] == 2 and emulator.counters["charges"] == 2


# --- status for the staff console --------------------------------------------------------------------------------


def test_status_shows_the_budget(pc_local, emulator, portrait_jpeg):
    run(pc_local, job_input("pc_colorize", portrait_jpeg))
    status = pc_local.status()
    assert status["mode"] == "sandbox"
    assert (
        status["budget"]["windows"][1]["used"]
        == emulator.counters["requests"] - emulator.counters["uploads"] - (emulator.counters["downloads"])
    )
    assert base64.b64decode(emulator.public_key_b64)  # the test key is a real SPKI blob


def test_a_dst_id_the_vendor_never_saw_falls_back_to_an_upload(pc_local, emulator, portrait_jpeg):
    """E.g. a result made by another sandbox process, or a dst_id refused as unknown."""
    first, _ = run(pc_local, job_input("pc_colorize", portrait_jpeg))
    job = chained("pc_enhance", first[0].data, first, emulator, scale="1")
    job.source_meta["dst_id"] = "D+unknown/id=="
    outputs, _ = run(pc_local, job)
    assert outputs and emulator.counters["uploads"] == 2 and emulator.counters["charges"] == 2


def test_a_batch_on_one_photo_uploads_it_once_per_feature(pc, emulator, portrait_jpeg):
    """v1.0 files belong to a feature's file API: one upload per feature for a batch on one photo."""
    for _ in range(2):
        assert run(pc, job_input("pc_colorize", portrait_jpeg))[0]
    assert emulator.counters["uploads"] == 1 and emulator.counters["tasks"] == 2
    assert run(pc, job_input("pc_hairstyle", portrait_jpeg, params=hair_params(emulator)))[0]
    assert emulator.counters["uploads"] == 2


def test_a_borrowed_file_the_vendor_deleted_is_uploaded_again(pc_local, emulator, portrait_jpeg):
    first = job_input("pc_colorize", portrait_jpeg)
    run(pc_local, first)
    emulator.files[first.state["uploads"]["src_ids"][0]]["uploaded"] -= 31 * 86400  # gone at the vendor
    again = job_input("pc_colorize", portrait_jpeg)
    assert run(pc_local, again)[0]
    assert emulator.counters["uploads"] == 2 and again.state["reuploaded"] is True
