"""Vendor style catalogues: synced into our database, read only from there.

A catalogue is what a "style" parameter offers (Perfect Corp's hairstyles,
wigs, bangs, …, vendor-apis.md §1.6.3–1.6.4). `styles_sync` walks the
vendor's paginated group and style lists through the provider, upserts them,
caches each thumbnail on our storage (re-encoded, so nothing of the vendor's
file travels on) and marks what the vendor no longer lists. The picker and
the validation of a submitted style read only the database: a page view
never calls the vendor, and the vendor's rate limit is spent once a day.

Style ids exceed 2**53, so they are kept as exact digit strings end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.core.files.base import ContentFile
from django.db.models import Prefetch
from django.utils import timezone

from studio import imaging
from studio.errors import UserFacingError
from studio.models import Style, StyleGroup
from studio.operations import OPERATIONS, Operation, Param
from studio.vendors.base import VendorError, get_provider

log = logging.getLogger(__name__)

THUMB_LONG_SIDE = 256
THUMB_MAX_BYTES = 5 * 1024 * 1024


class StyleNotOffered(UserFacingError):
    """A submitted style id that is unknown, hidden or withdrawn."""


# --- Reads (the picker and validation) -------------------------------------------


def style_params(op: Operation) -> list[Param]:
    return [param for param in op.params if param.kind == "style"]


def catalogues(feature: str | None = None) -> list[tuple[str, str]]:
    """(provider, feature) of every catalogue some operation offers, in catalogue order."""
    found: list[tuple[str, str]] = []
    for op in OPERATIONS.values():
        for param in style_params(op):
            key = (op.provider, param.catalogue)
            if key not in found and (feature is None or param.catalogue == feature):
                found.append(key)
    return found


def offered_groups(provider: str, feature: str) -> list[StyleGroup]:
    """Visible groups of a catalogue, each with `.offered_styles` (featured first); empty groups left out."""
    styles = Style.objects.filter(hidden=False, available=True).order_by("-featured", "position", "name")
    groups = (
        StyleGroup.objects.filter(provider=provider, feature=feature, hidden=False, available=True)
        .order_by("position", "name")
        .prefetch_related(Prefetch("styles", queryset=styles, to_attr="offered_styles"))
    )
    return [group for group in groups if group.offered_styles]


def style_resolve(op: Operation, param: Param, style_id: str) -> Style:
    """The offered style with this vendor id in the operation's catalogue, or StyleNotOffered."""
    style = (
        Style.objects.select_related("group")
        .filter(
            style_id=style_id,
            hidden=False,
            available=True,
            group__provider=op.provider,
            group__feature=param.catalogue,
            group__hidden=False,
            group__available=True,
        )
        .order_by("group__position")
        .first()
    )
    if style is None:
        raise StyleNotOffered(f"That {param.label.lower()} is no longer offered. Please pick another one.")
    return style


def style_of_job(job) -> Style | None:
    """The style a job ran with, for display (also when it has since been hidden)."""
    op = job.operation_spec
    if op is None:
        return None
    for param in style_params(op):
        style_id = job.params.get(param.name)
        if style_id:
            rows = Style.objects.filter(
                style_id=str(style_id), group__provider=op.provider, group__feature=param.catalogue
            )
            group_id = job.params.get("style_group_id")
            if group_id:
                rows = rows.filter(group__group_id=str(group_id))
            return rows.first()
    return None


# --- Sync (management command, admin action, daily schedule) -----------------------


@dataclass
class SyncReport:
    provider: str
    feature: str
    groups: int = 0
    styles: int = 0
    thumbnails: int = 0
    vanished: int = 0
    error: str = ""
    thumbnail_errors: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.error:
            return f"{self.provider}/{self.feature}: not synced: {self.error}"
        text = (
            f"{self.provider}/{self.feature}: {self.groups} groups, {self.styles} styles, "
            f"{self.thumbnails} thumbnails fetched, {self.vanished} no longer listed"
        )
        if self.thumbnail_errors:
            text += f", {len(self.thumbnail_errors)} thumbnails failed"
        return text


def styles_sync(*, feature: str | None = None) -> list[SyncReport]:
    """Sync every catalogue (or one feature's) from its vendor; one report per catalogue.

    A catalogue whose vendor is unavailable or fails is reported and left as
    it was; the others still sync.
    """
    reports = []
    for provider_key, catalogue in catalogues(feature):
        report = SyncReport(provider_key, catalogue)
        reports.append(report)
        provider = get_provider(provider_key)
        reason = provider.unavailable_reason()
        if reason:
            report.error = reason
            continue
        try:
            _sync_catalogue(provider, catalogue, report)
        except VendorError as exc:
            report.error = exc.message
        log.info("style sync: %s", report)
    return reports


def _sync_catalogue(provider, feature: str, report: SyncReport) -> None:
    started = timezone.now()
    http = None
    # List everything first: a listing that fails half-way must not mark the
    # rest of the catalogue as vanished.
    listing = []
    for group in provider.list_style_groups(feature):
        listing.append((group, list(provider.list_styles(feature, group["id"]))))
    try:
        for group_position, (raw_group, raw_styles) in enumerate(listing):
            group, _ = StyleGroup.objects.update_or_create(
                provider=provider.key,
                feature=feature,
                group_id=str(raw_group["id"]),
                defaults={
                    "name": (raw_group.get("title") or "").strip()[:120] or "Styles",
                    "position": group_position,
                    "available": True,
                    "synced_at": started,
                },
            )
            report.groups += 1
            for position, raw in enumerate(raw_styles):
                style, _ = Style.objects.update_or_create(
                    group=group,
                    style_id=str(raw["id"]),
                    defaults={
                        "name": (raw.get("title") or "").strip()[:120] or f"Style {position + 1}",
                        "position": position,
                        "available": True,
                        "synced_at": started,
                    },
                )
                report.styles += 1
                url = raw.get("thumb") or ""
                if url and (url != style.vendor_thumb_url or not style.thumbnail):
                    http = http or provider.catalogue_http()
                    try:
                        _store_thumbnail(style, url, http)
                        report.thumbnails += 1
                    except (VendorError, imaging.ImageRejected) as exc:
                        report.thumbnail_errors.append(f"{style.style_id}: {exc.message}")
    finally:
        if http is not None:
            http.close()
    report.vanished = _mark_vanished(provider.key, feature, started)


def _store_thumbnail(style: Style, url: str, http) -> None:
    data, _ = http.download(url, max_bytes=THUMB_MAX_BYTES, max_seconds=30)
    image = imaging.load_image(data, max_long_side=THUMB_LONG_SIDE * 2, max_bytes=THUMB_MAX_BYTES)
    small = imaging.resize_long_side(image, THUMB_LONG_SIDE)
    old = style.thumbnail.name if style.thumbnail else ""
    style.thumbnail.save(f"{style.style_id}.jpg", ContentFile(imaging.encode_jpeg(small, quality=85)), save=False)
    style.thumb_width, style.thumb_height = small.size
    style.vendor_thumb_url = url[:1000]
    style.save(update_fields=["thumbnail", "thumb_width", "thumb_height", "vendor_thumb_url"])
    if old and old != style.thumbnail.name:
        style.thumbnail.storage.delete(old)


def _mark_vanished(provider: str, feature: str, started) -> int:
    """Styles and groups this sync did not see: kept (jobs refer to them) but no longer offered."""
    StyleGroup.objects.filter(provider=provider, feature=feature, synced_at__lt=started).update(available=False)
    return Style.objects.filter(
        group__provider=provider, group__feature=feature, synced_at__lt=started, available=True
    ).update(available=False)


def sync_summary(reports: Iterable[SyncReport]) -> str:
    return "; ".join(str(report) for report in reports) or "No style catalogues to sync."
