"""Accounts and 'tell me when it's done' in headless Chromium, with a real SMTP server on 127.0.0.1.

Sign up → confirm by the link in the e-mail the SMTP server received →
reset the password by the e-mailed link → log in with the new one; a batch
with "E-mail me when it's done" → the e-mail arrives with the link to the
comparison (and a browser notification while the tab is hidden); twenty
wrong passwords → the lock-out message.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from studio.models import Job
from tests import accounts_help
from tests.smtp import body_of, links_in
from tests.test_browser import choose_operation, upload_photo, wait_images

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

EMAIL, PASSWORD, NEW_PASSWORD = "rae@example.com", "a-long-pass-phrase-31", "a-newer-pass-phrase-62"

# The Notification API, recorded: headless Chromium has no desktop to show one on, and a
# test cannot switch tabs for real. `window.__hidden` stands for "the user is in another tab".
NOTIFICATION_SPY = """
window.__notes = [];
window.__hidden = false;
Object.defineProperty(Document.prototype, "visibilityState", {
  get() { return window.__hidden ? "hidden" : "visible"; },
});
Object.defineProperty(Document.prototype, "hidden", {get() { return window.__hidden; }});
window.Notification = class {
  constructor(title, options) { window.__notes.push({title, body: (options || {}).body}); }
  close() {}
  static get permission() { return "granted"; }
  static requestPermission() { return Promise.resolve("granted"); }
};
"""


def log_in(page: Page, email: str, password: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_sign_up_confirm_reset_the_password_and_log_in_with_the_new_one(studio, smtp_server):
    page, guard = studio.page()
    page.goto("/")
    page.get_by_role("link", name="Sign up").click()
    page.get_by_label("Email").fill(EMAIL)
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/accounts/confirm-email/$"))
    expect(page.get_by_test_id("auth-panel")).to_contain_text("Verify Your Email Address")

    # The link in the e-mail the SMTP server received, opened in a browser that never signed up.
    [message] = smtp_server.wait_for(EMAIL)
    link = next(url for url in links_in(message) if "/accounts/confirm-email/" in url)
    assert link.startswith(studio.base_url)
    other, _ = studio.page()
    other.goto(link)
    other.get_by_role("button", name="Confirm").click()
    expect(other.locator(".message-success")).to_contain_text(f"You have confirmed {EMAIL}.")

    # Forgot the password: reset it by the link in the next e-mail.
    other.goto("/accounts/login/")
    other.get_by_role("link", name="Forgot your password?").click()
    other.get_by_label("Email").fill(EMAIL)
    other.get_by_role("button", name="Reset My Password").click()
    expect(other).to_have_url(re.compile(r"/accounts/password/reset/done/$"))
    reset = smtp_server.wait_for(EMAIL, 2)[1]
    assert "Password Reset" in reset["Subject"]
    other.goto(next(url for url in links_in(reset) if "/accounts/password/reset/key/" in url))
    other.locator("#id_password1").fill(NEW_PASSWORD)
    other.locator("#id_password2").fill(NEW_PASSWORD)
    other.get_by_role("button", name="Change Password").click()
    expect(other.get_by_test_id("auth-panel")).to_contain_text("Your password is now changed.")

    # The old password is refused, the new one logs in.
    log_in(other, EMAIL, PASSWORD)
    expect(other.locator(".errorlist")).to_contain_text("That e-mail address and password do not match an account.")
    log_in(other, EMAIL, NEW_PASSWORD)
    expect(other.get_by_role("button", name=f"Log out {EMAIL}")).to_be_visible()
    expect(other.locator(".message-success")).to_contain_text(f"Successfully signed in as {EMAIL}.")


def test_a_batch_with_notification_emails_the_link_and_notifies_a_hidden_tab(
    studio, cluster, portrait_file, smtp_server, live_server, settings
):
    # The worker builds the link from STUDIO_PUBLIC_URL, here the live server, and sends
    # through the test's SMTP server (tests/live.py hands both to the worker).
    settings.STUDIO_PUBLIC_URL = live_server.url
    qcluster = cluster.start()
    accounts_help.verified_user(EMAIL, PASSWORD)
    page, guard = studio.page()
    page.add_init_script(NOTIFICATION_SPY)
    log_in(page, EMAIL, PASSWORD)
    upload_photo(page, portrait_file)
    choose_operation(page, "Studio retouch")
    box = page.get_by_role("checkbox", name=re.compile("E-mail me when it's done"))
    expect(box).to_be_enabled()
    expect(box).not_to_be_checked()  # a local retouch takes seconds
    page.get_by_text("Compare with other services").click()
    page.get_by_role("checkbox", name=re.compile("Background blur")).check()
    expect(box).to_be_checked()  # two services compared: a batch

    page.locator("#operation-form button[type=submit]").click()
    expect(page.get_by_test_id("batch-note")).to_be_visible()
    page.evaluate("() => { window.__hidden = true; }")  # the user went to another tab

    jobs = Job.objects.filter(owner_user__email=EMAIL)
    qcluster.wait_for_jobs([job.pk for job in jobs])
    batch = jobs.first().batch
    [message] = smtp_server.wait_for(EMAIL)
    assert message["Subject"] == "Your batch of 2 jobs is done: 2 results"
    link = f"{live_server.url}/compare/{batch}/"
    assert link in links_in(message)
    assert "image" not in {part.get_content_maintype() for part in message.walk()}

    # The hidden tab told the user through the browser, once per job.
    deadline_ms = 10_000
    while len(page.evaluate("() => window.__notes")) < 2 and deadline_ms > 0:
        page.wait_for_timeout(100)
        deadline_ms -= 100
    notes = page.evaluate("() => window.__notes")
    assert sorted(note["body"] for note in notes) == ["Background blur is done.", "Studio retouch is done."]

    # The e-mailed link opens the comparison of both results.
    page.evaluate("() => { window.__hidden = false; }")
    page.goto(link)
    expect(page.get_by_test_id("compare-column")).to_have_count(2)
    expect(page.locator('[data-testid=compare-column][data-status="succeeded"]')).to_have_count(2)
    wait_images(page)
    assert "Your batch of 2 jobs is done: 2 results." in body_of(message)
    assert len(smtp_server.to(EMAIL)) == 1  # one e-mail for the batch


def test_the_box_says_why_it_is_off_for_visitors(studio, portrait_file):
    page, guard = studio.page()
    upload_photo(page, portrait_file)
    choose_operation(page, "Studio retouch")
    expect(page.get_by_role("checkbox", name=re.compile("E-mail me when it's done"))).to_be_disabled()
    expect(page.get_by_test_id("notify-why")).to_have_text("Log in to be e-mailed when it's done.")


def test_twenty_wrong_passwords_get_the_lock_out_message(studio):
    accounts_help.verified_user(EMAIL, PASSWORD)
    page, guard = studio.page()
    page.goto("/accounts/login/")
    for attempt in range(20):
        page.get_by_label("Email").fill(EMAIL)
        page.get_by_label("Password").fill(f"wrong-guess-{attempt}")
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Log in").click()
        assert navigation.value.status == 200, attempt  # the form again: never an error page
    expect(page.locator(".errorlist")).to_contain_text(
        "Too many failed log-in attempts. Wait five minutes and try again, or reset your password"
    )
    # Even the right password waits now.
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".errorlist")).to_contain_text("Too many failed log-in attempts.")
    expect(page.get_by_role("link", name="Log in")).to_be_visible()  # still logged out
