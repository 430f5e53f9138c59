"""GET /healthz: can this web process reach what it needs to serve a request?

For load balancers and orchestrators: no login, no session, nothing secret in
the answer. Each check touches its service for real (a query, a cache round
trip, a look at the media storage); a failure is named in the JSON and
logged here with its details, and the answer is 503 so the balancer stops
sending traffic to this process.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from django.core.cache import cache
from django.core.files.storage import default_storage
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_safe

log = logging.getLogger(__name__)


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _cache() -> None:
    key, value = f"healthz:{uuid.uuid4().hex}", uuid.uuid4().hex
    cache.set(key, value, timeout=10)
    try:
        if cache.get(key) != value:
            raise RuntimeError("the cache did not return what was just stored in it")
    finally:
        cache.delete(key)


def _storage() -> None:
    if hasattr(default_storage, "bucket_name"):
        # S3: one HEAD on the bucket proves endpoint, credentials and bucket.
        default_storage.connection.meta.client.head_bucket(Bucket=default_storage.bucket_name)
        return
    # Local disk: the storage makes directories as it saves, so the nearest
    # one that exists must be writable.
    path = Path(default_storage.location)
    while not path.exists() and path != path.parent:
        path = path.parent
    if not (path.is_dir() and os.access(path, os.W_OK | os.X_OK)):
        raise PermissionError(f"{path} is not a writable directory")


CHECKS = {"database": _database, "cache": _cache, "storage": _storage}


@require_safe
def healthz(request):
    results = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception:
            log.exception("health check %s failed", name)
            results[name] = "failed"
    healthy = all(outcome == "ok" for outcome in results.values())
    body = {"status": "ok" if healthy else "failed", "checks": results}
    response = JsonResponse(body, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response
