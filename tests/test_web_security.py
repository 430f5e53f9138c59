"""Response headers, the Content-Security-Policy, and vendor keys never shown or logged."""

from __future__ import annotations

import logging
from html.parser import HTMLParser

import pytest
from django.conf import settings as django_settings
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from studio.media import storage_origin
from studio.models import Job, Photo
from studio.security import content_security_policy
from studio.sharing import share_enable
from tests.conftest import upload

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HX-Request": "true"}


class InlineCodeFinder(HTMLParser):
    """Collects everything a CSP without 'unsafe-inline' would block."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if tag == "script":
            self._in_script = "src" not in names
        if tag == "style":
            self.found.append("<style>")
        if "style" in names:
            self.found.append(f"<{tag} style=…>")
        self.found.extend(f"<{tag} {name}=…>" for name in names if name.startswith("on"))
        for name in ("href", "src", "action"):
            if (names.get(name) or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.found.append(f"inline script: {data.strip()[:60]}")


@pytest.fixture
def pages(owner_client, portrait_jpeg):
    """Every kind of page, with real content, as its rightful viewer."""
    upload(owner_client, portrait_jpeg)
    photo = Photo.objects.get()
    owner_client.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"}, headers=HTMX)
    job = Job.objects.get()
    result = job.results.get()
    token = share_enable(result=result, show_before=True).token
    staff = Client()
    staff.force_login(User.objects.create_superuser("boss", password="pw-boss-123456"))
    return [
        (owner_client, "/"),
        (owner_client, f"/?photo={photo.pk}"),
        (owner_client, "/gallery/"),
        (owner_client, f"/jobs/{job.pk}/"),
        (owner_client, f"/results/{result.pk}/"),
        (owner_client, "/privacy/"),
        (Client(), f"/s/{token}"),
        (Client(), "/accounts/login/"),
        (Client(), "/accounts/signup/"),
        (Client(), "/no-such-page/"),
        (staff, reverse("studio:console:monitor")),
        (staff, reverse("studio:console:vendors")),
        (staff, reverse("admin:index")),
    ]


def test_every_page_sends_the_security_headers(pages):
    for client, url in pages:
        response = client.get(url)
        assert response.status_code in (200, 404), url
        assert response["Content-Security-Policy"] == content_security_policy(), url
        assert response["X-Content-Type-Options"] == "nosniff", url
        assert response["Referrer-Policy"] == "same-origin", url
        assert response["X-Frame-Options"] == "DENY", url
        assert response["Cross-Origin-Opener-Policy"] == "same-origin", url
        assert "geolocation=()" in response["Permissions-Policy"], url


def test_the_policy_allows_no_inline_code_and_no_other_origin():
    policy = content_security_policy()
    directives = dict(part.split(" ", 1) for part in policy.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    # The one origin allowed on S3 (./scripts/test-scaled): the bucket, for images only.
    media = storage_origin()
    if media:
        assert media in directives["img-src"].split()
        policy = policy.replace(f" {media}", "")
    assert "unsafe" not in policy and "*" not in policy and "http" not in policy


def test_pages_carry_no_inline_scripts_styles_or_handlers(pages):
    """So they work under the policy; test_browser.py proves it in Chromium (CSP errors fail it)."""
    for client, url in pages:
        if url.startswith("/admin/"):
            continue  # Django's admin: its one inline <style> is cosmetic (a column width)
        finder = InlineCodeFinder()
        finder.feed(client.get(url).content.decode())
        assert finder.found == [], (url, finder.found)


def test_htmx_is_configured_for_the_policy(owner_client):
    page = owner_client.get("/").content.decode()
    config = page.split('name="htmx-config" content=\'', 1)[1].split("'", 1)[0]
    assert '"includeIndicatorStyles": false' in config  # no <style> injected by htmx
    assert '"allowEval": false' in config
    # htmx would otherwise copy `style` attributes with setAttribute while settling a swap.
    assert '"attributesToSettle": ["class", "width", "height"]' in config
    assert '"^(413|429)$", "swap": true' in config  # refusals are shown, not dropped


def test_behind_the_tls_proxy(settings, client):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    plain = client.get("/privacy/")
    assert plain.status_code == 301 and plain["Location"] == "https://testserver/privacy/"
    secure = client.get("/privacy/", headers={"X-Forwarded-Proto": "https"})
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert secure.cookies["csrftoken"]["secure"]


# --- Vendor keys ----------------------------------------------------------------


def secret_setting_names() -> list[str]:
    return [
        name
        for name in dir(django_settings)
        if name.isupper()
        and (name.endswith(("_KEY", "_SECRET", "_TOKEN", "_PASSWORD")))
        and name != "SECRET_KEY"
        and isinstance(getattr(django_settings, name), str)
    ]


def test_vendor_keys_never_appear_in_pages_admin_or_logs(settings, pages, caplog):
    names = secret_setting_names()
    assert {"WAVESPEED_API_KEY", "VTRIX_API_KEY", "HEADSHOT_API_KEY", "PERFECTCORP_CLIENT_SECRET"} <= set(names)
    planted = {}
    for name in names:
        planted[name] = f"sk-live-{name.lower()}-7f3a9c1e5b"
        setattr(settings, name, planted[name])
    caplog.set_level(logging.DEBUG)

    staff = next(client for client, url in pages if url.startswith("/admin/"))
    urls = [(client, url) for client, url in pages]
    for model in admin.site._registry:
        meta = model._meta
        urls.append((staff, reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")))
        obj = model._default_manager.first()
        if obj is not None:
            urls.append((staff, reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])))
    seen = 0
    for client, url in urls:
        response = client.get(url)
        text = response.content.decode(errors="replace") + str(response.headers)
        seen += 1
        for name, value in planted.items():
            assert value not in text, f"{name} shown on {url}"
    assert seen > 20
    # A job run and a vendor failure message leave no key in the logs either.
    owner = pages[0][0]
    photo = Photo.objects.first()
    owner.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"}, headers=HTMX)
    for name, value in planted.items():
        assert value not in caplog.text, f"{name} logged"


def test_keys_can_come_from_files(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    key_file = tmp_path / "wavespeed.key"
    key_file.write_text("sk-from-a-file-123\n")
    env = {**os.environ, "WAVESPEED_API_KEY_FILE": str(key_file), "STUDIO_DATA_DIR": str(tmp_path)}
    env.pop("WAVESPEED_API_KEY", None)
    run = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.conf import settings; print(settings.WAVESPEED_API_KEY == 'sk-from-a-file-123')",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.stdout.strip().splitlines()[-1] == "True", run.stderr
