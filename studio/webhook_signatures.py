"""Standard Webhooks signatures (the scheme Perfect Corp signs its webhooks with).

Restated from the Standard Webhooks specification
(github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md)
as summarised in ../shared/perfectcorp-v2.md §5: three headers,
`webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`,
which holds one or more space-separated `v1,<base64 HMAC-SHA256>` entries;
the HMAC covers "{id}.{timestamp}.{raw body}" with the key that the
`whsec_<base64>` secret decodes to. Pure functions: the view and the
emulators' deliveries share them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

TOLERANCE_SECONDS = 5 * 60  # both ways: the reference libraries' value (Perfect Corp documents none)
SECRET_PREFIX = "whsec_"


class InvalidWebhook(Exception):
    """A delivery that must not be acted on; the message is for our logs, not the sender."""


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_…` secret stands for."""
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidWebhook("the configured webhook secret is not base64") from None
    if not key:
        raise InvalidWebhook("no webhook secret is configured")
    return key


def sign(secret: str, message_id: str, timestamp: int | str, body: bytes) -> str:
    """The `webhook-signature` header value for this delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(secret: str, *, message_id: str, timestamp: str, signature: str, body: bytes, now: float) -> int:
    """Check a delivery; returns its timestamp, or raises InvalidWebhook.

    The signature is checked before the timestamp is trusted, and every
    candidate signature is compared in constant time.
    """
    if not message_id or not timestamp or not signature:
        raise InvalidWebhook("a webhook header is missing")
    if len(message_id) > 200 or not message_id.isprintable():
        raise InvalidWebhook("malformed webhook-id")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidWebhook("malformed webhook-timestamp") from None
    expected = sign(secret, message_id, timestamp, body).encode("ascii")  # the header as sent
    matched = False
    for candidate in signature.split(" ")[:10]:  # a few secrets at most (rotation)
        matched |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
    if not matched:
        raise InvalidWebhook("no signature matches")
    if abs(now - sent_at) > TOLERANCE_SECONDS:
        raise InvalidWebhook("webhook-timestamp outside the tolerance")
    return sent_at
