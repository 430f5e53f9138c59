"""Admin: every model is listed with thumbnails, filters and search; previews are staff-only."""

import pytest
from django.contrib.auth.models import User
from django.test import Client

from studio.jobs.create import job_create
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.sharing import share_enable
from tests.media import fetch

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def finished_job(portrait_jpeg):
    owner = Owner(visitor_id="someone")
    photo = photo_create(owner=owner, data=portrait_jpeg, filename="me.jpg")
    retouch = get_operation("studio_retouch")
    job = job_create(owner=owner, photo=photo, operation=retouch, params={"strength": 0.5})
    result = job.results.get()
    share_enable(result=result)
    return Job.objects.get(pk=job.pk)


@pytest.fixture
def staff_client():
    client = Client()
    client.force_login(User.objects.create_superuser("staff", "staff@example.com", "pw-staff-123456"))
    return client


def test_every_model_changelist_renders_with_thumbnails(staff_client, finished_job):
    for model in ("photo", "job", "result", "sharelink"):
        page = staff_client.get(f"/admin/studio/{model}/").content.decode()
        assert "studio-thumbnail/" in page, model
    found = staff_client.get(f"/admin/studio/photo/?q={finished_job.photo.original_name}").content.decode()
    assert f"/admin/studio/photo/{finished_job.photo_id}/change/" in found
    missing = staff_client.get("/admin/studio/photo/?q=no-such-name").content.decode()
    assert f"/admin/studio/photo/{finished_job.photo_id}/change/" not in missing
    change_url = f"/admin/studio/job/{finished_job.pk}/change/"
    matching = staff_client.get("/admin/studio/job/?status__exact=succeeded&owner_kind=visitor")
    assert change_url in matching.content.decode()
    assert change_url not in staff_client.get("/admin/studio/job/?status__exact=failed").content.decode()
    assert change_url not in staff_client.get("/admin/studio/job/?owner_kind=user").content.decode()
    detail = staff_client.get(f"/admin/studio/job/{finished_job.pk}/change/")
    assert detail.status_code == 200


def test_admin_thumbnails_are_for_staff_only(staff_client, finished_job):
    url = f"/admin/studio-thumbnail/photo/{finished_job.photo_id}"
    served = fetch(staff_client.get(url))
    assert served.status == 200 and served.headers["content-type"] == "image/jpeg"
    assert "/admin/login/" in Client().get(url)["Location"]
    visitor = Client()
    assert "/admin/login/" in visitor.get(url)["Location"]
