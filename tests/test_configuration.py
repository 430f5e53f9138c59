"""PostgreSQL, Redis and S3 are chosen by environment variables alone.

settings.py is evaluated afresh under each environment (tests/media.py), so
these check what a deployment gets, whichever configuration this run uses.
"""

from __future__ import annotations

import os

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.media import settings_from_env


@pytest.mark.backend_free
def test_defaults_are_the_embedded_configuration(monkeypatch, tmp_path):
    conf = settings_from_env(monkeypatch, tmp_path)
    assert conf["DATABASES"]["default"]["ENGINE"] == "portraitstudio.sqlite"  # Django's SQLite, subclassed
    assert conf["CACHES"]["default"]["BACKEND"] == "django.core.cache.backends.db.DatabaseCache"
    assert conf["Q_CLUSTER"]["orm"] == "default" and "redis" not in conf["Q_CLUSTER"]
    assert conf["STORAGES"]["default"] == {"BACKEND": "django.core.files.storage.FileSystemStorage"}


@pytest.mark.backend_free
def test_postgres_gets_health_checks_and_a_test_database_of_its_own(monkeypatch, tmp_path):
    conf = settings_from_env(monkeypatch, tmp_path, DATABASE_URL="postgres://studio:pw@db.internal:5432/studio")
    db = conf["DATABASES"]["default"]
    assert db["ENGINE"] == "django.db.backends.postgresql" and db["HOST"] == "db.internal"
    assert db["CONN_HEALTH_CHECKS"] is True
    assert db["OPTIONS"]["connect_timeout"] == 5
    # Two test runs on one server never share (and destroy) one test database.
    assert db["TEST"]["NAME"] == f"test_studio_{os.getpid()}"
    overridden = settings_from_env(
        monkeypatch, tmp_path, DATABASE_URL="postgres://studio@db.internal/studio", STUDIO_TEST_DB="test_ci"
    )
    assert overridden["DATABASES"]["default"]["TEST"]["NAME"] == "test_ci"


@pytest.mark.backend_free
def test_redis_url_moves_the_queue_and_the_cache_to_redis(monkeypatch, tmp_path):
    url = "redis://cache.internal:6379/3"
    conf = settings_from_env(
        monkeypatch, tmp_path, REDIS_URL=url, CACHE_KEY_PREFIX="site-a", STUDIO_QUEUE_NAME="site-a-jobs"
    )
    assert conf["Q_CLUSTER"]["redis"] == url and "orm" not in conf["Q_CLUSTER"]
    assert conf["Q_CLUSTER"]["name"] == "site-a-jobs"
    cache = conf["CACHES"]["default"]
    assert cache["BACKEND"] == "studio.cache.RedisCache" and cache["LOCATION"] == url
    assert cache["KEY_PREFIX"] == "site-a"


@pytest.mark.backend_free
def test_a_malformed_redis_url_names_the_variable(monkeypatch, tmp_path):
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        settings_from_env(monkeypatch, tmp_path, REDIS_URL="cache.internal:6379")


@pytest.mark.backend_free
def test_a_bucket_name_moves_media_to_private_s3_with_short_signed_urls(monkeypatch, tmp_path):
    conf = settings_from_env(
        monkeypatch, tmp_path,
        AWS_STORAGE_BUCKET_NAME="studio-media", AWS_S3_ENDPOINT_URL="https://s3.example.net",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_S3_REGION_NAME="eu-central-1", AWS_S3_ADDRESSING_STYLE="path",
        STUDIO_MEDIA_URL_SECONDS="120",
    )
    media = conf["STORAGES"]["default"]
    options = media["OPTIONS"]
    assert media["BACKEND"] == "storages.backends.s3.S3Storage"
    assert options["bucket_name"] == "studio-media" and options["endpoint_url"] == "https://s3.example.net"
    assert options["default_acl"] is None  # no public-read: objects take the bucket's private default
    assert options["querystring_auth"] is True and options["querystring_expire"] == 120
    assert options["file_overwrite"] is False
    assert options["client_config"].signature_version == "s3v4"
    assert options["client_config"].s3 == {"addressing_style": "path"}
    assert options["region_name"] == "eu-central-1" and options["access_key"] == "AKIAEXAMPLE"


@pytest.mark.backend_free
def test_a_malformed_addressing_style_names_the_variable(monkeypatch, tmp_path):
    with pytest.raises(ImproperlyConfigured, match="AWS_S3_ADDRESSING_STYLE"):
        settings_from_env(monkeypatch, tmp_path, AWS_STORAGE_BUCKET_NAME="b", AWS_S3_ADDRESSING_STYLE="dns")


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs Redis: runs in ./scripts/test-scaled")
def test_clearing_the_redis_cache_leaves_the_job_queue_and_other_sites_alone(settings):
    """Django's RedisCache.clear() is FLUSHDB; ours deletes only its own prefix."""
    from django.core.cache import caches

    from studio.cache import RedisCache

    ours = caches["default"]
    assert isinstance(ours, RedisCache)
    other = RedisCache(settings.CACHES["default"]["LOCATION"], {"KEY_PREFIX": f"{ours.key_prefix}-other-site"})
    client = ours._cache.get_client(write=True)
    queue_key = f"django_q:{ours.key_prefix}-clear-test:q"
    try:
        ours.set("token", "ours")
        other.set("token", "theirs")
        client.rpush(queue_key, b"a queued task")
        ours.clear()
        assert ours.get("token") is None
        assert other.get("token") == "theirs"
        assert client.lrange(queue_key, 0, -1) == [b"a queued task"]
    finally:
        client.delete(queue_key)
        other.clear()
