"""Portraits with known person masks, and the scores that compare a mask with them.

- ``traced``: studio/assets/sample-portrait.jpg with its hand-traced outline
  (tests/fixtures/sample_portrait_outline.json says how it was traced).
- ``composited``: the traced cut-out pasted, shifted and scaled, onto other
  real photographs from scikit-image (public domain, shipped in its wheel), so
  the true mask is known exactly wherever the person is put.

Used by tests (alpha checks) and bench/segmentation.py (IoU, boundary F).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUTLINE = ROOT / "tests" / "fixtures" / "sample_portrait_outline.json"
SAMPLE = ROOT / "studio" / "assets" / "sample-portrait.jpg"


@dataclass(frozen=True)
class Case:
    name: str
    rgb: np.ndarray  # uint8, HxWx3
    truth: np.ndarray  # bool, HxW: True where the person is


def _polygon_mask(points_512: list[list[float]], size: int) -> np.ndarray:
    scale = size / 512
    # Sub-pixel polygon fill (4 fractional bits), the trace scaled to the photo.
    pts = np.round((np.asarray(points_512, np.float64) + 0.5) * scale * 16 - 8).astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


@cache
def traced() -> Case:
    rgb = np.asarray(Image.open(SAMPLE).convert("RGB"))
    points = json.loads(OUTLINE.read_text())["points_512"]
    return Case("traced sample portrait", rgb, _polygon_mask(points, rgb.shape[0]))


def _background(name: str, size: int) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.dstack([img] * 3)
    h, w = img.shape[:2]
    side = min(h, w)  # centre square, then to the portrait's size
    img = img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side, :3]
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_CUBIC)


# (background photo from skimage.data, scale of the person, shift right as a fraction of the width)
COMPOSITES = (
    ("coffee", 0.9, 0.05),
    ("chelsea", 0.8, -0.1),
    ("rocket", 1.0, 0.0),
)


@cache
def composited() -> tuple[Case, ...]:
    base = traced()
    size = base.rgb.shape[0]
    cases = []
    for name, scale, shift in COMPOSITES:
        # Move the person: scale about the bottom centre (she stays cut by the frame's bottom).
        m = np.float32([[scale, 0, (1 - scale) * size / 2 + shift * size], [0, scale, (1 - scale) * size]])
        person = cv2.warpAffine(base.rgb, m, (size, size), flags=cv2.INTER_LINEAR)
        truth = cv2.warpAffine(base.truth.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR)
        # A 1 px feathered edge, like a real photo's, not a jagged paste.
        alpha = cv2.GaussianBlur(truth, (0, 0), 0.8)[..., None]
        back = _background(name, size).astype(np.float32)
        rgb = np.clip(alpha * person + (1 - alpha) * back + 0.5, 0, 255).astype(np.uint8)
        cases.append(Case(f"cut-out on {name}", rgb, truth > 0.5))
    return tuple(cases)


def all_cases() -> tuple[Case, ...]:
    return (traced(), *composited())


# ---------------------------------------------------------------- scores


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.logical_and(pred, truth).sum()
    union = np.logical_or(pred, truth).sum()
    return float(inter / union) if union else 1.0


def _boundary(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)).astype(bool)


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: float) -> float:
    """F-score of boundary pixels matched within `tolerance` px (as in the DAVIS benchmark)."""
    bp, bt = _boundary(pred), _boundary(truth)
    if not bp.any() or not bt.any():
        return float(bp.any() == bt.any())
    dist_to_t = cv2.distanceTransform((~bt).astype(np.uint8), cv2.DIST_L2, 5)
    dist_to_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, 5)
    precision = float((dist_to_t[bp] <= tolerance).mean())
    recall = float((dist_to_p[bt] <= tolerance).mean())
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
