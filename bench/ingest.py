"""Ingest of a 12 MP JPEG: ours against the naive Pillow sequence and pyvips.

Every side does the same work on the same bytes: stand the photo upright
(EXIF orientation), strip all metadata, encode the normalized JPEG (long side
<= 4096, quality 90, 4:2:0, optimized Huffman tables), encode a 480 px
thumbnail (quality 85), and find faces with the same OpenCV Haar cascade.

- ours: ``studio.imaging.ingest`` - decode once; thumbnail and a 1024 px
  grayscale detection copy derived from the normalized image.
- naive: open -> exif_transpose -> save -> thumbnail from the full-size
  image -> Haar on the full-size image (OpenCV's sample parameters).
- pyvips: libvips decodes and orients once (``thumbnail_buffer``, which also
  shrinks on load when the photo is over 4096 px), keeps the normalized image
  in memory, derives a 1024 px copy from it and the thumbnail from that; the
  faces come from ``imaging.detect_faces_in_gray`` (our cascade, parameters
  and histogram equalization) on the 1024 px copy turned grayscale by libvips.
  The libvips operation cache is off, so no run reuses an earlier result.
- pyvips-plain: the same without Huffman optimization (the libvips wheel
  encodes with mozjpeg, slow at that pass); not the same output, ~6 % bigger,
  shown so the comparison does not rest on one encoder setting.

Rounds interleave the sides (each round runs every side once, in rotating
order), so a change in machine load touches all of them alike. Both wall
time and CPU time (of the whole process, every thread included) are
reported: on a busy machine the wall time of libvips, which runs 2 threads,
gets twice the scheduler's share of Pillow's one, so the CPU ratio is the
steadier comparison of the work done, and the wall ratio the latency a user
sees on a quiet machine.

Run: .venv/bin/python -m bench.ingest [--runs N]
(pyvips comes from the optional extra: .venv/bin/pip install -e '.[bench]')
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import cv2
import numpy as np
from PIL import Image, ImageOps

from studio import imaging
from tests.images import astronaut

try:
    import pyvips
except (ImportError, OSError):  # OSError: the module is there but libvips is not
    pyvips = None


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


def ours_ingest(data: bytes) -> tuple[int, int]:
    result = imaging.ingest(data)
    return len(result.jpeg), len(result.faces)


def naive_ingest(data: bytes) -> tuple[int, int]:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=imaging.JPEG_QUALITY, optimize=True)
    thumb = image.copy()
    thumb.thumbnail((imaging.THUMB_LONG_SIDE, imaging.THUMB_LONG_SIDE))
    thumb.save(io.BytesIO(), "JPEG", quality=imaging.THUMB_QUALITY, optimize=True)
    gray = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    faces = cascade.detectMultiScale(gray, 1.1, 5, minSize=(30, 30))
    return len(out.getvalue()), len(faces)


def _vips_jpeg(image, quality: int, optimize_coding: bool = True) -> bytes:
    # Pillow's settings, spelled out: libvips keeps 4:4:4 chroma at Q >= 90
    # unless told, and keeps metadata unless told.
    return image.jpegsave_buffer(Q=quality, subsample_mode="on", optimize_coding=optimize_coding, keep="none")


def pyvips_ingest(data: bytes, *, optimize_coding: bool = True) -> tuple[int, int]:
    side = imaging.MAX_LONG_SIDE
    normalized = pyvips.Image.thumbnail_buffer(data, side, height=side, size="down").copy_memory()
    jpeg = _vips_jpeg(normalized, imaging.JPEG_QUALITY, optimize_coding)
    detect_side = imaging.FACE_DETECT_LONG_SIDE
    small = normalized.thumbnail_image(detect_side, height=detect_side, size="down").copy_memory()
    thumb_side = imaging.THUMB_LONG_SIDE
    thumb = small.thumbnail_image(thumb_side, height=thumb_side, size="down")
    _vips_jpeg(thumb, imaging.THUMB_QUALITY, optimize_coding)
    gray = small.colourspace("b-w")[0].numpy()
    return len(jpeg), len(imaging.detect_faces_in_gray(gray))


def measure(sides: dict, data: bytes, runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU milliseconds per call, per side."""
    for fn in sides.values():
        fn(data)  # warm-up: cascade load, allocator, libvips start-up
    wall = {name: [] for name in sides}
    cpu = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(runs):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            sides[name](data)
            wall[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - start_cpu) * 1000)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    sides = {"ours": ours_ingest, "naive": naive_ingest}
    if pyvips is None:
        print("pyvips is not installed (.venv/bin/pip install -e '.[bench]'): skipping the pyvips column")
    else:
        pyvips.cache_set_max(0)
        sides["pyvips"] = pyvips_ingest
        # The same minus Huffman optimization, which the libvips wheel's
        # mozjpeg does slowly: a faster baseline that writes a bigger file.
        sides["pyvips-plain"] = lambda data: pyvips_ingest(data, optimize_coding=False)

    data = twelve_megapixel_jpeg()
    times, cpu_times = measure(sides, data, args.runs)
    median = {name: statistics.median(values) for name, values in times.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_times.items()}

    print(f"input: 12 MP JPEG, {len(data) / 1e6:.1f} MB, EXIF orientation 6; runs: {args.runs} (interleaved); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if pyvips is not None:
        print(f"pyvips {pyvips.__version__}, libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}, "
              f"{pyvips.concurrency_get()} threads")
    for name, fn in sides.items():
        size, faces = fn(data)
        spread = f"{min(times[name]):.0f}–{max(times[name]):.0f}"
        print(f"{name:12s}: wall median {median[name]:6.0f} ms (range {spread} ms), CPU median {cpu[name]:6.0f} ms; "
              f"normalized JPEG {size / 1e6:.2f} MB, {faces} face(s)")

    def ratios(other: str) -> str:
        return f"wall {median['ours'] / median[other]:.2f}x, CPU {cpu['ours'] / cpu[other]:.2f}x"

    print(f"ratio ours/naive       : {ratios('naive')}  (goal <= 0.4x)")
    if "pyvips" in median:
        print(f"ratio ours/pyvips      : {ratios('pyvips')}  (goal <= 1.3x)")
        print(f"ratio ours/pyvips-plain: {ratios('pyvips-plain')}  (not the same output: a bigger JPEG)")


if __name__ == "__main__":
    main()
