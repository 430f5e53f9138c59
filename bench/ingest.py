"""Ingest of a 12 MP JPEG: our pipeline against the naive Pillow sequence.

Both do the same work: orient, strip metadata, store a normalized JPEG,
make a thumbnail, detect faces. The naive sequence makes the thumbnail and
runs face detection on the full-size image; ours derives both from a reduced
copy. Run: .venv/bin/python -m bench.ingest [--runs N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import cv2
import numpy as np
from PIL import Image, ImageOps

from studio import imaging
from tests.images import astronaut


def twelve_megapixel_jpeg() -> bytes:
    """4000×3000 portrait with camera-like EXIF (orientation 6) and sensor noise."""
    base = astronaut().resize((3000, 3000), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (3000, 4000), (90, 100, 110))
    canvas.paste(base, (0, 500))
    pixels = np.asarray(canvas, dtype=np.int16)
    noise = np.random.default_rng(0).normal(0, 4, pixels.shape).astype(np.int16)
    canvas = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    # Stored sideways as a phone does, with the orientation tag to stand it up.
    stored = canvas.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def naive_ingest(data: bytes):
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    thumb = image.copy()
    thumb.thumbnail((imaging.THUMB_LONG_SIDE, imaging.THUMB_LONG_SIDE))
    thumb.save(io.BytesIO(), "JPEG", quality=85)
    gray = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    return cascade.detectMultiScale(gray, 1.1, 5, minSize=(30, 30))


def measure(fn, data: bytes, runs: int) -> list[float]:
    fn(data)  # warm-up: cascade load, allocator
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(data)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    data = twelve_megapixel_jpeg()
    ours = measure(imaging.ingest, data, args.runs)
    naive = measure(naive_ingest, data, args.runs)
    result = imaging.ingest(data)
    print(f"input: 12 MP JPEG, {len(data) / 1e6:.1f} MB, EXIF orientation 6; runs: {args.runs}")
    found = f"{result.width}x{result.height}, {len(result.faces)} face(s)"
    print(f"ours : median {statistics.median(ours):7.0f} ms  -> {found}")
    print(f"naive: median {statistics.median(naive):7.0f} ms  -> {len(naive_ingest(data))} face(s) found on full size")
    print(f"ratio ours/naive: {statistics.median(ours) / statistics.median(naive):.2f}x")


if __name__ == "__main__":
    main()
