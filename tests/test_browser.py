"""The app in real headless Chromium (Playwright) against a live server and a real worker.

Every test fails on a JavaScript error, a console error, a failed request or
an HTTP error status it did not expect. Screenshots go to docs/screenshots/
when STUDIO_SCREENSHOTS=1 (see scripts/screenshots), else to a tmp dir.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright
from skimage.measure import label, regionprops

from studio.models import Job, Result
from tests import images

pytestmark = [pytest.mark.browser, pytest.mark.qcluster]

BASE_DIR = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 375, "height": 812}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
JOB_TIMEOUT_MS = 30_000
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


# --- Browser, contexts, and the error guard -----------------------------------


# Other browser test modules import these fixtures, which gives each module its
# own session-scoped `browser`; Playwright's sync API allows one per thread, so
# they all share one Chromium, closed when the last module is done with it.
_SHARED_BROWSER: dict = {"users": 0}


@pytest.fixture(scope="session")
def browser():
    shared = _SHARED_BROWSER
    if not shared["users"]:
        # Playwright's sync API keeps an event loop running in this thread, and
        # Django then refuses ORM calls from it (SynchronousOnlyOperation). The
        # test thread only reads/asserts, the live server runs in its own thread.
        shared["previous_env"] = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        shared["playwright"] = sync_playwright().start()
        shared["browser"] = shared["playwright"].chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    shared["users"] += 1
    try:
        yield shared["browser"]
    finally:
        shared["users"] -= 1
        if not shared["users"]:
            try:
                shared.pop("browser").close()
                shared.pop("playwright").stop()
            finally:
                previous = shared.pop("previous_env")
                if previous is None:
                    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
                else:
                    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Guard:
    """Collects everything that went wrong in a page; the test fails unless it is empty."""

    def __init__(self):
        self.problems: list[str] = []
        self.expected: list[tuple[re.Pattern, int | str]] = []

    def expect(self, url_pattern: str, status: int | str) -> None:
        """Allow `status` (an HTTP code, or a failure text like 'net::ERR_ABORTED') for matching URLs."""
        self.expected.append((re.compile(url_pattern), status))

    def _allowed(self, url: str, status) -> bool:
        return any(pattern.search(url) and status == allowed for pattern, allowed in self.expected)

    def watch(self, page: Page) -> Page:
        def on_console(msg):
            if msg.type != "error":
                return
            url = (msg.location or {}).get("url", "")
            code = re.search(r"status of (\d{3})", msg.text)
            if code and self._allowed(url, int(code.group(1))):
                return
            self.problems.append(f"console error: {msg.text} ({url})")

        # The browser aborts (net::ERR_ABORTED) whatever is still loading when a
        # page moves on: the favicon, images of a page being left. That is not
        # a failure of the app; an aborted htmx request (xhr) is, unless its
        # page navigated away after it started.
        navigations = [0]
        started: dict = {}

        def on_request(request):
            if request.is_navigation_request() and request.frame == page.main_frame:
                navigations[0] += 1  # counted when it starts, before the old page's requests are cut
            started[request] = navigations[0]

        def on_failed(request):
            failure = request.failure or "failed"
            navigated = started.pop(request, navigations[0]) != navigations[0]
            if failure == "net::ERR_ABORTED" and (navigated or request.resource_type not in ("xhr", "fetch")):
                return
            if not self._allowed(request.url, failure):
                self.problems.append(f"request failed: {request.method} {request.url}: {failure}")

        def on_response(response):
            if response.status >= 400 and not self._allowed(response.url, response.status):
                self.problems.append(
                    f"HTTP {response.status}: {response.request.method} {response.url} (on page {page.url})"
                )

        page.on("request", on_request)
        page.on("requestfinished", lambda request: started.pop(request, None))
        page.on("console", on_console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("requestfailed", on_failed)
        page.on("response", on_response)
        return page


class Studio:
    """Opens guarded pages in fresh browser contexts against the live server."""

    def __init__(self, browser, base_url: str):
        self.browser = browser
        self.base_url = base_url
        self.contexts = []
        self.guards: list[Guard] = []

    def page(self, **context_options) -> tuple[Page, Guard]:
        options = {**DESKTOP, **context_options}
        context = self.browser.new_context(base_url=self.base_url, accept_downloads=True, **options)
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        guard = Guard()
        self.guards.append(guard)
        return guard.watch(context.new_page()), guard

    def close(self):
        for context in self.contexts:
            context.close()


@pytest.fixture
def studio(browser, live_server):
    s = Studio(browser, live_server.url)
    try:
        yield s
        # Let late events (console, responses) arrive before judging.
        for context in s.contexts:
            for page in context.pages:
                page.wait_for_timeout(50)
        problems = [p for guard in s.guards for p in guard.problems]
        assert not problems, "Browser problems:\n" + "\n".join(problems)
    finally:
        s.close()


@pytest.fixture
def shots_dir(tmp_path) -> Path:
    if os.environ.get("STUDIO_SCREENSHOTS") == "1":
        path = BASE_DIR / "docs" / "screenshots"
    else:
        path = tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def portrait_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    path.write_bytes(images.to_bytes(images.astronaut(scale=2), "JPEG", quality=92))
    return path


# --- Helpers --------------------------------------------------------------------


def upload_photo(page: Page, path: Path) -> None:
    page.goto("/")
    page.locator("[data-photo-input]:not([capture])").set_input_files(path)
    expect(page.get_by_test_id("photo-facts")).to_contain_text("1 face found")


def choose_operation(page: Page, label: str) -> None:
    card = page.locator(".op-card", has_text=label)
    if not card.locator("input").is_checked():
        card.click()
    expect(card.locator("input")).to_be_checked()
    expect(page.locator("#operation-form button[type=submit]")).to_have_text(f"Run {label}")


def submit_job(page: Page) -> str:
    """Submit the operation form; return the new job's id once its card is shown."""
    with page.expect_response(lambda r: r.url.endswith("/jobs/") and r.request.method == "POST") as info:
        page.locator("#operation-form button[type=submit]").click()
    assert info.value.status == 200
    match = re.search(rf'id="job-({UUID})"', info.value.text())
    assert match, "no job card in the response:\n" + info.value.text()[:3000]
    job_id = match.group(1)
    expect(page.locator(f"#job-{job_id}")).to_be_visible()
    return job_id


def wait_succeeded(page: Page, job_id: str) -> None:
    card = page.locator(f"#job-{job_id}")
    expect(card).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    expect(card.get_by_test_id("job-status")).to_have_text("Done")
    expect(card.locator(".result-thumbs img")).to_have_count(1)


def wait_images(page: Page, timeout: float = 10.0) -> None:
    """Wait until every shown image has loaded (lazy ones below the fold are loaded first).

    Polls with page.evaluate: wait_for_function's polling predicate is eval'd in
    the page, which the Content-Security-Policy (no unsafe-eval) refuses.
    """
    page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    deadline = time.monotonic() + timeout
    script = "() => Array.from(document.images).filter(i => !i.hidden).every(i => i.complete && i.naturalWidth > 0)"
    while not page.evaluate(script):
        assert time.monotonic() < deadline, "images did not load"
        page.wait_for_timeout(50)


def css_pos(page: Page) -> str:
    return page.get_by_test_id("compare").evaluate("el => el.style.getPropertyValue('--pos')")


def card_titles(page: Page, scope: str) -> list[str]:
    return [t.strip() for t in page.locator(f"{scope} [data-testid=job-card] h3").all_inner_texts()]


# --- Upload ----------------------------------------------------------------------


def test_upload_by_file_input_and_by_drag_and_drop(studio, portrait_file):
    page, guard = studio.page()
    page.goto("/")
    expect(page.locator("#operation-form button[type=submit]")).to_be_disabled()

    # 1. The file input (not the camera one).
    page.locator("[data-photo-input]:not([capture])").set_input_files(portrait_file)
    facts = page.get_by_test_id("photo-facts")
    expect(facts).to_contain_text("1 face found")
    expect(facts).to_contain_text("1024×1024 px")
    expect(page.locator(".photo-frame .face-box")).to_have_count(1)
    expect(page.locator("#operation-form button[type=submit]")).to_be_enabled()
    assert Job.objects.count() == 0

    # 2. Drag and drop onto the empty drop zone of a fresh studio page.
    page.goto("/")
    zone = page.locator("[data-dropzone]")
    preview = page.locator("[data-local-preview]")
    expect(preview).to_be_hidden()
    held = []
    page.route("**/photos/", lambda route: held.append(route))
    data_transfer = page.evaluate_handle(
        """({b64, name}) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
            return dt;
        }""",
        {"b64": base64.b64encode(portrait_file.read_bytes()).decode(), "name": "dropped.jpg"},
    )
    zone.dispatch_event("dragenter", {"dataTransfer": data_transfer})
    expect(zone).to_have_class(re.compile(r"\bdropzone-active\b"))
    zone.dispatch_event("drop", {"dataTransfer": data_transfer})
    expect(zone).not_to_have_class(re.compile(r"\bdropzone-active\b"))
    # The picked photo shows at once while the upload is still on its way.
    expect(preview).to_be_visible()
    assert preview.get_attribute("src").startswith("blob:")
    expect(page.locator("[data-dropzone-empty]")).to_be_hidden()
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the drop did not upload the photo"
    expect(page.locator("#upload-busy")).to_be_visible()
    held[0].continue_()
    page.unroute("**/photos/")
    expect(page.get_by_test_id("photo-facts")).to_contain_text("1 face found")
    expect(page.locator("#upload-busy")).to_be_hidden()
    # Both photos are kept: the recent strip shows them, the newest selected.
    expect(page.locator(".thumb-strip li")).to_have_count(2)
    expect(page.locator('.thumb-strip a[aria-current="true"]')).to_have_count(1)
    wait_images(page)


def test_refused_file_shows_its_message(studio, tmp_path):
    page, guard = studio.page()
    fake = tmp_path / "holiday.jpg"
    fake.write_text("Dear diary, today I took a selfie.\n" * 20)
    page.goto("/")
    page.locator("[data-photo-input]:not([capture])").set_input_files(fake)
    error = page.get_by_test_id("upload-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("This file is a text file, not a photo.")
    expect(page.get_by_test_id("photo-facts")).to_have_count(0)
    expect(page.locator("#operation-form button[type=submit]")).to_be_disabled()
    # The form still works afterwards (the inputs are enabled again).
    expect(page.locator("[data-photo-input]:not([capture])")).to_be_enabled()


# --- Jobs ---------------------------------------------------------------------------


def test_retouch_job_card_polls_until_done_then_stops(studio, cluster, portrait_file):
    """The worker starts late, so the card is seen waiting, polling, then done."""
    page, guard = studio.page()
    status_requests: list[str] = []
    page.on("request", lambda r: status_requests.append(r.url) if re.search(r"/jobs/.+/status(\?|$)", r.url) else None)
    upload_photo(page, portrait_file)
    choose_operation(page, "Studio retouch")
    expect(page.get_by_test_id("job-card")).to_have_count(0)
    expect(page.locator("[data-empty-jobs]")).to_be_visible()

    slider = page.locator("#param-strength")
    output = page.locator('[data-output-for="param-strength"]')
    expect(output).to_have_text("0.6")
    slider.focus()
    for _ in range(3):
        slider.press("ArrowRight")
    expect(slider).to_have_value("0.75")
    expect(output).to_have_text("0.75")

    page.evaluate(
        """() => {
            window.__cardStates = [];
            const record = () => document.querySelectorAll("#job-list [data-testid=job-card]").forEach(card => {
                const stage = card.querySelector(".job-stage");
                const state = card.dataset.status + "|" + (stage ? stage.textContent.trim() : "");
                if (window.__cardStates[window.__cardStates.length - 1] !== state) window.__cardStates.push(state);
            });
            new MutationObserver(record).observe(document.getElementById("job-list"), {childList: true, subtree: true});
        }"""
    )
    job_id = submit_job(page)
    card = page.locator(f"#job-{job_id}")
    expect(card).to_have_attribute("data-status", re.compile("^(queued|running)$"))
    expect(card).to_contain_text("Waiting for a worker")
    expect(page.locator("[data-empty-jobs]")).to_have_count(0)
    job = Job.objects.get(pk=job_id)
    assert job.operation == "studio_retouch" and job.params == {"strength": 0.75}

    # No worker yet: the card keeps polling and stays queued.
    deadline = time.monotonic() + 10
    while len(status_requests) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert len(status_requests) >= 2, status_requests
    expect(card).to_have_attribute("data-status", "queued")

    cluster.start()
    wait_succeeded(page, job_id)
    expect(card.locator(".job-meta")).to_contain_text("Done in")
    assert all(f"/jobs/{job_id}/status?v=" in url for url in status_requests)  # each with its card's version
    polls = len(status_requests)
    assert polls >= 3
    states = page.evaluate("window.__cardStates")
    assert states[0].startswith("queued|Waiting for a worker") and states[-1].startswith("succeeded"), states
    assert all(s.split("|")[0] in ("queued", "running", "succeeded") for s in states), states
    assert all(s.split("|")[1] for s in states if s.startswith("running")), states

    # Finished: polling has stopped.
    page.wait_for_timeout(2500)
    assert len(status_requests) == polls, "the card kept polling after the job finished"
    (result,) = Result.objects.filter(job_id=job_id)
    assert (result.width, result.height) == (1024, 1024)
    wait_images(page)


def test_all_operations_from_the_browser_then_the_gallery(studio, qcluster, portrait_file, settings):
    settings.STUDIO_GALLERY_PAGE_SIZE = 2
    page, guard = studio.page()
    upload_photo(page, portrait_file)

    choose_operation(page, "Headshot crop")
    page.get_by_label("Square 1:1").check()
    crop_id = submit_job(page)
    choose_operation(page, "Background blur")
    blur_id = submit_job(page)
    choose_operation(page, "Studio retouch")
    retouch_id = submit_job(page)
    for job_id in (crop_id, blur_id, retouch_id):
        wait_succeeded(page, job_id)
    crop = Result.objects.get(job_id=crop_id)
    assert crop.width == crop.height < 1024
    assert Job.objects.get(pk=crop_id).params == {"preset": "1:1"}
    assert Result.objects.get(job_id=blur_id).width == 1024
    # Newest first on the studio page too.
    assert card_titles(page, "#job-list") == ["Studio retouch", "Background blur", "Headshot crop"]
    wait_images(page)

    page.get_by_role("link", name="Open gallery →").click()
    expect(page).to_have_url(re.compile(r"/gallery/$"))
    grid = page.locator("#gallery-grid")
    expect(grid.get_by_test_id("job-card")).to_have_count(2)
    assert card_titles(page, "#gallery-grid") == ["Studio retouch", "Background blur"]
    expect(grid.locator(".pagination")).to_contain_text("Page 1 of 2")
    grid.get_by_role("link", name="Older →").click()
    expect(grid.locator(".pagination")).to_contain_text("Page 2 of 2")
    expect(page).to_have_url(re.compile(r"\?page=2$"))
    assert card_titles(page, "#gallery-grid") == ["Headshot crop"]
    grid.get_by_role("link", name="← Newer").click()
    expect(grid.locator(".pagination")).to_contain_text("Page 1 of 2")

    page.get_by_test_id("filter-operation").select_option("headshot_crop")
    expect(page).to_have_url(re.compile(r"operation=headshot_crop"))
    expect(grid.get_by_test_id("job-card")).to_have_count(1)
    assert card_titles(page, "#gallery-grid") == ["Headshot crop"]
    expect(grid.locator(".pagination")).to_have_count(0)
    page.get_by_test_id("filter-operation").select_option("")
    expect(grid.get_by_test_id("job-card")).to_have_count(2)
    page.get_by_test_id("filter-status").select_option("failed")
    expect(grid).to_contain_text("No results match these filters.")

    # Reloading a filtered URL keeps the filter (the pushed URL is a real page).
    page.goto("/gallery/?operation=background_blur")
    assert card_titles(page, "#gallery-grid") == ["Background blur"]
    wait_images(page)


# --- Results ---------------------------------------------------------------------------


def _finished_result_page(page: Page, portrait_file: Path, operation="Studio retouch") -> Result:
    upload_photo(page, portrait_file)
    choose_operation(page, operation)
    job_id = submit_job(page)
    wait_succeeded(page, job_id)
    result = Result.objects.get(job_id=job_id)
    page.locator(f"#job-{job_id} .result-thumbs a").click()
    expect(page).to_have_url(re.compile(rf"/results/{result.pk}/$"))
    wait_images(page)
    return result


def test_result_page_slider_download_and_privacy(studio, qcluster, portrait_file, tmp_path):
    page, guard = studio.page()
    result = _finished_result_page(page, portrait_file)
    compare = page.get_by_test_id("compare")
    expect(compare).to_be_visible()
    expect(compare.locator(".compare-label-before")).to_have_text("Before")
    expect(compare.locator(".compare-label-after")).to_have_text("After")
    assert css_pos(page) == "50%"

    # Mouse: drag the divider from the middle to a fifth of the width.
    box = compare.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.2, y, steps=8)
    page.mouse.up()
    dragged = float(css_pos(page).rstrip("%"))
    assert 12 <= dragged <= 28, dragged
    # The after image is clipped at the divider.
    clip = page.locator("[data-compare-after]").evaluate("el => getComputedStyle(el).clipPath")
    assert f"{dragged:g}%" in clip, clip

    # Keyboard: arrows on the focused range.
    rng = page.locator("[data-compare-range]")
    rng.focus()
    rng.press("ArrowRight")
    rng.press("ArrowRight")
    assert css_pos(page) == f"{dragged + 2:g}%"
    rng.press("ArrowLeft")
    assert css_pos(page) == f"{dragged + 1:g}%"
    rng.press("End")
    assert css_pos(page) == "100%"

    # Download: the file is the result image.
    with page.expect_download() as info:
        page.get_by_test_id("download").click()
    download = info.value
    assert download.suggested_filename == result.download_name()
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with Image.open(saved) as img:
        img.load()
        assert img.size == (result.width, result.height)
        assert img.format == "JPEG"

    # Another visitor (no cookies) cannot see any of it.
    stranger, stranger_guard = studio.page()
    stranger_guard.expect(r"/results/|/photos/", 404)
    for url in (f"/results/{result.pk}/", f"/results/{result.pk}/image", f"/results/{result.pk}/download",
                f"/photos/{result.job.photo_id}/image"):
        response = stranger.goto(url)
        assert response.status == 404, url
    stranger.goto(f"/results/{result.pk}/")
    expect(stranger.get_by_role("heading", name="Not found")).to_be_visible()
    expect(stranger.locator("img")).to_have_count(0)


def _share_url(page: Page) -> str:
    field = page.get_by_test_id("share-url")
    expect(field).to_be_visible()
    url = field.input_value()
    assert re.search(r"/s/[\w-]+$", url), url
    return url


def test_share_link_lifecycle(studio, qcluster, portrait_file):
    page, guard = studio.page()
    result = _finished_result_page(page, portrait_file)
    panel = page.locator("#share-panel")

    panel.get_by_role("button", name="Create share link").click()
    url = _share_url(page)
    expect(panel).to_contain_text("Anyone with this link can see this result.")

    visitor, visitor_guard = studio.page()
    visitor_guard.expect(r"/s/", 404)
    visitor_guard.expect(r"/results/", 404)
    response = visitor.goto(url)
    assert response.status == 200
    assert "noindex" in response.headers.get("x-robots-tag", "")
    shown = visitor.get_by_test_id("share-result")
    expect(shown).to_be_visible()
    wait_images(visitor)
    assert shown.evaluate("img => img.naturalWidth") == result.width
    expect(visitor.get_by_test_id("share-before")).to_have_count(0)
    og_image = visitor.locator('meta[property="og:image"]').get_attribute("content")
    assert og_image == url + "/image"
    assert visitor.locator('meta[name="twitter:card"]').get_attribute("content") == "summary_large_image"
    assert "noindex" in visitor.locator('meta[name="robots"]').get_attribute("content")
    assert visitor.request.get(og_image).status == 200
    assert visitor.request.get(url + "/before").status == 404  # the before photo was not shared
    # The visitor still cannot open the owner's private pages.
    assert visitor.goto(f"/results/{result.pk}/").status == 404

    # Stop sharing: the link is gone for everyone.
    panel.get_by_role("button", name="Stop sharing").click()
    expect(panel.get_by_role("button", name="Create share link")).to_be_visible()
    assert visitor.goto(url).status == 404
    expect(visitor.get_by_role("heading", name="Not found")).to_be_visible()
    assert visitor.request.get(og_image).status == 404

    # Share again, with the before photo ticked: a new link showing both.
    panel.get_by_label("Also show the before photo").check()
    panel.get_by_role("button", name="Create share link").click()
    second = _share_url(page)
    assert second != url
    expect(panel).to_contain_text("and the before photo")
    assert visitor.goto(second).status == 200
    expect(visitor.get_by_test_id("share-before")).to_be_visible()
    expect(visitor.get_by_test_id("share-result")).to_be_visible()
    wait_images(visitor)
    panel.get_by_role("button", name="Stop sharing").click()
    expect(panel.get_by_role("button", name="Create share link")).to_be_visible()
    assert visitor.goto(second).status == 404
    assert visitor.goto(url).status == 404


# --- Screenshots -----------------------------------------------------------------------


@pytest.mark.parametrize("device", ["desktop", "phone"])
def test_screenshots(studio, qcluster, portrait_file, shots_dir, device):
    options = DESKTOP if device == "desktop" else PHONE
    page, guard = studio.page(**options)
    upload_photo(page, portrait_file)
    choose_operation(page, "Studio retouch")
    job_id = submit_job(page)
    wait_succeeded(page, job_id)
    wait_images(page)
    _assert_no_horizontal_overflow(page)
    page.screenshot(path=shots_dir / f"studio-{device}.png", full_page=True)

    page.goto("/gallery/")
    expect(page.get_by_test_id("job-card")).to_have_count(1)
    wait_images(page)
    _assert_no_horizontal_overflow(page)
    page.screenshot(path=shots_dir / f"gallery-{device}.png", full_page=True)

    page.locator(f"#job-{job_id} .result-thumbs a").click()
    expect(page.get_by_test_id("compare")).to_be_visible()
    wait_images(page)
    _assert_no_horizontal_overflow(page)
    page.screenshot(path=shots_dir / f"result-{device}.png", full_page=True)

    page.locator("#share-panel").get_by_label("Also show the before photo").check()
    page.locator("#share-panel").get_by_role("button", name="Create share link").click()
    url = _share_url(page)
    visitor, _ = studio.page(**options)
    visitor.goto(url)
    wait_images(visitor)
    _assert_no_horizontal_overflow(visitor)
    visitor.screenshot(path=shots_dir / f"share-{device}.png", full_page=True)
    for name in ("studio", "gallery", "result", "share"):
        with Image.open(shots_dir / f"{name}-{device}.png") as img:
            assert img.width == options["viewport"]["width"] * options.get("device_scale_factor", 1)


def _assert_no_horizontal_overflow(page: Page) -> None:
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow}px"


def test_passport_print_sheet_and_size_capped_export(studio, qcluster, portrait_file, tmp_path):
    page, _ = studio.page()
    upload_photo(page, portrait_file)
    choose_operation(page, "Headshot crop")
    page.locator("label.chip", has_text="Passport 35×45 mm").click()
    job_id = submit_job(page)
    wait_succeeded(page, job_id)
    result = Result.objects.get(job_id=job_id)
    page.goto(f"/results/{result.pk}/")

    # The sheet: 6×4 in at 300 dpi, eight copies of 35×45 mm counted from its pixels.
    with page.expect_download() as info:
        page.get_by_test_id("print-sheet").click()
    sheet_path = tmp_path / info.value.suggested_filename
    info.value.save_as(sheet_path)
    assert sheet_path.name.endswith("-print-sheet-6x4in.jpg")
    with Image.open(sheet_path) as sheet:
        assert sheet.size == (1800, 1200)
        ink = (np.asarray(sheet.convert("RGB")) < 235).any(axis=2)
    copies = [r for r in regionprops(label(ink)) if r.area > 50_000]
    assert len(copies) == 8
    assert all(abs(r.bbox[3] - r.bbox[1] - 413) <= 3 and abs(r.bbox[2] - r.bbox[0] - 531) <= 3 for r in copies)

    # The export for an online form: at most 50 KB, the crop's shape.
    page.get_by_test_id("export-size").select_option("50")
    with page.expect_download() as info:
        page.get_by_test_id("export").click()
    export_path = tmp_path / info.value.suggested_filename
    info.value.save_as(export_path)
    assert export_path.stat().st_size <= 50 * 1024
    with Image.open(export_path) as small:
        assert abs(small.width / small.height - 35 / 45) < 0.01
        assert not small.getexif()


def test_favourite_then_download_the_favourites_zip(studio, qcluster, portrait_file, tmp_path):
    import zipfile

    page, _ = studio.page()
    result = _finished_result_page(page, portrait_file)
    button = page.get_by_test_id("favourite")
    expect(button).to_have_attribute("aria-pressed", "false")
    button.click()
    expect(page.get_by_test_id("favourite")).to_have_attribute("aria-pressed", "true")  # swapped in by htmx
    expect(page.get_by_test_id("favourite")).to_contain_text("Favourite")
    assert Result.objects.get(pk=result.pk).favourite

    page.goto("/gallery/")
    with page.expect_download() as info:
        page.get_by_test_id("zip-favourites").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.name == "portrait-studio-favourites.zip"
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        assert len(names) == 2 and names[0].startswith("full-size/") and names[1].startswith("profile-600/")
        with archive.open(names[0]) as fh, Image.open(fh) as full:
            assert full.size == (result.width, result.height) and not full.getexif()
        with archive.open(names[1]) as fh, Image.open(fh) as profile:
            assert profile.size == (600, 600)
