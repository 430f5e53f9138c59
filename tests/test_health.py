"""GET /healthz: database, cache and media storage, checked for real; 200 or 503."""

from __future__ import annotations

import json
import socket

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(client: Client | None = None):
    response = (client or Client()).get("/healthz")
    return response, json.loads(response.content)


def test_healthy_answers_200_without_login_session_or_caching():
    response, body = _health()
    assert response.status_code == 200
    assert body == {"status": "ok", "checks": {"database": "ok", "cache": "ok", "storage": "ok"}}
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    assert not response.cookies  # no session or CSRF cookie for a probe


def test_head_works_and_writes_are_refused():
    client = Client()
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


def test_unreachable_cache_is_503_and_names_only_the_check(settings):
    port = _closed_port()
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "studio.cache.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
    response, body = _health()
    assert response.status_code == 503
    assert body == {"status": "failed", "checks": {"database": "ok", "cache": "failed", "storage": "ok"}}
    assert str(port) not in response.content.decode()  # no addresses, no error text


def test_media_directory_that_cannot_be_created_is_503(settings, tmp_path):
    if settings.STORAGES["default"]["BACKEND"] != "django.core.files.storage.FileSystemStorage":
        pytest.skip("media is on S3 in this run; test_missing_bucket_is_503 covers storage")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings.MEDIA_ROOT = blocker / "media"
    response, body = _health()
    assert response.status_code == 503 and body["checks"]["storage"] == "failed"
    assert body["checks"]["database"] == body["checks"]["cache"] == "ok"


def test_missing_bucket_is_503(s3_media, settings):
    response, body = _health()
    assert response.status_code == 200 and body["checks"]["storage"] == "ok"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**settings.STORAGES["default"], "OPTIONS": {**s3_media, "bucket_name": "no-such-bucket-here"}},
    }
    response, body = _health()
    assert response.status_code == 503 and body["checks"]["storage"] == "failed"
    assert "no-such-bucket-here" not in response.content.decode()


def test_unreachable_database_is_503():
    """The check's connection swapped for one to a database that cannot be reached."""
    from django.db import connections

    from studio import health

    connection = connections["default"]

    broken = {**connection.settings_dict}
    if broken["ENGINE"] == "portraitstudio.sqlite":
        broken["NAME"] = "/nonexistent-dir/studio.sqlite3"  # cannot be opened
    else:
        broken.update(HOST="127.0.0.1", PORT=str(_closed_port()))
    unreachable = type(connection)(broken, alias="unreachable")
    original, health.connection = health.connection, unreachable
    try:
        response, body = _health()
    finally:
        health.connection = original
        unreachable.close()
    assert response.status_code == 503
    assert body["checks"] == {"database": "failed", "cache": "ok", "storage": "ok"}
    assert broken["NAME"] not in response.content.decode()
