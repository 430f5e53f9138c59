"""Serving stored photos and results, after the caller's ownership check.

On local disk the web process streams the file. On S3 (AWS_STORAGE_BUCKET_NAME)
objects are private and the view answers with a redirect to a signed URL that
expires after STUDIO_MEDIA_URL_SECONDS, so image bytes go straight from the
bucket to the browser. Either way only a view that has checked who is asking
ever hands out an image: a signed URL is a capability for one object, for a
few minutes, never a public path.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.utils.http import content_disposition_header


def signs_urls(storage) -> bool:
    """Can this storage hand out expiring signed URLs (S3 with query-string auth)?"""
    return bool(getattr(storage, "querystring_auth", False)) and hasattr(storage, "bucket_name")


def serve(field, content_type: str, *, download_name: str | None = None, public: bool = False,
          max_age: int = 3600, missing: str = "This image is no longer stored."):
    """The stored file of `field`: streamed from disk, or a redirect to a signed URL.

    `public` marks images anyone may see (catalogue thumbnails, active
    template covers) so shared caches may keep them; everything else is
    private to the browser that asked. `max_age=0`: not kept at all.
    """
    if not field:
        raise Http404(missing)
    if signs_urls(field.storage):
        return _signed_redirect(field, content_type, download_name=download_name, public=public, max_age=max_age)
    try:
        fh = field.open("rb")
    except (FileNotFoundError, ValueError):
        raise Http404(missing) from None
    response = FileResponse(
        fh, content_type=content_type, as_attachment=bool(download_name), filename=download_name or ""
    )
    response["Cache-Control"] = _cache_control(public, max_age)
    return response


def _cache_control(public: bool, max_age: int) -> str:
    return f"{'public' if public else 'private'}, max-age={max_age}" if max_age > 0 else "private, no-store"


def _signed_redirect(field, content_type, *, download_name, public, max_age):
    expire = settings.STUDIO_MEDIA_URL_SECONDS
    # S3 answers with these headers (they are part of the signature, so they can't be changed).
    parameters = {"ResponseContentType": content_type, "ResponseCacheControl": _cache_control(public, max_age)}
    if download_name:
        parameters["ResponseContentDisposition"] = content_disposition_header(True, download_name)
    response = HttpResponseRedirect(field.storage.url(field.name, parameters=parameters, expire=expire))
    # A browser may reuse the redirect only while its target stays valid for a
    # good while; reusing it lets it reuse the image it fetched from there.
    keep = 0 if download_name else min(max_age, expire // 2)
    response["Cache-Control"] = _cache_control(public, keep)
    return response


def storage_origin() -> str | None:
    """The origin signed media URLs point at (for the CSP's img-src), or None on local disk."""
    from django.core.files.storage import default_storage

    if not signs_urls(default_storage):
        return None
    # Built by the storage's own client, so endpoint, region and addressing
    # style all count; unsigned, so no credentials are looked up for it.
    client = default_storage.unsigned_connection.meta.client
    probe = client.generate_presigned_url("get_object", Params={"Bucket": default_storage.bucket_name, "Key": "probe"})
    parts = urlsplit(probe)
    return f"{parts.scheme}://{parts.netloc}"
