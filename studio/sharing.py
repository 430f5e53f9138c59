"""Sharing a result: its public link turned on (with its options) and off."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from studio.models import Result, ShareLink


def share_enable(
    *, result: Result, show_before: bool = False, allow_download: bool = False, expires_at=None
) -> ShareLink:
    """The active share link of a result, created if there is none (optionally expiring)."""
    wanted = {"show_before": show_before, "allow_download": allow_download, "expires_at": expires_at}
    with transaction.atomic():
        link = next((link for link in result.share_links.all() if link.is_active), None)
        if link is None:
            link = ShareLink.objects.create(result=result, **wanted)
        elif any(getattr(link, name) != value for name, value in wanted.items()):
            for name, value in wanted.items():
                setattr(link, name, value)
            link.save(update_fields=list(wanted))
    return link


def share_disable(*, result: Result) -> int:
    return result.share_links.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
