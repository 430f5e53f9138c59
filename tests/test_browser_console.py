"""The staff console in headless Chromium: staff-only, monitor filters, retry, vendor panel.

Same pattern as tests/test_browser.py: a live server, a real django-q2 worker,
and every test fails on a JavaScript error, console error or failed request.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from studio.jobs import create
from studio.jobs.create import job_create
from studio.jobs.run import job_mark_failed
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.vendors.base import PROVIDERS
from tests import accounts_help
from tests.browser_audit import assert_contrast
from tests.test_browser import (
    _assert_no_horizontal_overflow,
    choose_operation,
    submit_job,
    upload_photo,
    wait_images,
    wait_succeeded,
)

pytestmark = [pytest.mark.browser, pytest.mark.qcluster]

STAFF_PASSWORD = "pw-staff-console-1"
PLANTED_TOKEN = "tok-PLANTED-console"


def log_in_through_admin(page: Page, username: str, password: str, next_url: str = "/staff/") -> None:
    page.goto(next_url)
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=" + re.escape(next_url)))
    page.locator("#id_username").fill(username)
    page.locator("#id_password").fill(password)
    page.locator("input[type=submit]").click()
    expect(page).to_have_url(re.compile(re.escape(next_url) + "$"))


def test_console_is_staff_only(studio):
    accounts_help.verified_user("member@example.com", "pw-member-12345")
    # Anonymous: sent to the admin login, console never shown.
    page, guard = studio.page()
    guard.expect(r"/favicon\.ico$", 404)  # Django's admin login page links no icon
    page.goto("/staff/vendors/")
    expect(page).to_have_url(re.compile(r"/admin/login/\?next=/staff/vendors/$"))
    expect(page.get_by_test_id("console")).to_have_count(0)
    expect(page.get_by_role("link", name="Staff", exact=True)).to_have_count(0)

    # Signed in, not staff: 404 everywhere, and no link to it.
    member, member_guard = studio.page()
    member_guard.expect(r"/staff/", 404)
    member.goto("/accounts/login/")
    member.get_by_label("Email").fill("member@example.com")
    member.get_by_label("Password").fill("pw-member-12345")
    member.get_by_role("button", name="Log in").click()
    expect(member.get_by_role("button", name=re.compile("Log out member@example.com"))).to_be_visible()
    expect(member.get_by_role("link", name="Staff", exact=True)).to_have_count(0)
    for url in ("/staff/", "/staff/vendors/"):
        response = member.goto(url)
        assert response.status == 404, url
        expect(member.get_by_role("heading", name="Not found")).to_be_visible()
        expect(member.get_by_test_id("console")).to_have_count(0)


def test_monitor_filters_retry_and_vendor_panel(studio, qcluster, portrait_file, shots_dir):
    User.objects.create_user("ops", password=STAFF_PASSWORD, is_staff=True, is_superuser=True)
    # A visitor makes two real jobs in the browser.
    visitor, _ = studio.page()
    upload_photo(visitor, portrait_file)
    choose_operation(visitor, "Headshot crop")
    crop_id = submit_job(visitor)
    choose_operation(visitor, "Studio retouch")
    retouch_id = submit_job(visitor)
    wait_succeeded(visitor, crop_id)
    wait_succeeded(visitor, retouch_id)
    crop = Job.objects.get(pk=crop_id)
    owner = Owner(visitor_id=crop.owner_visitor)
    # …and one that failed at a vendor, with a secret in what the vendor sent back.
    original = create.enqueue_job
    create.enqueue_job = lambda job_id: None
    try:
        failed = job_create(
            owner=owner, photo=crop.photo, operation=get_operation("background_blur"), params={"strength": 0.4}
        )
    finally:
        create.enqueue_job = original
    job_mark_failed(failed.pk, "The service was busy. Please try again in a minute.")
    Job.objects.filter(pk=failed.pk).update(vendor_meta={"access_token": PLANTED_TOKEN, "queue": "eu-1"})

    page, guard = studio.page()
    guard.expect(r"/favicon\.ico$", 404)  # Django's admin login page links no icon
    log_in_through_admin(page, "ops", STAFF_PASSWORD)
    expect(page.get_by_role("heading", name="Job monitor")).to_be_visible()
    expect(page.get_by_role("link", name="Staff", exact=True)).to_have_attribute("aria-current", "page")
    rows = page.get_by_test_id("console-job")
    expect(rows).to_have_count(3)
    expect(page.get_by_test_id("console-totals")).to_contain_text("3 jobs")
    expect(page.get_by_test_id("console-totals")).to_contain_text("1 failed")
    expect(page.get_by_test_id("per-provider").locator("tbody tr")).to_have_count(1)  # all local
    expect(page.get_by_test_id("per-provider")).to_contain_text("local")

    # Filters: status, operation, provider.
    page.get_by_test_id("console-filter-status").select_option("failed")
    page.get_by_role("button", name="Apply filters").click()
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Background blur")
    expect(rows.first).to_contain_text("The service was busy.")
    page.get_by_test_id("console-filter-status").select_option("")
    page.get_by_test_id("console-filter-operation").select_option("headshot_crop")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job", crop_id)
    expect(rows.first.locator("td").nth(4)).to_have_text(re.compile(r"^\d+(\.\d)? s$"))  # its duration
    page.get_by_test_id("console-filter-operation").select_option("")
    page.get_by_test_id("console-filter-provider").select_option("local")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(3)
    assert_contrast(page)
    _assert_no_horizontal_overflow(page)
    page.screenshot(path=shots_dir / "console-desktop.png", full_page=True)

    # The failed job: payload without the secret, then retry it.
    page.goto("/staff/?status=failed")
    rows.first.get_by_role("link").click()
    expect(page).to_have_url(re.compile(rf"/staff/jobs/{failed.pk}/$"))
    payload = page.get_by_test_id("console-payload").first
    expect(payload).to_contain_text('"queue": "eu-1"')
    expect(payload).to_contain_text('"access_token": "[removed]"')
    assert PLANTED_TOKEN not in page.content()
    expect(page.get_by_test_id("console-request-id")).to_have_text(failed.request_id)
    page.get_by_test_id("console-retry").click()
    expect(page.locator(".message-success")).to_contain_text("Retry queued as a new job for the same owner.")
    retry = Job.objects.get(rerun_of=failed)
    expect(page).to_have_url(re.compile(rf"/staff/jobs/{retry.pk}/$"))
    qcluster.wait_for_jobs([retry.pk])
    page.reload()
    expect(page.get_by_test_id("console-job-status")).to_have_text("Done")
    expect(page.get_by_test_id("console-retry")).to_have_count(0)
    wait_images(page)
    retry.refresh_from_db()
    assert retry.status == "succeeded" and retry.owner_visitor == owner.visitor_id
    # The owner finds the retried job in their own gallery.
    visitor.goto("/gallery/")
    card = visitor.locator(f"#job-{retry.pk}")
    expect(card).to_have_attribute("data-status", "succeeded")
    wait_images(visitor)

    # Vendor panel: one card per registered provider; the last error of local is the failure above.
    page.get_by_role("link", name="Vendors and catalogue").click()
    expect(page.get_by_role("heading", name="Vendors", exact=True)).to_be_visible()
    for key in PROVIDERS:
        expect(page.get_by_test_id(f"vendor-{key}")).to_be_visible()
    local = page.get_by_test_id("vendor-local")
    expect(local.get_by_test_id("vendor-mode")).to_have_text("Runs on this server")
    expect(local.get_by_test_id("vendor-configured")).to_have_text("Yes")
    expect(local.get_by_test_id("vendor-last-error")).to_contain_text("The service was busy.")
    catalogue = page.get_by_test_id("console-catalogue")
    expect(catalogue.get_by_role("link", name="Jobs")).to_have_attribute("href", "/admin/studio/job/")
    assert_contrast(page)
    page.screenshot(path=shots_dir / "console-vendors-desktop.png", full_page=True)
