"""Abuse limits: uploads and jobs per hour per visitor and per address, concurrent jobs, request size.

Each test sets the limits low itself (conftest.py raises them for every other test).
"""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory, override_settings

from studio import limits
from studio.models import Job, Photo
from studio.ownership import Owner
from tests.conftest import upload

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HX-Request": "true"}


@pytest.fixture(autouse=True)
def _fresh_counters():
    cache.clear()
    yield
    cache.clear()


def test_uploads_per_visitor_per_hour(settings, portrait_jpeg):
    settings.STUDIO_UPLOADS_PER_HOUR = 2
    client = Client()
    for _ in range(2):
        assert upload(client, portrait_jpeg).status_code == 200
    response = upload(client, portrait_jpeg)
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    body = response.content.decode()
    assert "uploaded a lot of photos in the last hour" in body and "minute" in body
    # htmx shows it in the page's alert region instead of replacing the workspace.
    assert response["HX-Retarget"] == "#alerts" and 'data-testid="alert"' in body
    assert Photo.objects.count() == 2
    # Another visitor (another address limit still far away) is not affected.
    assert upload(Client(), portrait_jpeg).status_code == 200


def test_refused_files_count_too(settings):
    settings.STUDIO_UPLOADS_PER_HOUR = 2
    client = Client()
    for _ in range(2):
        assert upload(client, b"not a photo").status_code == 200  # refused with a message
    assert upload(client, b"not a photo").status_code == 429


def test_uploads_per_address_catch_new_sessions(settings, portrait_jpeg):
    settings.STUDIO_UPLOADS_PER_HOUR_PER_IP = 3
    statuses = [upload(Client(), portrait_jpeg).status_code for _ in range(4)]  # a fresh cookie each time
    assert statuses == [200, 200, 200, 429]
    other_address = Client(REMOTE_ADDR="203.0.113.7")
    assert upload(other_address, portrait_jpeg).status_code == 200


def test_without_htmx_the_limit_is_a_page(settings, portrait_jpeg):
    settings.STUDIO_UPLOADS_PER_HOUR = 1
    client = Client()
    upload(client, portrait_jpeg, htmx=False)
    response = upload(client, portrait_jpeg, htmx=False)
    assert response.status_code == 429
    assert 'data-testid="refused"' in response.content.decode()
    assert "Please slow down" in response.content.decode()


def test_jobs_per_hour(settings, portrait_jpeg):
    settings.STUDIO_JOBS_PER_HOUR = 2
    client = Client()
    upload(client, portrait_jpeg)
    photo = Photo.objects.get()
    data = {"photo": str(photo.pk), "operation": "studio_retouch"}
    assert client.post("/jobs/", data, headers=HTMX).status_code == 200
    assert client.post("/jobs/", data, headers=HTMX).status_code == 200
    response = client.post("/jobs/", data, headers=HTMX)
    assert response.status_code == 429 and "started a lot of jobs" in response.content.decode()
    assert Job.objects.count() == 2
    # Re-running counts as a job too.
    job = Job.objects.first()
    assert client.post(f"/jobs/{job.pk}/rerun", {"strength": "0.4"}).status_code == 429


def test_concurrent_jobs_per_owner(settings, portrait_jpeg, monkeypatch):
    settings.STUDIO_MAX_CONCURRENT_JOBS = 2
    monkeypatch.setattr("studio.jobs.create.enqueue_job", lambda job_id: None)  # jobs stay queued
    client = Client()
    upload(client, portrait_jpeg)
    photo = Photo.objects.get()
    data = {"photo": str(photo.pk), "operation": "studio_retouch"}
    for _ in range(2):
        assert client.post("/jobs/", data, headers=HTMX).status_code == 200
    response = client.post("/jobs/", data, headers=HTMX)
    assert response.status_code == 429
    assert "You already have 2 jobs in progress" in response.content.decode()
    # Once one finishes, the next is accepted.
    Job.objects.filter(pk=Job.objects.first().pk).update(status=Job.Status.SUCCEEDED)
    assert client.post("/jobs/", data, headers=HTMX).status_code == 200


def test_oversized_request_is_refused_before_it_is_read(settings):
    settings.STUDIO_MAX_REQUEST_MB = 1
    settings.STUDIO_MAX_UPLOAD_MB = 1
    client = Client()
    big = SimpleUploadedFile("big.jpg", b"\xff\xd8\xff" + b"\0" * (2 * 1024 * 1024), "image/jpeg")
    response = client.post("/photos/", {"photo": big}, headers=HTMX)
    assert response.status_code == 413
    assert "Photos can be up to 1 MB" in response.content.decode()
    assert response["HX-Retarget"] == "#alerts"
    assert not Photo.objects.exists()


def test_client_address_behind_the_proxy_is_the_last_hop(settings):
    factory = RequestFactory()
    request = factory.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.9")
    assert limits.client_address(request) == "10.0.0.2"  # no proxy configured: the header is ignored
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert limits.client_address(request) == "198.51.100.9"  # what our proxy saw, not what the client claims
    v6 = factory.get("/", REMOTE_ADDR="2001:db8:1:2:3:4:5:6")
    assert limits.client_address(v6) == "2001:db8:1:2::/64"


def test_limits_are_settings_with_defaults():
    from portraitstudio import settings as project_settings

    assert project_settings.STUDIO_UPLOADS_PER_HOUR == 60
    assert project_settings.STUDIO_JOBS_PER_HOUR == 120
    assert project_settings.STUDIO_MAX_CONCURRENT_JOBS == 4
    assert project_settings.STUDIO_MAX_REQUEST_MB == project_settings.STUDIO_MAX_UPLOAD_MB + 5


def test_hourly_window_resets(settings, monkeypatch):
    settings.STUDIO_JOBS_PER_HOUR = 1
    request = RequestFactory().post("/jobs/")
    owner = Owner(visitor_id="someone")
    limits.check_job(request, owner)
    with pytest.raises(limits.LimitExceeded):
        limits.check_job(request, owner)
    now = limits.clock()
    monkeypatch.setattr(limits, "clock", lambda: now + 3600)
    limits.check_job(request, owner)  # a new hour
