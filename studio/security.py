"""Web-security plumbing: response headers, the request-size cap, refusals.

Django 5.2 has no built-in Content-Security-Policy. Ours is one fixed policy
(the pages carry no inline scripts or styles, so no nonces are needed), which
a dozen lines send better than a dependency with its own settings format.
Django 6.0's built-in CSP can replace this middleware later.

A refusal (too large, too many requests) is an expected answer, not an
error: it carries a sentence the user can act on. For htmx requests it is
swapped into the page's #alerts region (base.html lets htmx swap 413 and 429
responses); for plain requests it is a small page.
"""

from __future__ import annotations

from django.conf import settings
from django.template.loader import render_to_string

PERMISSIONS_POLICY = "camera=(self), microphone=(), geolocation=(), payment=(), usb=()"


def content_security_policy() -> str:
    from studio.media import storage_origin

    # Media on S3 reaches the browser through redirects to signed bucket URLs,
    # and img-src applies to a redirect's target too.
    media = [origin] if (origin := storage_origin()) else []
    img_src = " ".join(["'self'", "data:", "blob:", *media, *settings.STUDIO_CSP_EXTRA_IMG_SRC.split()])
    directives = [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        f"img-src {img_src}",  # blob: previews a picked photo before it is uploaded
        "font-src 'self'",
        "connect-src 'self'",
        "media-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
    if getattr(settings, "SECURE_SSL_REDIRECT", False):
        directives.append("upgrade-insecure-requests")
    return "; ".join(directives)


class SecurityHeadersMiddleware:
    """Adds CSP and Permissions-Policy to every response (Django sets the rest)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.csp = content_security_policy()

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.csp)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response


def refusal(request, message: str, *, status: int, retry_after: int | None = None):
    """An answer that refuses a request with a message the user can act on."""
    from django.http import HttpResponse

    if request.headers.get("HX-Request") == "true":
        body = render_to_string("studio/partials/alert.html", {"message": message})
        response = HttpResponse(body, status=status)
        response["HX-Retarget"] = "#alerts"
        response["HX-Reswap"] = "innerHTML"
    else:
        body = render_to_string("studio/refused.html", {"message": message, "status": status}, request=request)
        response = HttpResponse(body, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    response["Cache-Control"] = "no-store"
    return response


class RequestSizeLimitMiddleware:
    """Refuse a body larger than STUDIO_MAX_REQUEST_MB before anything reads it.

    Django's own DATA_UPLOAD_MAX_MEMORY_SIZE covers ordinary form fields; this
    cap covers the whole request, files included, so a 1 GB "photo" costs us
    nothing but this check.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.STUDIO_MAX_REQUEST_MB * 1024 * 1024
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            return refusal(
                request,
                f"This upload is too large. Photos can be up to {settings.STUDIO_MAX_UPLOAD_MB} MB; "
                "please pick a smaller one or export it at a lower size.",
                status=413,
            )
        return self.get_response(request)
