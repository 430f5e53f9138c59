"""Take-home formats for a result: a passport print sheet and a JPEG under a file-size cap.

A photo lab prints 6×4 in (10×15 cm) at 300 dpi; a 35×45 mm passport photo
is 413×531 px at that resolution, so eight copies fit on one landscape sheet,
with cut marks in the gaps between them. Online forms often cap the upload
("at most 240 KB"): `jpeg_at_most` finds the best quality, then the largest
size, that stays under the cap. Neither output carries metadata beyond the
JFIF resolution (300 dpi on the sheet, so it prints at true size).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw

from studio import imaging

DPI = 300
SHEET_INCHES = (6, 4)  # landscape 4×6 in; 10×15 cm labs print it the same
PASSPORT_MM = (35, 45)
CUT_MARK_PX = 18  # 1.5 mm: visible to the scissors, well clear of the photos
MIN_GAP_PX = 12  # 1 mm between neighbouring copies at least

# File-size caps the export offers; forms commonly ask for one of these (any value in range works).
SIZE_CAPS_KB = (50, 100, 240, 500, 1000)
MIN_CAP_KB, MAX_CAP_KB = 10, 5000
MIN_EXPORT_SIDE = 200  # below this a photo is no use to any form


@dataclass(frozen=True)
class Sheet:
    image: Image.Image
    boxes: tuple[tuple[int, int, int, int], ...]  # (left, top, right, bottom) of each copy

    @property
    def copies(self) -> int:
        return len(self.boxes)

    def jpeg(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="JPEG", quality=95, optimize=True, dpi=(DPI, DPI))
        return buf.getvalue()


def mm_to_px(mm: float) -> int:
    return round(mm / 25.4 * DPI)


def passport_sheet(photo: Image.Image, *, photo_mm: tuple[float, float] = PASSPORT_MM) -> Sheet:
    """As many copies of `photo` (resized to `photo_mm` at 300 dpi) as fit on a 6×4 in sheet."""
    sheet_w, sheet_h = SHEET_INCHES[0] * DPI, SHEET_INCHES[1] * DPI
    copy_w, copy_h = mm_to_px(photo_mm[0]), mm_to_px(photo_mm[1])
    # Copies per row and column, leaving at least MIN_GAP_PX around every copy.
    cols = max(1, (sheet_w - MIN_GAP_PX) // (copy_w + MIN_GAP_PX))
    rows = max(1, (sheet_h - MIN_GAP_PX) // (copy_h + MIN_GAP_PX))
    gap_x = (sheet_w - cols * copy_w) // (cols + 1)
    gap_y = (sheet_h - rows * copy_h) // (rows + 1)

    copy = imaging.to_rgb(photo).resize((copy_w, copy_h), Image.Resampling.LANCZOS)
    sheet = Image.new("RGB", (sheet_w, sheet_h), "white")
    boxes = []
    for row in range(rows):
        for col in range(cols):
            left = gap_x + col * (copy_w + gap_x)
            top = gap_y + row * (copy_h + gap_y)
            sheet.paste(copy, (left, top))
            boxes.append((left, top, left + copy_w, top + copy_h))
    # Half a gap at most, so the marks of two neighbours never run into one line.
    _cut_marks(sheet, boxes, reach=min(CUT_MARK_PX, gap_x // 2, gap_y // 2))
    return Sheet(sheet, tuple(boxes))


def _cut_marks(sheet: Image.Image, boxes, *, reach: int) -> None:
    """Short grey lines continuing each copy's edges into the gap, never onto a photo."""
    if reach <= 2:
        return
    draw = ImageDraw.Draw(sheet)
    grey = (120, 120, 120)
    for left, top, right, bottom in boxes:
        for x in (left, right - 1):
            draw.line([(x, top - reach), (x, top - 3)], fill=grey)
            draw.line([(x, bottom + 2), (x, bottom + reach - 1)], fill=grey)
        for y in (top, bottom - 1):
            draw.line([(left - reach, y), (left - 3, y)], fill=grey)
            draw.line([(right + 2, y), (right + reach - 1, y)], fill=grey)


class CapTooSmall(ValueError):
    """Even the smallest useful JPEG of this photo is larger than the cap."""


def jpeg_at_most(image: Image.Image, max_bytes: int) -> bytes:
    """A metadata-free JPEG of `image` no larger than `max_bytes`.

    Quality first (a binary search between 40 and 95 at full size), then size:
    the image shrinks by a tenth at a time, each step again searching quality,
    until it fits or its short side would drop under MIN_EXPORT_SIDE.
    """
    image = imaging.to_rgb(image)
    while True:
        found = _best_quality_under(image, max_bytes)
        if found is not None:
            return found
        w, h = image.size
        scale = 0.9
        if min(w, h) * scale < MIN_EXPORT_SIDE:
            raise CapTooSmall(
                f"This photo can't be made smaller than {max_bytes // 1024} KB and stay usable. "
                "Try a larger limit."
            )
        image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)


def _best_quality_under(image: Image.Image, max_bytes: int) -> bytes | None:
    low, high, best = 40, 95, None
    while low <= high:
        quality = (low + high) // 2
        data = imaging.encode_jpeg(image, quality=quality)
        if len(data) <= max_bytes:
            best, low = data, quality + 1
        else:
            high = quality - 1
    return best


def is_passport(job) -> bool:
    """Whether a job's results are passport crops (the only ones a print sheet is offered for)."""
    return job.operation == "headshot_crop" and job.params.get("preset") == "passport"
