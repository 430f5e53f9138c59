"""Privacy and security features in real Chromium: the CSP, limits shown in the page, delete everything."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from studio.models import Photo
from tests.test_browser import browser, portrait_file, studio, upload_photo  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_browser_enforces_our_policy_and_the_guard_sees_violations(studio):  # noqa: F811
    """Proves a CSP violation would fail the browser tests: an injected inline script is refused."""
    page, guard = studio.page()
    page.goto("/")
    page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 1'; "
        "document.body.appendChild(s); }"
    )
    page.wait_for_timeout(100)
    assert page.evaluate("() => window.__ran") is None  # blocked
    violations = [p for p in guard.problems if "Content Security Policy" in p]
    assert violations, guard.problems
    guard.problems[:] = [p for p in guard.problems if p not in violations]


def test_the_page_names_where_the_photo_goes(studio, portrait_file):  # noqa: F811
    page, _ = studio.page()
    upload_photo(page, portrait_file)
    expect(page.get_by_test_id("privacy-note")).to_contain_text("stays on this server")
    expect(page.get_by_test_id("photo-retention")).to_contain_text("hours from now")


def test_a_limit_is_shown_in_the_page(studio, portrait_file, settings):  # noqa: F811
    settings.STUDIO_UPLOADS_PER_HOUR = 1
    page, guard = studio.page()
    guard.expect(r"/photos/$", 429)
    upload_photo(page, portrait_file)
    page.locator("[data-photo-input]:not([capture])").set_input_files(portrait_file)
    expect(page.get_by_test_id("alert")).to_contain_text("uploaded a lot of photos")
    expect(page.get_by_test_id("photo-facts")).to_be_visible()  # the workspace is still there
    assert Photo.objects.count() == 1


def test_delete_everything_asks_first(studio, portrait_file):  # noqa: F811
    page, _ = studio.page()
    upload_photo(page, portrait_file)
    page.goto("/privacy/")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_test_id("delete-everything").click()
    page.wait_for_timeout(200)
    assert Photo.objects.count() == 1  # dismissed: nothing happened

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("delete-everything").click()
    expect(page.locator("#alerts")).to_contain_text("Deleted 1 photo(s)")
    assert Photo.objects.count() == 0
