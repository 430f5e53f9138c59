"""Hostile and broken input, through the real upload view and the real job runner.

Each file of the generated corpus (tests/corpus.py) is either normalized
correctly or refused with its specific message; never a 500; a job on every
accepted photo reaches a terminal state (the worker never crashes); and a
refusal leaves nothing behind, neither a row nor a file.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from studio.models import Job, Photo
from tests import corpus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.filterwarnings("ignore:Corrupt EXIF data")]
HTMX = {"HX-Request": "true"}
CASES = corpus.build()


def media_files() -> list[str]:
    found = []

    def walk(path):
        dirs, files = default_storage.listdir(path)
        found.extend(f"{path}/{name}".lstrip("/") for name in files)
        for name in dirs:
            walk(f"{path}/{name}".lstrip("/"))

    with contextlib.suppress(FileNotFoundError):  # nothing stored yet (an empty S3 prefix lists nothing)
        walk("")
    return found


def correlation(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("L").resize((128, 128)), dtype=float).ravel()
    y = np.asarray(b.convert("L").resize((128, 128)), dtype=float).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def post_file(client: Client, case: corpus.Case):
    upload = SimpleUploadedFile(case.filename, case.data, case.content_type)
    return client.post("/photos/", {"photo": upload}, headers=HTMX)


@pytest.mark.backend_free
def test_the_corpus_is_big_enough_and_named_uniquely():
    names = [case.name for case in CASES]
    assert len(names) >= 30 and len(set(names)) == len(names)
    assert sum(bool(case.refused) for case in CASES) >= 12
    assert sum(not case.refused for case in CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_file_is_normalized_or_refused_with_its_message(case):
    client = Client(raise_request_exception=False)
    response = post_file(client, case)
    assert response.status_code in (200, 413), response.status_code  # never a 500
    body = response.content.decode()

    if case.refused:
        assert 'data-testid="upload-error"' in body or 'data-testid="alert"' in body
        assert case.refused.lower() in body.lower(), body[-600:]
        assert not Photo.objects.exists()
        assert media_files() == []  # nothing partial left behind
        return

    assert 'data-testid="upload-error"' not in body, body[-600:]
    photo = Photo.objects.get()
    with photo.image.open("rb") as fh:
        data = fh.read()
    stored = Image.open(io.BytesIO(data))
    assert stored.format == "JPEG" and stored.mode == "RGB"
    assert max(stored.size) <= 4096
    assert b"PK\x03\x04" not in data and b"Exif" not in data  # no polyglot tail, no metadata
    if case.faces is not None:
        assert len(photo.faces) == case.faces
    if case.upright:
        assert correlation(stored, corpus.portrait()) > 0.9
    assert "/" not in photo.original_name and "\x00" not in photo.original_name
    assert all(name.startswith(f"photos/{photo.pk}/") for name in media_files())

    # The worker: a job on the photo ends in a terminal state with a message if it fails.
    response = client.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"}, headers=HTMX)
    assert response.status_code == 200
    job = Job.objects.get()
    assert job.status == Job.Status.SUCCEEDED, job.error_message


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-face", "couldn't find a face"),
        ("two-faces", "2 faces"),
        ("tiny-face", ("couldn't find a face", "too small")),
        ("orientation-6", None),
    ],
)
def test_face_rules_answer_with_a_message_not_a_crash(name, message):
    case = next(case for case in CASES if case.name == name)
    client = Client(raise_request_exception=False)
    assert post_file(client, case).status_code == 200
    photo = Photo.objects.get()
    response = client.post("/jobs/", {"photo": str(photo.pk), "operation": "headshot_crop"}, headers=HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    if message is None:
        job = Job.objects.get()
        assert job.status == Job.Status.SUCCEEDED, job.error_message
        return
    messages = message if isinstance(message, tuple) else (message,)
    assert 'data-testid="form-error"' in body
    assert any(m in body.replace("&#x27;", "'") for m in messages), body[-800:]
    assert not Job.objects.exists()


# --- Hostile requests --------------------------------------------------------------------


def test_a_huge_form_field_is_a_clear_400_not_a_500():
    client = Client(raise_request_exception=False)
    response = client.post("/photos/", {"note": "x" * (3 * 1024 * 1024)})
    assert response.status_code == 400
    assert "couldn't read that request" in response.content.decode()
    assert not Photo.objects.exists()


def test_too_many_files_in_one_request_is_a_400():
    client = Client(raise_request_exception=False)
    files = [SimpleUploadedFile(f"{i}.jpg", b"x", "image/jpeg") for i in range(120)]
    response = client.post("/photos/", {"photo": files})
    assert response.status_code == 400
    assert media_files() == []


def test_a_body_that_is_not_multipart_asks_for_a_photo():
    client = Client(raise_request_exception=False)
    jpeg = next(case for case in CASES if case.name == "orientation-1").data
    response = client.post("/photos/", jpeg, content_type="image/jpeg", headers=HTMX)
    assert response.status_code == 200 and "Choose a photo first." in response.content.decode()


def test_a_malformed_multipart_body_is_not_a_500():
    client = Client(raise_request_exception=False)
    response = client.generic(
        "POST",
        "/photos/",
        b'--nope\r\nContent-Disposition: form-data; name="photo"; filename="a.jpg"\r\n\r\nxx',
        content_type="multipart/form-data; boundary=",
        headers=HTMX,
    )
    assert response.status_code in (200, 400)
    assert not Photo.objects.exists()


def test_the_fifty_mb_upload_is_refused_before_it_is_read(settings):
    case = next(case for case in CASES if case.name == "fifty-mb")
    assert len(case.data) > 50 * 1024 * 1024 > settings.STUDIO_MAX_REQUEST_MB * 1024 * 1024
    response = post_file(Client(), case)
    assert response.status_code == 413 and response["HX-Retarget"] == "#alerts"
    assert f"Photos can be up to {settings.STUDIO_MAX_UPLOAD_MB} MB" in response.content.decode()


def test_a_file_between_the_photo_limit_and_the_request_cap_gets_the_photo_message(settings):
    settings.STUDIO_MAX_UPLOAD_MB = 1
    settings.STUDIO_MAX_REQUEST_MB = 5
    data = next(case for case in CASES if case.name == "orientation-1").data + b"\0" * (2 * 1024 * 1024)
    response = Client().post("/photos/", {"photo": SimpleUploadedFile("a.jpg", data, "image/jpeg")}, headers=HTMX)
    assert response.status_code == 200 and "larger than 1 MB" in response.content.decode()
    assert not Photo.objects.exists()


@pytest.mark.backend_free
def test_the_generator_script_writes_the_corpus(tmp_path):
    assert corpus.main(["corpus", str(tmp_path)]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert len(written) == len(CASES)
    heic = next(path for path in tmp_path.iterdir() if path.name.startswith("heic"))
    assert Image.open(io.BytesIO(heic.read_bytes())).size == (512, 512)
