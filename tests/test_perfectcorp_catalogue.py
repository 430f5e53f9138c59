"""Perfect Corp's catalogue and studio UI: style sync, picker, generic inputs, sandbox runs.

The vendor is the Perfect Corp emulator (studio/vendors/emulators/perfectcorp.py),
served in-process in sandbox mode or over real HTTP on 127.0.0.1, and reached
through the real adapter; the database and the stored files are real.
"""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from PIL import Image

from studio import job_inputs, styles
from studio.imaging import ImageRejected
from studio.models import Job, Photo, Style, StyleGroup
from studio.operations import OPERATIONS
from tests import images
from tests.conftest import upload
from tests.media import fetch

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HX-Request": "true"}
BIG_ID = "9007199254740993"  # 2**53 + 1: a float (and a JS number) turns it into ...992

PC_KEYS = {
    "pc_hairstyle": "hair-style",
    "pc_wig": "wig",
    "pc_hair_extension": "hair-ext",
    "pc_bangs": "hair-bang",
    "pc_hair_volume": "hair-vol",
    "pc_aging": "aging",
    "pc_makeup_transfer": "mu-trans-rec",
    "pc_object_removal": "obj-removal",
    "pc_colorize": "colorize",
    "pc_background_removal": "sod",
    "pc_enhance": "enhance",
    "pc_image_generator": "text-to-image",
}


# --- Fixtures --------------------------------------------------------------------


def _thumb_bytes(colour=(200, 120, 80)) -> bytes:
    return images.to_bytes(Image.new("RGB", (64, 64), colour), "JPEG")


def make_style(
    feature,
    group_name,
    style_id,
    name,
    *,
    group_id=None,
    hidden=False,
    featured=False,
    available=True,
    position=0,
    group_position=0,
    thumb=True,
) -> Style:
    group, _ = StyleGroup.objects.get_or_create(
        provider="perfectcorp",
        feature=feature,
        group_id=group_id or str(abs(hash((feature, group_name))) % 10**17),
        defaults={"name": group_name, "position": group_position},
    )
    style = Style.objects.create(
        group=group,
        style_id=style_id,
        name=name,
        hidden=hidden,
        featured=featured,
        available=available,
        position=position,
    )
    if thumb:
        style.thumbnail.save(f"{style_id}.jpg", ContentFile(_thumb_bytes()), save=False)
        style.thumb_width = style.thumb_height = 64
        style.save()
    return style


@pytest.fixture
def photo(owner_client, portrait_jpeg):
    assert upload(owner_client, portrait_jpeg).status_code == 200
    return Photo.objects.get()


# --- The catalogue entries ---------------------------------------------------------


@pytest.mark.backend_free
def test_the_twelve_perfect_corp_operations_are_declared_as_data():
    for key in PC_KEYS:
        op = OPERATIONS[key]
        assert op.provider == "perfectcorp", key
    style_catalogues = {key: p.catalogue for key in PC_KEYS for p in OPERATIONS[key].params if p.kind == "style"}
    assert style_catalogues == {
        "pc_hairstyle": "hair-style",
        "pc_wig": "wig",
        "pc_hair_extension": "hair-ext",
        "pc_bangs": "hair-bang",
        "pc_hair_volume": "hair-vol",
        "pc_image_generator": "text-to-image",
    }
    # Hair features: several styles at once; the generator takes one.
    assert OPERATIONS["pc_hairstyle"].param("style_id").multiple
    assert not OPERATIONS["pc_image_generator"].param("style_id").multiple
    hair = OPERATIONS["pc_hairstyle"].limits
    assert (hair.max_long_side, hair.min_face_width, hair.min_faces, hair.max_faces) == (1024, 128, 1, 1)
    assert OPERATIONS["pc_makeup_transfer"].inputs.reference_label
    assert OPERATIONS["pc_object_removal"].inputs.mask
    generator = OPERATIONS["pc_image_generator"]
    assert not generator.inputs.selfie and generator.inputs.prompt_label
    assert dict(OPERATIONS["pc_enhance"].param("scale").choices).keys() == {"1", "2", "4"}
    assert OPERATIONS["pc_background_removal"].output_format == "PNG"
    # The stored photo is a JPEG every feature accepts: no source format is refused.
    for key in PC_KEYS:
        assert OPERATIONS[key].limits.problems(faces=[], source_format="HEIF") == [] or OPERATIONS[key].limits.min_faces


@pytest.mark.backend_free
def test_style_ids_are_kept_as_exact_strings():
    param = OPERATIONS["pc_hairstyle"].param("style_id")
    assert param.clean(BIG_ID) == BIG_ID
    assert param.clean(f" {BIG_ID} ") == BIG_ID
    assert param.clean("good_template_001") == "good_template_001"  # a v2 template id
    for bad in ("9.007199254740993e15", "-1", "1 OR 1=1", "١٢٣", "a" * 33, "../x"):
        with pytest.raises(ValueError):
            param.clean(bad)


@pytest.mark.backend_free
def test_face_width_is_judged_at_the_size_the_vendor_gets():
    from studio.imaging import FaceBox

    hair = OPERATIONS["pc_hairstyle"].limits
    face = [FaceBox(0, 0, 200, 200)]
    assert hair.problems(faces=face, source_format="JPEG", long_side=1024) == []
    # A 4096 px photo is reduced to 1024 px: the 200 px face becomes 50 px.
    (problem,) = hair.problems(faces=face, source_format="JPEG", long_side=4096)
    assert "50 px" in problem and "128" in problem


# --- The picker reads only the database -----------------------------------------------


@pytest.fixture
def pc_configured(settings):
    """Perfect Corp set up (keys present): its operations are offered in the picker."""
    settings.PERFECTCORP_CLIENT_ID, settings.PERFECTCORP_CLIENT_SECRET = "client-id", "public-key"


def test_picker_shows_db_styles_grouped_featured_first_and_hides_the_rest(owner_client, photo, pc_configured):
    make_style("hair-style", "Women", "30720000000001001", "Layered bob", group_id="20480000000000001", position=0)
    make_style("hair-style", "Women", BIG_ID, "Pixie", group_id="20480000000000001", position=1, featured=True)
    make_style("hair-style", "Women", "30720000000001005", "Secret", group_id="20480000000000001", hidden=True)
    make_style("hair-style", "Women", "30720000000001007", "Withdrawn", group_id="20480000000000001", available=False)
    make_style("hair-style", "Short", "30720000000002001", "Crop", group_id="20480000000000011", group_position=1)
    make_style("hair-style", "Hidden group", "30720000000003001", "Buzz", group_id="20480000000000021")
    StyleGroup.objects.filter(group_id="20480000000000021").update(hidden=True)
    make_style("wig", "Long wigs", "30720000000009001", "Other catalogue", group_id="20480000000000031")

    page = owner_client.get(f"/?photo={photo.pk}&operation=pc_hairstyle").content.decode()
    picker = page[page.index("data-style-picker") :]
    assert re.findall(r"<h4[^>]*>([^<]+)</h4>", picker) == ["Women", "Short"]
    values = re.findall(r'name="style_id"\s+value="(\d+)"', picker)
    assert values == [BIG_ID, "30720000000001001", "30720000000002001"]  # featured first, exact id
    for absent in ("Secret", "Withdrawn", "Buzz", "Other catalogue"):
        assert absent not in picker
    assert 'type="checkbox"' in picker and 'loading="lazy"' in picker
    # Thumbnails come from our own view, never from the vendor.
    style = Style.objects.get(style_id=BIG_ID)
    assert f"/styles/{style.pk}/thumbnail" in picker
    served = fetch(owner_client.get(f"/styles/{style.pk}/thumbnail"))
    assert served.status == 200 and served.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(served.body)).size == (64, 64)
    # A hidden style's thumbnail is not served to users.
    hidden = Style.objects.get(style_id="30720000000001005")
    assert owner_client.get(f"/styles/{hidden.pk}/thumbnail").status_code == 404


def test_picker_without_a_synced_catalogue_says_so(owner_client, photo, pc_configured):
    page = owner_client.get(f"/?photo={photo.pk}&operation=pc_wig").content.decode()
    assert 'data-testid="style-empty"' in page


# --- Mask validation ---------------------------------------------------------------


def _mask_png(size, box=(10, 10, 40, 40), mode="L") -> bytes:
    mask = Image.new(mode, size, 0)
    mask.paste(255 if mode == "L" else (255, 255, 255), box)
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.backend_free
def test_mask_must_match_the_photo_size_and_paint_something():
    clean = job_inputs.mask_clean(_mask_png((100, 80)), size=(100, 80))
    with Image.open(io.BytesIO(clean)) as im:
        assert im.mode == "L" and im.size == (100, 80)
        assert {value for _, value in im.getcolors()} == {0, 255} and im.getbbox() == (10, 10, 40, 40)
    # A canvas export: painted strokes on transparency count by their alpha.
    rgba = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (50, 20, 60, 30))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    with Image.open(io.BytesIO(job_inputs.mask_clean(buf.getvalue(), size=(100, 80)))) as im:
        assert im.getbbox() == (50, 20, 60, 30)
    # A browser's canvas export: opaque RGBA, white strokes on black.
    opaque = Image.new("RGBA", (100, 80), (0, 0, 0, 255))
    opaque.paste((255, 255, 255, 255), (5, 6, 7, 8))
    buf = io.BytesIO()
    opaque.save(buf, format="PNG")
    with Image.open(io.BytesIO(job_inputs.mask_clean(buf.getvalue(), size=(100, 80)))) as im:
        assert im.getbbox() == (5, 6, 7, 8)
    with pytest.raises(ImageRejected, match="99×80 px but the photo is 100×80"):
        job_inputs.mask_clean(_mask_png((99, 80)), size=(100, 80))
    with pytest.raises(ImageRejected, match="Paint over"):
        job_inputs.mask_clean(_mask_png((100, 80), box=(0, 0, 0, 0)), size=(100, 80))
    with pytest.raises(ImageRejected, match="couldn't be read"):
        job_inputs.mask_clean(images.to_bytes(Image.new("RGB", (100, 80)), "JPEG"), size=(100, 80))
    with pytest.raises(ImageRejected, match="couldn't be read"):
        job_inputs.mask_clean(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, size=(100, 80))


# --- Schedule -----------------------------------------------------------------------


def test_daily_style_sync_schedule_exists_once_after_migrate():
    from django_q.models import Schedule

    call_command("migrate", verbosity=0)
    call_command("migrate", verbosity=0)
    (schedule,) = Schedule.objects.filter(name="sync-styles")
    assert schedule.func == "studio.tasks.sync_styles" and schedule.schedule_type == Schedule.DAILY


# --- Against the emulator (sandbox mode) --------------------------------------------


@pytest.fixture
def emulator(settings):
    """The Perfect Corp emulator as the sandbox vendor, running tasks in near zero time."""
    from studio.vendors import sandbox
    from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator

    settings.STUDIO_SANDBOX = True
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    emu = PerfectCorpEmulator()
    emu.engine_seconds = 0.0
    emu.polling_interval_ms = 100
    sandbox.reset()
    with sandbox.use("perfectcorp", emu):
        yield emu
    sandbox.reset()


@pytest.fixture
def served_emulator(emulator):
    """The same emulator reached over real HTTP on 127.0.0.1."""
    from studio.vendors import sandbox

    with emulator.serve(), sandbox.use("perfectcorp", emulator, over_http=True):
        yield emulator


def vendor_ids(emu, feature):
    return [(str(group), str(style)) for group, style in emu.style_ids(feature)]


def test_sync_walks_every_page_keeps_exact_ids_and_caches_thumbnails(served_emulator):
    emu = served_emulator
    # One style id just above 2**53, the kind a float silently changes.
    emu.catalogue["hair-style"][0]["styles"][0]["id"] = int(BIG_ID)
    (report,) = styles.styles_sync(feature="hair-style")
    assert report.error == "" and report.thumbnail_errors == []
    expected = vendor_ids(emu, "hair-style")
    assert len(expected) > 20  # the first group needs two pages at page_size 20
    stored = list(Style.objects.filter(group__feature="hair-style").values_list("group__group_id", "style_id"))
    assert sorted(stored) == sorted(expected)
    assert Style.objects.filter(style_id=BIG_ID).exists()
    assert [g.name for g in StyleGroup.objects.filter(feature="hair-style").order_by("position")] == [
        g["title"] for g in emu.catalogue["hair-style"]
    ]
    # Every page was asked for with a page size the vendor accepts.
    assert report.groups == 3 and report.styles == len(expected) and report.thumbnails == len(expected)
    for style in Style.objects.all():
        with style.thumbnail.open("rb") as fh, Image.open(fh) as im:
            assert im.format == "JPEG" and im.size == (style.thumb_width, style.thumb_height)
        assert style.vendor_thumb_url.startswith(emu.base_url)

    # A second sync changes nothing and fetches no thumbnail again.
    (again,) = styles.styles_sync(feature="hair-style")
    assert again.thumbnails == 0 and Style.objects.count() == len(expected)

    # A style the vendor stops listing is kept for old jobs but no longer offered.
    gone = emu.catalogue["hair-style"][1]["styles"].pop()
    (third,) = styles.styles_sync(feature="hair-style")
    assert third.vanished == 1
    assert not Style.objects.get(style_id=str(gone["id"])).available


def test_sync_spends_from_the_shared_budget_even_for_thumbnails_on_the_api_host(served_emulator, settings):
    # A vendor (or staging endpoint) that counts every request from our IP,
    # thumbnails included, with a window small enough to overflow in a test.
    emu = served_emulator
    emu.faults["count_storage"] = True
    emu.rate_per_ip = (20, 2.0)
    settings.PERFECTCORP_RATE_PER_IP, settings.PERFECTCORP_RATE_WINDOW_IP_S = 20, 2
    (report,) = styles.styles_sync(feature="hair-style")
    expected = vendor_ids(emu, "hair-style")
    assert report.error == "" and report.thumbnail_errors == []
    assert report.thumbnails == len(expected) > 20  # more requests than one window holds
    assert emu.counters["429"] == 0


def test_a_live_vendor_counting_thumbnails_meets_no_429_either(settings):
    # The emulator at a configured address with our keys, as an independent vendor would be:
    # it counts thumbnail fetches on its own host against the per-IP window.
    from studio.vendors import sandbox
    from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator

    emu = PerfectCorpEmulator()
    emu.faults["count_storage"] = True
    emu.rate_per_ip = (20, 2.0)
    sandbox.reset()
    with emu.serve():
        settings.STUDIO_SANDBOX = False
        settings.PERFECTCORP_BASE_URL = emu.base_url
        settings.PERFECTCORP_CLIENT_ID, settings.PERFECTCORP_CLIENT_SECRET = emu.client_id, emu.public_key_b64
        settings.PERFECTCORP_RATE_PER_IP, settings.PERFECTCORP_RATE_WINDOW_IP_S = 20, 2
        (report,) = styles.styles_sync(feature="hair-style")
    assert report.error == "" and report.thumbnail_errors == []
    assert report.thumbnails == len(vendor_ids(emu, "hair-style")) > 20
    assert emu.counters["429"] == 0


def test_sync_command_reports_each_catalogue(emulator, capsys):
    call_command("sync_styles")
    out = capsys.readouterr().out
    for feature in ("hair-style", "wig", "hair-ext", "hair-bang", "hair-vol", "text-to-image"):
        assert f"perfectcorp/{feature}: 3 groups" in out
        assert Style.objects.filter(group__feature=feature, available=True).count() == len(emulator.style_ids(feature))


def test_sync_without_keys_or_sandbox_is_reported_not_crashed(settings):
    settings.STUDIO_SANDBOX = False
    settings.PERFECTCORP_CLIENT_ID = settings.PERFECTCORP_CLIENT_SECRET = ""
    reports = styles.styles_sync()
    assert reports and all("PERFECTCORP_CLIENT_ID" in report.error for report in reports)
    assert Style.objects.count() == 0
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No catalogue"):
        call_command("sync_styles")


def test_admin_sync_action_and_editable_hide_and_feature(emulator):
    staff = User.objects.create_superuser("staff", "staff@example.com", "pw-staff-123")
    client = Client()
    client.force_login(staff)
    # Before the first sync there are no rows to select: the changelist's button syncs everything.
    page = client.get("/admin/studio/style/").content.decode()
    assert 'data-testid="sync-styles-now"' in page
    assert client.get("/admin/studio/stylegroup/sync/").status_code == 405
    response = client.post("/admin/studio/stylegroup/sync/", follow=True)
    assert response.status_code == 200 and response.redirect_chain[-1][0] == "/admin/studio/style/"
    assert len([m for m in response.context["messages"]]) == 6
    assert Style.objects.filter(group__feature="hair-vol").count() == len(emulator.style_ids("hair-vol"))
    Client().post("/admin/studio/stylegroup/sync/")  # not staff: nothing happens
    make_style("wig", "Long wigs", "1", "Placeholder", group_id=str(emulator.catalogue["wig"][0]["id"]))
    response = client.post(
        "/admin/studio/stylegroup/",
        {"action": "sync_styles_now", "_selected_action": [StyleGroup.objects.filter(feature="wig").first().pk]},
        follow=True,
    )
    assert response.status_code == 200
    (message,) = [str(m) for m in response.context["messages"]]
    assert message.startswith("perfectcorp/wig: 3 groups")
    assert Style.objects.filter(group__feature="wig", available=True).count() == len(emulator.style_ids("wig"))
    assert not Style.objects.get(style_id="1").available  # the placeholder is not listed by the vendor

    # Staff hide one style and feature another from the list (list_editable).
    first, second = Style.objects.filter(group__feature="wig", available=True).order_by("group__position", "position")[
        :2
    ]
    changelist = client.get("/admin/studio/style/?group__feature=wig")
    assert changelist.status_code == 200 and f"/styles/{first.pk}/thumbnail" in changelist.content.decode()
    rows = list(Style.objects.filter(group__feature="wig").order_by("group", "-featured", "position", "name"))
    data = {"form-TOTAL_FORMS": str(len(rows)), "form-INITIAL_FORMS": str(len(rows)), "_save": "Save"}
    for i, row in enumerate(rows):
        data[f"form-{i}-id"] = str(row.pk)
        if row.pk == first.pk:
            data[f"form-{i}-hidden"] = "on"
        if row.pk == second.pk:
            data[f"form-{i}-featured"] = "on"
    assert client.post("/admin/studio/style/?group__feature=wig", data).status_code == 302
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.hidden and second.featured and not second.hidden


@pytest.fixture
def synced(emulator):
    styles.styles_sync()
    return emulator


def _run(client, data, files=None):
    response = client.post("/jobs/", {**data, **(files or {})}, headers=HTMX)
    assert response.status_code == 200
    return response.content.decode()


def test_several_styles_make_one_job_each_in_one_batch(owner_client, photo, synced):
    picked = vendor_ids(synced, "hair-style")[:3]
    body = _run(owner_client, {"photo": photo.pk, "operation": "pc_hairstyle", "style_id": [s for _, s in picked]})
    jobs = list(Job.objects.order_by("created_at"))
    assert len(jobs) == 3 and len({job.batch for job in jobs}) == 1 and jobs[0].batch is not None
    assert [(job.params["style_group_id"], job.params["style_id"]) for job in jobs] == picked
    assert body.count('data-testid="job-card"') == 3
    for job in jobs:
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED, job.error_message
        assert job.sandbox
        (result,) = job.results.all()
        assert result.meta["style_id"] == job.params["style_id"] and result.meta["dst_id"]
    # The cards say which style each is, and that it is a sandbox result.
    page = owner_client.get("/").content.decode()
    assert page.count('data-testid="job-style"') == 3 and "Sandbox" in page
    # The job page lists the style by its name; the vendor's group id is bookkeeping, not shown.
    style = Style.objects.get(style_id=jobs[0].params["style_id"], group__group_id=jobs[0].params["style_group_id"])
    assert jobs[0].params["style_name"] == style.name
    detail = owner_client.get(f"/jobs/{jobs[0].pk}/").content.decode()
    assert f"<dd>{style.name}</dd>" in detail
    assert jobs[0].params["style_group_id"] not in detail


def test_unknown_hidden_or_missing_styles_are_refused(owner_client, photo, synced):
    group_id, style_id = vendor_ids(synced, "hair-style")[0]
    Style.objects.filter(style_id=style_id).update(hidden=True)
    for value, message in (
        (style_id, "no longer offered"),
        ("1234", "no longer offered"),
        (vendor_ids(synced, "wig")[0][1], "no longer offered"),  # a style of another catalogue
        ("", "Pick a hairstyle"),
        ("12.5", "Pick one of the offered options"),
    ):
        body = _run(owner_client, {"photo": photo.pk, "operation": "pc_hairstyle", "style_id": value})
        assert message in body, value
    assert Job.objects.count() == 0
    too_many = [s for _, s in vendor_ids(synced, "hair-style")[1:8]]
    assert "at most 6" in _run(owner_client, {"photo": photo.pk, "operation": "pc_hairstyle", "style_id": too_many})
    assert Job.objects.count() == 0


def test_makeup_transfer_takes_an_owned_reference_photo(
    owner_client, other_client, photo, portrait_jpeg, no_face_jpeg, synced
):
    base = {"photo": photo.pk, "operation": "pc_makeup_transfer"}
    assert "Add the photo with the look to copy" in _run(owner_client, base)
    body = _run(owner_client, base, {"reference": SimpleUploadedFile("cup.jpg", no_face_jpeg, "image/jpeg")})
    assert "Photo with the look to copy: We couldn&#x27;t find a face" in body
    assert Job.objects.count() == 0
    # The refused reference is stored privately and offered again, not lost.
    kept = Photo.objects.exclude(pk=photo.pk).get()
    assert f'name="reference_photo" value="{kept.pk}"' in body
    # Someone else's photo can't be used as a reference.
    assert other_client.post("/jobs/", {**base, "reference_photo": kept.pk}, headers=HTMX).status_code == 404

    reference_jpeg = images.to_bytes(images.astronaut(scale=2).transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG")
    _run(owner_client, base, {"reference": SimpleUploadedFile("look.jpg", reference_jpeg, "image/jpeg")})
    job = Job.objects.get()
    assert job.reference_photo is not None and job.reference_photo.owner_visitor == photo.owner_visitor
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.results.count() == 1


def test_object_removal_mask_is_checked_and_sent(owner_client, photo, synced):
    base = {"photo": photo.pk, "operation": "pc_object_removal"}
    page = owner_client.get(f"/?photo={photo.pk}&operation=pc_object_removal").content.decode()
    assert f'data-width="{photo.width}" data-height="{photo.height}"' in page and "data-mask-canvas" in page
    assert "Paint over the area to remove first" in _run(owner_client, base)
    wrong = SimpleUploadedFile("mask.png", _mask_png((photo.width - 1, photo.height)), "image/png")
    assert "but the photo is 1024×1024 px" in _run(owner_client, base, {"mask": wrong})
    assert Job.objects.count() == 0
    box = (400, 600, 560, 760)
    right = SimpleUploadedFile("mask.png", _mask_png((photo.width, photo.height), box=box), "image/png")
    _run(owner_client, base, {"mask": right})
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    with job.mask.open("rb") as fh, Image.open(fh) as mask:
        assert mask.size == (photo.width, photo.height) and mask.getbbox() == box
    result = job.results.get()
    with (
        result.image.open("rb") as fh,
        Image.open(fh) as after,
        photo.image.open("rb") as fh2,
        Image.open(fh2) as before,
    ):
        assert after.size == before.size
        # The painted area changed; far from it the photo is (nearly) as it was.
        diff_inside = _mean_diff(before.crop(box), after.crop(box))
        diff_outside = _mean_diff(before.crop((0, 0, 200, 200)), after.crop((0, 0, 200, 200)))
        assert diff_inside > 4 * max(diff_outside, 1.0)


def _mean_diff(a, b) -> float:
    from PIL import ImageChops, ImageStat

    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def test_image_generator_needs_no_selfie(owner_client, synced):
    page = owner_client.get("/?operation=pc_image_generator").content.decode()
    assert "Run Image generator" in page and "Upload a photo to start" not in page
    group_id, style_id = vendor_ids(synced, "text-to-image")[0]
    assert "please write a few words" in _run(owner_client, {"operation": "pc_image_generator", "style_id": style_id})
    _run(
        owner_client, {"operation": "pc_image_generator", "style_id": style_id, "prompt": "a ceramic fox, window light"}
    )
    job = Job.objects.get()
    assert job.photo is None and job.params["prompt"] == "a ceramic fox, window light"
    assert (job.params["style_id"], job.params["style_group_id"]) == (style_id, group_id)
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert (job.results.get().width, job.results.get().height) == (1024, 1024)


def test_aging_series_in_order_with_age_labels(owner_client, photo, synced):
    _run(owner_client, {"photo": photo.pk, "operation": "pc_aging"})
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    results = list(job.results.order_by("index"))
    ages = [r.meta["age"] for r in results]
    assert len(results) >= 3 and ages == sorted(ages)
    assert [r.label for r in results] == [f"Age {age}" for age in ages]
    card = owner_client.get(f"/jobs/{job.pk}/status").content.decode()
    assert re.findall(r'data-testid="result-label">([^<]+)<', card) == [r.label for r in results]
    page = owner_client.get(f"/results/{results[1].pk}/").content.decode()
    assert f'data-testid="result-caption">{results[1].label}<' in page
    assert re.findall(r'data-testid="result-label">([^<]+)<', page) == [r.label for r in results]


def test_background_removal_keeps_transparency_down_to_the_thumbnail(owner_client, photo, synced):
    _run(owner_client, {"photo": photo.pk, "operation": "pc_background_removal"})
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    assert result.content_type == "image/png"
    for url in (f"/results/{result.pk}/image", f"/results/{result.pk}/image?size=thumb"):
        served = fetch(owner_client.get(url))
        assert served.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(served.body)) as im:
            assert im.mode == "RGBA" and im.getchannel("A").getextrema() == (0, 255)
    card = owner_client.get(f"/jobs/{job.pk}/status").content.decode()
    assert 'class="checkerboard"' in card
    assert "checkerboard" in owner_client.get(f"/results/{result.pk}/").content.decode()


@pytest.mark.parametrize("scale", ["1", "2"])
def test_enhance_scales_the_photo(owner_client, photo, synced, scale):
    _run(owner_client, {"photo": photo.pk, "operation": "pc_enhance", "scale": scale})
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.params["scale"] == scale
    assert job.results.get().width == photo.width * int(scale)


@pytest.mark.parametrize("key", ["pc_wig", "pc_hair_extension", "pc_bangs", "pc_hair_volume", "pc_colorize"])
def test_every_other_feature_runs_in_sandbox(owner_client, photo, synced, key):
    data = {"photo": photo.pk, "operation": key}
    feature = PC_KEYS[key]
    if OPERATIONS[key].params:
        data["style_id"] = vendor_ids(synced, feature)[-1][1]
    _run(owner_client, data)
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.sandbox and job.results.count() >= 1


def test_a_result_is_chained_into_another_feature_by_its_dst_id(owner_client, photo, synced):
    _run(
        owner_client,
        {"photo": photo.pk, "operation": "pc_hairstyle", "style_id": vendor_ids(synced, "hair-style")[0][1]},
    )
    first = Job.objects.get()
    result = first.results.get()
    assert result.meta["dst_id"]
    response = owner_client.post(f"/results/{result.pk}/chain")
    chained = Photo.objects.get(source_result=result)
    assert response.status_code == 302 and str(chained.pk) in response["Location"]
    # The studio offers Perfect Corp's operations on the chained photo.
    page = owner_client.get(response["Location"] + "&operation=pc_hair_volume").content.decode()
    assert 'value="pc_hair_volume"' in page and "Run Hair volume" in page
    uploads_before = synced.counters["uploads"]
    _run(
        owner_client,
        {"photo": chained.pk, "operation": "pc_hair_volume", "style_id": vendor_ids(synced, "hair-vol")[0][1]},
    )
    second = Job.objects.exclude(pk=first.pk).get()
    assert second.status == Job.Status.SUCCEEDED, second.error_message
    assert synced.counters["uploads"] == uploads_before  # the vendor's own copy was reused


def test_unconfigured_vendor_is_hidden_from_visitors_and_explained_to_staff(owner_client, photo, settings):
    from studio.vendors import sandbox

    sandbox.reset()
    settings.STUDIO_SANDBOX = False
    settings.PERFECTCORP_CLIENT_ID = settings.PERFECTCORP_CLIENT_SECRET = ""
    page = owner_client.get(f"/?photo={photo.pk}").content.decode()
    for key in PC_KEYS:  # not offered at all, not even disabled
        assert f'value="{key}"' not in page, key
    assert "PERFECTCORP_CLIENT_ID" not in page and "Sandbox" not in page
    assert 'data-testid="op-more"' in page
    # A crafted submission is refused without naming server settings.
    make_style("hair-style", "Women", BIG_ID, "Pixie")
    body = _run(owner_client, {"photo": photo.pk, "operation": "pc_hairstyle", "style_id": BIG_ID})
    assert "isn&#x27;t set up on this server" in body and "PERFECTCORP_CLIENT_ID" not in body
    assert Job.objects.count() == 0
    # Staff see which operations are hidden and why, settings named.
    staff = User.objects.create_user("staffer", password="pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    console = client.get("/staff/vendors/").content.decode()
    assert 'data-op="pc_hairstyle"' in console and "PERFECTCORP_CLIENT_ID" in console


