"""The staff console: access, monitor filters and aggregates, retry, payload redaction, vendor panel."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from studio.console.redaction import REMOVED, redact
from studio.jobs.create import job_create
from studio.jobs.run import job_mark_failed
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create, photo_delete
from studio.vendors import base as vendor_base
from studio.vendors.base import Provider, Submission

pytestmark = pytest.mark.django_db(transaction=True)

CONSOLE = "/staff/"
PLANTED = {
    "token": "tok-PLANTED-1",
    "id_token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJlLXBsYW50ZWQ",
    "x-api-key": "sk-PLANTED-2",
    "Authorization": "Bearer PLANTED-3-abcdef",
    "client_secret": "PLANTED-4",
    "upload": {
        "url": "https://bucket.s3.amazonaws.com/in.jpg?X-Amz-Signature=PLANTED5&X-Amz-Expires=900",
        "headers": {"Content-Type": "image/jpeg", "x-amz-security-token": "PLANTED-6"},
    },
    "accessToken": "PLANTED-7",
    "results": [
        {"download_url": "https://cdn.example.com/out.jpg?sig=PLANTED8&exp=1", "dst_id": "123456789012345678901"}
    ],
}
PLANTED_VALUES = ["PLANTED", "eyJhbGciOiJIUzI1NiJ9"]


@pytest.fixture
def staff_client():
    client = Client()
    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw-ops-123456"))
    return client


@pytest.fixture
def member_client():
    client = Client()
    client.force_login(User.objects.create_user("member", password="pw-member-123456"))
    return client


@pytest.fixture
def owner():
    return Owner(visitor_id="visitor-console")


@pytest.fixture
def photo(owner, portrait_jpeg):
    return photo_create(owner=owner, data=portrait_jpeg, filename="me.jpg")


@pytest.fixture
def failed_job(owner, photo, monkeypatch):
    """A real queued job (worker held back) failed through the service, with secrets in its payloads."""
    with monkeypatch.context() as patch:
        patch.setattr("studio.jobs.create.enqueue_job", lambda job_id: None)
        job = job_create(
            owner=owner, photo=photo, operation=get_operation("studio_retouch"), params={"strength": 0.3}
        )
    assert job_mark_failed(job.pk, "The vendor timed out at https://api.example.com/x?token=PLANTED9.")
    Job.objects.filter(pk=job.pk).update(vendor_meta=PLANTED, vendor_state={"file_id": "f-1", **PLANTED})
    return Job.objects.get(pk=job.pk)


# --- Access ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [CONSOLE, CONSOLE + "vendors/"])
def test_anonymous_visitors_are_sent_to_the_login(url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"


def test_signed_in_non_staff_get_404_everywhere(member_client, failed_job):
    for url in (CONSOLE, CONSOLE + "vendors/", f"{CONSOLE}jobs/{failed_job.pk}/"):
        assert member_client.get(url).status_code == 404, url
    response = member_client.post(f"{CONSOLE}jobs/{failed_job.pk}/retry")
    assert response.status_code == 404
    assert Job.objects.count() == 1  # nothing was re-run


def test_retry_needs_post_and_csrf(failed_job):
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_user("ops2", password="pw-ops-123456", is_staff=True))
    assert client.get(f"{CONSOLE}jobs/{failed_job.pk}/retry").status_code == 405
    assert client.post(f"{CONSOLE}jobs/{failed_job.pk}/retry").status_code == 403
    assert Job.objects.count() == 1


# --- Monitor --------------------------------------------------------------------


def _job(owner, **values) -> Job:
    defaults = {"operation": "studio_retouch", "provider": "local", "status": Job.Status.SUCCEEDED}
    return Job.objects.create(**owner.fields(), **{**defaults, **values})


def test_monitor_filters_and_sql_aggregates(staff_client, owner):
    now = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = now - timedelta(days=1)
    rows = [
        # (provider, operation, status, created, duration s, cost)
        ("local", "studio_retouch", "succeeded", now, 4, None),
        ("local", "headshot_crop", "failed", now, 2, None),
        ("wavespeed", "ws_portrait", "succeeded", now, 30, Decimal("0.0400")),
        ("wavespeed", "ws_portrait", "succeeded", yesterday, 10, Decimal("0.0600")),
        ("perfectcorp", "pc_hairstyle", "failed", yesterday, 6, Decimal("0.1000")),
        ("perfectcorp", "pc_hairstyle", "succeeded", now - timedelta(days=40), 8, Decimal("1")),
    ]
    for provider, operation, status, created, seconds, cost in rows:
        _job(
            owner,
            provider=provider,
            operation=operation,
            status=status,
            created_at=created,
            started_at=created,
            finished_at=created + timedelta(seconds=seconds),
            cost=cost,
        )

    context = staff_client.get(CONSOLE).context  # default: the last 7 days
    assert context["totals"]["jobs"] == 5
    assert context["totals"]["failed"] == 2
    assert context["totals"]["cost"] == Decimal("0.2")
    assert context["totals"]["avg_duration"] == timedelta(seconds=(4 + 2 + 30 + 10 + 6) / 5)
    per_provider = {row["provider"]: row for row in context["per_provider"]}
    assert per_provider["wavespeed"]["jobs"] == 2 and per_provider["wavespeed"]["cost"] == Decimal("0.1")
    assert per_provider["wavespeed"]["avg_duration"] == timedelta(seconds=20)
    assert per_provider["local"]["cost"] is None and per_provider["local"]["failed"] == 1
    assert per_provider["perfectcorp"]["jobs"] == 1
    per_day = {row["day"]: row for row in context["per_day"]}
    assert per_day[now.date()]["jobs"] == 3 and per_day[now.date()]["cost"] == Decimal("0.04")
    assert per_day[yesterday.date()]["jobs"] == 2 and per_day[yesterday.date()]["cost"] == Decimal("0.16")

    page = staff_client.get(CONSOLE + "?period=all&provider=perfectcorp")
    assert page.context["totals"]["jobs"] == 2 and page.context["totals"]["cost"] == Decimal("1.1")
    assert "$1.1" in page.content.decode()
    failed = staff_client.get(CONSOLE + "?status=failed").context
    assert {job.operation for job in failed["page"].object_list} == {"headshot_crop", "pc_hairstyle"}
    assert failed["totals"]["jobs"] == 2
    by_op = staff_client.get(CONSOLE + "?operation=ws_portrait").context
    assert [job.provider for job in by_op["page"].object_list] == ["wavespeed", "wavespeed"]
    assert by_op["page"].object_list[0].duration == timedelta(seconds=30)
    # Unknown filter values are ignored rather than failing or matching nothing.
    assert staff_client.get(CONSOLE + "?status=bogus&provider=nope&period=x").context["totals"]["jobs"] == 5
    empty = staff_client.get(CONSOLE + "?status=queued")
    assert "No jobs match these filters." in empty.content.decode()


def test_monitor_costs_constant_queries(staff_client, owner, django_assert_max_num_queries):
    for _ in range(30):
        _job(owner, cost=Decimal("0.01"), started_at=timezone.now(), finished_at=timezone.now())
    with django_assert_max_num_queries(14):
        response = staff_client.get(CONSOLE)
    assert len(response.context["page"].object_list) == 30


# --- Job detail and retry --------------------------------------------------------


@pytest.mark.backend_free
def test_redaction_removes_planted_secrets_and_keeps_the_rest():
    cleaned = redact(PLANTED)
    text = json.dumps(cleaned)
    for planted in PLANTED_VALUES:
        assert planted not in text, text
    assert cleaned["results"][0]["dst_id"] == "123456789012345678901"
    assert cleaned["upload"]["url"] == f"https://bucket.s3.amazonaws.com/in.jpg?{REMOVED}"
    assert cleaned["upload"]["headers"]["Content-Type"] == "image/jpeg"
    assert cleaned["token"] == REMOVED and cleaned["Authorization"] == REMOVED
    assert (
        redact("failed: Bearer abcdefghij12 at https://h/p?a=1") == f"failed: Bearer {REMOVED} at https://h/p?{REMOVED}"
    )
    # Ordinary identifiers survive: style ids, task ids, request ids.
    assert redact({"style_id": "9", "task_id": "t", "request_id": "r", "monkey": 1}) == {
        "style_id": "9",
        "task_id": "t",
        "request_id": "r",
        "monkey": 1,
    }


def test_job_page_shows_payloads_with_secrets_removed(staff_client, failed_job):
    page = staff_client.get(f"{CONSOLE}jobs/{failed_job.pk}/").content.decode()
    for planted in PLANTED_VALUES:
        assert planted not in page
    assert "123456789012345678901" in page and "f-1" in page  # harmless facts remain
    assert failed_job.request_id in page
    assert "The vendor timed out at https://api.example.com/x?[removed]." in page
    assert "Retry as a new job" in page


def test_retry_creates_a_new_run_for_the_same_owner(staff_client, failed_job, owner):
    response = staff_client.post(f"{CONSOLE}jobs/{failed_job.pk}/retry")
    new_job = Job.objects.exclude(pk=failed_job.pk).get()
    assert response.status_code == 302 and response["Location"] == f"{CONSOLE}jobs/{new_job.pk}/"
    # Ran inline (sync test mode) to a real result, owned by the original owner.
    assert new_job.status == Job.Status.SUCCEEDED and new_job.results.count() == 1
    assert new_job.owner_visitor == owner.visitor_id and new_job.owner_user_id is None
    assert new_job.rerun_of_id == failed_job.pk and new_job.params == {"strength": 0.3}
    assert new_job.request_id != failed_job.request_id
    failed_job.refresh_from_db()
    assert failed_job.status == Job.Status.FAILED  # the record of the failure stays
    # The owner sees the new job in their own gallery.
    assert selectors_gallery(owner) == [new_job.pk, failed_job.pk]
    # A job that did not fail cannot be retried.
    staff_client.post(f"{CONSOLE}jobs/{new_job.pk}/retry")
    assert Job.objects.count() == 2


def selectors_gallery(owner):
    from studio import selectors

    return [job.pk for job in selectors.gallery_page(owner).object_list]


def test_retry_of_a_job_whose_photo_is_gone_says_why(staff_client, failed_job):
    photo_delete(photo=failed_job.photo)
    response = staff_client.post(f"{CONSOLE}jobs/{failed_job.pk}/retry", follow=True)
    assert "Not retried: The original photo of this job was deleted" in response.content.decode()
    assert Job.objects.count() == 1


# --- Vendor panel ------------------------------------------------------------------


class BudgetProvider(Provider):
    key = "budgeted"
    label = "Budgeted Vendor"

    def status(self):
        return {
            "configured": True,
            "mode": "sandbox",
            "missing": [],
            "budget_in_use": "37 of 100 requests this hour",
            "budget": {"windows": [{"limit": 100, "seconds": 60, "used": 7}], "paused_for": 0.0},
            "api_key": "sk-PLANTED-10",
        }

    def submit(self, job):
        return Submission(task_id="never")


def test_vendor_panel_reports_each_provider(staff_client, owner, monkeypatch):
    monkeypatch.setitem(vendor_base.PROVIDERS, "budgeted", "tests.test_console.BudgetProvider")
    monkeypatch.setitem(vendor_base.PROVIDERS, "broken", "tests.no_such_module.Provider")
    older = _job(
        owner,
        provider="budgeted",
        operation="x",
        status="failed",
        error_message="Old failure",
        finished_at=timezone.now() - timedelta(hours=2),
    )
    _job(
        owner,
        provider="budgeted",
        operation="x",
        status="failed",
        error_message="Rate limited at https://v.example/a?signature=PLANTED11",
        finished_at=timezone.now(),
    )
    response = staff_client.get(CONSOLE + "vendors/")
    assert response.status_code == 200
    page = response.content.decode()
    for planted in PLANTED_VALUES:
        assert planted not in page
    rows = {row["key"]: row for row in response.context["providers"]}
    assert set(rows) == set(vendor_base.PROVIDERS)
    assert rows["local"]["runs_locally"] and rows["local"]["configured"] is True
    assert rows["budgeted"]["mode"] == "sandbox"
    assert ("budget in use", "37 of 100 requests this hour") in rows["budgeted"]["facts"]
    assert rows["budgeted"]["last_failure"]["error_message"] == "Rate limited at https://v.example/a?[removed]"
    assert rows["budgeted"]["last_failure"]["id"] != older.pk
    assert rows["budgeted"]["recent"] == {"provider": "budgeted", "jobs": 2, "failed": 2}
    assert "ModuleNotFoundError" in rows["broken"]["load_error"]
    assert "37 of 100 requests this hour" in page and "Sandbox (local emulator)" in page
    assert "windows: 7 of 100 per 60 s; paused for: 0" in page
    # Links to every studio admin page that exists (catalogue and templates when registered).
    links = {link["model"]: link["url"] for link in response.context["catalogue"]}
    assert links["job"] == "/admin/studio/job/"
    for url in links.values():
        assert staff_client.get(url).status_code in (200, 302)
    vendor_base._instances.pop("budgeted", None)


def test_remote_provider_status_shows_missing_settings(staff_client, monkeypatch, settings):
    from studio.vendors.remote import RemoteProvider

    class Remote(RemoteProvider):
        key = "remote_test"
        label = "Remote Test"
        required_settings = ("REMOTE_TEST_API_KEY",)
        base_url_setting = "REMOTE_TEST_URL"

        def submit(self, job):
            raise AssertionError

    settings.REMOTE_TEST_API_KEY = ""
    monkeypatch.setitem(vendor_base.PROVIDERS, "remote_test", "x.y")
    monkeypatch.setitem(vendor_base._instances, "remote_test", Remote())
    row = next(r for r in staff_client.get(CONSOLE + "vendors/").context["providers"] if r["key"] == "remote_test")
    assert row["configured"] is False and row["mode"] == "off" and row["missing"] == ["REMOTE_TEST_API_KEY"]
