"""Query budgets of the busiest pages, counted the way they are served.

The job card polls /jobs/<id>/status every second while its job is
unfinished: a poll costs at most two SQL queries, session and sign-in
included, for a visitor and for a signed-in user, while the job runs and on
the poll that finds it finished with several results. The gallery costs the
same number of queries for 1, 5 or 30 jobs of every kind.

Polls follow the URL the rendered card carries in hx-get, as htmx does.
"""

from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from studio import selectors
from studio.models import Job, Photo, Result, StyleTemplate
from studio.operations import OPERATIONS
from studio.vendors import sandbox
from tests import images
from tests.conftest import upload
from tests.media import settings_from_env

pytestmark = pytest.mark.django_db(transaction=True)
HX = {"HX-Request": "true"}
PASSWORD = "a-long-enough-password-4711"


@pytest.fixture
def sandboxed(settings):
    settings.STUDIO_SANDBOX = True
    sandbox.reset()
    yield
    sandbox.reset()


@pytest.fixture(params=["visitor", "user"])
def poller(request, portrait_jpeg) -> Client:
    """A visitor (owns work through the session) or a signed-in user, with one uploaded photo."""
    client = Client()
    if request.param == "user":
        User.objects.create_user("ann", password=PASSWORD)
        assert client.login(username="ann", password=PASSWORD)
    assert upload(client, portrait_jpeg).status_code == 200
    return client


def poll_url(card_html: str) -> str:
    """The URL htmx polls: the card's hx-get."""
    match = re.search(r'hx-get="([^"]+/status[^"]*)"', card_html)
    assert match, "the card does not poll"
    return match.group(1).replace("&amp;", "&")


def get(client: Client, url: str):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, headers=HX)
    return response, [q["sql"] for q in queries.captured_queries]


def running_job(photo: Photo, **fields) -> Job:
    return Job.objects.create(
        owner_user=photo.owner_user, owner_visitor=photo.owner_visitor, photo=photo,
        operation="studio_retouch", provider="local", params={"strength": 0.5},
        status=Job.Status.RUNNING, stage="Smoothing skin", progress=0.3, started_at=timezone.now(),
        heartbeat_at=timezone.now(), **fields,
    )


# --- The status poll ------------------------------------------------------------------


def test_running_job_poll_costs_one_query_unchanged_and_two_when_changed(poller):
    job = running_job(Photo.objects.get())
    page = poller.get(f"/jobs/{job.pk}/").content.decode()  # the job page renders the card
    url = poll_url(page)

    response, sql = get(poller, url)
    assert response.status_code == 204 and response.content == b""  # htmx keeps the card as it is
    assert len(sql) == 1, sql
    assert '"studio_job"' in sql[0] and "django_session" not in sql[0]

    Job.objects.filter(pk=job.pk).update(stage="Sharpening", progress=0.8)
    selectors.typical_cache_clear()  # the estimate stays the card's own: no query for it
    response, sql = get(poller, url)
    body = response.content.decode()
    assert response.status_code == 200 and "Sharpening" in body and 'value="80"' in body
    assert len(sql) == 2, sql
    assert poll_url(body) != url  # the new card polls with its new version

    response, sql = get(poller, poll_url(body))
    assert response.status_code == 204 and len(sql) == 1, sql


def test_poll_that_finds_the_job_finished_with_four_results_costs_two_queries(poller, sandboxed):
    photo = Photo.objects.get()
    response = poller.post("/jobs/", headers=HX, data={
        "photo": str(photo.pk), "operation": "ai_headshot", "prompt": "corporate headshot, grey backdrop",
        "seed": "", "num_images": "4", "identity_scale": "0.8", "size": "custom", "width": "512", "height": "512",
    })
    assert response.status_code == 200
    job = Job.objects.get(operation="ai_headshot")  # ran inline (django-q2 sync mode in tests)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.results.count() == 4
    # The card the page showed while the job was running polls with that state's version.
    url = f"/jobs/{job.pk}/status?v={selectors.card_version('running', 'Generating', 0.5)}"

    response, sql = get(poller, url)
    body = response.content.decode()
    assert response.status_code == 286  # htmx stops polling
    assert len(sql) == 2, sql
    assert body.count('class="result-thumbs"') == 1
    for result in job.results.all():
        assert f"/results/{result.pk}/image?size=thumb" in body
    assert "hx-trigger" not in body


def test_failed_job_poll_costs_two_queries(poller):
    job = running_job(Photo.objects.get())
    url = poll_url(poller.get(f"/jobs/{job.pk}/").content.decode())
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, error_message="Try a brighter photo.")
    response, sql = get(poller, url)
    assert response.status_code == 286 and "Try a brighter photo." in response.content.decode()
    assert len(sql) == 2, sql


def test_the_estimate_is_kept_by_the_card_across_polls(poller):
    """A queued card shows the estimate once; polls send a placeholder that htmx swaps for it."""
    photo = Photo.objects.get()
    now = timezone.now()
    for seconds in (3.0, 4.0, 5.0):
        Job.objects.create(owner_visitor="someone-else", operation="studio_retouch", provider="local",
                           status=Job.Status.SUCCEEDED, started_at=now - timezone.timedelta(seconds=seconds),
                           finished_at=now)
    selectors.typical_cache_clear()
    job = Job.objects.create(owner_user=photo.owner_user, owner_visitor=photo.owner_visitor, photo=photo,
                             operation="studio_retouch", provider="local", params={"strength": 0.5})
    card = poller.get(f"/jobs/{job.pk}/").content.decode()
    eta = 'hx-preserve="true" data-testid="job-eta">Usually takes about 4 s</p>'
    assert f'<p class="job-eta" id="job-{job.pk}-eta" {eta}' in card
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, stage="Smoothing skin", started_at=now)
    polled = poller.get(poll_url(card), headers=HX).content.decode()
    assert f'<p class="job-eta" id="job-{job.pk}-eta" hx-preserve="true"></p>' in polled
    assert "Smoothing skin" in polled


def test_someone_elses_job_is_404_whatever_version_is_asked(poller, other_client, portrait_jpeg):
    job = running_job(Photo.objects.get())
    url = poll_url(poller.get(f"/jobs/{job.pk}/").content.decode())
    assert other_client.get(url, headers=HX).status_code == 404
    stranger = Client()
    stranger.force_login(User.objects.create_user("stranger", password=PASSWORD))
    assert stranger.get(url, headers=HX).status_code == 404
    assert poller.get(f"/jobs/{uuid.uuid4()}/status?v=x", headers=HX).status_code == 404


def test_a_session_from_before_a_password_change_no_longer_polls(portrait_jpeg):
    """The poll reads the user with the job; the session is still checked as Django's auth does."""
    user = User.objects.create_user("bob", password=PASSWORD)
    old_session = Client()
    assert old_session.login(username="bob", password=PASSWORD)
    assert upload(old_session, portrait_jpeg).status_code == 200
    job = running_job(Photo.objects.get())
    url = poll_url(old_session.get(f"/jobs/{job.pk}/").content.decode())
    assert old_session.get(url, headers=HX).status_code == 204

    user.set_password("another-long-password-0815")
    user.save()
    assert old_session.get(url, headers=HX).status_code == 404
    assert "_auth_user_id" not in old_session.session  # flushed, as django.contrib.auth does

    fresh = Client()
    assert fresh.login(username="bob", password="another-long-password-0815")
    assert fresh.get(url, headers=HX).status_code == 204
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert fresh.get(url, headers=HX).status_code == 404


@pytest.mark.backend_free
def test_sessions_are_read_through_a_cache_all_processes_share(monkeypatch, tmp_path):
    """The poll's session read stays off the database: what makes the budget above hold."""
    embedded = settings_from_env(monkeypatch, tmp_path)
    assert embedded["SESSION_ENGINE"] == "django.contrib.sessions.backends.cached_db"
    files = embedded["CACHES"][embedded["SESSION_CACHE_ALIAS"]]
    assert files["BACKEND"] == "django.core.cache.backends.filebased.FileBasedCache"
    assert files["LOCATION"].startswith(str(tmp_path))  # the data directory: one machine, like SQLite
    redis = settings_from_env(monkeypatch, tmp_path, REDIS_URL="redis://cache.internal:6379/3",
                              DATABASE_URL="postgres://studio@db.internal/studio")
    assert redis["SESSION_ENGINE"] == "django.contrib.sessions.backends.cached_db"
    assert redis.get("SESSION_CACHE_ALIAS", "default") == "default"  # Redis, shared by every machine
    # PostgreSQL without Redis: web processes may be on several machines, so no local file cache.
    postgres = settings_from_env(monkeypatch, tmp_path, DATABASE_URL="postgres://studio@db.internal/studio")
    assert postgres.get("SESSION_ENGINE", "django.contrib.sessions.backends.db") == (
        "django.contrib.sessions.backends.db"
    )
    assert embedded["DATABASES"]["default"]["CONN_MAX_AGE"] == 60


# --- The gallery ------------------------------------------------------------------------


def _stored_image(name: str, scale_to: int) -> ContentFile:
    img = images.astronaut().resize((scale_to, scale_to))
    return ContentFile(images.to_bytes(img, "JPEG", quality=85), name=name)


def _make_jobs(count: int, start: int, templates: list[StyleTemplate]) -> None:
    """`count` jobs of every kind: each provider, style picks, templates, batches, 1–4 results, every status."""
    photo = Photo.objects.get()
    owner = {"owner_user": photo.owner_user, "owner_visitor": photo.owner_visitor}
    operations = list(OPERATIONS.values())
    # The first job runs, so every page size shows an unfinished card (and its estimate).
    statuses = [Job.Status.RUNNING] + [Job.Status.SUCCEEDED] * 5 + [Job.Status.FAILED, Job.Status.QUEUED]
    now = timezone.now()
    for i in range(start, start + count):
        op = operations[i % len(operations)]
        status = statuses[i % len(statuses)]
        params = {"seed": 1000 + i}
        if any(p.kind == "style" for p in op.params):
            params.update(style_id=f"{9000 + i}", style_name=f"Style {i}")
        job = Job.objects.create(
            **owner, photo=photo, operation=op.key, provider=op.provider, params=params,
            sandbox=op.provider != "local", status=status, stage="Working" if status == "running" else "",
            error_message="The service is busy. Try again in a minute." if status == "failed" else "",
            style_template=next((t for t in templates if t.operation == op.key), None),
            batch=uuid.UUID(int=i // 3) if i % 2 else None,
            started_at=now if status != "queued" else None,
            finished_at=now if status in Job.TERMINAL else None,
        )
        if status == Job.Status.SUCCEEDED:
            for index in range(1 + i % 4):
                Result.objects.create(
                    job=job, index=index, width=256, height=256, label=f"Look {index + 1}" if index else "",
                    content_type="image/png" if i % 5 == 0 else "image/jpeg",
                    meta={"seed": 1000 + i + index, **({"nsfw": True} if i % 7 == 0 else {})},
                    image=_stored_image(f"r{i}-{index}.jpg", 256), thumbnail=_stored_image(f"t{i}-{index}.jpg", 64),
                )


def test_gallery_query_count_is_the_same_for_1_5_and_30_jobs(poller, settings):
    settings.STUDIO_GALLERY_PAGE_SIZE = 50  # every job on one page: nothing hidden by pagination
    templates = [
        StyleTemplate.objects.create(name=name, slug=f"counted-{name.lower()}", operation=operation, provider=provider,
                                     prompt=f"{name} portrait", seed=seed)
        for name, operation, provider, seed in (("Corporate", "ai_headshot", "headshot", 48213),
                                                ("Noir", "ws_portrait", "wavespeed", 7))
    ]
    counts = {}
    made = 0
    for size in (1, 5, 30):
        _make_jobs(size - made, made, templates)
        made = size
        selectors.typical_cache_clear()  # each page pays the same estimate refresh, if any
        response, sql = get(poller, "/gallery/")
        body = response.content.decode()
        assert response.status_code == 200
        assert body.count('data-testid="job-card"') == size
        counts[size] = len(sql)
    # The first style pick's name is shown (which job that is depends on the catalogue's order).
    first_style = next(i for i, op in enumerate(OPERATIONS.values()) if any(p.kind == "style" for p in op.params))
    assert body.count('data-testid="job-template"') >= 2 and f"Style {first_style}" in body and "Look 2" in body
    assert counts[1] == counts[5] == counts[30], counts
