"""Accounts (django-allauth): verification, password reset and change, the log-in lock-out, deletion.

E-mail goes through a real SMTP server on 127.0.0.1 (tests/smtp.py). The
lock-out is counted in Django's cache: the database cache on the embedded
configuration, Redis on the scaled one (./scripts/test-scaled runs this file
there too).
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from studio.accounts import LOCKED_OUT
from studio.models import Job, Photo
from tests import accounts_help
from tests.conftest import upload
from tests.smtp import body_of

pytestmark = pytest.mark.django_db

EMAIL, PASSWORD, NEW_PASSWORD = "lee@example.com", "a-long-Passphrase-11", "another-Passphrase-22"


def log_in(client: Client, email: str, password: str):
    return client.post("/accounts/login/", {"login": email, "password": password})


def signed_in_as(client: Client) -> str:
    user = client.get("/").wsgi_request.user
    return user.email if user.is_authenticated else ""


def test_sign_up_needs_the_address_confirmed_before_logging_in(client, smtp_server):
    response = client.post("/accounts/signup/", {"email": EMAIL, "password1": PASSWORD, "password2": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/accounts/confirm-email/"
    assert signed_in_as(client) == ""
    [message] = smtp_server.wait_for(EMAIL)
    assert message["Subject"].startswith("[Portrait Studio]")
    assert "/accounts/confirm-email/" in body_of(message)

    # Logging in elsewhere before confirming only re-sends the link.
    elsewhere = Client()
    response = log_in(elsewhere, EMAIL, PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/accounts/confirm-email/"
    assert signed_in_as(elsewhere) == ""

    link = accounts_help.confirmation_link(smtp_server, EMAIL)
    page = client.get(link)
    assert page.status_code == 200 and EMAIL in page.content.decode()
    assert client.post(link).status_code == 302
    assert signed_in_as(client) == EMAIL
    assert log_in(elsewhere, EMAIL, PASSWORD).status_code == 302 and signed_in_as(elsewhere) == EMAIL
    # No user name is asked for; one is made up for Django's own admin.
    assert User.objects.get(email=EMAIL).username


def test_password_reset_by_the_emailed_link(client, smtp_server):
    accounts_help.verified_user(EMAIL, PASSWORD)
    response = client.post("/accounts/password/reset/", {"email": EMAIL})
    assert response.status_code == 302 and response["Location"] == "/accounts/password/reset/done/"
    link = accounts_help.reset_link(smtp_server, EMAIL)
    form = client.get(link, follow=True)  # allauth moves the key out of the URL into the session
    assert form.status_code == 200 and 'name="password1"' in form.content.decode()
    response = client.post(form.request["PATH_INFO"], {"password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/accounts/password/reset/key/done/"
    # The link is used up; the old password no longer works, the new one does.
    assert "password1" not in client.get(link, follow=True).content.decode()
    assert signed_in_as(fresh := Client()) == "" and log_in(fresh, EMAIL, PASSWORD).status_code == 200
    assert log_in(fresh, EMAIL, NEW_PASSWORD).status_code == 302 and signed_in_as(fresh) == EMAIL


def test_reset_for_an_unknown_address_reveals_nothing(client, smtp_server):
    response = client.post("/accounts/password/reset/", {"email": "nobody@example.com"})
    assert response.status_code == 302 and response["Location"] == "/accounts/password/reset/done/"


def test_password_change(client):
    accounts_help.verified_user(EMAIL, PASSWORD)
    log_in(client, EMAIL, PASSWORD)
    wrong = client.post(
        "/accounts/password/change/",
        {"oldpassword": "not-it", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert wrong.status_code == 200 and "Please type your current password." in wrong.content.decode()
    response = client.post(
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert response.status_code == 302 and signed_in_as(client) == EMAIL  # still signed in here
    assert log_in(Client(), EMAIL, NEW_PASSWORD).status_code == 302


def test_guessing_a_password_20_times_locks_the_account_out_with_a_message(client):
    accounts_help.verified_user(EMAIL, PASSWORD)
    statuses, locked_from = [], None
    for attempt in range(1, 21):
        response = log_in(client, EMAIL, f"guess-number-{attempt}")
        statuses.append(response.status_code)
        page = response.content.decode()
        if locked_from is None and "Too many failed log-in attempts" in page:
            locked_from = attempt
        if locked_from:
            assert "Too many failed log-in attempts" in page, attempt
    assert statuses == [200] * 20  # the form again, with its message: never a 500
    assert locked_from == 6  # five wrong passwords for one account in five minutes
    assert LOCKED_OUT.split(".")[0] in page and "reset your password" in page
    # Locked: even the right password is refused for now, and from another browser too.
    response = log_in(Client(), EMAIL, PASSWORD)
    assert response.status_code == 200 and "Too many failed log-in attempts" in response.content.decode()
    # Another account on the same address is counted separately (up to 10 a minute per address).
    accounts_help.verified_user("kim@example.com", PASSWORD)
    assert log_in(Client(), "kim@example.com", PASSWORD).status_code in (200, 302)


def test_the_lock_out_is_counted_in_the_shared_cache(client):
    """What another web process would see: the counts live in Django's cache, not in this process."""
    from django.core.cache import caches

    cache = caches["default"]  # the database cache embedded, Redis scaled
    accounts_help.verified_user(EMAIL, PASSWORD)
    for attempt in range(5):
        log_in(client, EMAIL, f"wrong-{attempt}")
    keys = [key for key in _cache_keys(cache) if "login_failed" in key]
    assert keys, "no rate-limit entry in the shared cache"
    assert log_in(Client(), EMAIL, PASSWORD).status_code == 200  # locked, from any browser
    for key in keys:
        cache.delete(key)
    assert log_in(Client(), EMAIL, PASSWORD).status_code == 302  # counts gone: no lock-out


def _cache_keys(cache) -> list[str]:
    from django.core.cache.backends.db import DatabaseCache
    from django.db import connection

    if isinstance(cache, DatabaseCache):
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT cache_key FROM {connection.ops.quote_name(cache._table)}")
            return [cache_key.split(":", 2)[-1] for (cache_key,) in cursor.fetchall()]
    client = cache._cache.get_client(None, write=False)
    return [key.decode().split(":", 2)[-1] for key in client.scan_iter(match=cache.make_key("*"))]


@pytest.mark.django_db(transaction=True)  # the job runs when its row commits
def test_deleting_the_account_deletes_its_work_and_logs_out(client, portrait_jpeg):
    user = accounts_help.verified_user(EMAIL, PASSWORD)
    log_in(client, EMAIL, PASSWORD)
    upload(client, portrait_jpeg)
    photo = Photo.objects.get(owner_user=user)
    client.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"})
    assert Job.objects.get(owner_user=user).results.count() == 1
    page = client.get("/privacy/").content.decode()
    assert "Delete my account" in page and EMAIL in page

    response = client.post("/privacy/delete-account", {"password": "not-my-password"}, follow=True)
    assert "That is not your password" in response.content.decode()
    assert User.objects.filter(pk=user.pk).exists() and Job.objects.count() == 1

    response = client.post("/privacy/delete-account", {"password": PASSWORD}, follow=True)
    assert f"Your account {EMAIL} was deleted, with 1 photo(s), 1 job(s) and 1 result(s)" in response.content.decode()
    assert not User.objects.filter(pk=user.pk).exists()
    assert not Job.objects.exists() and not Photo.objects.exists()
    assert signed_in_as(client) == ""
    assert log_in(Client(), EMAIL, PASSWORD).status_code == 200  # no such account any more


def test_anonymous_visitors_see_no_account_deletion(client):
    page = client.get("/privacy/").content.decode()
    assert "You have no account here" in page and "Delete my account" not in page
    response = client.post("/privacy/delete-account", {"password": "x"}, follow=True)
    assert "Log in first to delete your account." in response.content.decode()


def test_pages_use_the_site_layout(client):
    for url in ("/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"):
        page = client.get(url).content.decode()
        assert 'class="topbar"' in page and 'data-testid="auth-panel"' in page, url
        assert "— Portrait Studio</title>" in page, url


def test_a_flood_of_log_ins_from_one_address_gets_a_page_saying_to_wait(client):
    """Past 30 log-in posts a minute from one address: HTTP 429 with the site's page, not a 500."""
    statuses = [log_in(client, f"who{n}@example.com", "whatever-it-is").status_code for n in range(31)]
    assert statuses[:30] == [200] * 30 and statuses[30] == 429
    page = log_in(client, EMAIL, PASSWORD)
    assert page.status_code == 429 and "Wait a minute and try again." in page.content.decode()
    assert 'class="topbar"' in page.content.decode()
