"""Signed photo links for vendors: one photo's normalized JPEG, for minutes, and nothing else."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.core import signing
from django.test import Client

from studio import signed_media
from studio.ownership import Owner
from studio.photos import photo_create, photo_delete

pytestmark = pytest.mark.django_db

OWNER = Owner(visitor_id="visitor-signed")


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="secret-name.jpg")


def path_of(url: str) -> str:
    return urlsplit(url).path


def stored(photo) -> bytes:
    with photo.image.open("rb") as fh:
        return fh.read()


def test_a_valid_link_serves_exactly_the_normalized_photo_to_anyone(settings, photo):
    settings.STUDIO_PUBLIC_URL = "https://studio.example"
    url = signed_media.photo_url(photo.pk)
    assert url.startswith("https://studio.example/v/")

    response = Client().get(path_of(url))  # a stranger: no session, no cookies
    assert response.status_code == 200
    assert response.content == stored(photo)
    assert response["Content-Type"] == "image/jpeg"
    assert "Content-Disposition" not in response, "the stored file name stays private"
    assert "no-store" in response["Cache-Control"]
    assert not response.cookies


def test_the_link_expires(settings, monkeypatch, photo):
    settings.STUDIO_SIGNED_URL_SECONDS = 600
    path = path_of(signed_media.photo_url(photo.pk))
    now = signed_media.clock()
    monkeypatch.setattr(signed_media, "clock", lambda: now + 590)
    assert Client().get(path).status_code == 200
    monkeypatch.setattr(signed_media, "clock", lambda: now + 610)
    assert Client().get(path).status_code == 404


def test_tampered_and_foreign_tokens_are_refused(photo, two_faces_jpeg):
    other = photo_create(owner=OWNER, data=two_faces_jpeg, filename="other.jpg")
    token = signed_media.photo_token(photo.pk)
    value, timestamp, signature = token.rsplit(":", 2)
    forged = [
        f"{other.pk}:{timestamp}:{signature}",  # another photo under this signature
        f"{value}:{timestamp}:{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}",
        f"{value}:{signing.b62_encode(signing.b62_decode(timestamp) + 3600)}:{signature}",  # renewed by hand
        signing.TimestampSigner().sign(str(photo.pk)),  # the right id, signed without our salt
        signing.TimestampSigner(salt="studio.other").sign(str(photo.pk)),
        signing.dumps(str(photo.pk)),
        str(photo.pk),
        "not-a-token",
    ]
    for bad in forged:
        response = Client().get(f"/v/{bad}/")
        assert response.status_code == 404, bad
        assert str(photo.pk) not in response.content.decode(errors="ignore")


def test_it_reveals_nothing_else(photo):
    token = signed_media.photo_token(photo.pk)
    client = Client()
    assert client.get(f"/v/{token}/").status_code == 200
    assert client.post(f"/v/{token}/").status_code == 405
    for path in (f"/v/{token}/thumbnail", f"/v/{token}/../", "/v/", f"/v/{token}/x", f"/photos/{photo.pk}/image"):
        assert client.get(path).status_code == 404, path


def test_a_deleted_photo_is_gone_from_its_link(photo):
    path = path_of(signed_media.photo_url(photo.pk))
    photo_delete(photo=photo)
    assert Client().get(path).status_code == 404
