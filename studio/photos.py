"""Photos: an upload (or a result picked for chaining) stored as a normalized Photo, and deleted."""

from __future__ import annotations

from django.conf import settings
from django.core.files.base import ContentFile

from studio import imaging
from studio.models import Photo, Result
from studio.ownership import Owner


def _clean_filename(name: str) -> str:
    """A display-only version of the client's filename: no path, no control chars."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:120]


def photo_create(*, owner: Owner, data: bytes, filename: str = "", source_result=None) -> Photo:
    """Ingest uploaded bytes into a stored, normalized Photo (raises ImageRejected)."""
    ingested = imaging.ingest(data, max_bytes=settings.STUDIO_MAX_UPLOAD_MB * 1024 * 1024)
    photo = Photo(
        **owner.fields(),
        width=ingested.width,
        height=ingested.height,
        byte_size=len(ingested.jpeg),
        source_format=ingested.source_format,
        faces=[box.as_list() for box in ingested.faces],
        original_name=_clean_filename(filename),
        source_result=source_result,
    )
    photo.image.save("photo.jpg", ContentFile(ingested.jpeg), save=False)
    photo.thumbnail.save("thumb.jpg", ContentFile(ingested.thumbnail), save=False)
    photo.save()
    return photo


def photo_from_result(*, owner: Owner, result: Result) -> Photo:
    """Chaining: make a result the input photo of another operation."""
    return photo_create(
        owner=owner, data=read_stored(result.image), filename=f"{result.label or 'result'}.jpg", source_result=result
    )


def photo_delete(*, photo: Photo) -> None:
    photo.delete()  # files go in the post_delete handler, after commit


def read_stored(field) -> bytes:
    """The bytes of a stored file (a photo, a result, a mask)."""
    with field.open("rb") as fh:
        return fh.read()
