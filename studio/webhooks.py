"""Vendors' webhooks: what a delivery may do, and the per-job callback links.

A webhook only wakes the job it concerns (studio/wakeup.py): the job then
polls the vendor's task as always and stores nothing it did not read there
itself. So a forged or replayed delivery can at most cause one early poll,
and a lost one costs the backstop interval (STUDIO_WEBHOOK_BACKSTOP_SECONDS).

- Perfect Corp signs deliveries (Standard Webhooks, webhook_signatures.py)
  with the secret of the endpoint registered in its console; each
  `webhook-id` is acted on once, across processes (an atomic cache add).
- WaveSpeed's callback URL is given per submit, so it carries a token of
  its own: the job id signed with a salt used nowhere else, valid for the
  job's lifetime. It names its job and no other.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.db.models import Q
from django.urls import reverse

from studio import wakeup, webhook_signatures
from studio.jobs import steps
from studio.models import Job
from studio.vendors.http import is_public_address

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # a task-status notification is a few hundred bytes
WAVESPEED_SALT = "studio.webhooks.wavespeed.v1"
# A webhook-id is remembered a little longer than a delivery stays inside the tolerance.
SEEN_SECONDS = 2 * webhook_signatures.TOLERANCE_SECONDS + 60


def _running(provider: str):
    return Job.objects.filter(provider=provider).exclude(status__in=Job.TERMINAL)


# --- Perfect Corp ------------------------------------------------------------------------


def perfectcorp_delivery(*, secret: str, headers, body: bytes, now: float | None = None) -> int:
    """Act on one signed delivery; returns how many jobs were woken.

    Raises webhook_signatures.InvalidWebhook (nothing happened) for a bad
    signature, a stale or future timestamp, or a body that is not the
    documented payload. A delivery seen before wakes nothing (returns 0).
    """
    message_id = headers.get("webhook-id", "")
    webhook_signatures.verify(
        secret,
        message_id=message_id,
        timestamp=headers.get("webhook-timestamp", ""),
        signature=headers.get("webhook-signature", ""),
        body=body,
        now=time.time() if now is None else now,
    )
    task_id = _perfectcorp_task_id(body)
    if not cache.add(f"studio:webhook-seen:perfectcorp:{message_id}", 1, timeout=SEEN_SECONDS):
        log.info("Perfect Corp webhook %s delivered again; already handled", message_id)
        return 0
    woken = 0
    # The adapter saves a v2 task id in the job's state before the runner copies it
    # to vendor_task_id (and a re-run's task only there): a fast task's webhook finds it either way.
    matching = Q(vendor_task_id=task_id) | Q(vendor_state__task_id=task_id)
    for job_id in _running("perfectcorp").filter(matching).values_list("pk", flat=True):
        _wake(job_id)
        woken += 1
    return woken


def _wake(job_id) -> None:
    """The job's next step is due now if it is parked (studio.jobs.steps); the signal
    first, so a step running now parks and finds it (run.job_park)."""
    wakeup.wake(job_id)
    steps.job_wake(job_id)


def _perfectcorp_task_id(body: bytes) -> str:
    """data.task_id of `{"created_at": …, "data": {"task_id": …, "task_status": …}}`."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    data = payload.get("data") if isinstance(payload, dict) else None
    task_id = data.get("task_id") if isinstance(data, dict) else None
    if not isinstance(task_id, str) or not task_id or len(task_id) > 200:
        raise webhook_signatures.InvalidWebhook("the payload names no task")
    return task_id


# --- WaveSpeed ---------------------------------------------------------------------------


def _wavespeed_signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=WAVESPEED_SALT)


def wavespeed_token(job_id) -> str:
    return _wavespeed_signer().sign(str(job_id))


def wavespeed_callback_url(job_id) -> str:
    path = reverse("studio:webhook_wavespeed", kwargs={"token": wavespeed_token(job_id)})
    return settings.STUDIO_PUBLIC_URL.rstrip("/") + path


def wavespeed_delivery(token: str) -> bool:
    """Wake the job a valid token names; False for a token that is not (or no longer) valid.

    The body is not read: the job polls the prediction itself.
    """
    try:
        job_id = _wavespeed_signer().unsign(token, max_age=settings.STUDIO_JOB_DEADLINE_SECONDS + 3600)
    except signing.BadSignature:
        return False
    job = _running("wavespeed").filter(pk=job_id).values_list("pk", flat=True).first()
    if job is not None:
        _wake(job)
    return True


# --- can the vendor reach us? ---------------------------------------------------------------


def vendor_can_call_back(*, sandboxed: bool) -> bool:
    """Whether a vendor could reach STUDIO_PUBLIC_URL to deliver a webhook.

    An emulator runs on this machine and reaches a loopback address; a real
    vendor cannot reach loopback, private or link-local ones (a host name is
    taken at its word: it may well resolve publicly for the vendor).
    """
    if sandboxed:
        return True
    host = (urlsplit(settings.STUDIO_PUBLIC_URL).hostname or "").lower()
    if not host or host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    return is_public_address(address)
