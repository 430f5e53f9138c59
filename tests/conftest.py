"""Shared fixtures: real photographs, clients for different owners, sync jobs."""

from __future__ import annotations

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests import images
from tests.live import cluster, clusters, qcluster  # noqa: F401  (fixtures for any test)
from tests.smtp import smtp_server  # noqa: F401  (a real SMTP server on 127.0.0.1, for any test)
from tests.media import moto_endpoint, s3_media  # noqa: F401  (media on S3, for any test)
from tests.test_browser import browser, portrait_file, shots_dir, studio  # noqa: F401  (for every browser test module)


@pytest.fixture(autouse=True)
def _isolated_media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    storages = {
        **settings.STORAGES,
        # Tests read static files from the source tree; no collectstatic needed.
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    media = storages["default"]
    if media["BACKEND"] == "storages.backends.s3.S3Storage":
        # On S3 (./scripts/test-scaled) each test gets a key prefix of its own
        # instead of a directory; tests/live.py hands it to a real worker too.
        options = media["OPTIONS"]
        location = f"{options['location'].rstrip('/')}/tests/{uuid.uuid4().hex}".lstrip("/")
        storages["default"] = {**media, "OPTIONS": {**options, "location": location}}
    settings.STORAGES = storages


@pytest.fixture(autouse=True)
def _fresh_cache(request):
    """Every test starts with an empty cache.

    A Redis cache outlives tests, so it is cleared (only this run's keys:
    studio/cache.py). The database cache is emptied by the rollback of an
    ordinary test, but a transactional test's flush leaves its table (no
    model owns it) as the last test left it: a log-in lock-out, say.
    """
    from django.core.cache import caches
    from django.core.cache.backends.db import DatabaseCache

    cache = caches["default"]
    if not isinstance(cache, DatabaseCache):
        cache.clear()
        return
    marker = request.node.get_closest_marker("django_db")
    if "transactional_db" in request.fixturenames or (marker and marker.kwargs.get("transaction")):
        request.getfixturevalue("transactional_db")
        cache.clear()


@pytest.fixture(autouse=True)
def _generous_abuse_limits(settings):
    """Whole suites upload from one address; tests of the limits set them low themselves."""
    settings.STUDIO_UPLOADS_PER_HOUR = settings.STUDIO_UPLOADS_PER_HOUR_PER_IP = 100_000
    settings.STUDIO_JOBS_PER_HOUR = settings.STUDIO_JOBS_PER_HOUR_PER_IP = 100_000
    settings.STUDIO_MAX_CONCURRENT_JOBS = 1_000


@pytest.fixture(autouse=True)
def _short_webhook_backstop(settings):
    """A WaveSpeed job registers a webhook at STUDIO_PUBLIC_URL, where most tests serve nothing,
    so the webhook is lost and the job waits out the backstop (25 s by default) before each
    poll. At 1 s the backstop polls as often as the adapter did before webhooks; tests of the
    webhooks set their own value."""
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 1


@pytest.fixture(autouse=True)
def _sync_jobs(monkeypatch):
    """Run django-q2 tasks inline (tests needing a real cluster switch this off)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture(scope="session")
def portrait_jpeg() -> bytes:
    """The astronaut portrait at 1024 px: one frontal face about 190 px wide."""
    return images.to_bytes(images.astronaut(scale=2), "JPEG", quality=92)


@pytest.fixture(scope="session")
def two_faces_jpeg() -> bytes:
    return images.to_bytes(images.two_faces(), "JPEG", quality=92)


@pytest.fixture(scope="session")
def no_face_jpeg() -> bytes:
    return images.to_bytes(images.no_face(), "JPEG", quality=92)


def upload(client: Client, data: bytes, name: str = "selfie.jpg", *, htmx: bool = True):
    headers = {"HX-Request": "true"} if htmx else {}
    return client.post(
        "/photos/", {"photo": SimpleUploadedFile(name, data, "image/jpeg")}, headers=headers
    )


@pytest.fixture
def owner_client() -> Client:
    return Client()


@pytest.fixture
def other_client() -> Client:
    """A second anonymous visitor: must never see the owner's work."""
    return Client()
