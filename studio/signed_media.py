"""Short-lived signed links to one photo's normalized JPEG, for vendors that fetch by URL.

Vtrix takes its input image as a URL it downloads itself, while our uploads
are private. A signed link opens exactly one photo's normalized JPEG (already
stripped of metadata), for STUDIO_SIGNED_URL_SECONDS, to whoever holds it,
and reveals nothing else: an invalid, tampered or expired link is a plain
404, as is a link to a photo deleted meanwhile. The token is the photo id
signed with a salt used nowhere else, so no other signature in the app can
be replayed here.
"""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.core import signing
from django.http import Http404, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

SALT = "studio.signed-media.v1"

# The signer's clock; tests move it to make links expire.
clock = time.time


class _Signer(signing.TimestampSigner):
    """TimestampSigner whose notion of "now" is `clock` (when signing and checking age)."""

    def timestamp(self):
        return signing.b62_encode(int(clock()))

    def unsign(self, value, max_age=None):
        result = signing.Signer.unsign(self, value)
        value, timestamp = result.rsplit(self.sep, 1)
        if max_age is not None and clock() - signing.b62_decode(timestamp) > max_age:
            raise signing.SignatureExpired("Signature age exceeds max_age")
        return value


def _signer() -> _Signer:
    return _Signer(salt=SALT)


def photo_token(photo_id) -> str:
    return _signer().sign(str(photo_id))


def photo_url(photo_id) -> str:
    """An absolute URL (under STUDIO_PUBLIC_URL) that serves this photo for a few minutes."""
    path = reverse("studio:signed_media", kwargs={"token": photo_token(photo_id)})
    return settings.STUDIO_PUBLIC_URL.rstrip("/") + path


def photo_id_from_token(token: str) -> uuid.UUID | None:
    """The photo id a still-valid token names, else None."""
    try:
        value = _signer().unsign(token, max_age=settings.STUDIO_SIGNED_URL_SECONDS)
        return uuid.UUID(value)
    except (signing.BadSignature, ValueError):
        return None


@require_GET
def signed_photo(request, token: str):
    """The photo's normalized JPEG and nothing else; 404 for anything not currently valid."""
    from studio.models import Photo

    photo_id = photo_id_from_token(token)
    photo = Photo.objects.filter(pk=photo_id).first() if photo_id else None
    if photo is None:
        raise Http404
    try:
        with photo.image.open("rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ValueError):
        raise Http404 from None
    # Streamed, even from S3 (never a redirect to a signed bucket URL): vendors'
    # downloaders need not follow redirects, and this link outlives those URLs.
    # Not a FileResponse: that would name the stored file in Content-Disposition.
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, no-store"
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response
