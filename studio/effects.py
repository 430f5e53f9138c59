"""The local portrait operations, as pure functions on PIL images.

No Django, no database, no storage: each operation takes an RGB image and the
detected faces (``FaceBox`` in pixels of that image, largest first) and
returns a new image (RGB; RGBA for the cut-out). Where the person ends comes
from ``studio.segmentation``. Photos that an operation cannot handle raise
``EffectError`` whose ``message`` is safe to show to the user.

Heavy per-pixel work on large photos is done on reduced copies (statistics,
masks, wide blurs) or with O(1)-per-pixel filters (LUTs, box-filter guided
filter) so a 4096 px photo takes a few seconds on one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from studio import segmentation
from studio.errors import UserFacingError

from studio.imaging import FaceBox
from studio.segmentation import reduced as _reduced  # one helper for both modules

Progress = Callable[[str, float], None] | None

NO_FACE_CROP = "We couldn't find a face in this photo. Try a well-lit, front-facing photo."
MANY_FACES_CROP = (
    "This photo has {n} faces. Headshot crop needs exactly one person — "
    "crop the photo or pick another."
)
NO_FACE_BLUR = (
    "We couldn't find a face in this photo. Portrait blur needs a photo with a clearly "
    "visible face — try a well-lit, front-facing photo."
)

NO_PERSON = (
    "We couldn't find where the person ends in this photo. Try a photo where the person "
    "fills more of the frame, against a plainer background."
)
# A "person" covering less of the photo than this is noise, not someone to cut out.
MIN_PERSON_SHARE = 0.01

# Faces narrower than this fraction of the largest are treated as background people.
BACKGROUND_FACE_RATIO = 0.35
# Head extent around a Haar face box (measured on the astronaut portrait: the box
# spans brows-to-lips; crown is ~0.5 box heights above it, chin ~0.25 below).
CROWN_ABOVE_BOX = 0.5
CHIN_BELOW_BOX = 0.25


class EffectError(UserFacingError):
    """The operation cannot run on this photo; .message is safe to show to the user."""


@dataclass(frozen=True)
class CropPreset:
    label: str
    ratio: tuple[int, int]  # exact w:h in small integers, so crops keep the aspect exactly
    size: tuple[int, int] | None  # output (w, h) px; None keeps the crop's resolution
    head_ratio: float  # crown-to-chin height as a fraction of the crop height
    top_margin: float  # space above the crown as a fraction of the crop height

    @property
    def aspect(self) -> float:
        return self.ratio[0] / self.ratio[1]


CROP_PRESETS: dict[str, CropPreset] = {
    "1:1": CropPreset("Square 1:1", (1, 1), None, 0.58, 0.10),
    "4:5": CropPreset("Portrait 4:5", (4, 5), None, 0.60, 0.10),
    "3:4": CropPreset("Portrait 3:4", (3, 4), None, 0.60, 0.10),
    # 35×45 mm at 600 dpi; ICAO-like: head 32–36 mm (we aim at 34), 3–5 mm above crown.
    "passport": CropPreset("Passport 35×45 mm", (7, 9), (827, 1063), 34 / 45, 4 / 45),
}
MAX_CROP_SIDE = 2048
GRABCUT_SIDE = 400


# ---------------------------------------------------------------- shared helpers


def _reporter(progress: Progress) -> Callable[[str, float], None]:
    return progress if progress is not None else (lambda stage, fraction: None)


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _clamp01(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def _largest(faces: list[FaceBox]) -> FaceBox | None:
    return max(faces, key=lambda f: f.w * f.h) if faces else None


def _box_filter(a: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(a, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def _guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey or per-channel guide; O(1) per pixel in r."""
    mean_i, mean_p = _box_filter(guide, r), _box_filter(src, r)
    cov = _box_filter(guide * src, r) - mean_i * mean_p
    var = _box_filter(guide * guide, r) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return _box_filter(a, r) * guide + _box_filter(b, r)


def _wide_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of any width in constant time: blur a reduced copy, scale back up."""
    h, w = img.shape[:2]
    f = min(1.0, 3.0 / max(sigma, 1e-6))
    if f >= 1.0:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma * f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------- studio retouch


def studio_retouch(
    image: Image.Image, faces: list[FaceBox], *, strength: float = 0.6, progress: Progress = None
) -> Image.Image:
    """Auto exposure + white balance, mild local contrast, skin smoothing, light sharpening."""
    report = _reporter(progress)
    rgb = _to_rgb(image)
    strength = _clamp01(strength)
    if strength == 0.0:
        report("Done", 1.0)
        return Image.fromarray(rgb.copy())
    # Global fixes are "auto" corrections: fully applied from the default 0.6 upwards.
    amount = min(1.0, strength / 0.6)

    report("Correcting exposure", 0.05)
    small, _ = _reduced(rgb, 512)
    gains = _white_balance_gains(small)
    gains = 1.0 + amount * (gains - 1.0)
    levels = _exposure_curve(np.clip(small * gains, 0, 255), amount)
    report("Balancing colour", 0.2)
    out = _apply_channel_curves(rgb, gains, levels)

    report("Enhancing local contrast", 0.35)
    out = _local_contrast(out, 0.5 * strength)

    skin = None
    if faces:
        report("Smoothing skin", 0.5)
        out, skin = _smooth_skin(out, faces, strength)

    report("Sharpening details", 0.85)
    out = _sharpen_outside(out, skin, strength)
    report("Done", 1.0)
    return Image.fromarray(out)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _white_balance_gains(small: np.ndarray) -> np.ndarray:
    """Grey-world on the least saturated pixels, iterated: robust to big coloured areas."""
    px = small.reshape(-1, 3).astype(np.float32)
    y = _luma(px)
    usable = (y > 25) & (px.max(axis=1) < 250)  # skip noise-dominated shadows and clipping
    if usable.sum() < 100:
        return np.ones(3, np.float32)
    px = px[usable]
    gains = np.ones(3, np.float32)
    for _ in range(4):
        c = px * gains
        sat = (c.max(axis=1) - c.min(axis=1)) / (c.max(axis=1) + 1.0)
        grey = sat <= np.percentile(sat, 25)
        mean = c[grey].mean(axis=0)
        gains *= mean.mean() / np.maximum(mean, 1.0)
    gains = np.clip(gains, 0.7, 1.45)
    return gains / float(_luma(gains[None])[0])  # keep overall brightness unchanged


def _exposure_curve(small: np.ndarray, amount: float) -> np.ndarray:
    """A 256-entry tone curve: percentile levels on luminance plus a gentle midtone gamma."""
    y = _luma(small.reshape(-1, 3))
    lo, hi = np.percentile(y, [0.5, 99.5])
    lo = min(lo, 40.0)  # never crush more than a deep-shadow band
    gain = float(np.clip(255.0 / max(hi - lo, 1.0), 1.0, 1.8))
    lo, gain = amount * lo, 1.0 + amount * (gain - 1.0)
    v = np.arange(256, dtype=np.float32)
    lev = np.clip((v - lo) * gain, 0, 255) / 255.0
    median = float(np.clip(np.median(np.clip((y - lo) * gain, 0, 255)) / 255.0, 0.05, 0.95))
    # Pull the median half-way (in gamma terms) toward 0.45: lifts dark photos, spares good ones.
    gamma = float(np.clip(np.log(0.45) / np.log(median), 0.6, 1.4)) ** 0.5
    gamma = 1.0 + amount * (gamma - 1.0)
    return (lev ** gamma) * 255.0


def _apply_channel_curves(rgb: np.ndarray, gains: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """White-balance gains then the tone curve, fused into one uint8 LUT per channel."""
    v = np.arange(256, dtype=np.float32)
    luts = []
    for g in gains:
        idx = np.clip(v * g, 0, 255)
        luts.append(np.interp(idx, v, curve))
    lut = np.clip(np.stack(luts, axis=1) + 0.5, 0, 255).astype(np.uint8)[:, None, :]
    return cv2.LUT(rgb, lut)  # (256,1,3) LUT maps each channel with its own table


def _local_contrast(rgb: np.ndarray, weight: float) -> np.ndarray:
    if weight <= 0:
        return rgb
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=1.6, tileGridSize=(8, 8))
    lab[..., 0] = cv2.addWeighted(lab[..., 0], 1.0 - weight, clahe.apply(lab[..., 0]), weight, 0)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def skin_mask(
    rgb: np.ndarray, faces: list[FaceBox], max_side: int = 640
) -> tuple[np.ndarray, float]:
    """Feathered skin mask (float32 0..1) on a reduced copy, and that copy's scale.

    Expanded face ellipses intersected with a skin colour range in YCrCb that is
    learnt from each face's cheeks (works for any skin tone and survives colour
    casts), then Gaussian-feathered so the smoothing has no seams.
    """
    small, s = _reduced(rgb, max_side)
    ycc = cv2.cvtColor(small, cv2.COLOR_RGB2YCrCb)
    h, w = small.shape[:2]
    largest = _largest(faces)
    mask = np.zeros((h, w), np.float32)
    for f in faces:
        if f.w < BACKGROUND_FACE_RATIO * largest.w:
            continue
        x, y, fw, fh = (v * s for v in (f.x, f.y, f.w, f.h))
        ellipse = np.zeros((h, w), np.uint8)
        # From the brow line (hair fringe excluded) down over the chin.
        centre = (round(x + fw / 2), round(y + fh * 0.6))
        cv2.ellipse(ellipse, centre, (round(fw * 0.6), round(fh * 0.72)), 0, 0, 360, 255, -1)
        cy0, cx0 = max(0, int(y + fh * 0.45)), max(0, int(x + fw * 0.2))
        cheeks = ycc[cy0:max(cy0, int(y + fh * 0.8)), cx0:max(cx0, int(x + fw * 0.8))]
        skin = _skin_colour(ycc, cheeks.reshape(-1, 3))
        face_mask = cv2.bitwise_and(skin, ellipse)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        face_mask = cv2.morphologyEx(face_mask, cv2.MORPH_OPEN, k)
        sigma = max(1.0, fw * 0.04)
        mask = np.maximum(mask, cv2.GaussianBlur(face_mask.astype(np.float32) / 255, (0, 0), sigma))
    return mask, s


def _skin_colour(ycc: np.ndarray, sample: np.ndarray) -> np.ndarray:
    if len(sample) < 10:  # degenerate face box: fall back to a classic fixed skin range
        return cv2.inRange(ycc, (40, 133, 77), (255, 173, 127))
    lo = np.percentile(sample, 3, axis=0)
    hi = np.percentile(sample, 97, axis=0)
    lo = (max(20.0, lo[0] * 0.5), lo[1] - 6, lo[2] - 6)  # darker shading is still skin
    hi = (255.0, hi[1] + 6, hi[2] + 6)
    return cv2.inRange(ycc, lo, hi)


def _smooth_skin(rgb: np.ndarray, faces: list[FaceBox], strength: float):
    """Edge-preserving (guided filter) smoothing blended in through the skin mask."""
    mask_small, s = skin_mask(rgb, faces)
    ys, xs = np.nonzero(mask_small > 0.01)
    if len(xs) == 0:
        return rgb, None
    h, w = rgb.shape[:2]
    x0, x1 = max(0, int(xs.min() / s) - 2), min(w, int((xs.max() + 1) / s) + 2)
    y0, y1 = max(0, int(ys.min() / s) - 2), min(h, int((ys.max() + 1) / s) + 2)
    sx0, sx1 = x0 * s, x1 * s
    sy0, sy1 = y0 * s, y1 * s
    # Map the ROI of the small mask back to full resolution (sub-pixel exact).
    m = cv2.getRectSubPix(mask_small, (max(1, round(sx1 - sx0)), max(1, round(sy1 - sy0))),
                          ((sx0 + sx1 - 1) / 2, (sy0 + sy1 - 1) / 2))
    m = cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)

    patch = rgb[y0:y1, x0:x1].astype(np.float32) / 255.0
    face_w = _largest(faces).w
    r = max(2, round(face_w / 30))
    eps = (0.03 + 0.07 * strength) ** 2  # detail below this contrast is treated as texture
    smooth = _guided_filter(patch, patch, r, eps)
    weight = (m * min(1.0, 0.3 + strength))[..., None]
    patch += weight * (smooth - patch)
    out = rgb.copy()
    out[y0:y1, x0:x1] = np.clip(patch * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, (x0, y0, x1, y1, m)


def _sharpen_outside(rgb: np.ndarray, skin, strength: float) -> np.ndarray:
    """Light unsharp mask, kept off the smoothed skin so it does not undo the smoothing."""
    amount = 0.35 * strength
    sigma = max(0.8, max(rgb.shape[:2]) / 1000)
    blurred = cv2.GaussianBlur(rgb, (0, 0), sigma)
    sharp = cv2.addWeighted(rgb, 1.0 + amount, blurred, -amount, 0)
    if skin is not None:
        x0, y0, x1, y1, m = skin
        keep = np.clip(m * 1.5, 0, 1)  # feathered edge of the mask also stays unsharpened
        roi = sharp[y0:y1, x0:x1].astype(np.float32)
        src = rgb[y0:y1, x0:x1].astype(np.float32)
        sharp[y0:y1, x0:x1] = np.clip(roi + keep[..., None] * (src - roi) + 0.5, 0, 255)
    return sharp


# ---------------------------------------------------------------- headshot crop


def headshot_crop(
    image: Image.Image, faces: list[FaceBox], *, preset: str = "4:5", progress: Progress = None
) -> Image.Image:
    """Face-centred crop with head-room rules, resized to the preset's output size."""
    report = _reporter(progress)
    report("Finding the face", 0.1)
    left, top, cw, ch = crop_box(image.size, faces, preset)

    report("Framing the headshot", 0.4)
    crop = _extract_padded(_to_rgb(image), left, top, cw, ch)

    report("Resizing", 0.8)
    out = Image.fromarray(crop)
    p = CROP_PRESETS[preset]
    size = p.size or _capped_size(cw, ch, p.ratio)
    if out.size != size:
        out = out.resize(size, Image.Resampling.LANCZOS)
    report("Done", 1.0)
    return out


def crop_box(size: tuple[int, int], faces: list[FaceBox], preset: str) -> tuple[int, int, int, int]:
    """(left, top, w, h) of the headshot crop in image pixels; may overhang the image.

    Raises EffectError for no face / several people, ValueError for an unknown preset.
    """
    if preset not in CROP_PRESETS:
        raise ValueError(f"Unknown crop preset {preset!r}; choose one of {sorted(CROP_PRESETS)}")
    p = CROP_PRESETS[preset]
    face = _single_face(faces)
    return _fit_crop(_ideal_crop(face, p), face.center, size[0], size[1], p)


def _single_face(faces: list[FaceBox]) -> FaceBox:
    largest = _largest(faces)
    if largest is None:
        raise EffectError(NO_FACE_CROP)
    people = [f for f in faces if f.w >= BACKGROUND_FACE_RATIO * largest.w]
    if len(people) > 1:
        raise EffectError(MANY_FACES_CROP.format(n=len(people)))
    return largest


def head_extent(face: FaceBox) -> tuple[float, float]:
    """Estimated (crown_y, chin_y) of the head around a face box."""
    return face.y - CROWN_ABOVE_BOX * face.h, face.y + face.h * (1 + CHIN_BELOW_BOX)


def _ideal_crop(face: FaceBox, p: CropPreset) -> tuple[float, float, int, int]:
    """(left, top, w, h) of the crop the preset's rules want, ignoring the image edges."""
    crown, chin = head_extent(face)
    num, den = p.ratio
    k = max(1, round((chin - crown) / p.head_ratio / den))
    cw, ch = num * k, den * k
    return face.center[0] - cw / 2, crown - p.top_margin * ch, cw, ch


def _fit_crop(rect, anchor, iw: int, ih: int, p: CropPreset) -> tuple[int, int, int, int]:
    """Shift the crop inside the image, else shrink it, else let it overhang (padded later).

    Shifts are allowed only while the face stays within a few % of the horizontal
    centre (head room may vary a little more); shrinking, about the face so it keeps
    its place in the frame, only while the head stays within the preset's size rule.
    """
    left, top, cw, ch = rect
    ax, ay = anchor
    num, den = p.ratio
    # Passport's head must stay ≤ 36/45 of the height; portrait crops tolerate a tighter frame.
    max_head = 36 / 45 if p.size else 0.72
    s_min = p.head_ratio / max_head
    for s in np.linspace(1.0, s_min, 8):
        k = max(1, int(cw * s / num))
        w, h = num * k, den * k
        if w > iw or h > ih:
            continue
        x0, y0 = ax - (ax - left) * w / cw, ay - (ay - top) * h / ch
        nl, nt = min(max(x0, 0), iw - w), min(max(y0, 0), ih - h)
        if abs(nl - x0) <= 0.04 * w and abs(nt - y0) <= 0.12 * h:
            return round(nl), round(nt), w, h
    # Nothing fits well: keep the ideal framing and extend the canvas where it overhangs.
    return round(left), round(top), int(cw), int(ch)


def _extract_padded(rgb: np.ndarray, left: int, top: int, cw: int, ch: int) -> np.ndarray:
    """Crop; any part outside the photo is filled with a soft, defocused continuation."""
    ih, iw = rgb.shape[:2]
    pl, pt = max(0, -left), max(0, -top)
    pr, pb = max(0, left + cw - iw), max(0, top + ch - ih)
    inner = rgb[max(0, top):min(ih, top + ch), max(0, left):min(iw, left + cw)]
    if not (pl or pt or pr or pb):
        return inner.copy()
    padded = cv2.copyMakeBorder(inner, pt, pb, pl, pr, cv2.BORDER_CONSTANT, value=0)
    valid = np.zeros((ch, cw), np.float32)
    valid[pt:ch - pb, pl:cw - pr] = 1.0
    fill = _push_pull_fill(padded, valid)
    # Fade the photo into the fill over a short ramp just inside its edge: no hard seam.
    ramp = max(1.0, 0.008 * max(cw, ch))
    inside = cv2.erode(valid, np.ones((3, 3), np.uint8), iterations=round(ramp))
    weight = np.minimum(valid, cv2.GaussianBlur(inside, (0, 0), ramp / 2))
    return cv2.blendLinear(padded, fill, weight, 1.0 - weight)


def _push_pull_fill(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels by normalised convolution, coarse to fine.

    Coarse scales give a smooth colour field far from the photo, finer scales
    continue the nearby colours close to it — like an out-of-focus extension,
    without the streaks of border replication.
    """
    side = max(img.shape[:2])
    src = img.astype(np.float32) * valid[..., None]
    fill = None
    for frac in (0.25, 0.12, 0.06, 0.03):
        den = _wide_blur(valid, frac * side)
        est = _wide_blur(src, frac * side) / np.maximum(den, 1e-4)[..., None]
        conf = np.clip(den / 0.3, 0, 1)[..., None]
        fill = est if fill is None else conf * est + (1 - conf) * fill
    return np.clip(fill + 0.5, 0, 255).astype(np.uint8)


def _capped_size(cw: int, ch: int, ratio: tuple[int, int]) -> tuple[int, int]:
    if max(cw, ch) <= MAX_CROP_SIDE:
        return cw, ch
    k = MAX_CROP_SIDE // max(ratio)
    return ratio[0] * k, ratio[1] * k


# ---------------------------------------------------------------- background blur


def background_blur(
    image: Image.Image, faces: list[FaceBox], *, strength: float = 0.6, progress: Progress = None
) -> Image.Image:
    """Portrait mode: find the person, blur everything else behind a soft edge."""
    report = _reporter(progress)
    rgb = _to_rgb(image)
    strength = _clamp01(strength)
    if strength == 0.0:
        report("Done", 1.0)
        return Image.fromarray(rgb.copy())

    found = _find_person(rgb, faces, report)
    report("Blurring background", 0.75)
    sigma = max(1.0, 0.025 * strength * max(rgb.shape[:2]))
    out = _composite_over_blur(rgb, found.alpha, sigma)
    report("Done", 1.0)
    return _tagged(Image.fromarray(out), found)


def background_remove(image: Image.Image, faces: list[FaceBox], *, progress: Progress = None) -> Image.Image:
    """A cut-out: the person on a transparent background (RGBA, soft edge)."""
    report = _reporter(progress)
    rgb = _to_rgb(image)
    found = _find_person(rgb, faces, report)
    report("Cleaning the edge", 0.75)
    colour = segmentation.decontaminate(rgb, found.alpha)
    alpha = np.clip(found.alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
    report("Done", 1.0)
    return _tagged(Image.fromarray(np.dstack([colour, alpha]), "RGBA"), found)


def background_replace(
    image: Image.Image, faces: list[FaceBox], *, backdrop: str = "studio_grey", progress: Progress = None
) -> Image.Image:
    """The person in front of a studio backdrop (solid colour, gradient or soft grey)."""
    if backdrop not in segmentation.BACKDROPS:
        raise ValueError(f"Unknown backdrop {backdrop!r}; choose one of {sorted(segmentation.BACKDROPS)}")
    report = _reporter(progress)
    rgb = _to_rgb(image)
    found = _find_person(rgb, faces, report)
    report("Placing you on the backdrop", 0.75)
    h, w = rgb.shape[:2]
    back = segmentation.render_backdrop(backdrop, w, h)
    colour = segmentation.decontaminate(rgb, found.alpha)
    out = cv2.blendLinear(colour, back, found.alpha, 1.0 - found.alpha)
    report("Done", 1.0)
    return _tagged(Image.fromarray(out), found)


def _find_person(rgb: np.ndarray, faces: list[FaceBox], report) -> segmentation.PersonMask:
    report("Finding the person", 0.1)
    if not faces:
        # The face says which person to keep (and that there is one: the model alone
        # takes a coffee cup's rim for a shoulder); GrabCut also starts from it.
        raise EffectError(NO_FACE_BLUR)
    report("Separating person from background", 0.3)
    found = segmentation.person_mask(rgb, faces)
    if (found.alpha > 0.5).mean() < MIN_PERSON_SHARE:
        raise EffectError(NO_PERSON)
    return found


def _tagged(image: Image.Image, found: segmentation.PersonMask) -> Image.Image:
    """Say on the result which method found the person (the provider stores it)."""
    image.info["segmentation"] = found.method
    return image


def person_mask(rgb: np.ndarray, face: FaceBox, progress: Progress = None) -> np.ndarray:
    """GrabCut's soft foreground mask (float32 0..1, full resolution) of the person owning `face`.

    The fallback when the segmentation model is missing (studio.segmentation).
    """
    report = _reporter(progress)
    h, w = rgb.shape[:2]
    # GrabCut's max-flow cost grows faster than the pixel count: ~400 px keeps it < 1 s.
    small, s = _reduced(rgb, GRABCUT_SIDE)
    box = tuple(v * s for v in (face.x, face.y, face.w, face.h))
    seed = _grabcut_seed(small.shape[:2], box)

    report("Separating person from background", 0.3)
    sure_bg = seed == cv2.GC_BGD  # GrabCut only relabels the probable pixels
    fg = _grabcut(small, seed)
    fg = _clean_foreground(fg, box, sure_bg)

    report("Refining edges", 0.6)
    soft = _refine_mask(rgb, fg)
    # The face itself must never be blurred, whatever GrabCut decided.
    core = np.zeros((h, w), np.uint8)
    cv2.ellipse(core, (round(face.center[0]), round(face.center[1])),
                (round(face.w * 0.45), round(face.h * 0.55)), 0, 0, 360, 1, -1)
    return np.maximum(soft, core.astype(np.float32))


def _grabcut_seed(shape: tuple[int, int], box) -> np.ndarray:
    """Initial GrabCut labels from the face box: head + torso probable, border background."""
    h, w = shape
    x, y, fw, fh = box
    cx, cy = x + fw / 2, y + fh / 2
    chin = y + fh * (1 + CHIN_BELOW_BOX)
    seed = np.full((h, w), cv2.GC_PR_BGD, np.uint8)

    torso = np.array([
        (cx - 0.6 * fw, chin - 0.2 * fh), (cx + 0.6 * fw, chin - 0.2 * fh),
        (cx + 1.6 * fw, chin + 0.6 * fh), (cx + 1.9 * fw, h + fh), (cx - 1.9 * fw, h + fh),
        (cx - 1.6 * fw, chin + 0.6 * fh),
    ], np.int32)
    # Definite background: a border strip, except where the body runs off the frame.
    strip = max(2, round(0.03 * max(h, w)))
    border = np.zeros((h, w), np.uint8)
    border[:strip], border[-strip:], border[:, :strip], border[:, -strip:] = 1, 1, 1, 1
    body = np.zeros((h, w), np.uint8)
    cv2.fillPoly(body, [torso], 1)
    body = cv2.dilate(body, np.ones((3, 3), np.uint8), iterations=max(1, round(0.15 * fw)))
    seed[(border == 1) & (body == 0)] = cv2.GC_BGD

    cv2.fillPoly(seed, [torso], int(cv2.GC_PR_FGD))
    head_c = (round(cx), round(cy - 0.12 * fh))
    cv2.ellipse(seed, head_c, (round(0.85 * fw), round(0.95 * fh)), 0, 0, 360,
                int(cv2.GC_PR_FGD), -1)
    # Definite foreground: the face core, and neck-to-chest below the chin (clothes
    # there are the person even when their colour matches the backdrop).
    cv2.ellipse(seed, (round(cx), round(cy)), (round(0.3 * fw), round(0.4 * fh)), 0, 0, 360,
                int(cv2.GC_FGD), -1)
    chest = np.array([
        (cx - 0.2 * fw, chin), (cx + 0.2 * fw, chin), (cx + 0.9 * fw, chin + 0.8 * fh),
        (cx + 0.9 * fw, chin + 1.8 * fh), (cx - 0.9 * fw, chin + 1.8 * fh),
        (cx - 0.9 * fw, chin + 0.8 * fh),
    ], np.int32)
    cv2.fillPoly(seed, [chest], int(cv2.GC_FGD))
    return seed


def _grabcut(small: np.ndarray, seed: np.ndarray, max_iter: int = 5) -> np.ndarray:
    """Run GrabCut one iteration at a time until the mask settles (usually 3 rounds)."""
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: keep results repeatable
    fg = np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD))
    try:
        cv2.grabCut(bgr, seed, None, bgd, fgd, 0, cv2.GC_INIT_WITH_MASK)
        for i in range(max_iter):
            cv2.grabCut(bgr, seed, None, bgd, fgd, 1, cv2.GC_EVAL)
            new = np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD))
            changed, fg = np.mean(new != fg), new
            if i >= 2 and changed < 0.005:
                break
    except cv2.error:  # degenerate colour model (e.g. a flat image): keep the last guess
        pass
    return fg.astype(np.uint8)


def _clean_foreground(fg: np.ndarray, box, sure_bg: np.ndarray) -> np.ndarray:
    """Keep the blob holding the face; fill background pockets enclosed by the body.

    A pocket that never reaches the sure-background border is usually a light
    strap, badge or highlight GrabCut mistook for backdrop: blurring it would
    smudge the person. Large pockets (a real gap under an arm) stay background.
    """
    x, y, fw, fh = box
    n, labels, _, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    face_label = labels[int(np.clip(round(y + fh / 2), 0, fg.shape[0] - 1)),
                        int(np.clip(round(x + fw / 2), 0, fg.shape[1] - 1))]
    if n > 1 and face_label > 0:
        fg = (labels == face_label).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - fg, connectivity=4)
    outside = np.unique(labels[sure_bg & (fg == 0)])
    pockets = [i for i in range(1, n)
               if i not in outside and stats[i, cv2.CC_STAT_AREA] < 0.025 * fg.size]
    fg[np.isin(labels, pockets)] = 1
    return fg


def _refine_mask(rgb: np.ndarray, fg_small: np.ndarray) -> np.ndarray:
    """Upscale the hard mask and snap its edges to the photo with a guided filter."""
    h, w = rgb.shape[:2]
    work, _ = _reduced(rgb, 1024)
    wh, ww = work.shape[:2]
    p = cv2.resize(fg_small.astype(np.float32), (ww, wh), interpolation=cv2.INTER_LINEAR)
    guide = cv2.cvtColor(work, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    r = max(2, round(max(wh, ww) / 150))
    soft = np.clip(_guided_filter(guide, p, r, 1e-3), 0, 1)
    soft = cv2.GaussianBlur(soft, (0, 0), max(0.7, r / 4))
    if (wh, ww) != (h, w):
        soft = cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR)
    return soft


def _composite_over_blur(rgb: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Sharp person over a blurred background that does not bleed the person's colours.

    Background = blur(img·bg) / blur(bg) with bg = 1 - mask: a normalised,
    mask-weighted blur, so no halo of the person spreads into the backdrop.
    """
    h, w = rgb.shape[:2]
    f = min(1.0, 3.0 / sigma)  # blur a reduced copy: the result is smooth anyway
    size = (max(1, round(w * f)), max(1, round(h * f)))
    img_s = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    bg_s = cv2.resize(1.0 - mask, size, interpolation=cv2.INTER_AREA)
    sig = sigma * f
    num = cv2.GaussianBlur(img_s * bg_s[..., None], (0, 0), sig)
    den = cv2.GaussianBlur(bg_s, (0, 0), sig)[..., None]
    plain = cv2.GaussianBlur(img_s, (0, 0), sig)
    trust = np.clip(den / 0.05, 0, 1)  # deep inside the person fall back to a plain blur
    back = trust * num / np.maximum(den, 1e-6) + (1 - trust) * plain
    back = np.clip(back + 0.5, 0, 255).astype(np.uint8)
    if size != (w, h):
        back = cv2.resize(back, (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.blendLinear(rgb, back, mask, 1.0 - mask)
