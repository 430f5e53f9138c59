"""The picker as a first-time visitor meets it, on the embedded defaults (no keys, no sandbox).

At 1280x800 and 390x844: no setting names and no disabled operations anywhere a
visitor looks, tiles grouped by what they change, and the page before the
results at most two screens tall; on the phone two columns and a sticky run button.
"""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image
from playwright.sync_api import expect

from studio.models import Photo, Result
from studio.vendors import sandbox
from tests.test_browser import choose_operation, submit_job, upload_photo, wait_images, wait_succeeded

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True},
}
SETTING_NAME = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*(ID|KEY|SECRET|URL|TOKEN|SANDBOX)\b")


@pytest.fixture
def embedded_defaults(settings):
    settings.STUDIO_SANDBOX = False
    for name in ("PERFECTCORP_CLIENT_ID", "PERFECTCORP_CLIENT_SECRET", "WAVESPEED_API_KEY", "VTRIX_API_KEY",
                 "HEADSHOT_API_KEY"):
        setattr(settings, name, "")
    sandbox.reset()
    yield
    sandbox.reset()


@pytest.mark.parametrize("device", sorted(VIEWPORTS))
def test_visitor_picker_hides_what_cannot_run(studio, embedded_defaults, portrait_file, shots_dir, device):
    options = VIEWPORTS[device]
    page, _ = studio.page(**options)
    for step in ("empty", "photo"):
        if step == "empty":
            page.goto("/")
        else:
            upload_photo(page, portrait_file)
        wait_images(page)
        html, text = page.content(), page.locator("body").inner_text()
        assert not SETTING_NAME.search(text), SETTING_NAME.search(text).group(0)
        assert not SETTING_NAME.search(html), SETTING_NAME.search(html).group(0)
        assert "administrator" not in text and "Unavailable" not in text
        expect(page.locator(".operation-picker input:disabled")).to_have_count(0)
        expect(page.locator(".op-disabled")).to_have_count(0)
        groups = page.locator(".op-group-title").all_inner_texts()
        assert [g.lower() for g in groups] == ["portrait", "background"], groups
        expect(page.locator(".op-card")).to_have_count(5)
        expect(page.get_by_test_id("op-more")).to_have_text(
            "More styles — hair, headshots, characters — appear when this studio connects AI services."
        )
        expect(page.locator(".op-card img.op-example")).to_have_count(5)
        # Two screens at most before the results.
        results_top = page.evaluate("document.getElementById('step-jobs').getBoundingClientRect().top + scrollY")
        print(f"{device} {step}: results start at {results_top:.0f} px ({results_top / options['viewport']['height']:.2f} screens)")
        assert results_top <= 2 * options["viewport"]["height"], (step, results_top)

    # The other pages a visitor opens name no server settings either.
    for url in ("/gallery/", "/privacy/", "/accounts/login/"):
        assert page.goto(url).status == 200
        for where in (page.content(), page.locator("body").inner_text()):
            assert not SETTING_NAME.search(where), (url, SETTING_NAME.search(where).group(0))
    upload_photo(page, portrait_file)

    columns = page.evaluate("getComputedStyle(document.querySelector('.op-grid')).gridTemplateColumns.split(' ').length")
    if device == "phone":
        assert columns == 2
        run = page.locator("#operation-form button[type=submit]")
        assert run.evaluate("b => getComputedStyle(b).position") == "sticky"
        page.locator(".op-card", has_text="Studio backdrop").scroll_into_view_if_needed()
        box = run.bounding_box()
        assert box and 0 <= box["y"] and box["y"] + box["height"] <= options["viewport"]["height"]
    else:
        assert columns >= 2
    page.evaluate("scrollTo(0, 0)")
    page.screenshot(path=shots_dir / f"picker-{device}.png", full_page=device == "phone")


def test_blur_and_backdrop_from_the_picker(studio, qcluster, embedded_defaults, portrait_file, shots_dir):
    page, _ = studio.page(**VIEWPORTS["desktop"])
    upload_photo(page, portrait_file)
    jobs = []
    for label in ("Background blur", "Studio backdrop"):
        choose_operation(page, label)
        job_id = submit_job(page)
        wait_succeeded(page, job_id)
        jobs.append(job_id)
    wait_images(page)
    page.locator(f"#job-{jobs[-1]} .result-thumbs a").first.click()
    expect(page.get_by_test_id("result-segmentation")).to_contain_text("person segmentation model")
    wait_images(page)
    page.screenshot(path=shots_dir / "result-backdrop-desktop.png", full_page=False)
    # The README's before / blur / backdrop strip, from the files the worker stored.
    strip = [_stored(Photo.objects.get().image)] + [_stored(Result.objects.get(job_id=j).image) for j in jobs]
    side = 400
    out = Image.new("RGB", (side * len(strip) + 8 * (len(strip) - 1), side), (255, 255, 255))
    for i, img in enumerate(strip):
        out.paste(img.convert("RGB").resize((side, side), Image.Resampling.LANCZOS), (i * (side + 8), 0))
    out.save(shots_dir / "before-blur-backdrop.jpg", quality=85)


def _stored(field) -> Image.Image:
    with field.open("rb") as fh:
        img = Image.open(io.BytesIO(fh.read()))
        img.load()
    return img
