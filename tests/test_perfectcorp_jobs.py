"""Perfect Corp jobs end to end through the job runner (studio.jobs: job_create → job_run → Results).

The emulator is served over real HTTP on 127.0.0.1; the job runs inline on
commit (django-q2 sync mode) with the real poll loop, storage and Results.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.cache import cache
from PIL import Image

from studio.jobs.create import job_create, job_create_batch
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create, photo_from_result
from studio.vendors import base as vendor_base
from tests.pc_support import hair_params, new_emulator, operation, routed

pytestmark = pytest.mark.django_db(transaction=True)
OWNER = Owner(visitor_id="visitor-pc")


@pytest.fixture
def emulator(settings):
    cache.clear()
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    settings.PERFECTCORP_POLL_CEILING_MS = 300
    vendor_base._instances.pop("perfectcorp", None)
    emulator = new_emulator()
    with routed(emulator, over_http=True):
        yield emulator
    vendor_base._instances.pop("perfectcorp", None)


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def _op(key):
    try:
        return get_operation(key)
    except KeyError:  # the catalogue entry is not there yet
        return operation(key)


def _image(field) -> Image.Image:
    with field.open("rb") as fh:
        picture = Image.open(io.BytesIO(fh.read()))
        picture.load()
        return picture


def test_hairstyle_job_stores_the_restyled_photo(emulator, photo):
    params = hair_params(emulator)
    job = job_create(owner=OWNER, photo=photo, operation=_op("pc_hairstyle"), params=params)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    assert result.meta["style_id"] == params["style_id"] and result.meta["dst_id"]
    assert job.vendor_state["request_id"] and job.vendor_state["task_id"] == job.vendor_task_id
    assert job.vendor_meta["perfectcorp_feature"] == "hair-style"
    assert emulator.counters["charges"] == 1


def test_several_styles_run_as_one_batch(emulator, photo):
    runs = [(_op("pc_hairstyle"), hair_params(emulator, index=i)) for i in range(3)]
    jobs = job_create_batch(owner=OWNER, photo=photo, runs=runs)
    for job in jobs:
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert len({job.batch for job in jobs}) == 1
    assert emulator.counters["charges"] == 3 and emulator.counters["duplicate_requests"] == 0


def test_aging_job_stores_an_ordered_labelled_series(emulator, photo):
    job = job_create(owner=OWNER, photo=photo, operation=_op("pc_aging"), params={})
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    results = list(job.results.order_by("index"))
    ages = [r.meta["age"] for r in results]
    assert len(results) >= 4 and ages == sorted(ages)
    assert [r.label for r in results] == [f"Age {age}" for age in ages]


def test_background_removal_job_stores_a_png_with_alpha(emulator, photo):
    job = job_create(owner=OWNER, photo=photo, operation=_op("pc_background_removal"), params={})
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    result = job.results.get()
    assert result.content_type == "image/png" and result.image.name.endswith(".png")
    picture = _image(result.image)
    assert picture.mode == "RGBA" and np.asarray(picture)[..., 3].min() == 0


def test_a_vendor_engine_error_ends_the_job_with_its_advice(emulator, photo):
    emulator.faults["engine_error"] = "error_large_face_angle"
    job = job_create(owner=OWNER, photo=photo, operation=_op("pc_hairstyle"), params=hair_params(emulator))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "face the camera" in job.error_message
    assert emulator.counters["charges"] == 0


def test_a_chained_result_is_sent_by_dst_id(emulator, photo):
    first = job_create(owner=OWNER, photo=photo, operation=_op("pc_hairstyle"), params=hair_params(emulator))
    first.refresh_from_db()
    chained_photo = photo_from_result(owner=OWNER, result=first.results.get())
    uploads = emulator.counters["uploads"]
    second = job_create(
        owner=OWNER, photo=chained_photo, operation=_op("pc_bangs"), params=hair_params(emulator, "hair-bang")
    )
    second.refresh_from_db()
    assert second.status == Job.Status.SUCCEEDED, second.error_message
    assert emulator.counters["uploads"] == uploads
    assert list(emulator.tasks.values())[-1].inputs["src_ids"] == [first.results.get().meta["dst_id"]]


def test_a_job_waiting_for_capacity_longer_than_a_worker_may_run_goes_back_to_the_queue(emulator, photo, settings):
    settings.PERFECTCORP_RATE_PER_IP = 8
    settings.PERFECTCORP_RATE_WINDOW_IP_S = 6
    settings.STUDIO_JOB_TIMEOUT = 2  # a worker may wait 1 s; the window frees after 6 s
    from studio.vendors.base import get_provider

    budget = get_provider("perfectcorp").budget()
    for _ in range(8):
        budget.take(urgent=True)  # other processes used the whole window
    job = job_create(owner=OWNER, photo=photo, operation=_op("pc_colorize"), params={})
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    assert job.attempts >= 3  # claimed again after each hand-back
    assert emulator.counters["charges"] == 1 and emulator.counters["429"] == 0
