"""Favourites and ZIP downloads: a batch, the favourites, the whole gallery, streamed."""

from __future__ import annotations

import io
import uuid
import zipfile

import pytest
from django.http import StreamingHttpResponse
from PIL import Image

from studio.models import Job, Result
from tests.media import fetch
from tests.test_views import HTMX, photo, result, run_job  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)


def _zip(response) -> zipfile.ZipFile:
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse), "a ZIP is streamed, not built in memory"
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith("attachment;")
    chunks = list(response.streaming_content)
    assert len(chunks) > 2  # handed over entry by entry
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None  # every entry's CRC checks out
    return archive


def _finished(client, photo, **params) -> Job:  # noqa: F811
    job, _ = run_job(client, photo, **params)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error_message
    return job


def test_gallery_zip_has_every_result_at_full_size_and_as_a_profile_picture(owner_client, photo):  # noqa: F811
    retouch = _finished(owner_client, photo, strength="0.7")
    crop = _finished(owner_client, photo, operation="headshot_crop", preset="passport")
    archive = _zip(owner_client.get("/gallery/download.zip"))
    names = sorted(archive.namelist())
    assert len(names) == 4
    full = [n for n in names if n.startswith("full-size/")]
    profiles = [n for n in names if n.startswith("profile-600/")]
    assert len(full) == len(profiles) == 2
    assert any("studio-retouch" in n for n in full) and any("headshot-crop-passport" in n for n in full)
    for result in (retouch.results.get(), crop.results.get()):
        (entry,) = [n for n in full if ("passport" in n) == (result.job_id == crop.pk)]
        with archive.open(entry) as fh, Image.open(fh) as image:
            assert image.size == (result.width, result.height)
            assert not image.getexif()
        with result.image.open("rb") as fh:
            assert archive.read(entry) == fh.read(), "the full-size entry is the stored file itself"
    for entry in profiles:
        with archive.open(entry) as fh, Image.open(fh) as image:
            assert image.size == (600, 600) and image.format == "JPEG" and not image.getexif()


def test_favourites_are_marked_and_unmarked_and_only_they_go_in_their_zip(owner_client, photo):  # noqa: F811
    first = _finished(owner_client, photo, strength="0.3").results.get()
    _finished(owner_client, photo, strength="0.9")
    empty = owner_client.get("/gallery/download.zip?favourites=1", follow=True)
    assert "No favourites yet" in empty.content.decode()

    response = owner_client.post(f"/results/{first.pk}/favourite", {"favourite": "1"}, headers=HTMX)
    assert response.status_code == 200 and "★ Favourite" in response.content.decode()
    first.refresh_from_db()
    assert first.favourite
    archive = _zip(owner_client.get("/gallery/download.zip?favourites=1"))
    assert len(archive.namelist()) == 2  # one result, two sizes

    owner_client.post(f"/results/{first.pk}/favourite", {"favourite": "0"})
    assert not Result.objects.get(pk=first.pk).favourite


def test_batch_zip_holds_that_batch_only_with_names_kept_apart(owner_client, photo):  # noqa: F811
    _finished(owner_client, photo, strength="0.5")  # another submission: not in the batch
    crops = [_finished(owner_client, photo, operation="headshot_crop", preset=p) for p in ("1:1", "4:5")]
    # One submission of several looks shares a batch (studio.jobs.create.job_create_batch); the same here.
    batch = uuid.uuid4()
    Job.objects.filter(pk__in=[job.pk for job in crops]).update(batch=batch)
    archive = _zip(owner_client.get(f"/compare/{batch}/download.zip"))
    expected = Result.objects.filter(job__batch=batch).count()
    assert expected == 2 and len(archive.namelist()) == 2 * expected
    assert len(set(archive.namelist())) == len(archive.namelist())
    assert not any("retouch" in n for n in archive.namelist())


def test_nobody_else_gets_a_zip_or_a_favourite(owner_client, other_client, result):  # noqa: F811
    assert other_client.post(f"/results/{result.pk}/favourite", {"favourite": "1"}).status_code == 404
    assert not Result.objects.get(pk=result.pk).favourite
    assert other_client.get(f"/compare/{result.job.batch}/download.zip").status_code == 404
    # Another visitor's gallery ZIP is their own: empty, so a message, not the owner's results.
    response = other_client.get("/gallery/download.zip", follow=True)
    assert response.status_code == 200 and "No results to download yet." in response.content.decode()


def test_a_share_link_offers_the_download_only_when_its_owner_allows_it(owner_client, client, result):  # noqa: F811
    owner_client.post(f"/results/{result.pk}/share", {"enabled": "1"})
    token = result.share_links.get().token
    assert client.get(f"/s/{token}/download").status_code == 404
    assert client.get(f"/s/{token}/download.zip").status_code == 404
    assert "share-download" not in client.get(f"/s/{token}").content.decode()

    owner_client.post(f"/results/{result.pk}/share", {"enabled": "1", "allow_download": "1"})
    assert result.share_links.get().token == token  # the same link, now with downloads
    page = client.get(f"/s/{token}").content.decode()
    assert "share-download" in page
    fetched = fetch(client.get(f"/s/{token}/download"))  # on S3: a redirect to a signed URL, followed
    assert fetched.status == 200
    assert fetched.headers.get("content-disposition", "").startswith("attachment")
    with result.image.open("rb") as fh:
        assert fetched.body == fh.read()

    # The ZIP: the result at full size and its profile copy, nothing else.
    assert "share-zip" in page
    archive = _zip(client.get(f"/s/{token}/download.zip"))
    names = archive.namelist()
    assert len(names) == 2 and names[0].startswith("full-size/") and names[1].startswith("profile-600/")
    with result.image.open("rb") as fh:
        assert archive.read(names[0]) == fh.read()
    assert Image.open(io.BytesIO(archive.read(names[1]))).size == (600, 600)

    owner_client.post(f"/results/{result.pk}/share", {"enabled": "0"})
    assert client.get(f"/s/{token}/download").status_code == 404
    assert client.get(f"/s/{token}/download.zip").status_code == 404
