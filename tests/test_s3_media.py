"""Photos and results on S3 keep the privacy rules: private objects, ownership
checked first, then a redirect to a signed URL that expires in minutes.

Runs in both configurations: on the run's own bucket under
./scripts/test-scaled, on a moto server in this process otherwise.
"""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.test import Client
from PIL import Image

from studio.models import Job, Photo, ShareLink
from tests.conftest import upload
from tests.media import fetch

pytestmark = pytest.mark.django_db

HTMX = {"HX-Request": "true"}


@pytest.fixture
def photo(s3_media, owner_client, portrait_jpeg):
    assert upload(owner_client, portrait_jpeg).status_code == 200
    return Photo.objects.get()


@pytest.fixture
def result(photo, owner_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the job is enqueued (and run inline) on commit
        owner_client.post(
            "/jobs/", {"photo": photo.pk, "operation": "studio_retouch", "strength": "0.6"}, headers=HTMX
        )
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    return job.results.get()


def _query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


def _stored(field) -> bytes:
    with field.open("rb") as fh:
        return fh.read()


def test_the_owner_is_sent_to_a_signed_url_that_expires(photo, owner_client, s3_media, settings):
    response = owner_client.get(f"/photos/{photo.pk}/image")
    assert response.status_code == 302
    location = response["Location"]
    query = _query(location)
    assert "X-Amz-Signature" in query and query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert int(query["X-Amz-Expires"]) == settings.STUDIO_MEDIA_URL_SECONDS == 300
    assert urlsplit(location).path.endswith(f"/{photo.image.name}")
    # The redirect may be reused only while the URL it names is still valid.
    cache_control = response["Cache-Control"]
    assert cache_control.startswith("private, max-age=")
    assert int(cache_control.rsplit("=", 1)[1]) <= settings.STUDIO_MEDIA_URL_SECONDS // 2

    served = fetch(response)
    assert served.status == 200 and served.headers["content-type"] == "image/jpeg"
    assert served.body == _stored(photo.image)
    assert served.headers["cache-control"].startswith("private")
    with Image.open(io.BytesIO(served.body)) as image:
        assert image.size == (photo.width, photo.height)


def test_someone_else_gets_404_and_never_a_url(result, other_client):
    photo = result.job.photo
    for url in (f"/photos/{photo.pk}/image", f"/photos/{photo.pk}/image?size=thumb",
                f"/results/{result.pk}/image", f"/results/{result.pk}/image?size=thumb",
                f"/results/{result.pk}/download"):
        response = other_client.get(url)
        assert response.status_code == 404, url
        assert "Location" not in response and b"X-Amz" not in response.content, url


def test_objects_are_private_without_a_signature(result, owner_client):
    signed = owner_client.get(f"/results/{result.pk}/image")["Location"]
    unsigned = signed.split("?", 1)[0]
    with httpx.Client(trust_env=False, timeout=10) as client:
        assert client.get(signed).status_code == 200
        assert client.get(unsigned).status_code == 403  # the object itself is not public
    acl = result.image.storage.connection.meta.client.get_object_acl(
        Bucket=result.image.storage.bucket_name, Key=result.image.storage._normalize_name(result.image.name)
    )
    assert not [g for g in acl["Grants"] if "AllUsers" in g["Grantee"].get("URI", "")]


def test_download_is_an_attachment_named_for_the_result(result, owner_client):
    response = owner_client.get(f"/results/{result.pk}/download")
    assert response.status_code == 302 and response["Cache-Control"] == "private, no-store"
    served = fetch(response)
    assert served.status == 200
    disposition = served.headers["content-disposition"]
    assert disposition.startswith("attachment") and result.download_name() in disposition
    with Image.open(io.BytesIO(served.body)) as image:
        assert image.size == (result.width, result.height)


def test_share_image_is_signed_until_the_link_is_revoked(result, owner_client):
    owner_client.post(f"/results/{result.pk}/share", {"enabled": "1"}, headers=HTMX)
    token = ShareLink.objects.get().token
    stranger = Client()
    shared = fetch(stranger.get(f"/s/{token}/image"))
    assert shared.redirected and shared.status == 200 and shared.body == _stored(result.image)
    assert stranger.get(f"/s/{token}/before").status_code == 404  # not ticked

    owner_client.post(f"/results/{result.pk}/share", {"enabled": "0"}, headers=HTMX)
    revoked = stranger.get(f"/s/{token}/image")
    assert revoked.status_code == 404 and "Location" not in revoked


def test_vendor_links_stream_the_photo_instead_of_redirecting(photo):
    """Vendors' downloaders need not follow redirects: the signed vendor link streams from S3."""
    from studio import signed_media

    response = Client().get(f"/v/{signed_media.photo_token(photo.pk)}/")
    assert response.status_code == 200 and "Location" not in response
    assert response.content == _stored(photo.image)


def test_the_csp_lets_pages_show_images_from_the_bucket(photo, owner_client):
    signed = owner_client.get(f"/photos/{photo.pk}/image")["Location"]
    parts = urlsplit(signed)
    page = Client().get("/")
    img_src = next(d for d in page["Content-Security-Policy"].split("; ") if d.startswith("img-src"))
    assert f"{parts.scheme}://{parts.netloc}" in img_src.split()
