"""The job card's poll in a real browser: unchanged answers (204) leave the card alone,
its seconds keep counting, a change is swapped in, and a finished job stops the polling."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from studio.models import Job, Photo
from tests.test_browser import upload_photo

pytestmark = pytest.mark.browser


def seconds_shown(page) -> float:
    text = page.locator(".job-card .elapsed").text_content()
    match = re.fullmatch(r"(\d+(?:\.\d)?) s", text.strip())
    assert match, text
    return float(match.group(1))


def test_unchanged_polls_keep_the_card_and_its_clock_and_a_change_is_swapped_in(studio, portrait_file):
    page, _ = studio.page()
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if "/status?v=" in r.url else None)
    upload_photo(page, portrait_file)
    photo = Photo.objects.get()
    job = Job.objects.create(
        owner_visitor=photo.owner_visitor, photo=photo, operation="studio_retouch", provider="local",
        params={"strength": 0.5}, status=Job.Status.RUNNING, stage="Smoothing skin", progress=0.3,
        started_at=timezone.now(), heartbeat_at=timezone.now(),
    )
    page.goto(f"/jobs/{job.pk}/")
    card = page.locator(f"#job-{job.pk}")
    expect(card).to_contain_text("Smoothing skin")
    card.evaluate("el => { el.dataset.seen = 'first render'; }")  # gone if htmx swaps the card
    first = seconds_shown(page)

    page.wait_for_timeout(3500)
    assert len(answers) >= 2 and set(answers) == {204}, answers
    assert card.get_attribute("data-seen") == "first render"
    assert seconds_shown(page) >= first + 2  # counted on in the page between polls

    Job.objects.filter(pk=job.pk).update(stage="Sharpening", progress=0.8)
    expect(card).to_contain_text("Sharpening")
    assert card.get_attribute("data-seen") is None and 200 in answers
    expect(card.locator("progress")).to_have_attribute("value", "80")

    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, error_message="Try a brighter photo.")
    expect(card.get_by_test_id("job-error")).to_have_text("Try a brighter photo.")
    assert answers[-1] == 286
    polls = len(answers)
    page.wait_for_timeout(2500)
    assert len(answers) == polls  # htmx stopped polling
