"""Privacy of the photos: metadata never leaves, retention purges, delete everything.

Every check reads real bytes back (from storage, from the HTTP responses and
from what a provider was handed) and looks for the metadata we planted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.utils import timezone
from PIL import Image, PngImagePlugin

from studio.deletion import photos_purge_expired
from studio.jobs.run import job_run
from studio.models import Job, Photo, Result, ShareLink
from studio.ownership import Owner
from studio.vendors import base as vendors_base
from studio.vendors.base import Output, Progress, Provider, Submission
from studio.vendors.local import LocalProvider
from tests import images
from tests.conftest import upload
from tests.media import fetch
from tests.test_imaging import MARKERS, assert_no_metadata, exif_with_gps, srgb_icc

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HX-Request": "true"}
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SECRET-XMP</x:xmpmeta>'


def jpeg_with_everything(img: Image.Image | None = None, *, orientation: int | None = None) -> bytes:
    exif = exif_with_gps()
    if orientation:
        exif[0x0112] = orientation
    data = images.to_bytes(
        img or images.astronaut(scale=2),
        "JPEG",
        quality=92,
        exif=exif,
        icc_profile=srgb_icc(),
        comment=b"SECRET-COMMENT",
        xmp=XMP,
    )
    for needle in (b"SECRET-EXIF", b"SECRET-COMMENT", b"SECRET-XMP", b"ICC_PROFILE"):
        assert needle in data  # the input really carries it
    return data


def png_with_everything(img: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SECRET-PNG-TEXT")
    info.add_itxt("XML:com.adobe.xmp", "SECRET-XMP", zip=False)
    data = images.to_bytes(img, "PNG", pnginfo=info, exif=exif_with_gps(), icc_profile=srgb_icc())
    assert b"SECRET-PNG-TEXT" in data and b"SECRET-XMP" in data
    return data


def stored(field) -> bytes:
    with field.open("rb") as fh:
        return fh.read()


def body(response) -> bytes:
    served = fetch(response)
    assert served.status == 200, served.status
    return served.body


def media_files() -> set[str]:
    found = set()

    def walk(path):
        dirs, files = default_storage.listdir(path)
        found.update(f"{path}/{name}".lstrip("/") for name in files)
        for name in dirs:
            walk(f"{path}/{name}".lstrip("/"))

    with contextlib.suppress(FileNotFoundError):  # nothing stored yet (an empty S3 prefix lists nothing)
        walk("")
    return found


class FakeVendor(Provider):
    """A remote provider stand-in: records what it was sent and what it was asked to delete."""

    key = "fakevendor"
    label = "Fake Vendor"
    runs_locally = False
    data_notice = "Fake Vendor keeps your photo for 7 days, then deletes it."
    sent: list[bytes] = []
    deleted: list[tuple[str, str]] = []
    fail_delete = False

    def submit(self, job):
        FakeVendor.sent.append(job.image)
        out = Output(data=jpeg_with_everything(orientation=6), content_type="image/jpeg", label="fake")
        return Submission(task_id="fake-task", progress=Progress(finished=True, outputs=(out,)))

    def delete_remote(self, job):
        if FakeVendor.fail_delete:
            raise RuntimeError("vendor down, secret=sk-should-not-be-logged")
        FakeVendor.deleted.append((str(job.pk), job.vendor_task_id))


@pytest.fixture
def fake_vendor(monkeypatch):
    monkeypatch.setitem(vendors_base.PROVIDERS, "fakevendor", "tests.test_privacy.FakeVendor")
    monkeypatch.delitem(vendors_base._instances, "fakevendor", raising=False)
    FakeVendor.sent, FakeVendor.deleted, FakeVendor.fail_delete = [], [], False
    yield FakeVendor
    vendors_base._instances.pop("fakevendor", None)


@pytest.fixture
def sent_to_provider(monkeypatch):
    """The bytes the local provider is handed (what a vendor would receive)."""
    sent = []
    original = LocalProvider.submit

    def spy(self, job):
        sent.append(job.image)
        return original(self, job)

    monkeypatch.setattr(LocalProvider, "submit", spy)
    return sent


# --- Metadata -------------------------------------------------------------------


def test_no_metadata_in_any_stored_served_shared_or_sent_file(owner_client, sent_to_provider):
    upload(owner_client, jpeg_with_everything())
    photo = Photo.objects.get()
    response = owner_client.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"}, headers=HTMX)
    assert response.status_code == 200
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    owner_client.post(f"/results/{result.pk}/share", {"enabled": "1", "show_before": "1"})
    token = ShareLink.objects.get().token
    stranger = Client()

    files = {
        "stored photo": stored(photo.image),
        "stored thumbnail": stored(photo.thumbnail),
        "stored result": stored(result.image),
        "stored result thumbnail": stored(result.thumbnail),
        "served photo": body(owner_client.get(f"/photos/{photo.pk}/image")),
        "served photo thumbnail": body(owner_client.get(f"/photos/{photo.pk}/image?size=thumb")),
        "served result": body(owner_client.get(f"/results/{result.pk}/image")),
        "served result thumbnail": body(owner_client.get(f"/results/{result.pk}/image?size=thumb")),
        "download": body(owner_client.get(f"/results/{result.pk}/download")),
        "shared result": body(stranger.get(f"/s/{token}/image")),
        "shared before photo": body(stranger.get(f"/s/{token}/before")),
        "sent to the provider": sent_to_provider[0],
    }
    for name, data in files.items():
        assert data[:3] == b"\xff\xd8\xff", name
        try:
            assert_no_metadata(data)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_vendor_output_with_metadata_is_stored_clean_and_upright(owner_client, portrait_jpeg, fake_vendor):
    """A vendor's JPEG with EXIF (GPS, orientation 6), ICC, XMP and a comment."""
    upload(owner_client, portrait_jpeg)
    photo = Photo.objects.get()
    job = Job.objects.create(
        **Owner(visitor_id="x").fields(), photo=photo, operation="studio_retouch", provider="fakevendor"
    )
    job_run(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    data = stored(result.image)
    assert_no_metadata(data)
    assert_no_metadata(stored(result.thumbnail))
    # Orientation 6 was applied before the tag was dropped: the 1024x1024 source
    # is square, so check the pixels: the top of the upright result matches the
    # source rotated by 90° clockwise.
    upright = Image.open(io.BytesIO(data)).convert("L").resize((64, 64))
    expected = images.astronaut(scale=2).rotate(-90, expand=True).convert("L").resize((64, 64))
    unrotated = images.astronaut(scale=2).convert("L").resize((64, 64))
    diff = np.abs(np.asarray(upright, float) - np.asarray(expected, float)).sum()
    diff_unrotated = np.abs(np.asarray(upright, float) - np.asarray(unrotated, float)).sum()
    assert diff < diff_unrotated / 4
    # And the vendor was sent the normalized photo, clean.
    assert_no_metadata(fake_vendor.sent[0])


@pytest.mark.backend_free
def test_clean_output_keeps_clean_files_byte_for_byte_and_transparency():
    from studio.imaging import carries_metadata, clean_output, encode_jpeg

    clean = encode_jpeg(images.astronaut())
    data, content_type, image = clean_output(clean)
    assert data == clean and content_type == "image/jpeg" and image.size == (512, 512)

    # A PNG with alpha (a removed background) and text chunks: cleaned, alpha kept.
    rgba = images.astronaut().convert("RGBA")
    rgba.putalpha(0)
    rgba.paste((0, 0, 0, 255), (100, 100, 400, 400))
    dirty = png_with_everything(rgba)
    assert carries_metadata(dirty)
    data, content_type, _ = clean_output(dirty)
    assert content_type == "image/png" and not carries_metadata(data)
    assert_no_metadata(data)
    out = Image.open(io.BytesIO(data))
    assert out.mode == "RGBA" and out.getpixel((10, 10))[3] == 0 and out.getpixel((200, 200))[3] == 255

    # A JPEG with a ZIP appended (a polyglot) is re-encoded without the tail.
    polyglot = clean + b"PK\x03\x04" + b"\x00" * 100
    assert carries_metadata(polyglot)
    data, _, _ = clean_output(polyglot)
    assert b"PK\x03\x04" not in data
    # A WebP is stored as JPEG (what our results are served as).
    webp = images.to_bytes(images.astronaut(), "WEBP", exif=exif_with_gps().tobytes())
    data, content_type, _ = clean_output(webp)
    assert content_type == "image/jpeg" and data[:3] == b"\xff\xd8\xff"
    assert_no_metadata(data)
    for marker in MARKERS:
        assert marker not in data


# --- Retention ------------------------------------------------------------------


def age(photo: Photo, hours: float) -> None:
    Photo.objects.filter(pk=photo.pk).update(created_at=timezone.now() - timedelta(hours=hours))


def make_photo(client, portrait_jpeg) -> Photo:
    upload(client, portrait_jpeg)
    return Photo.objects.order_by("-created_at").first()


def test_photos_are_purged_after_retention_results_stay(owner_client, portrait_jpeg, settings):
    settings.STUDIO_RETENTION_HOURS = 24
    old = make_photo(owner_client, portrait_jpeg)
    fresh = make_photo(owner_client, portrait_jpeg)
    owner_client.post("/jobs/", {"photo": str(old.pk), "operation": "studio_retouch"}, headers=HTMX)
    result = Result.objects.get()
    old_files = {old.image.name, old.thumbnail.name}
    assert old_files <= media_files()
    # Uploaded 30 h ago, last job ended 25 h ago: due. The other photo is 23 h old.
    age(old, 30)
    Job.objects.filter(photo=old).update(
        created_at=timezone.now() - timedelta(hours=26), finished_at=timezone.now() - timedelta(hours=25)
    )
    age(fresh, 23)

    assert photos_purge_expired() == 1

    assert list(Photo.objects.all()) == [fresh]
    assert not old_files & media_files()  # the files are gone, not just the rows
    assert {result.image.name, result.thumbnail.name} <= media_files()
    assert fetch(owner_client.get(f"/results/{result.pk}/image")).status == 200
    assert owner_client.get(f"/photos/{old.pk}/image").status_code == 404
    assert photos_purge_expired() == 0  # idempotent


def test_last_use_counts_not_the_upload_time(owner_client, portrait_jpeg, settings):
    settings.STUDIO_RETENTION_HOURS = 24
    used = make_photo(owner_client, portrait_jpeg)
    reference = make_photo(owner_client, portrait_jpeg)
    busy = make_photo(owner_client, portrait_jpeg)
    for photo in (used, reference, busy):
        age(photo, 100)
    owner = Owner(visitor_id=used.owner_visitor)
    now = timezone.now()
    # A job that ended 2 h ago read `used` as its selfie and `reference` as its second photo.
    Job.objects.create(
        **owner.fields(),
        photo=used,
        reference_photo=reference,
        operation="studio_retouch",
        provider="local",
        status=Job.Status.SUCCEEDED,
        created_at=now - timedelta(hours=99),
        finished_at=now - timedelta(hours=2),
    )
    # A job still running on `busy` (queued long ago) keeps it, whatever its age.
    Job.objects.create(
        **owner.fields(),
        photo=busy,
        operation="studio_retouch",
        provider="local",
        status=Job.Status.RUNNING,
        created_at=now - timedelta(hours=99),
    )

    assert photos_purge_expired() == 0
    assert Photo.objects.count() == 3
    # 23 hours later the first two are due; the busy one is still protected.
    assert photos_purge_expired(now=now + timedelta(hours=23)) == 2
    assert list(Photo.objects.all()) == [busy]


def test_purge_removes_vendor_bound_copies_and_asks_the_vendor(owner_client, portrait_jpeg, fake_vendor, settings):
    settings.STUDIO_RETENTION_HOURS = 1
    photo = make_photo(owner_client, portrait_jpeg)
    owner = Owner(visitor_id=photo.owner_visitor)
    job = Job.objects.create(
        **owner.fields(),
        photo=photo,
        operation="studio_retouch",
        provider="fakevendor",
        vendor_task_id="vendor-123",
        status=Job.Status.SUCCEEDED,
        finished_at=timezone.now() - timedelta(hours=2),
    )
    job.mask.save("mask.png", ContentFile(images.to_bytes(Image.new("L", (64, 64), 255), "PNG")), save=True)
    mask_name = job.mask.name
    assert mask_name in media_files()
    age(photo, 3)

    assert photos_purge_expired() == 1

    job.refresh_from_db()
    assert job.photo is None and not job.mask and mask_name not in media_files()
    assert fake_vendor.deleted == [(str(job.pk), "vendor-123")]


def test_concurrent_purges_delete_each_photo_once(owner_client, portrait_jpeg, settings):
    settings.STUDIO_RETENTION_HOURS = 1
    photos = [make_photo(owner_client, portrait_jpeg) for _ in range(6)]
    for photo in photos:
        age(photo, 5)
    counts, errors = [], []

    def purge():
        from django.db import connection

        try:
            counts.append(photos_purge_expired())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=purge) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(counts) == 6 and not Photo.objects.exists()
    assert not any(name.startswith("photos/") for name in media_files())


def test_the_purge_is_scheduled(settings):
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("migrate", verbosity=0)  # the post_migrate hook runs again: still one schedule
    schedule = Schedule.objects.get(name="purge-expired-photos")
    assert schedule.func == "studio.tasks.purge_expired_photos"
    assert schedule.schedule_type == Schedule.MINUTES and schedule.repeats == -1
    from studio import tasks

    assert tasks.purge_expired_photos() == 0


def test_each_photo_shows_when_it_will_be_deleted(owner_client, portrait_jpeg, settings):
    from studio import retention

    settings.STUDIO_RETENTION_HOURS = 24
    photo = make_photo(owner_client, portrait_jpeg)
    due = retention.photo_due_at(photo)
    assert timedelta(hours=23, minutes=59) < due - photo.created_at <= timedelta(hours=24)
    page = owner_client.get(f"/?photo={photo.pk}").content.decode()
    assert 'data-testid="photo-retention"' in page
    assert f'datetime="{due.isoformat()}"' in page
    assert "23\xa0hours from now" in page or "23 hours from now" in page


# --- Delete everything ----------------------------------------------------------


def csrf_post(client: Client, url: str, data=None, **extra):
    client.get("/privacy/")
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": client.cookies["csrftoken"].value}, **extra)


def build_work(client, portrait_jpeg) -> dict:
    photo = make_photo(client, portrait_jpeg)
    make_photo(client, portrait_jpeg)
    client.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"}, headers=HTMX)
    client.post("/jobs/", {"photo": str(photo.pk), "operation": "headshot_crop"}, headers=HTMX)
    result = Result.objects.filter(job__photo=photo).first()
    client.post(f"/results/{result.pk}/share", {"enabled": "1"})
    return {"photo": photo, "result": result, "token": ShareLink.objects.get(result=result).token}


def test_delete_everything_removes_all_of_a_visitors_work(portrait_jpeg, fake_vendor):
    owner = Client()
    other = Client()
    theirs = build_work(other, portrait_jpeg)
    their_files = media_files()
    mine = build_work(owner, portrait_jpeg)
    owner.handler.enforce_csrf_checks = True  # from here on, as a browser would
    owner_fields = Owner(visitor_id=mine["photo"].owner_visitor).fields()
    vendor_job = Job.objects.create(
        **owner_fields,
        photo=mine["photo"],
        operation="studio_retouch",
        provider="fakevendor",
        vendor_task_id="v-1",
        status=Job.Status.SUCCEEDED,
    )
    vendor_job.mask.save("m.png", ContentFile(images.to_bytes(Image.new("L", (64, 64), 255), "PNG")), save=True)
    assert len(media_files()) > len(their_files)

    page = owner.get("/privacy/").content.decode()
    assert 'data-testid="delete-everything"' in page and "data-confirm=" in page
    assert owner.get("/privacy/delete-everything").status_code == 405
    assert owner.post("/privacy/delete-everything").status_code == 403  # no CSRF token
    assert Photo.objects.filter(owner_visitor=owner_fields["owner_visitor"]).exists()

    response = csrf_post(owner, "/privacy/delete-everything")
    assert response.status_code == 302

    visitor = owner_fields["owner_visitor"]
    assert not Photo.objects.filter(owner_visitor=visitor).exists()
    assert not Job.objects.filter(owner_visitor=visitor).exists()
    assert not Result.objects.filter(job__owner_visitor=visitor).exists()
    assert not ShareLink.objects.filter(token=mine["token"]).exists()
    assert Client().get(f"/s/{mine['token']}").status_code == 404
    assert media_files() == their_files  # every file of the owner is gone, the other's stay
    assert fake_vendor.deleted == [(str(vendor_job.pk), "v-1")]
    # The other visitor's work is untouched.
    assert Client().get(f"/s/{theirs['token']}").status_code == 200
    assert other.get(f"/results/{theirs['result'].pk}/").status_code == 200
    assert "Deleted 2 photo(s), 3 job(s), 2 result(s) and 1 share link(s)" in owner.get("/privacy/").content.decode()


def test_delete_everything_for_a_signed_in_user_and_a_failing_vendor(portrait_jpeg, fake_vendor, caplog):
    from django.contrib.auth.models import User

    user = User.objects.create_user("ada", password="pw-ada-123456")
    client = Client()
    client.force_login(user)
    build_work(client, portrait_jpeg)
    Job.objects.create(
        owner_user=user,
        operation="studio_retouch",
        provider="fakevendor",
        vendor_task_id="v-2",
        status=Job.Status.FAILED,
    )
    fake_vendor.fail_delete = True
    assert Photo.objects.filter(owner_user=user).count() == 2

    assert csrf_post(client, "/privacy/delete-everything").status_code == 302

    assert not Photo.objects.filter(owner_user=user).exists() and not Job.objects.filter(owner_user=user).exists()
    assert media_files() == set()
    assert "deleting fakevendor's copies" in caplog.text and "sk-should-not-be-logged" not in caplog.text
    assert User.objects.filter(pk=user.pk).exists()  # the account itself stays


# --- Where photos go -------------------------------------------------------------


def test_the_page_names_where_the_photo_goes_before_submit(owner_client, portrait_jpeg, fake_vendor, monkeypatch):
    from studio.operations import OPERATIONS

    photo = make_photo(owner_client, portrait_jpeg)
    page = owner_client.get(f"/?photo={photo.pk}&operation=studio_retouch").content.decode()
    note = page.split('data-testid="privacy-note"', 1)[1].split("</p>", 1)[0]
    assert "stays on this server" in note and "24 h" in note

    # A vendor operation names the vendor and how long it keeps the photo.
    monkeypatch.setitem(
        OPERATIONS, "studio_retouch", dataclasses.replace(OPERATIONS["studio_retouch"], provider="fakevendor")
    )
    page = owner_client.get(f"/?photo={photo.pk}&operation=studio_retouch", headers=HTMX).content.decode()
    note = page.split('data-testid="privacy-note"', 1)[1].split("</p>", 1)[0]
    assert "Fake Vendor" in note and FakeVendor.data_notice in note and "stays on this server" not in note


@pytest.mark.backend_free
def test_every_remote_provider_states_where_the_photo_goes():
    """Each vendor adapter must fill in data_notice (shown before submit and on /privacy/)."""
    from studio.operations import OPERATIONS

    for op in OPERATIONS.values():
        provider = vendors_base.get_provider(op.provider)
        if not provider.runs_locally:
            assert len(provider.data_notice) > 20, f"{provider.key} has no data_notice"


def test_share_links_are_random_constant_time_and_can_expire(owner_client, portrait_jpeg, monkeypatch):
    import hmac

    photo = make_photo(owner_client, portrait_jpeg)
    owner_client.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"}, headers=HTMX)
    result = Result.objects.get()
    owner_client.post(f"/results/{result.pk}/share", {"enabled": "1", "expires_days": "7"})
    link = ShareLink.objects.get()
    assert len(link.token) * 6 >= 128 + 64  # url-safe base64: 6 bits a character
    assert timedelta(days=6, hours=23) < link.expires_at - timezone.now() <= timedelta(days=7)
    assert 'data-testid="share-expires"' in owner_client.get(f"/results/{result.pk}/").content.decode()

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    assert Client().get(f"/s/{link.token}").status_code == 200
    assert compared and compared[-1][0] == link.token.encode()
    # Same prefix, wrong rest: found by prefix, refused by the full comparison.
    forged = link.token[:8] + ("A" if link.token[8] != "A" else "B") + link.token[9:]
    assert Client().get(f"/s/{forged}").status_code == 404

    ShareLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert Client().get(f"/s/{link.token}").status_code == 404
    assert Client().get(f"/s/{link.token}/image").status_code == 404


@pytest.mark.backend_free
def test_a_painted_mask_sent_to_a_vendor_carries_no_metadata():
    from studio.imaging import carries_metadata
    from studio.job_inputs import mask_clean

    canvas = Image.new("RGB", (64, 64), "black")
    canvas.paste((255, 255, 255), (10, 10, 30, 30))
    dirty = png_with_everything(canvas)
    clean = mask_clean(dirty, size=(64, 64))
    assert not carries_metadata(clean)
    assert_no_metadata(clean)
    assert Image.open(io.BytesIO(clean)).getpixel((20, 20)) == 255
