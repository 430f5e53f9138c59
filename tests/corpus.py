"""A corpus of hostile and broken uploads, generated (never downloaded).

Every file is made here from scikit-image's public-domain portrait (see
tests/images.py) or from bytes written by hand, so the corpus is reproducible
and carries no third-party content. `tests/test_hostile_corpus.py` uploads
each one through the real view and checks the outcome it declares.

Write the files to a folder to look at them (or feed them to another tool):

    .venv/bin/python -m tests.corpus /tmp/corpus
"""

from __future__ import annotations

import io
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps

from tests import images

MB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One file to upload and what must happen to it.

    `refused` is a phrase of the message the user must see; when empty the
    file is accepted and normalized. `faces` is the face count an accepted
    photo must report (None: not checked).
    """

    name: str
    filename: str
    data: bytes
    content_type: str = "image/jpeg"
    refused: str = ""
    faces: int | None = None
    upright: bool = False  # the stored photo must look like the upright portrait


def _jpeg(img: Image.Image, **kw) -> bytes:
    return images.to_bytes(img, "JPEG", quality=90, **kw)


@lru_cache(maxsize=1)
def portrait() -> Image.Image:
    return images.astronaut()


def _orientation_source(orientation: int) -> Image.Image:
    """Pixels stored so that applying EXIF `orientation` shows the upright portrait."""
    inverse = {
        1: lambda im: im,
        2: lambda im: ImageOps.mirror(im),
        3: lambda im: im.rotate(180),
        4: lambda im: ImageOps.flip(im),
        5: lambda im: im.transpose(Image.Transpose.TRANSPOSE),
        6: lambda im: im.rotate(90, expand=True),
        7: lambda im: im.transpose(Image.Transpose.TRANSVERSE),
        8: lambda im: im.rotate(-90, expand=True),
    }
    return inverse[orientation](portrait())


def oriented_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(_orientation_source(orientation), exif=exif)


def corrupt_exif_jpeg() -> bytes:
    """A JPEG whose APP1 segment says Exif but holds garbage offsets."""
    clean = _jpeg(portrait())
    garbage = b"Exif\x00\x00MM\x00*\xff\xff\xff\xf0" + bytes(range(256)) * 4
    segment = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    return clean[:2] + segment + clean[2:]


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A real, valid 1-bit PNG of 30000×30000 pixels that compresses to about 100 KB."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated(fmt: str) -> bytes:
    frames = [portrait(), ImageOps.mirror(portrait()), portrait().rotate(180)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def heic() -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buf = io.BytesIO()
    portrait().save(buf, format="HEIF", quality=85, enc_params={"preset": "ultrafast"})
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def minimal_pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
        b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )


def mp4_header() -> bytes:
    return struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2" + b"\x00" * 64


def tiny_face() -> bytes:
    """The portrait shrunk to 64 px in the corner of a large plain photo."""
    canvas = Image.new("RGB", (2400, 1800), (120, 130, 125))
    canvas.paste(portrait().resize((64, 64), Image.Resampling.LANCZOS), (100, 100))
    return _jpeg(canvas)


def png_16bit() -> bytes:
    import numpy as np

    gray = np.asarray(portrait().convert("L"), dtype=np.uint16) * 257
    return images.to_bytes(Image.fromarray(gray), "PNG")


def palette_png_with_transparency() -> bytes:
    img = portrait().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def build() -> list[Case]:
    """The corpus, in a stable order (see each case's expectation)."""
    jpeg = _jpeg(portrait())
    cases = [
        Case("zero-bytes", "empty.jpg", b"", refused="empty"),
        Case("truncated-jpeg", "cut.jpg", jpeg[: len(jpeg) // 3], refused="damaged or incomplete"),
        Case("corrupt-exif", "corrupt-exif.jpg", corrupt_exif_jpeg(), faces=1, upright=True),
        *(
            Case(f"orientation-{n}", f"orientation-{n}.jpg", oriented_jpeg(n), faces=1, upright=True)
            for n in range(1, 9)
        ),
        Case("cmyk-jpeg", "cmyk.jpg", _jpeg(portrait().convert("CMYK")), faces=1),
        Case("progressive-jpeg", "progressive.jpg", _jpeg(portrait(), progressive=True), faces=1, upright=True),
        Case("png-16-bit", "sixteen.png", png_16bit(), "image/png", faces=1),
        Case("palette-png-transparent", "palette.png", palette_png_with_transparency(), "image/png"),
        Case("grayscale-jpeg", "gray.jpg", _jpeg(portrait().convert("L")), faces=1),
        Case("animated-gif", "moving.gif", animated("GIF"), "image/gif", refused="GIF"),
        Case("animated-webp", "moving.webp", animated("WEBP"), "image/webp", faces=1, upright=True),
        Case("heic", "iphone.heic", heic(), "image/heic", faces=1, upright=True),
        Case("png-bomb-30000", "bomb.png", png_bomb(), "image/png", refused="too large"),
        Case(
            "strip-1x20000",
            "strip.png",
            images.to_bytes(Image.new("RGB", (1, 20000), "white"), "PNG"),
            "image/png",
            refused="too long and narrow",
        ),
        Case(
            "html-as-jpg",
            "page.jpg",
            b"<!doctype html><html><body><script>alert(1)</script></body></html>",
            refused="web page",
        ),
        Case(
            "svg-with-script",
            "drawing.jpg",
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
            b"<script>alert(document.cookie)</script></svg>",
            "image/svg+xml",
            refused="SVG",
        ),
        Case("pdf-as-jpg", "doc.jpg", minimal_pdf(), refused="PDF"),
        Case("zip-as-jpg", "archive.jpg", zip_bytes({"a.txt": b"hello"}), refused="ZIP"),
        Case(
            "jpeg-zip-polyglot",
            "polyglot.jpg",
            jpeg + zip_bytes({"evil.html": b"<script>x</script>"}),
            faces=1,
            upright=True,
        ),
        Case("mp4-as-jpg", "clip.jpg", mp4_header(), refused="video"),
        Case("bmp", "old.bmp", images.to_bytes(portrait(), "BMP"), "image/bmp", refused="BMP"),
        Case("tiff", "scan.tif", images.to_bytes(portrait(), "TIFF"), "image/tiff", refused="TIFF"),
        Case("text-as-jpg", "notes.jpg", b"just some text\n" * 20, refused="text file"),
        Case("no-face", "coffee.jpg", _jpeg(images.no_face()), faces=0),
        Case("two-faces", "two.jpg", _jpeg(images.two_faces()), faces=2),
        Case("tiny-face", "far-away.jpg", tiny_face()),
        Case("wrong-content-type", "selfie.png", jpeg, "text/html", faces=1, upright=True),
        Case("path-traversal-unicode-name", "../../etc/passwd\u202e\u0000gpj.exe\U0001f600\u0301.jpg", jpeg, faces=1),
        Case("fifty-mb", "huge.jpg", jpeg + b"\0" * (50 * MB), refused="too large"),
    ]
    return cases


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1])
        return 2
    folder = Path(argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    cases = build()
    for case in cases:
        suffix = Path(case.filename.replace("\0", "")).suffix or ".bin"
        (folder / f"{case.name}{suffix}").write_bytes(case.data)
    print(f"wrote {len(cases)} files to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
