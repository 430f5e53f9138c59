"""Jobs run by a REAL django-q2 cluster process, not inline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from studio.models import Job, Result
from tests.conftest import upload

pytestmark = [pytest.mark.qcluster, pytest.mark.django_db(transaction=True)]


def _create_job(client, photo_id, operation, **params):
    before = set(Job.objects.values_list("pk", flat=True))
    response = client.post(
        "/jobs/", {"photo": str(photo_id), "operation": operation, **params}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert b'data-testid="form-error"' not in response.content, response.content.decode()[:2000]
    (job,) = Job.objects.exclude(pk__in=before)
    assert job.operation == operation
    return job


def _decode(field) -> Image.Image:
    with field.open("rb") as fh:
        img = Image.open(io.BytesIO(fh.read()))
        img.load()
    return img


def test_three_operations_run_at_once_in_a_real_cluster(qcluster, owner_client, portrait_jpeg):
    from studio.models import Photo

    assert upload(owner_client, portrait_jpeg).status_code == 200
    photo = Photo.objects.get()
    assert len(photo.faces) == 1

    retouch = _create_job(owner_client, photo.pk, "studio_retouch", strength="0.8")
    crop = _create_job(owner_client, photo.pk, "headshot_crop", preset="1:1")
    blur = _create_job(owner_client, photo.pk, "background_blur", strength="0.7")
    # Nothing ran inline: the jobs wait for the worker process.
    assert Job.objects.get(pk=retouch.pk).status in ("queued", "running")

    jobs = qcluster.wait_for_jobs([retouch.pk, crop.pk, blur.pk], timeout=60)
    for job in jobs:
        assert job.status == "succeeded", (job.operation, job.error_message, qcluster.log())
        assert job.attempts == 1
        assert job.finished_at is not None and job.started_at is not None

    original = _decode(photo.image).convert("RGB")
    for job in jobs:
        result = Result.objects.get(job=job)
        img = _decode(result.image)
        assert (img.width, img.height) == (result.width, result.height)
        assert _decode(result.thumbnail).width > 0
        if job.operation == "headshot_crop":
            assert img.width == img.height  # 1:1 preset
            assert img.width < original.width
        else:
            assert img.size == original.size
            diff = np.abs(np.asarray(img.convert("RGB"), dtype=np.int16) - np.asarray(original, dtype=np.int16))
            assert diff.mean() > 1.0, f"{job.operation} returned the input unchanged"

    # The owner sees the finished card through the status endpoint, which stops polling.
    status = owner_client.get(f"/jobs/{retouch.pk}/status", headers={"HX-Request": "true"})
    assert status.status_code == 286
    assert b'data-status="succeeded"' in status.content
