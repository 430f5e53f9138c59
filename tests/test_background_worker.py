"""Blur, cut-out and backdrop run end to end through a REAL django-q2 worker process,
checked by measurement against the hand-traced outline of the sample portrait."""

from __future__ import annotations

import numpy as np
import pytest

from studio import segmentation
from studio.models import Photo, Result
from tests import segmentation_truth as truth
from tests.conftest import upload
from tests.test_qcluster import _create_job, _decode
from tests.test_segmentation import _erode, _sharpness

pytestmark = [pytest.mark.qcluster, pytest.mark.django_db(transaction=True)]


def test_background_operations_in_a_real_worker(qcluster, owner_client):
    case = truth.traced()
    assert upload(owner_client, truth.SAMPLE.read_bytes()).status_code == 200
    photo = Photo.objects.get()
    blur = _create_job(owner_client, photo.pk, "background_blur", strength="0.6")
    cut = _create_job(owner_client, photo.pk, "background_remove")
    backdrop = _create_job(owner_client, photo.pk, "background_replace", backdrop="studio_grey")
    jobs = {job.operation: job for job in qcluster.wait_for_jobs([blur.pk, cut.pk, backdrop.pk], timeout=90)}
    for job in jobs.values():
        assert job.status == "succeeded", (job.operation, job.error_message, qcluster.log())

    original = np.asarray(_decode(photo.image).convert("RGB"))
    assert original.shape == case.rgb.shape
    inner, outer = _erode(case.truth, 12), _erode(~case.truth, 12)
    results = {op: Result.objects.get(job=job) for op, job in jobs.items()}
    for result in results.values():  # the method that found the person is on every result
        assert result.meta["segmentation"] == segmentation.MODEL

    blurred = np.asarray(_decode(results["background_blur"].image).convert("RGB"))
    assert _sharpness(blurred, inner) > 0.8 * _sharpness(original, inner)
    assert _sharpness(blurred, outer) < 0.3 * _sharpness(original, outer)

    cut_out = _decode(results["background_remove"].image)
    assert results["background_remove"].content_type == "image/png" and cut_out.mode == "RGBA"
    alpha = np.asarray(cut_out)[..., 3]
    assert truth.iou(alpha > 127, case.truth) >= 0.95

    placed = np.asarray(_decode(results["background_replace"].image).convert("RGB")).astype(float)
    back = segmentation.render_backdrop("studio_grey", placed.shape[1], placed.shape[0]).astype(float)
    assert np.abs(placed - back)[outer].mean() < 6
    assert np.abs(placed - original)[inner].mean() < 6

    page = owner_client.get(f"/results/{results['background_replace'].pk}/").content.decode()
    assert "person segmentation model" in page
