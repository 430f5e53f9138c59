"""Real photographs for tests, made from scikit-image's public-domain portrait.

`skimage.data.astronaut()` (Eileen Collins, NASA, public domain) ships inside
the scikit-image wheel, so nothing is downloaded.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=1)
def astronaut_array() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # 512x512 RGB, one frontal face


def astronaut(scale: int = 1) -> Image.Image:
    """The portrait as an RGB image, optionally upscaled by an integer factor."""
    img = Image.fromarray(astronaut_array())
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.LANCZOS)
    return img


def two_faces() -> Image.Image:
    """Two people side by side: the portrait next to its mirror image."""
    a = astronaut_array()
    return Image.fromarray(np.concatenate([a, a[:, ::-1]], axis=1))


def no_face() -> Image.Image:
    """A real photograph without a person: scikit-image's coffee cup."""
    from skimage import data

    return Image.fromarray(data.coffee())


def to_bytes(img: Image.Image, fmt: str = "JPEG", **save_kwargs) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()
