"""The endpoints vendors call when a task ends (studio/webhooks.py decides what a delivery does).

CSRF-exempt (a vendor has no session), POST only, a small body cap, and
quick: a delivery only wakes a job, the vendor call happens in the worker.
Any delivery we can't accept gets a plain 400 or 404 and changes nothing.
"""

from __future__ import annotations

import logging

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from studio import webhooks
from studio.vendors.base import get_provider
from studio.webhook_signatures import InvalidWebhook

log = logging.getLogger(__name__)


def _body(request) -> bytes | None:
    """The raw body, or None when it is larger than any genuine delivery."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > webhooks.MAX_BODY_BYTES:
        return None
    body = request.body
    return body if len(body) <= webhooks.MAX_BODY_BYTES else None


@csrf_exempt
@require_POST
def perfectcorp(request):
    body = _body(request)
    if body is None:
        return HttpResponse("too large", status=413, content_type="text/plain")
    secret = get_provider("perfectcorp").webhook_secret()
    if not secret:
        log.warning("a Perfect Corp webhook arrived, but PERFECTCORP_WEBHOOK_SECRET is not set")
        return HttpResponse("not configured", status=400, content_type="text/plain")
    try:
        woken = webhooks.perfectcorp_delivery(secret=secret, headers=request.headers, body=body)
    except InvalidWebhook as exc:
        log.warning("refused a Perfect Corp webhook: %s", exc)
        return HttpResponse("invalid", status=400, content_type="text/plain")
    return HttpResponse(f"ok {woken}", status=200, content_type="text/plain")


@csrf_exempt
@require_POST
def wavespeed(request, token: str):
    if _body(request) is None:
        return HttpResponse("too large", status=413, content_type="text/plain")
    if not webhooks.wavespeed_delivery(token):
        return HttpResponse("unknown", status=404, content_type="text/plain")
    return HttpResponse("ok", status=200, content_type="text/plain")
