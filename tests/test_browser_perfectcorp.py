"""Perfect Corp's features in real Chromium, in sandbox mode, with a real worker.

The live server and the worker (tests/live.py, started with STUDIO_SANDBOX=1)
each run the Perfect Corp emulator through the real adapter. The catalogue is
synced from the emulator into the test database first, as the daily task does.
Same guard as tests/test_browser.py: any console error, failed request or
unexpected HTTP error fails the test.
"""

# ruff: noqa: F811  (fixtures imported from tests.test_browser are used as arguments)

from __future__ import annotations

import re

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from studio import styles
from studio.models import Job, Photo, Style
from studio.vendors import sandbox
from tests.test_browser import (  # noqa: F401  (fixtures)
    JOB_TIMEOUT_MS,
    UUID,
    browser,
    choose_operation,
    portrait_file,
    shots_dir,
    studio,
    upload_photo,
    wait_images,
)

pytestmark = [pytest.mark.browser, pytest.mark.qcluster]


# What the catalogue looks like per protocol: v1 style groups, v2 template categories.
GROUPS = {"v1": ["Women", "Men", "Short"], "v2": ["Trending", "Classic", "Bold"]}


@pytest.fixture(params=["v1", "v2"])
def version(request, settings):
    """Every Perfect Corp feature runs on both protocol families (PERFECTCORP_API_VERSION)."""
    settings.PERFECTCORP_API_VERSION = request.param
    return request.param


@pytest.fixture
def sandboxed(settings, cluster, version):
    """Sandbox mode in this process (web) and in the worker, which is started here."""
    settings.STUDIO_SANDBOX = True
    cluster.extra_env["PERFECTCORP_API_VERSION"] = version
    sandbox.reset()
    # The catalogues these tests pick from, synced before the worker starts.
    for feature in ("hair-style", "text-to-image"):
        (report,) = styles.styles_sync(feature=feature)
        assert not report.error, report
    cluster.start()
    yield cluster
    sandbox.reset()


def submit_all(page: Page) -> list[str]:
    """Submit the operation form; the ids of every job card the answer adds."""
    with page.expect_response(lambda r: r.url.endswith("/jobs/") and r.request.method == "POST") as info:
        page.locator("#operation-form button[type=submit]").click()
    assert info.value.status == 200
    ids = list(dict.fromkeys(re.findall(rf'id="job-({UUID})"', info.value.text())))
    assert ids, "no job card in the response:\n" + info.value.text()[:3000]
    for job_id in ids:
        expect(page.locator(f"#job-{job_id}")).to_be_visible()
    return ids


def wait_done(page: Page, job_id: str, results: int | None = 1) -> None:
    card = page.locator(f"#job-{job_id}")
    expect(card).to_have_attribute("data-status", re.compile("succeeded|failed"), timeout=JOB_TIMEOUT_MS)
    job = Job.objects.get(pk=job_id)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    expect(card.get_by_test_id("job-status")).to_have_text("Done")
    expect(card.locator(".badge-sandbox")).to_have_text("Sandbox")
    if results is not None:
        expect(card.locator(".result-thumbs img")).to_have_count(results)


def test_hairstyle_catalogue_several_styles_give_several_results(
    studio, sandboxed, version, portrait_file, shots_dir
):
    page, guard = studio.page()
    upload_photo(page, portrait_file)
    expect(page.locator(".topbar .badge-sandbox")).to_have_text("Sandbox")
    choose_operation(page, "Hairstyle try-on")
    picker = page.get_by_test_id("style-picker-style_id")
    groups = GROUPS[version]
    expect(picker.locator(".style-group h4")).to_have_text(groups)
    expect(picker.get_by_test_id("style-count")).to_have_text("None selected")

    # The group filter shows one group at a time.
    picker.get_by_role("button", name=groups[2]).click()
    expect(picker.locator(".style-group:visible h4")).to_have_text([groups[2]])
    picker.get_by_role("button", name="All").click()
    expect(picker.locator(".style-group:visible")).to_have_count(3)

    # Thumbnails are ours (never the vendor's host), lazy and sized.
    first_img = picker.locator(".style-card img").first
    assert re.fullmatch(r"/styles/\d+/thumbnail", first_img.get_attribute("src"))
    assert first_img.get_attribute("loading") == "lazy" and first_img.get_attribute("width")

    # Pick three: two with the mouse, one with the keyboard.
    cards = picker.locator(".style-card")
    cards.nth(0).click()
    cards.nth(1).click()
    keyboard_input = picker.locator("[data-style-input]").nth(25)  # in another group
    keyboard_input.focus()
    page.keyboard.press("Space")
    expect(picker.get_by_test_id("style-count")).to_have_text("3 selected")
    picker.screenshot(path=str(shots_dir / f"pc-style-picker-{version}.png"))
    picked = [picker.locator("[data-style-input]").nth(i).get_attribute("value") for i in (0, 1, 25)]
    if version == "v1":  # exact ids, above 2**53, as strings
        assert all(int(value) > 2**53 for value in picked)
    else:  # v2 template ids, words
        assert all(re.fullmatch(r"ht_tpl_\d{3}", value) for value in picked)

    ids = submit_all(page)
    assert len(ids) == 3
    for job_id in ids:
        wait_done(page, job_id)
    jobs = [Job.objects.get(pk=job_id) for job_id in ids]
    assert sorted(job.params["style_id"] for job in jobs) == sorted(picked)
    assert len({job.batch for job in jobs}) == 1 and jobs[0].sandbox
    names = {Style.objects.filter(style_id=value).first().name for value in picked}
    shown = {page.locator(f"#job-{job_id} [data-testid=job-style]").inner_text() for job_id in ids}
    assert shown == names
    wait_images(page)

    # Chaining: a result becomes the input of another Perfect Corp operation.
    page.locator(f"#job-{ids[0]} .result-thumbs a").first.click()
    expect(page.locator(".result-title .badge-sandbox")).to_have_text("Sandbox")
    page.get_by_role("button", name="Use as new input").click()
    expect(page.get_by_test_id("photo-facts")).to_be_visible()
    chained = Photo.objects.exclude(source_result=None).get()
    assert chained.source_result.job_id == jobs[0].pk
    card = page.locator(".op-card", has_text="Photo enhance")
    expect(card.locator("input")).to_be_enabled()


def test_makeup_reference_and_object_removal_mask(studio, sandboxed, version, portrait_file, tmp_path, shots_dir):
    page, guard = studio.page()
    upload_photo(page, portrait_file)
    photo = Photo.objects.get()
    from tests import images

    # Hairstyle from a photo of the hair you want: offered on v2 only, beside the style picker.
    choose_operation(page, "Hairstyle try-on")
    hair_reference = page.get_by_test_id("reference-input")
    if version == "v1":
        expect(hair_reference).to_have_count(0)
    else:
        hair = tmp_path / "hair.jpg"
        hair.write_bytes(images.to_bytes(images.astronaut(scale=2), "JPEG"))
        hair_reference.set_input_files(hair)
        expect(page.locator("[data-reference-preview]")).to_be_visible()
        (hair_id,) = submit_all(page)
        wait_done(page, hair_id)
        hair_job = Job.objects.get(pk=hair_id)
        assert hair_job.reference_photo is not None and not hair_job.params.get("style_id")
        page.goto(f"/?photo={photo.pk}")

    # Makeup transfer: a second photo, the look to copy.
    choose_operation(page, "Makeup transfer")
    look = tmp_path / "look.jpg"
    look.write_bytes(images.to_bytes(images.astronaut(scale=2).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG"))
    page.get_by_test_id("reference-input").set_input_files(look)
    expect(page.locator("[data-reference-preview]")).to_be_visible()
    (makeup_id,) = submit_all(page)
    wait_done(page, makeup_id)
    makeup = Job.objects.get(pk=makeup_id)
    assert makeup.reference_photo is not None and makeup.reference_photo.pk != photo.pk

    # Object removal: paint with the mouse on the canvas over the photo.
    page.goto(f"/?photo={photo.pk}")
    choose_operation(page, "Object removal")
    canvas = page.get_by_test_id("mask-canvas")
    expect(canvas).to_be_visible()
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    start = (box["x"] + box["width"] * 0.40, box["y"] + box["height"] * 0.70)
    end = (box["x"] + box["width"] * 0.60, box["y"] + box["height"] * 0.70)
    page.mouse.move(*start)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(start[0] + (end[0] - start[0]) * step / 10, start[1])
    page.mouse.up()
    expect(page.get_by_test_id("mask-state")).to_have_text("1 stroke painted")
    expect(page.locator("[data-mask-editor]")).to_have_attribute("data-mask-ready", re.compile(".+"))
    # Undo and paint again: the posted mask follows.
    page.get_by_role("button", name="Undo").click()
    expect(page.get_by_test_id("mask-state")).to_have_text("Nothing painted yet")
    expect(page.locator("[data-mask-editor]")).to_have_attribute("data-mask-ready", "")
    # Clicking Undo may have scrolled the page: find the canvas again before painting.
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    start = (box["x"] + box["width"] * 0.40, box["y"] + box["height"] * 0.70)
    end = (box["x"] + box["width"] * 0.60, box["y"] + box["height"] * 0.70)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=10)
    page.mouse.up()
    expect(page.get_by_test_id("mask-state")).to_have_text("1 stroke painted")
    expect(page.locator("[data-mask-editor]")).to_have_attribute("data-mask-ready", re.compile(".+"))
    page.locator("[data-mask-editor]").screenshot(path=str(shots_dir / "pc-mask-editor.png"))
    (removal_id,) = submit_all(page)
    wait_done(page, removal_id)
    job = Job.objects.get(pk=removal_id)
    with job.mask.open("rb") as fh, Image.open(fh) as mask:
        assert mask.size == (photo.width, photo.height)
        left, top, right, bottom = mask.getbbox()
        # The stroke lies where it was drawn, in the photo's own pixels.
        assert abs(left - 0.40 * photo.width) < 60 and abs(right - 0.60 * photo.width) < 60
        assert top < 0.70 * photo.height < bottom
    wait_images(page)


def test_aging_series_background_removal_and_image_generator(studio, sandboxed, portrait_file, shots_dir):
    page, guard = studio.page()
    upload_photo(page, portrait_file)

    choose_operation(page, "Aging series")
    (aging_id,) = submit_all(page)
    choose_operation(page, "Background removal")
    (sod_id,) = submit_all(page)

    wait_done(page, aging_id, results=None)
    aging = Job.objects.get(pk=aging_id)
    ages = [r.meta["age"] for r in aging.results.order_by("index")]
    assert len(ages) >= 3 and ages == sorted(ages)
    labels = page.locator(f"#job-{aging_id} [data-testid=result-label]")
    expect(labels).to_have_text([f"Age {age}" for age in ages])

    wait_done(page, sod_id)
    wait_images(page)
    page.locator(f"#job-{aging_id}").screenshot(path=str(shots_dir / "pc-aging-card.png"))
    thumb = page.locator(f"#job-{sod_id} .result-thumbs img")
    expect(thumb).to_have_class(re.compile(r"\bcheckerboard\b"))
    assert "gradient" in thumb.evaluate("el => getComputedStyle(el).backgroundImage")
    wait_images(page)
    thumb.click()
    expect(page.locator(".result-view img.checkerboard").first).to_be_visible()
    expect(page.locator(".result-title .badge-sandbox")).to_have_text("Sandbox")

    # The image generator needs no photo: a prompt and a style.
    page.goto("/")
    choose_operation(page, "Image generator")
    page.get_by_label("Describe the picture").fill("a ceramic fox in soft window light")
    page.get_by_test_id("style-picker-style_id").locator(".style-card").first.click()
    (generated_id,) = submit_all(page)
    wait_done(page, generated_id)
    generated = Job.objects.get(pk=generated_id)
    assert generated.photo is None and generated.params["prompt"] == "a ceramic fox in soft window light"
    wait_images(page)


def test_unconfigured_vendor_is_hidden_with_its_reason_for_staff(studio, settings, portrait_file, live_server):
    from django.contrib.auth.models import User

    settings.STUDIO_SANDBOX = False
    settings.PERFECTCORP_CLIENT_ID = settings.PERFECTCORP_CLIENT_SECRET = ""
    sandbox.reset()
    page, guard = studio.page()
    upload_photo(page, portrait_file)
    # Visitors: not offered, no setting names; one calm line instead.
    expect(page.locator(".op-card", has_text="Hairstyle try-on")).to_have_count(0)
    expect(page.get_by_test_id("op-more")).to_be_visible()
    assert "PERFECTCORP_CLIENT_ID" not in page.content()
    expect(page.locator(".topbar .badge-sandbox")).to_have_count(0)
    # Staff: the console's Vendors page names the operation and the missing settings.
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw-ops-123456"))
    staff, _ = studio.page()
    staff.context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    staff.goto("/staff/vendors/")
    hidden = staff.get_by_test_id("console-hidden-operations")
    expect(hidden.locator('[data-op="pc_hairstyle"]')).to_contain_text("PERFECTCORP_CLIENT_ID")
    assert Job.objects.count() == 0


def test_wig_extensions_bangs_volume_colorize_and_enhance(studio, sandboxed, version, portrait_file):
    """The other six features, each submitted from the studio form and finished by the worker."""
    for feature in ("wig", "hair-ext", "hair-bang", "hair-vol"):
        (report,) = styles.styles_sync(feature=feature)
        assert not report.error, report
    page, guard = studio.page()
    upload_photo(page, portrait_file)
    ids = {}
    for label in ("Wig try-on", "Hair extensions", "Bangs", "Hair volume"):
        choose_operation(page, label)
        page.get_by_test_id("style-picker-style_id").locator(".style-card").first.click()
        (ids[label],) = submit_all(page)
    for label in ("Colorize", "Photo enhance"):
        choose_operation(page, label)
        (ids[label],) = submit_all(page)
    for job_id in ids.values():
        wait_done(page, job_id, results=None)
    jobs = {label: Job.objects.get(pk=job_id) for label, job_id in ids.items()}
    assert all(job.results.count() >= 1 for job in jobs.values())
    if version == "v2":
        paths = {label: job.vendor_meta["perfectcorp_feature"] for label, job in jobs.items()}
        assert paths == {
            "Wig try-on": "v2.0/wig",
            "Hair extensions": "v2.0/hair-ext",
            "Bangs": "v2.0/hair-bang",
            "Hair volume": "v2.0/hair-vol",
            "Colorize": "v2.0/colorize",
            "Photo enhance": "v2.0/enhance",
        }
    wait_images(page)
