"""'E-mail me when it's done': the box on the form, one e-mail per batch, exactly once, through real SMTP."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test import Client

from studio import done_email
from studio.jobs.create import job_create, job_create_batch
from studio.jobs.run import job_mark_failed, job_run
from studio.models import Job, Photo
from studio.operations import get_operation
from studio.ownership import Owner
from tests import accounts_help
from tests.conftest import upload
from tests.smtp import body_of

pytestmark = pytest.mark.django_db(transaction=True)

EMAIL, PASSWORD = "nia@example.com", "a-long-Passphrase-77"


@pytest.fixture
def member(portrait_jpeg):
    """A signed-in user with a verified address and an uploaded photo."""
    user = accounts_help.verified_user(EMAIL, PASSWORD)
    client = Client()
    client.force_login(user, backend="allauth.account.auth_backends.AuthenticationBackend")
    upload(client, portrait_jpeg)
    return client, user, Photo.objects.get(owner_user=user)


def test_a_batch_sends_one_email_with_the_count_and_the_compare_link(member, smtp_server):
    client, user, photo = member
    response = client.post(
        "/jobs/",
        {"photo": str(photo.pk), "operation": "studio_retouch", "compare_with": "background_blur", "notify": "1"},
    )
    assert response.status_code == 302
    jobs = list(Job.objects.filter(owner_user=user))
    assert len(jobs) == 2 and all(job.status == Job.Status.SUCCEEDED and job.notify_email for job in jobs)
    batch = jobs[0].batch
    assert batch and response["Location"] == f"/compare/{batch}/"
    [message] = smtp_server.wait_for(EMAIL)
    body = body_of(message)
    assert message["Subject"] == "Your batch of 2 jobs is done: 2 results"
    assert f"http://127.0.0.1:8000/compare/{batch}/" in body  # STUDIO_PUBLIC_URL + the comparison
    assert "Failed" not in body
    assert not any(part.get_content_maintype() == "image" for part in message.walk())  # never the photo
    assert Job.objects.filter(notified_at__isnull=False).count() == 1  # the batch's first job holds the claim
    # Nothing more is sent later, whoever checks again.
    assert not any(done_email.notify_if_finished(job.pk) for job in jobs)
    assert len(smtp_server.to(EMAIL)) == 1


def test_a_single_slow_job_and_a_named_failure(member, smtp_server):
    """A failure is named with its reason; a lone job links to its own page."""
    client, user, photo = member
    owner = Owner(user_id=user.pk)
    ops = [(get_operation("studio_retouch"), {}), (get_operation("headshot_crop"), {})]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("studio.jobs.create.enqueue_job", lambda job_id, **kw: None)  # held back: ended by hand below
        jobs = job_create_batch(owner=owner, photo=photo, runs=ops, notify_email=True)
    job_mark_failed(jobs[1].pk, "The face is too close to the edge. Try a photo with more space around it.")
    assert smtp_server.to(EMAIL) == []  # one job of the batch still queued: no e-mail yet
    job_run(jobs[0].pk)
    [message] = smtp_server.wait_for(EMAIL)
    body = body_of(message)
    assert message["Subject"] == "Your batch of 2 jobs is done: 1 result, 1 failed"
    assert "- Headshot crop: The face is too close to the edge." in body

    # A lone job: its own page.
    job = job_create(owner=owner, photo=photo, operation=get_operation("studio_retouch"), params={},
                              notify_email=True)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    second = smtp_server.wait_for(EMAIL, 2)[1]
    assert second["Subject"] == "Your Studio retouch job is done: 1 result"
    assert f"http://127.0.0.1:8000/jobs/{job.pk}/" in body_of(second)


def test_racing_checks_send_exactly_once_on_any_database(member, smtp_server):
    """Six threads check the same finished batch at once: one sends."""
    client, user, photo = member
    jobs = job_create_batch(
        owner=Owner(user_id=user.pk), photo=photo,
        runs=[(get_operation("studio_retouch"), {}), (get_operation("background_blur"), {})],
    )
    Job.objects.filter(pk__in=[j.pk for j in jobs]).update(notify_email=True)
    sent, start = [], threading.Barrier(6)

    def check(job_id):
        start.wait()
        try:
            sent.append(done_email.notify_if_finished(job_id))
        finally:
            connection.close()

    threads = [threading.Thread(target=check, args=(jobs[i % 2].pk,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sent) == [False] * 5 + [True]
    assert len(smtp_server.wait_for(EMAIL)) == 1


def test_the_box_needs_a_verified_address(portrait_jpeg, smtp_server):
    # Anonymous: shown disabled with the reason; a forged notify=1 is ignored.
    visitor = Client()
    upload(visitor, portrait_jpeg)
    page = visitor.get("/").content.decode()
    assert 'name="notify"' in page and "Log in to be e-mailed when it&#x27;s done." in page
    photo = Photo.objects.get()
    visitor.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch", "notify": "1"})
    assert not Job.objects.get().notify_email

    # Signed in, address not confirmed: disabled, saying what to do.
    from django.contrib.auth.models import User

    unverified = Client()
    unverified.force_login(User.objects.create_user("pending", email="pending@example.com", password=PASSWORD))
    page = unverified.get("/").content.decode()
    assert "Confirm your e-mail address to use this" in page
    assert smtp_server.to("pending@example.com") == []


def test_the_box_is_ticked_by_default_for_slow_operations_only(member, settings):
    settings.HEADSHOT_API_KEY = "hs_live_123"  # offered only when configured (unconfigured ones are hidden)
    client, user, photo = member
    local = client.get(f"/?photo={photo.pk}&operation=studio_retouch").content.decode()
    slow = client.get(f"/?photo={photo.pk}&operation=ai_headshot").content.decode()

    def box(page):
        return page.split("data-notify-box", 1)[1].split(">", 1)[0]

    assert "checked" not in box(local) and "data-slow" not in local.split("data-notify-box", 1)[0][-200:]
    assert "checked" in box(slow) and "disabled" not in box(slow)
    assert f"One e-mail to {EMAIL}" in slow


@pytest.mark.backend_free
def test_email_url_settings():
    from portraitstudio import env

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMAIL_URL", "smtp+tls://mailer:p%40ss@mail.example.com")
        assert env.env_email_url("EMAIL_URL") == {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "mail.example.com",
            "EMAIL_PORT": 587,
            "EMAIL_HOST_USER": "mailer",
            "EMAIL_HOST_PASSWORD": "p@ss",
            "EMAIL_USE_TLS": True,
            "EMAIL_USE_SSL": False,
        }
        patch.setenv("EMAIL_URL", "smtps://127.0.0.1:2465")
        assert env.env_email_url("EMAIL_URL")["EMAIL_USE_SSL"] is True
        patch.setenv("EMAIL_URL", "console:")
        assert env.env_email_url("EMAIL_URL") == {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
        patch.setenv("EMAIL_URL", "ftp://x")
        from django.core.exceptions import ImproperlyConfigured

        with pytest.raises(ImproperlyConfigured, match="EMAIL_URL must start with"):
            env.env_email_url("EMAIL_URL")
