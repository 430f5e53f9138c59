"""Results as one ZIP, streamed: a batch, the favourites or the whole gallery.

The archive is written entry by entry into a small buffer that is handed to
the response as it fills, so the server holds one image at a time, never
the whole ZIP. zipfile writes to an unseekable stream by putting each
entry's sizes in a data descriptor after its data, which every unzip tool
reads. Images are stored, not deflated: JPEG and PNG are compressed already.

Each result appears twice: at full size, and as a 600×600 profile picture
(the largest centred square, set a little high since portraits put the face
in the upper part). Names say what made the file: operation, style, seed.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator

from PIL import Image

from studio import imaging
from studio.models import Result

PROFILE_SIDE = 600
PROFILE_TOP_BIAS = 0.25  # of the spare height, above the square; 0.5 would centre it


class _Sink(io.RawIOBase):
    """A write-only, unseekable file whose written bytes are taken out in chunks."""

    def __init__(self):
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def zip_chunks(results: Iterable[Result]) -> Iterator[bytes]:
    """The ZIP of these results, in pieces (one or two per image, then the directory)."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED)
    used: set[str] = set()
    for result in results:
        with result.image.open("rb") as fh:
            data = fh.read()
        name = entry_name(result, used)
        archive.writestr(f"full-size/{name}.{result.extension}", data)
        yield sink.take()
        archive.writestr(f"profile-{PROFILE_SIDE}/{name}.jpg", profile_copy(data))
        yield sink.take()
    archive.close()
    yield sink.take()


def entry_name(result: Result, used: set[str]) -> str:
    """A file name that says how the result was made, unique within one archive."""
    from studio.styles import style_of_job
    from studio.templatetags.studio_compare import seed_of

    job = result.job
    parts = [job.created_at.strftime("%Y-%m-%d"), job.operation_label]
    style = style_of_job(job)
    if style is not None:
        parts.append(style.name)
    elif job.style_template_id:
        parts.append(job.style_template.name)
    elif job.params.get("preset"):
        parts.append(str(job.params["preset"]))
    if result.label:
        parts.append(result.label)
    seed = seed_of(result)
    if seed is not None:
        parts.append(f"seed {seed}")
    base = _slug(" ".join(parts)) or "result"
    name, n = base, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name


def _slug(text: str) -> str:
    text = text.lower().replace(":", "x")  # "4:5" → "4x5"
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:100]


def profile_copy(data: bytes) -> bytes:
    """A 600×600 JPEG of the result: the largest square, a little above centre."""
    image = imaging.load_image(data, max_bytes=max(len(data), 1))
    w, h = image.size
    side = min(w, h)
    left = (w - side) // 2
    top = round((h - side) * PROFILE_TOP_BIAS)
    square = image.crop((left, top, left + side, top + side)).resize(
        (PROFILE_SIDE, PROFILE_SIDE), Image.Resampling.LANCZOS
    )
    return imaging.encode_jpeg(square, quality=90)
