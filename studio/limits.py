"""Abuse limits: uploads and jobs per hour, concurrent jobs per owner.

Hourly counts live in Django's cache (the database, or Redis with
REDIS_URL: shared, so every web process sees the same numbers) in fixed
one-hour windows, per owner and, more generously, per client address:
several people can share one address, and one person can clear cookies to
become a new visitor. Concurrent jobs are counted from the job table itself,
which is the truth and needs no expiry.

A refused attempt still counts, so retrying in a loop does not help. The
database cache's increment is not atomic (Redis's is); a burst may slip a
request or two past a limit, which is fine for a limit meant to stop abuse.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from functools import wraps

from django.conf import settings
from django.core.cache import cache

from studio.errors import UserFacingError
from studio.models import Job
from studio.ownership import Owner, owner_for

WINDOW_SECONDS = 3600
clock = time.time  # tests move it to the next window


class LimitExceeded(UserFacingError):
    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def client_address(request) -> str:
    """The client's address, as a network for IPv6 (one host usually has a /64).

    Behind our TLS proxy the last X-Forwarded-For entry is the one the proxy
    added; entries before it are whatever the client claimed.
    """
    raw = request.META.get("REMOTE_ADDR", "")
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded.strip():
            raw = forwarded.split(",")[-1].strip()
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _owner_key(owner: Owner) -> str:
    return f"u{owner.user_id}" if owner.user_id is not None else f"v{owner.visitor_id}"


def _hit(kind: str, who: str, limit: int) -> tuple[bool, int]:
    """Count one attempt; (within the limit?, seconds until the window resets)."""
    now = clock()
    window = int(now // WINDOW_SECONDS)
    retry_after = int((window + 1) * WINDOW_SECONDS - now)
    # Hashed: keys stay short and no address or session id sits in the cache table.
    digest = hashlib.sha256(who.encode()).hexdigest()[:32]
    key = f"limit:{kind}:{window}:{digest}"
    cache.add(key, 0, timeout=WINDOW_SECONDS + 60)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=WINDOW_SECONDS + 60)
        count = 1
    return count <= limit, max(1, retry_after)


def _minutes(seconds: int) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def check_upload(request, owner: Owner) -> None:
    """Count an upload (or a result reused as a photo); raise LimitExceeded past the limits."""
    _check(
        "uploads",
        request,
        owner,
        settings.STUDIO_UPLOADS_PER_HOUR,
        settings.STUDIO_UPLOADS_PER_HOUR_PER_IP,
        "You have uploaded a lot of photos in the last hour. Please wait {wait} before uploading another.",
    )


def check_job(request, owner: Owner) -> None:
    """Count a job request; raise LimitExceeded past the hourly or the concurrent limit."""
    running = Job.objects.filter(owner.q()).exclude(status__in=Job.TERMINAL).count()
    if running >= settings.STUDIO_MAX_CONCURRENT_JOBS:
        raise LimitExceeded(
            f"You already have {running} jobs in progress. Please wait for one to finish before starting another.",
            retry_after=30,
        )
    _check(
        "jobs",
        request,
        owner,
        settings.STUDIO_JOBS_PER_HOUR,
        settings.STUDIO_JOBS_PER_HOUR_PER_IP,
        "You have started a lot of jobs in the last hour. Please wait {wait} before starting another.",
    )


def _check(kind, request, owner, per_owner, per_ip, message) -> None:
    owner_ok, retry_after = _hit(kind, _owner_key(owner), per_owner)
    ip_ok, _ = _hit(f"{kind}-ip", client_address(request), per_ip)
    if not (owner_ok and ip_ok):
        raise LimitExceeded(message.format(wait=_minutes(retry_after)), retry_after=retry_after)


def limited(kind: str):
    """View decorator: count this request against the `kind` limits ("uploads", "jobs").

    Past a limit the view does not run; the answer is a 429 with a message
    saying how long to wait (swapped into the page for htmx requests).
    """
    from studio.security import refusal

    check = {"uploads": check_upload, "jobs": check_job}[kind]

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            try:
                check(request, owner_for(request, create=True))
            except LimitExceeded as exc:
                return refusal(request, exc.message, status=429, retry_after=exc.retry_after)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
