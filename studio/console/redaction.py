"""Remove secrets from vendor payloads before staff see them.

Job.vendor_meta is meant to hold no secrets, and vendor_state may hold
whatever a provider needs to resume (upload ids, signed upload URLs, tokens).
The console shows both, so everything passes through `redact` first: values
under secret-looking keys are replaced, query strings of URLs (where signed
URLs carry their signatures) are dropped, and bearer tokens and JWTs found
inside any text are replaced too.
"""

from __future__ import annotations

import re
from typing import Any

REMOVED = "[removed]"

# A key is secret when one of its words is one of these ("x-api-key",
# "id_token", "accessToken", "Authorization", "upload_signature", ...).
SECRET_WORDS = frozenset(
    {
        "token",
        "tokens",
        "key",
        "apikey",
        "secret",
        "secrets",
        "password",
        "passwd",
        "authorization",
        "auth",
        "signature",
        "sig",
        "signed",
        "credential",
        "credentials",
        "cookie",
        "cookies",
        "session",
        "bearer",
        "private",
    }
)
# Keys that contain a secret word but are known to be harmless identifiers.
SAFE_KEYS = frozenset({"key_id"})

_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# scheme://host/path?query#fragment — the query and fragment are dropped.
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)[?#][^\s\"'<>]*[^\s\"'<>.,;:!?)]")
_BEARER = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b")


def key_is_secret(key: Any) -> bool:
    text = _CAMEL.sub("_", str(key)).lower()
    if text in SAFE_KEYS:
        return False
    words = [word for word in _WORD_SPLIT.split(text) if word]
    return any(word in SECRET_WORDS for word in words) or "apikey" in text.replace("_", "").replace("-", "")


def redact_text(text: str) -> str:
    text = _URL_QUERY.sub(lambda m: f"{m.group(1)}?{REMOVED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REMOVED}", text)
    return _JWT.sub(REMOVED, text)


def redact(value: Any) -> Any:
    """A copy of `value` (JSON-like) with every secret replaced by "[removed]"."""
    if isinstance(value, dict):
        return {
            key: (REMOVED if key_is_secret(key) and item not in (None, "") else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
