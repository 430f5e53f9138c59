"""Shared fixtures: real photographs, clients for different owners, sync jobs."""

from __future__ import annotations

import os
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
def _no_remembered_uploads():
    """Every test's vendor emulator is new: a file id remembered from an earlier test (same
    photo, same sandbox address) would name a file this emulator never had."""
    from studio.vendors import perfectcorp

    perfectcorp._recent_uploads.clear()


# --- backend_free: tests that the scaled run leaves to the embedded one --------------------
#
# A test marked backend_free touches none of what ./scripts/test-scaled swaps out: the
# database, Django's cache, media storage, django-q2's broker (image processing, face
# detection, segmentation, the operations catalogue as data, ...). Repeating it on
# PostgreSQL + Redis + S3 tests nothing new, so with STUDIO_TEST_SCALED=1 (set by
# scripts/test-scaled only) it is deselected; ./scripts/test runs it. On a test it overrides
# a django_db mark of its module or class. The mark is checked: at collection the test must
# have no django_db mark of its own and no fixture that needs a backend, and while it runs any
# use of the database, a cache, default storage or the broker fails it.

BACKEND_FIXTURES = {
    "db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback",
    "live_server", "client", "async_client", "admin_client", "admin_user", "django_user_model",
    "s3_media", "moto_endpoint", "qcluster", "cluster", "clusters", "studio", "browser",
}


def _backend_free_overrides_inherited_django_db(items):
    """A backend_free test in a module (or class) marked django_db gets no database: the
    module's mark moves down to its other tests, each keeping its own closest django_db."""
    for item in items:
        if item.get_closest_marker("backend_free") is None:
            continue
        for node in item.listchain()[1:-1]:
            if not any(mark.name == "django_db" for mark in node.own_markers):
                continue
            others = [other for other in items if node in other.listchain()]
            others = [other for other in others if other.get_closest_marker("backend_free") is None]
            closest = {other.nodeid: other.get_closest_marker("django_db") for other in others}
            node.own_markers[:] = [mark for mark in node.own_markers if mark.name != "django_db"]
            for other in others:
                if other.get_closest_marker("django_db") is None:
                    mark = closest[other.nodeid]
                    other.add_marker(pytest.mark.django_db(*mark.args, **mark.kwargs))


@pytest.hookimpl(tryfirst=True)  # before pytest-django orders the tests by their django_db marks
def pytest_collection_modifyitems(config, items):
    _backend_free_overrides_inherited_django_db(items)
    lying = []
    for item in items:
        if item.get_closest_marker("backend_free") is None:
            continue
        uses = sorted(BACKEND_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        uses += [f"@{m}" for m in ("django_db", "browser", "qcluster") if item.get_closest_marker(m)]
        if uses:
            lying.append(f"{item.nodeid}: {', '.join(uses)}")
    if lying:
        raise pytest.UsageError("marked backend_free but uses a backend:\n  " + "\n  ".join(lying))

    if os.environ.get("STUDIO_TEST_SCALED") == "1":
        kept = [item for item in items if item.get_closest_marker("backend_free") is None]
        left = [item for item in items if item.get_closest_marker("backend_free") is not None]
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = kept
        config.stash[_LEFT_TO_EMBEDDED] = len(left)


_LEFT_TO_EMBEDDED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, config):
    left = config.stash.get(_LEFT_TO_EMBEDDED, None)
    if left is not None:
        terminalreporter.write_line(
            f"scaled run: {left} backend_free tests (pure computation) left to the embedded run, ./scripts/test"
        )


class BackendTouched(RuntimeError):
    pass


class _Forbidden:
    """A cache or storage backend for backend_free tests: any use is recorded and raises."""

    touched: list[str] | None = None

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        what = f"{type(self).__name__.removeprefix('Forbidden').lower()}.{name}"
        if _Forbidden.touched is not None:
            _Forbidden.touched.append(what)
        raise BackendTouched(f"a backend_free test used the {what}")


class ForbiddenCache(_Forbidden):
    def close(self, **kwargs):
        """Django closes every cache when CACHES changes back after the test: not a use."""


class ForbiddenStorage(_Forbidden):
    pass


@pytest.fixture(autouse=True)
def _backend_free_guard(request):
    """For a backend_free test: the database, caches, default storage and broker raise, and
    any use fails the test even if the code under test caught the exception."""
    if request.node.get_closest_marker("backend_free") is None:
        yield
        return
    # After the other autouse fixtures, which may clear the cache and set STORAGES.
    request.getfixturevalue("_fresh_cache")
    request.getfixturevalue("_isolated_media")
    settings = request.getfixturevalue("settings")
    monkeypatch = request.getfixturevalue("monkeypatch")
    from django.db.backends.base.base import BaseDatabaseWrapper

    touched: list[str] = []

    def forbid(what):
        def refuse(*args, **kwargs):
            touched.append(what)
            raise BackendTouched(f"a backend_free test used the {what}")

        return refuse

    monkeypatch.setattr(BaseDatabaseWrapper, "ensure_connection", forbid("database"))
    monkeypatch.setattr("django_q.tasks.get_broker", forbid("django-q broker"))
    monkeypatch.setattr("django_q.brokers.get_broker", forbid("django-q broker"))
    settings.CACHES = {alias: {"BACKEND": "tests.conftest.ForbiddenCache"} for alias in settings.CACHES}
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "tests.conftest.ForbiddenStorage"}}
    monkeypatch.setattr(_Forbidden, "touched", touched)
    yield
    if touched:
        pytest.fail(f"marked backend_free but used: {', '.join(dict.fromkeys(touched))}", pytrace=False)


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
