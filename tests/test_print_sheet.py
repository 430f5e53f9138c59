"""Take-home formats: the passport print sheet and the size-capped JPEG export, on real crops."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label, regionprops

from studio import print_sheet
from studio.models import Job
from tests.test_views import photo, result, run_job  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def passport(owner_client, photo):  # noqa: F811 - the fixture above
    job, _ = run_job(owner_client, photo, operation="headshot_crop", preset="passport")
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    return job.results.get()


def _image(response) -> Image.Image:
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"] == "image/jpeg"
    assert response["Content-Disposition"].startswith("attachment;")
    return Image.open(io.BytesIO(response.content))


def test_print_sheet_holds_eight_true_size_copies_with_cut_marks(owner_client, passport):
    response = owner_client.get(f"/results/{passport.pk}/print-sheet")
    sheet = _image(response)
    assert sheet.size == (1800, 1200)  # 6×4 in at 300 dpi
    assert tuple(round(v) for v in sheet.info["dpi"]) == (300, 300)
    assert not sheet.getexif() and "icc_profile" not in sheet.info

    # Count the copies from the pixels alone: big non-white islands of 35×45 mm.
    pixels = np.asarray(sheet.convert("RGB")).astype(int)
    ink = (pixels < 235).any(axis=2)
    photos = [r for r in regionprops(label(ink)) if r.area > 50_000]
    assert len(photos) == 8
    for region in photos:
        top, left, bottom, right = region.bbox
        assert abs((right - left) - 413) <= 3 and abs((bottom - top) - 531) <= 3

    # Each copy is the crop itself, resized.
    with passport.image.open("rb") as fh:
        crop = Image.open(fh).convert("RGB").resize((413, 531), Image.Resampling.LANCZOS)
    top, left, bottom, right = photos[0].bbox
    copy = pixels[top : top + 531, left : left + 413]
    assert np.abs(copy - np.asarray(crop).astype(int)).mean() < 8

    # Cut marks: grey ink in the gaps, none of it touching a photo.
    marks = [r for r in regionprops(label(ink)) if r.area <= 50_000]
    assert len(marks) >= 8 * 4
    for mark in marks:
        mark_top, mark_left, mark_bottom, mark_right = mark.bbox
        assert max(mark_bottom - mark_top, mark_right - mark_left) <= print_sheet.CUT_MARK_PX


def test_print_sheet_is_only_for_passport_crops_and_only_for_the_owner(
    owner_client, other_client, passport, result  # noqa: F811
):
    assert owner_client.get(f"/results/{result.pk}/print-sheet").status_code == 404
    assert other_client.get(f"/results/{passport.pk}/print-sheet").status_code == 404
    assert other_client.get(f"/results/{passport.pk}/export?max_kb=100").status_code == 404
    page = owner_client.get(f"/results/{passport.pk}/").content.decode()
    assert "Download print sheet" in page and 'name="max_kb"' in page
    page = owner_client.get(f"/results/{result.pk}/").content.decode()
    assert "Download print sheet" not in page and 'name="max_kb"' in page


@pytest.mark.parametrize("max_kb", [20, 50, 240])
def test_export_fits_the_limit_and_keeps_the_shape(owner_client, passport, max_kb):
    response = owner_client.get(f"/results/{passport.pk}/export", {"max_kb": max_kb})
    image = _image(response)
    assert len(response.content) <= max_kb * 1024
    assert abs(image.width / image.height - passport.width / passport.height) < 0.01
    assert not image.getexif()
    image.load()  # decodes whole


def test_a_generous_limit_keeps_the_full_size(owner_client, passport):
    image = _image(owner_client.get(f"/results/{passport.pk}/export", {"max_kb": 5000}))
    assert image.size == (passport.width, passport.height)


@pytest.mark.parametrize("max_kb", ["3", "99999", "lots", ""])
def test_an_impossible_limit_is_explained_not_a_500(owner_client, passport, max_kb):
    response = owner_client.get(f"/results/{passport.pk}/export", {"max_kb": max_kb}, follow=True)
    assert response.status_code == 200
    assert "Choose a file size limit between 10 KB and 5000 KB." in response.content.decode()


@pytest.mark.backend_free
def test_a_cap_no_usable_jpeg_can_meet_says_so():
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    with pytest.raises(print_sheet.CapTooSmall, match="Try a larger limit"):
        print_sheet.jpeg_at_most(noise, 2 * 1024)
    data = print_sheet.jpeg_at_most(noise, 60 * 1024)  # fits after shrinking, above the floor
    assert len(data) <= 60 * 1024
    assert min(Image.open(io.BytesIO(data)).size) >= print_sheet.MIN_EXPORT_SIDE
