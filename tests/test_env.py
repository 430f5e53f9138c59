"""Settings helpers fail loudly on malformed values and keep a local secret key."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from portraitstudio import env

# Pure computation: ./scripts/test-scaled leaves these to the embedded run (tests/conftest.py).
pytestmark = pytest.mark.backend_free


def test_bool_parsing_is_strict(monkeypatch):
    monkeypatch.setenv("X_FLAG", "yes")
    assert env.env_bool("X_FLAG", False) is True
    monkeypatch.setenv("X_FLAG", "0")
    assert env.env_bool("X_FLAG", True) is False
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG"):
        env.env_bool("X_FLAG", False)


def test_int_parsing_checks_type_and_range(monkeypatch):
    monkeypatch.setenv("X_NUM", "12")
    assert env.env_int("X_NUM", 1, minimum=1, maximum=20) == 12
    monkeypatch.setenv("X_NUM", "twelve")
    with pytest.raises(ImproperlyConfigured, match="X_NUM must be a whole number"):
        env.env_int("X_NUM", 1)
    monkeypatch.setenv("X_NUM", "99")
    with pytest.raises(ImproperlyConfigured, match="between 1 and 20"):
        env.env_int("X_NUM", 1, minimum=1, maximum=20)


def test_urls_must_be_http(monkeypatch):
    monkeypatch.setenv("X_URL", "ftp://example")
    with pytest.raises(ImproperlyConfigured, match="X_URL"):
        env.env_url("X_URL")
    monkeypatch.setenv("X_URL", "https://studio.example/")
    assert env.env_url("X_URL") == "https://studio.example"


def test_secret_from_file(monkeypatch, tmp_path):
    path = tmp_path / "key"
    path.write_text("from-file\n")
    monkeypatch.setenv("X_SECRET_FILE", str(path))
    assert env.env_secret("X_SECRET") == "from-file"
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="X_SECRET_FILE"):
        env.env_secret("X_SECRET")


def test_local_secret_key_is_generated_once_and_kept(tmp_path):
    first = env.local_secret_key(tmp_path)
    assert len(first) >= 50
    assert env.local_secret_key(tmp_path) == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0  # readable by the owner only
