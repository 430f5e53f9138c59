"""Seeds (random, shown, lockable, re-runs), comparison batches and the NSFW gate.

Jobs run for real, inline (django-q2 sync mode), against the vendor emulators
in sandbox mode (STUDIO_SANDBOX=1): the same code path as a live vendor.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client

from studio.models import Job, Photo, Result, StyleTemplate
from studio.vendors import sandbox
from tests.conftest import upload

pytestmark = pytest.mark.django_db(transaction=True)
HX = {"HX-Request": "true"}


@pytest.fixture
def sandboxed(settings):
    settings.STUDIO_SANDBOX = True
    sandbox.reset()
    yield
    sandbox.reset()


@pytest.fixture
def photo(owner_client, portrait_jpeg) -> Photo:
    assert upload(owner_client, portrait_jpeg).status_code == 200
    return Photo.objects.latest("created_at")


def headshot_form(photo, **values) -> dict:
    form = {
        "photo": str(photo.pk),
        "operation": "ai_headshot",
        "prompt": "corporate headshot, grey backdrop",
        "seed": "",
        "num_images": "1",
        "identity_scale": "0.8",
        "size": "custom",
        "width": "512",
        "height": "512",
    }
    form.update(values)
    return form


def submit(client, form) -> tuple[list[Job], str]:
    before = set(Job.objects.values_list("pk", flat=True))
    response = client.post("/jobs/", form, headers=HX)
    assert response.status_code == 200
    jobs = list(Job.objects.exclude(pk__in=before).order_by("created_at"))
    return jobs, response.content.decode()


def seed_input_value(html: str) -> str:
    match = re.search(r'<input id="param-seed"[^>]*value="([^"]*)"', html, re.S)
    assert match, "no seed field in the form"
    return match.group(1)


def lock_checked(html: str) -> bool:
    match = re.search(r'<input type="checkbox" name="seed_lock"[^>]*>', html)
    assert match, "no seed lock in the form"
    return "checked" in match.group(0)


# --- Seed: random by default, shown on every result, lockable ----------------------


def test_random_seed_is_reported_on_every_result_and_shown(owner_client, photo, sandboxed):
    (job,), html = submit(owner_client, headshot_form(photo, num_images="3"))
    job.refresh_from_db()
    assert job.status == "succeeded", job.error_message
    assert job.params["seed"] is None  # random: the adapter picked it
    results = list(job.results.all())
    assert len(results) == 3
    seeds = {r.meta["seed"] for r in results}
    assert len(seeds) == 1 and isinstance(seeds.pop(), int)
    seed = results[0].meta["seed"]
    # The job card (studio, gallery) and the result page show it.
    card = owner_client.get(f"/jobs/{job.pk}/status").content.decode()
    assert card.count(f"Seed {seed}") == 3
    page = owner_client.get(f"/results/{results[0].pk}/").content.decode()
    assert f'data-testid="result-seed">{seed}<' in page
    # Not locked: the form comes back with an empty seed (a new random one next time).
    assert seed_input_value(html) == "" and not lock_checked(html)
    (second,), _ = submit(owner_client, headshot_form(photo))
    assert second.results.get().meta["seed"] != seed


def test_seed_lock_keeps_the_seed_for_the_next_runs(owner_client, photo, sandboxed):
    (first,), html = submit(owner_client, headshot_form(photo, seed_lock="1"))
    first.refresh_from_db()
    locked = first.params["seed"]
    assert isinstance(locked, int) and locked > 0  # chosen before the run, so it can be shown
    assert first.results.get().meta["seed"] == locked
    assert seed_input_value(html) == str(locked) and lock_checked(html)
    # A fresh studio page still has it locked (kept in the session, per operation).
    page = owner_client.get(f"/?photo={photo.pk}&operation=ai_headshot").content.decode()
    assert seed_input_value(page) == str(locked) and lock_checked(page)
    other_op = owner_client.get(f"/?photo={photo.pk}&operation=ws_portrait").content.decode()
    assert seed_input_value(other_op) == ""
    (second,), _ = submit(owner_client, headshot_form(photo, seed=str(locked), seed_lock="1", prompt="other look"))
    assert second.params["seed"] == locked and second.results.get().meta["seed"] == locked
    # Unlocking: the seed goes back to random.
    (third,), html = submit(owner_client, headshot_form(photo, seed=str(locked)))
    assert third.params["seed"] == locked  # this run still uses the typed seed
    assert seed_input_value(html) == "" and not lock_checked(html)
    page = owner_client.get(f"/?photo={photo.pk}&operation=ai_headshot").content.decode()
    assert seed_input_value(page) == "" and not lock_checked(page)


def test_same_seed_new_prompt_and_new_seed_same_prompt(owner_client, photo, sandboxed):
    (job,), _ = submit(owner_client, headshot_form(photo, num_images="2", identity_scale="0.6"))
    result = job.results.order_by("index").first()
    seed = result.meta["seed"]

    response = owner_client.post(
        f"/results/{result.pk}/reseed", {"mode": "same_seed", "prompt": "studio grey, rim light"}
    )
    assert response.status_code == 302
    same = Job.objects.get(rerun_of=job, params__prompt="studio grey, rim light")
    assert response["Location"] == f"/jobs/{same.pk}/"
    assert same.params["seed"] == seed
    assert same.params["num_images"] == 2 and same.params["identity_scale"] == 0.6
    assert same.status == "succeeded" and {r.meta["seed"] for r in same.results.all()} == {seed}

    response = owner_client.post(f"/results/{result.pk}/reseed", {"mode": "new_seed"})
    assert response.status_code == 302
    new = Job.objects.filter(rerun_of=job).exclude(pk=same.pk).get()
    assert new.params["prompt"] == job.params["prompt"]
    assert isinstance(new.params["seed"], int) and new.params["seed"] != seed
    assert new.results.first().meta["seed"] == new.params["seed"]

    # Another visitor cannot re-run someone else's result.
    assert Client().post(f"/results/{result.pk}/reseed", {"mode": "new_seed"}).status_code == 404
    assert owner_client.post(f"/results/{result.pk}/reseed", {"mode": "sideways"}).status_code == 404


def test_result_page_offers_seed_reruns_only_for_seeded_operations(owner_client, photo, sandboxed):
    (job,), _ = submit(owner_client, headshot_form(photo))
    page = owner_client.get(f"/results/{job.results.get().pk}/").content.decode()
    assert 'data-testid="same-seed-form"' in page and 'data-testid="new-seed-form"' in page
    (retouch,), _ = submit(owner_client, {"photo": str(photo.pk), "operation": "studio_retouch", "strength": "0.5"})
    page = owner_client.get(f"/results/{retouch.results.get().pk}/").content.decode()
    assert "same-seed-form" not in page and "new-seed-form" not in page


# --- Comparison batches ------------------------------------------------------------


def make_template(slug, name, seed, order=0, **extra) -> StyleTemplate:
    return StyleTemplate.objects.create(
        slug=slug,
        name=name,
        operation="ai_headshot",
        provider="headshot",
        order=order,
        prompt=f"{name.lower()} headshot",
        seed=seed,
        **extra,
    )


def test_two_templates_run_as_one_batch_and_compare_side_by_side(owner_client, other_client, photo, sandboxed):
    corporate = make_template("corp", "Corporate", 111, order=1)
    linkedin = make_template("li", "LinkedIn", 222, order=2)
    form = headshot_form(photo, num_images="2")
    form["template"] = ["corp", "li"]
    jobs, html = submit(owner_client, form)
    assert len(jobs) == 2
    assert {job.batch for job in jobs} == {jobs[0].batch} and jobs[0].batch is not None
    by_template = {job.style_template_id: job for job in jobs}
    assert by_template[corporate.pk].params["prompt"] == "corporate headshot"
    assert by_template[corporate.pk].params["seed"] == 111
    assert by_template[linkedin.pk].params["seed"] == 222
    assert all(job.params["num_images"] == 2 for job in jobs)  # the user's choice where the template is silent
    assert f"/compare/{jobs[0].batch}/" in html  # the studio links to the comparison
    for job in jobs:
        job.refresh_from_db()
        assert job.status == "succeeded" and job.sandbox
        assert job.results.count() == 2

    page = owner_client.get(f"/compare/{jobs[0].batch}/").content.decode()
    assert page.count('data-testid="compare-column"') == 2
    assert 'data-testid="compare-template">Corporate<' in page and 'data-testid="compare-template">LinkedIn<' in page
    columns = page.split('data-testid="compare-column"')[1:]
    assert len(columns) == 2 and all("badge-sandbox" in column for column in columns)
    assert page.count("Seed 111") == 2 and page.count("Seed 222") == 2
    for result in Result.objects.filter(job__in=jobs):
        assert f"/results/{result.pk}/image" in page
    # Finished columns tell htmx to stop polling.
    column = owner_client.get(f"/compare/{jobs[0].batch}/?job={jobs[1].pk}", headers=HX)
    assert column.status_code == 286 and 'data-status="succeeded"' in column.content.decode()

    # Only the owner sees it.
    assert other_client.get(f"/compare/{jobs[0].batch}/").status_code == 404
    assert other_client.get(f"/compare/{jobs[0].batch}/?job={jobs[0].pk}", headers=HX).status_code == 404
    assert owner_client.get("/compare/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_compare_with_another_provider_sends_the_same_prompt_and_seed(owner_client, photo, sandboxed):
    form = headshot_form(photo, prompt="soft window light", seed="4242", compare_with=["ws_portrait"])
    jobs, _ = submit(owner_client, form)
    assert [job.operation for job in jobs] == ["ai_headshot", "ws_portrait"]
    assert jobs[0].batch == jobs[1].batch is not None
    portrait = Job.objects.get(pk=jobs[1].pk)
    assert portrait.params == {"prompt": "soft window light", "seed": 4242}
    assert portrait.status == "succeeded", portrait.error_message
    page = owner_client.get(f"/compare/{jobs[0].batch}/").content.decode()
    assert "AI headshot" in page and "Portrait enhance" in page
    assert "Headshot API" in page and "WaveSpeed" in page


def test_running_column_keeps_polling(owner_client, photo):
    batch = "7f0c5c7e-5d3b-4a4e-9a43-0d0f3d6c2b11"
    job = Job.objects.create(
        owner_visitor=photo.owner_visitor,
        operation="ai_headshot",
        provider="headshot",
        params={},
        batch=batch,
        stage="Waiting for a worker",
    )
    response = owner_client.get(f"/compare/{batch}/?job={job.pk}", headers=HX)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'hx-trigger="every 1s"' in body and "Waiting for a worker" in body


# --- NSFW: hidden behind "show anyway" everywhere -----------------------------------


def test_flagged_result_is_hidden_until_shown_everywhere(owner_client, photo, sandboxed):
    sandbox.emulator_for("wavespeed").faults["nsfw"] = True
    form = {
        "photo": str(photo.pk),
        "operation": "ws_portrait",
        "prompt": "moody light",
        "seed": "",
        "compare_with": ["ai_headshot"],
    }
    jobs, _ = submit(owner_client, form)
    flagged = Job.objects.get(pk=jobs[0].pk)
    assert flagged.status == "succeeded", flagged.error_message
    result = flagged.results.get()
    assert result.meta.get("nsfw") is True
    clean = Job.objects.get(pk=jobs[1].pk).results.first()
    assert not clean.meta.get("nsfw")

    gate = re.compile(r'<details class="nsfw-gate" data-testid="nsfw-gate">(.*?)</details>', re.S)

    def gated_urls(html):
        return [m for block in gate.findall(html) for m in re.findall(r'src="([^"]+)"', block)]

    card = owner_client.get(f"/jobs/{flagged.pk}/status").content.decode()
    assert "Show anyway" in card and any(f"/results/{result.pk}/image" in u for u in gated_urls(card))
    gallery = owner_client.get("/gallery/").content.decode()
    assert any(f"/results/{result.pk}/image" in u for u in gated_urls(gallery))
    assert not any(f"/results/{clean.pk}/image" in u for u in gated_urls(gallery))  # only the flagged one
    page = owner_client.get(f"/results/{result.pk}/").content.decode()
    assert any(f"/results/{result.pk}/image" in u for u in gated_urls(page))
    compare = owner_client.get(f"/compare/{flagged.batch}/").content.decode()
    assert [u for u in gated_urls(compare)] == [f"/results/{result.pk}/image"]

    # Share links: the viewer chooses too, and chat previews never unfurl the image.
    owner_client.post(f"/results/{result.pk}/share", {"enabled": "1"})
    token = result.share_links.get().token
    shared = Client().get(f"/s/{token}").content.decode()
    assert "og:image" not in shared and "Show anyway" in shared
    assert any(u.endswith(f"/s/{token}/image") for u in gated_urls(shared))
    owner_client.post(f"/results/{clean.pk}/share", {"enabled": "1"})
    clean_shared = Client().get(f"/s/{clean.share_links.get().token}").content.decode()
    assert "og:image" in clean_shared and "nsfw-gate" not in clean_shared
