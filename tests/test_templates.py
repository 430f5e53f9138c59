"""Style templates: the admin library, save-as-template, preview covers, cards in the studio."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from PIL import Image

from studio.jobs.create import job_create
from studio.models import Job, Photo, Result, StyleTemplate
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import sandbox
from tests.conftest import upload
from tests.media import fetch

HX = {"HX-Request": "true"}
STARTERS = ["Corporate", "LinkedIn", "Studio grey", "Outdoor natural light", "Creative colour"]


@pytest.fixture
def sandboxed(settings):
    settings.STUDIO_SANDBOX = True
    sandbox.reset()
    yield
    sandbox.reset()


@pytest.fixture
def staff_user(db):
    return User.objects.create_superuser("staff", "staff@example.com", "pw-staff-123456")


@pytest.fixture
def staff_client(staff_user):
    client = Client()
    client.force_login(staff_user)
    return client


def headshot_result(owner: Owner, portrait_jpeg, **params) -> Result:
    photo = photo_create(owner=owner, data=portrait_jpeg, filename="me.jpg")
    op = get_operation("ai_headshot")
    cleaned, errors = op.clean_params(
        {
            "prompt": "warm studio portrait, brown backdrop",
            "seed": 9876,
            "num_images": 1,
            "size": "custom",
            "width": 512,
            "height": 512,
            **params,
        }
    )
    assert not errors
    job = job_create(owner=owner, photo=photo, operation=op, params=cleaned)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error_message
    return job.results.first()


def template_form(**values) -> dict:
    form = {
        "name": "Warm studio",
        "slug": "warm-studio",
        "description": "Brown backdrop",
        "operation": "ai_headshot",
        "prompt": "warm studio portrait",
        "seed": "1234",
        "params": "{}",
        "active": "on",
        "order": "5",
    }
    form.update(values)
    return form


# --- The starter library (data migration) -------------------------------------------


@pytest.mark.django_db
def test_starter_templates_are_seeded_with_fixed_seeds():
    starters = list(StyleTemplate.objects.filter(source_result__isnull=True).order_by("order"))
    assert [t.name for t in starters] == STARTERS
    for template in starters:
        assert template.operation == "ai_headshot" and template.provider == "headshot" and template.active
        assert template.seed and template.prompt
        template.full_clean()  # every starter passes the catalogue's validation


# --- Admin: CRUD with per-field validation -----------------------------------------------


@pytest.mark.django_db
def test_model_clean_checks_params_against_the_operation():
    template = StyleTemplate(
        name="x",
        slug="x",
        operation="ai_headshot",
        prompt="p",
        seed=5,
        params={"identity_scale": 1.5, "num_images": 3, "colour": "red"},
    )
    with pytest.raises(ValidationError) as info:
        template.full_clean()
    errors = info.value.message_dict
    assert any("Identity strength must be between 0 and 1" in e for e in errors["params"])
    assert any("'colour'" in e for e in errors["params"])
    template.params = {"num_images": 4}
    template.seed = -3
    with pytest.raises(ValidationError) as info:
        template.full_clean()
    assert list(info.value.message_dict) == ["seed"]
    template.seed = 77
    template.provider = ""
    template.full_clean()
    assert template.provider == "headshot"  # always the operation's
    template.operation = "studio_retouch"  # takes no prompt
    with pytest.raises(ValidationError) as info:
        template.full_clean()
    assert "prompt" in info.value.message_dict and "seed" in info.value.message_dict


@pytest.mark.django_db
def test_admin_add_shows_errors_per_field_then_saves(staff_client):
    page = staff_client.get("/admin/studio/styletemplate/add/").content.decode()
    # Only operations that take a prompt or a seed are offered.
    assert 'value="ai_headshot"' in page and 'value="ws_character"' in page
    assert 'value="studio_retouch"' not in page

    response = staff_client.post(
        "/admin/studio/styletemplate/add/",
        template_form(params=json.dumps({"num_images": 12}), seed="99999999999"),
    )
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert "Number of images must be between 1 and 8." in form.errors["params"]
    assert "seed" in form.errors
    assert not StyleTemplate.objects.filter(slug="warm-studio").exists()

    response = staff_client.post("/admin/studio/styletemplate/add/", template_form(params='{"num_images": 4}'))
    assert response.status_code == 302, response.context["adminform"].form.errors
    template = StyleTemplate.objects.get(slug="warm-studio")
    assert (template.provider, template.seed, template.params) == ("headshot", 1234, {"num_images": 4})
    assert template.run_params() == {"num_images": 4, "prompt": "warm studio portrait", "seed": 1234}

    # Edit: an unknown operation is refused.
    url = f"/admin/studio/styletemplate/{template.pk}/change/"
    response = staff_client.post(url, template_form(operation="no_such_op"))
    assert "operation" in response.context["adminform"].form.errors
    detail = staff_client.get(url).content.decode()
    assert "No cover yet" in detail and "<code>identity_scale</code>" in detail


@pytest.mark.django_db
def test_changelist_edits_active_and_order_in_place(staff_client):
    template = StyleTemplate.objects.get(slug="corporate")
    starters = StyleTemplate.objects.order_by("order")
    form = {
        "form-TOTAL_FORMS": str(starters.count()),
        "form-INITIAL_FORMS": str(starters.count()),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for i, t in enumerate(starters):
        form[f"form-{i}-id"] = str(t.pk)
        form[f"form-{i}-order"] = "999" if t.pk == template.pk else str(t.order)
        if t.pk != template.pk:
            form[f"form-{i}-active"] = "on"
    response = staff_client.post("/admin/studio/styletemplate/", form)
    assert response.status_code == 302
    template.refresh_from_db()
    assert template.order == 999 and not template.active


# --- Save as template (result page, staff only; admin action) --------------------------


@pytest.mark.django_db(transaction=True)
def test_staff_saves_a_result_as_a_template(staff_user, staff_client, portrait_jpeg, sandboxed):
    result = headshot_result(Owner(user_id=staff_user.pk), portrait_jpeg, identity_scale=0.65)
    page = staff_client.get(f"/results/{result.pk}/").content.decode()
    assert 'data-testid="save-template"' in page

    response = staff_client.post(f"/results/{result.pk}/save-template", {"name": "Warm brown"})
    template = StyleTemplate.objects.get(name="Warm brown")
    assert response.status_code == 302
    assert response["Location"] == f"/admin/studio/styletemplate/{template.pk}/change/"
    assert template.prompt == "warm studio portrait, brown backdrop"
    assert template.seed == result.meta["seed"] == 9876
    assert template.params["identity_scale"] == 0.65 and "prompt" not in template.params
    assert template.source_result == result and not template.active and not template.cover
    assert template.slug == "warm-brown"
    staff_client.post(f"/results/{result.pk}/save-template", {"name": "Warm brown"})
    assert StyleTemplate.objects.filter(slug="warm-brown-2").exists()  # slugs stay unique

    # A result of an operation without prompt or seed has no look to save.
    photo = result.job.photo
    retouch = job_create(
        owner=Owner(user_id=staff_user.pk),
        photo=photo,
        operation=get_operation("studio_retouch"),
        params={"strength": 0.5},
    ).results.get()
    assert "save-template" not in staff_client.get(f"/results/{retouch.pk}/").content.decode()
    response = staff_client.post(f"/results/{retouch.pk}/save-template", {"name": "Nope"}, follow=True)
    assert "takes no prompt or seed" in response.content.decode()
    assert not StyleTemplate.objects.filter(name="Nope").exists()


@pytest.mark.django_db(transaction=True)
def test_save_as_template_is_for_staff_only(owner_client, portrait_jpeg, sandboxed):
    upload(owner_client, portrait_jpeg)
    photo = Photo.objects.latest("created_at")
    owner_client.post(
        "/jobs/",
        {
            "photo": str(photo.pk),
            "operation": "ai_headshot",
            "prompt": "grey backdrop",
            "size": "custom",
            "width": "512",
            "height": "512",
        },
        headers=HX,
    )
    result = Result.objects.get(job__photo=photo)
    page = owner_client.get(f"/results/{result.pk}/").content.decode()
    assert "save-template" not in page
    assert owner_client.post(f"/results/{result.pk}/save-template", {"name": "Mine"}).status_code == 404
    # A signed-in non-staff user: 404 as well; staff without the permission: refused.
    user = User.objects.create_user("plain", password="pw-plain-123456")
    plain = Client()
    plain.force_login(user)
    assert plain.post(f"/results/{result.pk}/save-template", {"name": "Mine"}).status_code == 404
    helper = User.objects.create_user("helper", password="pw-helper-123456", is_staff=True)
    helper_client = Client()
    helper_client.force_login(helper)
    assert helper_client.post(f"/results/{result.pk}/save-template", {"name": "x"}).status_code == 404  # not theirs
    assert not StyleTemplate.objects.filter(source_result=result).exists()


@pytest.mark.django_db(transaction=True)
def test_admin_action_saves_any_result_as_template(staff_client, portrait_jpeg, sandboxed):
    result = headshot_result(Owner(visitor_id="someone"), portrait_jpeg)
    response = staff_client.post(
        "/admin/studio/result/", {"action": "save_results_as_templates", "_selected_action": [str(result.pk)]}
    )
    assert response.status_code == 302
    template = StyleTemplate.objects.get(source_result=result)
    assert template.seed == 9876 and template.prompt.startswith("warm studio") and not template.active


# --- Preview action: a real job on the sample portrait makes the cover -------------------


@pytest.mark.django_db(transaction=True)
def test_preview_action_runs_the_template_and_sets_the_cover(staff_user, staff_client, sandboxed, client):
    template = StyleTemplate.objects.create(
        name="Grey",
        slug="grey",
        operation="ai_headshot",
        provider="headshot",
        prompt="grey studio backdrop",
        seed=31337,
        params={"size": "custom", "width": 512, "height": 640},
    )
    response = staff_client.post(
        "/admin/studio/styletemplate/", {"action": "preview_templates", "_selected_action": [str(template.pk)]}
    )
    assert response.status_code == 302
    template.refresh_from_db()
    job = template.preview_job
    assert job is not None and job.owner_user_id == staff_user.pk and job.style_template_id == template.pk
    assert job.status == "succeeded", job.error_message
    assert job.params["seed"] == 31337 and job.params["prompt"] == "grey studio backdrop"
    assert job.photo.original_name == "sample-portrait.jpg" and len(job.photo.faces) == 1
    assert template.cover
    cover = fetch(client.get(f"/templates/{template.slug}/cover"))
    assert cover.status == 200 and cover.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(cover.body)) as img:
        assert max(img.size) == 640 and img.size == (512, 640)
    # The list shows the cover and the finished preview run.
    listing = staff_client.get("/admin/studio/styletemplate/").content.decode()
    assert f"/templates/{template.slug}/cover?v=" in listing and "Done" in listing
    # Inactive templates' covers are for staff only.
    StyleTemplate.objects.filter(pk=template.pk).update(active=False)
    assert client.get(f"/templates/{template.slug}/cover").status_code == 404
    assert fetch(staff_client.get(f"/templates/{template.slug}/cover")).status == 200


@pytest.mark.django_db(transaction=True)
def test_failed_preview_leaves_the_cover_alone(staff_client, sandboxed):
    template = StyleTemplate.objects.create(
        name="Grey", slug="grey", operation="ai_headshot", provider="headshot", prompt="grey", seed=5
    )
    sandbox.emulator_for("headshot").faults["server_error"] = True
    response = staff_client.post(
        "/admin/studio/styletemplate/",
        {"action": "preview_templates", "_selected_action": [str(template.pk)]},
        follow=True,
    )
    template.refresh_from_db()
    assert template.preview_job.status == "failed" and not template.cover
    assert "Failed" in response.content.decode()


# --- Cards in the studio ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cards_list_only_active_templates_in_order(owner_client, portrait_jpeg, sandboxed):
    StyleTemplate.objects.create(name="Zeta", slug="zeta", operation="ai_headshot", prompt="z", seed=1, order=1)
    StyleTemplate.objects.create(name="Alpha", slug="alpha", operation="ai_headshot", prompt="a", seed=2, order=2)
    StyleTemplate.objects.create(name="Hidden", slug="hidden", operation="ai_headshot", prompt="h", active=False)
    StyleTemplate.objects.create(name="Char", slug="char", operation="ws_character", prompt="c", order=0)
    upload(owner_client, portrait_jpeg)
    page = owner_client.get("/?operation=ai_headshot").content.decode()
    names = re.findall(r'<span class="template-name">([^<]+)</span>', page)
    assert names == ["Zeta", "Alpha"]
    assert "the same template with the same seed gives the same look for any person" in page
    assert 'data-template-seed="1"' in page and "template-placeholder" in page  # no cover yet
    # Another operation shows its own cards only; operations without templates none.
    char = owner_client.get("/?operation=ws_character").content.decode()
    assert re.findall(r'<span class="template-name">([^<]+)</span>', char) == ["Char"]
    assert "template-cards" not in owner_client.get("/?operation=studio_retouch").content.decode()


@pytest.mark.django_db(transaction=True)
def test_picking_a_card_runs_with_its_prompt_and_fixed_seed(owner_client, portrait_jpeg, sandboxed):
    StyleTemplate.objects.create(
        name="Corp",
        slug="corp",
        operation="ai_headshot",
        prompt="navy blazer",
        seed=555,
        params={"identity_scale": 0.9},
    )
    StyleTemplate.objects.create(name="Off", slug="off", operation="ai_headshot", prompt="x", active=False)
    upload(owner_client, portrait_jpeg)
    photo = Photo.objects.latest("created_at")
    form = {
        "photo": str(photo.pk),
        "operation": "ai_headshot",
        "template": "corp",
        "prompt": "",
        "seed": "12",
        "num_images": "2",
        "size": "custom",
        "width": "512",
        "height": "512",
    }
    owner_client.post("/jobs/", form, headers=HX)
    job = Job.objects.get()
    assert job.style_template.slug == "corp" and job.batch is None
    assert job.params["prompt"] == "navy blazer" and job.params["seed"] == 555  # the template's seed wins
    assert job.params["identity_scale"] == 0.9 and job.params["num_images"] == 2
    assert [r.meta["seed"] for r in job.results.all()] == [555, 555]
    # An inactive template cannot be picked: the form's own values run instead.
    owner_client.post("/jobs/", {**form, "template": "off", "prompt": "my own look"}, headers=HX)
    own = Job.objects.exclude(pk=job.pk).get()
    assert own.style_template is None and own.params["prompt"] == "my own look" and own.params["seed"] == 12
