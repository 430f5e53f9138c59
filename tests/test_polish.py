"""Polish without a browser: typical-duration hint, toast feed, icons, contrast, static caching, empty states."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from studio import selectors
from studio.jobs.create import job_create
from studio.jobs.run import job_run
from studio.models import Job, Photo
from studio.operations import LOCAL_OPERATIONS, get_operation
from studio.ownership import VISITOR_SESSION_KEY, Owner
from studio.photos import photo_create
from studio.templatetags import ui_tags
from tests.conftest import upload

pytestmark = pytest.mark.django_db(transaction=True)
BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_typical_cache():
    selectors.typical_cache_clear()
    yield
    selectors.typical_cache_clear()


def _visitor_client(visitor_id: str) -> Client:
    client = Client()
    session = client.session
    session[VISITOR_SESSION_KEY] = visitor_id
    session.save()
    return client


def _finished(owner, operation, seconds, *, status=Job.Status.SUCCEEDED, finished=None):
    finished = finished or timezone.now()
    return Job.objects.create(
        **owner.fields(),
        operation=operation,
        provider="local",
        status=status,
        started_at=finished - timedelta(seconds=seconds),
        finished_at=finished,
    )


# --- "Usually takes about N s" ----------------------------------------------------


def test_typical_seconds_needs_history_and_averages_successes(django_assert_num_queries):
    owner = Owner(visitor_id="v-eta")
    _finished(owner, "studio_retouch", 4)
    _finished(owner, "studio_retouch", 6)
    assert selectors.operation_typical_seconds("studio_retouch") is None  # two jobs: no estimate yet
    selectors.typical_cache_clear()
    _finished(owner, "studio_retouch", 11)
    _finished(owner, "studio_retouch", 500, status=Job.Status.FAILED)  # failures don't count
    _finished(owner, "headshot_crop", 100)  # other operations don't count
    _finished(owner, "studio_retouch", 300, finished=timezone.now() - timedelta(days=60))  # too old
    with django_assert_num_queries(1):
        assert selectors.operation_typical_seconds("studio_retouch") == pytest.approx(7.0)
    with django_assert_num_queries(0):  # cached briefly
        assert selectors.operation_typical_seconds("studio_retouch") == pytest.approx(7.0)


def test_running_job_card_shows_the_estimate(portrait_jpeg, monkeypatch):
    owner = Owner(visitor_id="v-card")
    photo = photo_create(owner=owner, data=portrait_jpeg)
    with monkeypatch.context() as patch:
        patch.setattr("studio.jobs.create.enqueue_job", lambda job_id: None)
        job = job_create(owner=owner, photo=photo, operation=get_operation("studio_retouch"), params={})
    client = _visitor_client(owner.visitor_id)
    card = client.get(f"/jobs/{job.pk}/status").content.decode()
    assert "Usually takes" not in card  # no history yet: no made-up figure
    for seconds in (3.2, 4.1, 5.0):
        _finished(Owner(visitor_id="someone-else"), "studio_retouch", seconds)
    selectors.typical_cache_clear()
    card = client.get(f"/jobs/{job.pk}/status").content.decode()
    assert 'data-testid="job-eta">Usually takes about 5 s<' in card  # ceil(4.1)
    Job.objects.filter(pk=job.pk).update(status="running", started_at=timezone.now(), stage="Smoothing skin")
    card = client.get(f"/jobs/{job.pk}/status").content.decode()
    assert "Smoothing skin" in card and "Usually takes about 5 s" in card


# --- Toast feed -----------------------------------------------------------------------


def test_toast_feed_lists_jobs_finished_since_and_stops_polling(portrait_jpeg, monkeypatch):
    owner = Owner(visitor_id="v-toast")
    client = _visitor_client(owner.visitor_id)
    photo = photo_create(owner=owner, data=portrait_jpeg)
    with monkeypatch.context() as patch:
        patch.setattr("studio.jobs.create.enqueue_job", lambda job_id: None)
        job = job_create(owner=owner, photo=photo, operation=get_operation("studio_retouch"), params={})
    stranger_job = _finished(Owner(visitor_id="other"), "studio_retouch", 1)

    gallery = client.get("/gallery/").content.decode()
    match = re.search(r'hx-get="/jobs/finished\?since=([\d.]+)" hx-trigger="every 2s"', gallery)
    assert match, "the gallery polls while a job is unfinished"
    since = match.group(1)
    waiting = client.get(f"/jobs/finished?since={since}")
    assert waiting.status_code == 200 and 'data-testid="toast"' not in waiting.content.decode()

    job_run(job.pk)  # the worker finishes it for real
    done = client.get(f"/jobs/finished?since={since}")
    body = done.content.decode()
    assert done.status_code == 286  # nothing left unfinished: htmx stops polling
    assert body.count('data-testid="toast"') == 1 and "<strong>Studio retouch</strong> is done." in body
    result = job.results.get()
    assert f'href="/results/{result.pk}/"' in body
    assert str(stranger_job.pk) not in body
    assert 'hx-trigger="every' not in body  # the replacement feed is inert
    # Asking again from the time of the last answer lists nothing twice.
    newer = re.search(r"since=([\d.]+)", client.get(f"/jobs/finished?since={since}").content.decode())
    assert newer is None  # the inert feed carries no poll URL at all
    later = client.get(f"/jobs/finished?since={timezone.now().timestamp()}")
    assert 'data-testid="toast"' not in later.content.decode()
    # Without unfinished jobs the gallery has no feed polling at all.
    assert 'hx-get="/jobs/finished' not in client.get("/gallery/").content.decode()
    # Nonsense is harmless.
    assert client.get("/jobs/finished?since=nope").status_code == 286


def test_failed_job_toast_says_what_to_open(monkeypatch, portrait_jpeg):
    owner = Owner(visitor_id="v-fail")
    client = _visitor_client(owner.visitor_id)
    before = timezone.now().timestamp()
    job = _finished(owner, "studio_retouch", 2, status=Job.Status.FAILED)
    body = client.get(f"/jobs/finished?since={before}").content.decode()
    assert "<strong>Studio retouch</strong> failed." in body and f'href="/jobs/{job.pk}/"' in body


# --- Icons ------------------------------------------------------------------------------


def test_local_operations_use_sprite_icons_and_emoji_still_render():
    names = ui_tags.sprite_names()
    assert {"retouch", "crop", "blur", "hair", "makeup", "eraser", "aging", "check", "close"} <= names
    for op in LOCAL_OPERATIONS:
        assert op.icon in names, op.key
        html = ui_tags.op_icon(op)
        assert f'#icon-{op.icon}"></use>' in html and 'aria-hidden="true"' in html

    class Legacy:
        icon = "💇"

    assert ui_tags.op_icon(Legacy()) == '<span class="op-icon" aria-hidden="true">💇</span>'
    # On the page each local tile shows its before/after picture (the icon when it has none).
    page = Client().get("/").content.decode()
    assert page.count('class="op-example') >= len(LOCAL_OPERATIONS)
    assert page.count("studio/examples/") >= len(LOCAL_OPERATIONS)


# --- Contrast of the palette (WCAG AA) ----------------------------------------------------


def _luminance(hex_color: str) -> float:
    value = hex_color.lstrip("#")
    channels = [int(value[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def _palettes() -> dict[str, dict[str, str]]:
    """The light and dark custom properties of app.css (later declarations win)."""
    css = (BASE_DIR / "static" / "studio" / "app.css").read_text()
    dark_blocks = re.findall(r"@media \(prefers-color-scheme: dark\) \{\s*:root \{([^}]*)\}", css)
    light_css = re.sub(r"@media \(prefers-color-scheme: dark\) \{\s*:root \{[^}]*\}\s*\}", "", css)
    light_blocks = re.findall(r":root \{([^}]*)\}", light_css)

    def props(blocks):
        found = {}
        for block in blocks:
            found.update(dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6})\b", block)))
        return found

    light = props(light_blocks)
    return {"light": light, "dark": {**light, **props(dark_blocks)}}


TEXT_PAIRS = [  # (text, background) pairs the stylesheet actually uses
    ("text", "bg"),
    ("text", "surface"),
    ("muted", "bg"),
    ("muted", "surface"),
    ("muted", "accent-soft"),
    ("accent", "surface"),
    ("accent", "bg"),
    ("accent-text", "accent"),
    ("ok", "ok-soft"),
    ("bad", "bad-soft"),
    ("bad", "surface"),
    ("text", "accent-soft"),
    ("text", "warn-soft"),
    ("text", "ok-soft"),
    ("text", "bad-soft"),
]


@pytest.mark.backend_free
@pytest.mark.parametrize("theme", ["light", "dark"])
def test_palette_text_contrast_meets_wcag_aa(theme):
    palette = _palettes()[theme]
    assert palette["bg"] != _palettes()["light" if theme == "dark" else "dark"]["bg"]
    failing = {
        f"{fg} on {bg}": round(contrast(palette[fg], palette[bg]), 2)
        for fg, bg in TEXT_PAIRS
        if contrast(palette[fg], palette[bg]) < 4.5
    }
    assert not failing, failing
    # The focus ring (the accent) is visible against both surfaces (non-text contrast 3:1).
    assert contrast(palette["accent"], palette["surface"]) >= 3 and contrast(palette["accent"], palette["bg"]) >= 3


# --- Static assets: fingerprinted, cached for a year ---------------------------------------


def test_static_assets_are_fingerprinted_and_cached_long(settings, tmp_path):
    from django.core.management import call_command
    from django.templatetags.static import static

    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    settings.WHITENOISE_USE_FINDERS = False
    settings.WHITENOISE_AUTOREFRESH = False
    call_command("collectstatic", "--noinput", verbosity=0)
    from django.contrib.staticfiles.storage import staticfiles_storage

    staticfiles_storage._setup()  # reload the manifest written just now
    client = Client()
    for name in ("studio/app.css", "studio/app.js", "studio/icons.svg"):
        url = static(name)
        assert re.search(r"\.[0-9a-f]{12}\.\w+$", url), url
        response = client.get(url)
        assert response.status_code == 200, url
        cache = response["Cache-Control"]
        assert "immutable" in cache and "max-age=315360000" in cache, (url, cache)
    page = client.get("/").content.decode()
    assert static("studio/app.css") in page and static("studio/icons.svg") in page
    plain = client.get("/static/studio/app.css")  # the unhashed name may change: short lifetime
    assert "immutable" not in plain.get("Cache-Control", "")


# --- Empty states and images -------------------------------------------------------------


def test_gallery_empty_states_say_what_to_do_next(portrait_jpeg):
    client = Client()
    empty = client.get("/gallery/").content.decode()
    assert "Nothing here yet. Upload a selfie and run an operation" in empty and "Start with a photo" in empty
    upload(client, portrait_jpeg)
    photo_id = Photo.objects.get().pk
    client.post("/jobs/", {"photo": photo_id, "operation": "studio_retouch"}, headers={"HX-Request": "true"})
    assert Job.objects.get().status == "succeeded"
    filtered = client.get("/gallery/?status=failed").content.decode()
    assert "No results match these filters." in filtered and "Show everything" in filtered
    assert "Try another operation or status" in filtered


def test_every_image_has_dimensions(portrait_jpeg):
    client = Client()
    upload(client, portrait_jpeg)
    photo_id = Photo.objects.get().pk
    client.post("/jobs/", {"photo": photo_id, "operation": "studio_retouch"}, headers={"HX-Request": "true"})
    job = Job.objects.get()
    pages = [
        client.get(url).content.decode()
        for url in ("/", f"/?photo={photo_id}", "/gallery/", f"/jobs/{job.pk}/", f"/results/{job.results.get().pk}/")
    ]
    for page in pages:
        for tag in re.findall(r"<img\b[^>]*>", page):
            if "data-local-preview" in tag:  # a blob preview of the picked file, sized by CSS
                continue
            assert re.search(r'\bwidth="\d+"', tag) and re.search(r'\bheight="\d+"', tag), tag
            assert re.search(r'\balt="', tag), tag
