"""Preparing the photo we send to a vendor that documents no input limits of its own."""

from __future__ import annotations

import io

from PIL import Image

from studio import imaging
from studio.vendors.base import VendorError


def jpeg_within(data: bytes, *, long_side: int, max_bytes: int, vendor: str) -> bytes:
    """The normalized JPEG, reduced when its long side exceeds `long_side` (our policy for this vendor)."""
    with Image.open(io.BytesIO(data)) as probe:
        too_big = max(probe.size) > long_side
    if too_big:
        data = imaging.encode_jpeg(imaging.resize_long_side(imaging.load_image(data), long_side))
    if len(data) > max_bytes:
        raise VendorError(
            f"This photo is too large to send to {vendor} ({max_bytes // (1024 * 1024)} MB at most). "
            "Please use a smaller photo."
        )
    return data
