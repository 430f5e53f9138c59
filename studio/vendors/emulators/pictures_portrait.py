"""Picture making for the Headshot API, WaveSpeed and Vtrix emulators.

These are stand-ins for the vendors' models: visible, deterministic image
transformations of the photo they are given, so a sandbox user (and a test)
can see that the parameters reached the "vendor" and did something. They are
pure functions of their inputs (photo, prompt, seed, sliders): the same call
gives the same pixels, which is what makes "same template + same seed = same
look" testable.

Nothing here claims to be what the vendor's model does; sandbox output is
labelled as such in the UI.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
from PIL import Image

from studio import effects, imaging
from studio.imaging import FaceBox


# --------------------------------------------------------------------------- helpers


def rng_for(*parts: object) -> np.random.Generator:
    """A random generator that depends only on the given values (prompt, seed, index…)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def main_face(image: Image.Image) -> FaceBox:
    """The largest detected face, or a plausible centre box when none is found.

    The vendors document "poor results rather than errors" for photos without
    a clear face, so the emulators carry on with a guess instead of failing.
    """
    faces = imaging.detect_faces(image)
    if faces:
        return faces[0]
    w, h = image.size
    side = max(16, min(w, h) // 3)
    return FaceBox((w - side) // 2, max(0, h // 3 - side // 2), side, side)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _clip8(a: np.ndarray) -> np.ndarray:
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def cover_crop(
    rgb: np.ndarray, face: FaceBox, width: int, height: int, *, face_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a window of the requested aspect around the face and scale it to width×height.

    `face_share` is the face box's width as a share of the output width. The
    window may overhang the photo; the overhang is filled by replicating the
    border. Returns the image and a 0/1 map of where real photo pixels landed.
    """
    h, w = rgb.shape[:2]
    cw = face.w / face_share
    ch = cw * height / width
    cx, cy = face.center
    left = cx - cw / 2
    top = cy - ch * 0.38  # eyes a little above the middle: classic head room
    scale = width / cw
    m = np.float32([[scale, 0, -left * scale], [0, scale, -top * scale]])
    out = cv2.warpAffine(
        rgb, m, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    valid = cv2.warpAffine(
        np.ones((h, w), np.uint8),
        m,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return out, valid


def _moved_face(face: FaceBox, rgb_shape, width: int, height: int, face_share: float) -> FaceBox:
    """Where `face` lands after cover_crop with the same arguments."""
    cw = face.w / face_share
    ch = cw * height / width
    cx, cy = face.center
    left, top = cx - cw / 2, cy - ch * 0.38
    s = width / cw
    return FaceBox(
        round((face.x - left) * s), round((face.y - top) * s), max(1, round(face.w * s)), max(1, round(face.h * s))
    )


def person_alpha(rgb: np.ndarray, face: FaceBox) -> np.ndarray:
    """Soft person mask (0..1) from the shared GrabCut-based segmentation."""
    return effects.person_mask(rgb, face).astype(np.float32)


def studio_backdrop(width: int, height: int, colour: np.ndarray, light: tuple[float, float]) -> np.ndarray:
    """A photographic studio backdrop: a soft radial light fall-off on one colour."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    lx, ly = light[0] * width, light[1] * height
    d = np.sqrt(((xs - lx) / width) ** 2 + ((ys - ly) / height) ** 2)
    falloff = np.clip(1.15 - 0.75 * d, 0.45, 1.15)[..., None]
    return colour[None, None, :].astype(np.float32) * falloff


def composite(person: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return person.astype(np.float32) * a + backdrop.astype(np.float32) * (1.0 - a)


def grade(
    rgb: np.ndarray, *, warmth: float = 0.0, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0
) -> np.ndarray:
    """Simple colour grading; every argument is roughly −1…1 (0 = unchanged)."""
    out = rgb.astype(np.float32)
    out[..., 0] *= 1.0 + 0.12 * warmth
    out[..., 2] *= 1.0 - 0.12 * warmth
    out = out * (1.0 + 0.25 * brightness) + 25.0 * brightness
    mean = out.mean()
    out = (out - mean) * (1.0 + 0.5 * contrast) + mean
    grey = out.mean(axis=2, keepdims=True)
    out = grey + (out - grey) * (1.0 + saturation)
    return _clip8(out)


# --------------------------------------------------------------------------- Headshot API


# Backdrop families a prompt may name; otherwise the colour comes from the hash.
_BACKDROPS = {
    "grey": (128, 130, 134),
    "gray": (128, 130, 134),
    "white": (232, 232, 228),
    "black": (34, 34, 38),
    "navy": (44, 58, 92),
    "blue": (70, 104, 150),
    "green": (74, 110, 84),
    "beige": (196, 178, 150),
    "warm": (170, 130, 100),
    "red": (140, 54, 50),
    "office": (150, 142, 128),
}


def headshot_style(prompt: str, seed: int, index: int) -> dict:
    """The look of one headshot: a pure function of (prompt, seed, index), never of the person."""
    rng = rng_for("headshot", prompt.strip().lower(), seed, index)
    words = prompt.lower()
    named = next((colour for word, colour in _BACKDROPS.items() if word in words), None)
    base = np.array(named if named else rng.integers(60, 200, 3), np.float32)
    jitter = rng.normal(0, 10, 3) if index else np.zeros(3)
    return {
        "backdrop": np.clip(base + jitter, 10, 245),
        "light": (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.1, 0.4))),
        "warmth": float(rng.uniform(-0.8, 0.8)),
        "contrast": float(rng.uniform(-0.1, 0.35)),
        "face_share": float(rng.uniform(0.24, 0.34)),
    }


def headshots(
    image: Image.Image, *, prompt: str, seed: int, count: int, identity: float, width: int, height: int
) -> list[Image.Image]:
    """`count` headshots of exactly width×height: the person, cut out, on a studio backdrop.

    Lower `identity` pushes the person further toward a painted look (the
    model "keeps less of the person").
    """
    rgb = _rgb(image)
    face = main_face(image)
    alpha_full = person_alpha(rgb, face)
    out: list[Image.Image] = []
    for index in range(count):
        style = headshot_style(prompt, seed, index)
        crop, valid = cover_crop(rgb, face, width, height, face_share=style["face_share"])
        alpha, _ = cover_crop(
            (alpha_full * 255).astype(np.uint8)[..., None].repeat(3, 2),
            face,
            width,
            height,
            face_share=style["face_share"],
        )
        alpha = alpha[..., 0].astype(np.float32) / 255.0 * valid
        person = crop
        if identity < 1.0:
            painted = cv2.bilateralFilter(crop, 9, 60, 9)
            painted = (painted // 24) * 24 + 12
            person = _clip8(crop * identity + painted.astype(np.float32) * (1.0 - identity))
        backdrop = studio_backdrop(width, height, style["backdrop"], style["light"])
        shot = composite(grade(person, warmth=style["warmth"], contrast=style["contrast"]), alpha, backdrop)
        out.append(Image.fromarray(_clip8(shot)))
    return out


# --------------------------------------------------------------------------- WaveSpeed Portrait


# Instruction words → the edit they cause, applied in this order.
_EDITS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("black and white", "monochrome", "b&w", "grayscale", "greyscale"), "mono"),
    (("warm", "golden", "sunset", "tan"), "warm"),
    (("cool", "cold", "blue", "winter"), "cool"),
    (("bright", "light", "flash", "exposure", "lift"), "bright"),
    (("dark", "moody", "dramatic", "night"), "dark"),
    (("smooth", "skin", "soft", "retouch", "blemish"), "smooth"),
    (("sharp", "detail", "crisp", "clear"), "sharpen"),
    (("vivid", "saturat", "colourful", "colorful", "vibrant"), "vivid"),
)


def edits_for(instruction: str) -> list[str]:
    """Which edits an instruction asks for; a generic enhancement when none is named."""
    words = instruction.lower()
    found = [edit for keys, edit in _EDITS if any(k in words for k in keys)]
    return found or ["enhance"]


def portrait_edit(image: Image.Image, *, prompt: str, seed: int) -> Image.Image:
    """The photo at its own size with the edits the instruction names.

    The seed adds a small, fixed film grain, so different seeds give
    different (and equal seeds identical) pictures.
    """
    rgb = _rgb(image)
    out = rgb.astype(np.float32)
    for edit in edits_for(prompt):
        if edit == "mono":
            grey = cv2.cvtColor(_clip8(out), cv2.COLOR_RGB2GRAY).astype(np.float32)
            out = np.repeat(grey[..., None], 3, axis=2)
        elif edit == "warm":
            out = grade(_clip8(out), warmth=0.9).astype(np.float32)
        elif edit == "cool":
            out = grade(_clip8(out), warmth=-0.9).astype(np.float32)
        elif edit == "bright":
            out = grade(_clip8(out), brightness=0.35).astype(np.float32)
        elif edit == "dark":
            out = grade(_clip8(out), brightness=-0.35, contrast=0.3).astype(np.float32)
        elif edit == "smooth":
            out = cv2.bilateralFilter(_clip8(out), 9, 45, 7).astype(np.float32)
        elif edit == "sharpen":
            blurred = cv2.GaussianBlur(out, (0, 0), 2.0)
            out = out * 1.8 - blurred * 0.8
        elif edit == "vivid":
            out = grade(_clip8(out), saturation=0.6, contrast=0.15).astype(np.float32)
        else:  # enhance: local contrast, a touch of warmth and saturation
            lab = cv2.cvtColor(_clip8(out), cv2.COLOR_RGB2LAB)
            lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(lab[..., 0])
            out = grade(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), warmth=0.25, saturation=0.15).astype(np.float32)
    grain = rng_for("portrait", seed).normal(0, 2.5, out.shape[:2]).astype(np.float32)[..., None]
    return Image.fromarray(_clip8(out + grain))


# --------------------------------------------------------------------------- WaveSpeed InstantCharacter


# Scene words → (sky top, sky bottom, ground) colours.
_SCENES = {
    "beach": ((90, 170, 230), (200, 230, 245), (226, 204, 150)),
    "neon": ((30, 10, 60), (160, 30, 140), (40, 30, 60)),
    "city": ((70, 90, 130), (180, 170, 160), (90, 90, 95)),
    "forest": ((90, 140, 110), (170, 200, 160), (60, 90, 50)),
    "space": ((5, 5, 20), (30, 20, 70), (60, 60, 70)),
    "snow": ((170, 190, 220), (235, 240, 248), (245, 248, 252)),
    "desert": ((120, 170, 220), (240, 210, 170), (210, 170, 110)),
    "mountain": ((110, 150, 200), (210, 220, 230), (100, 110, 90)),
    "office": ((200, 200, 195), (225, 222, 215), (140, 120, 100)),
    "night": ((10, 15, 40), (40, 50, 90), (25, 25, 35)),
}


def scene_for(prompt: str) -> str:
    words = prompt.lower()
    return next((name for name in _SCENES if name in words), "")


def _scene(width: int, height: int, prompt: str, seed: int) -> np.ndarray:
    rng = rng_for("scene", prompt.strip().lower(), seed)
    name = scene_for(prompt)
    if name:
        top, bottom, ground = (np.array(c, np.float32) for c in _SCENES[name])
    else:
        top, bottom, ground = (rng.uniform(30, 230, 3).astype(np.float32) for _ in range(3))
    horizon = int(height * rng.uniform(0.6, 0.75))
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:horizon] = top * (1 - t) + bottom * t
    canvas[horizon:] = ground
    # A few scene shapes (buildings, trees, dunes …) so the place reads as a place.
    for _ in range(int(rng.integers(4, 9))):
        w = int(width * rng.uniform(0.06, 0.18))
        h = int(height * rng.uniform(0.1, 0.4))
        x = int(rng.uniform(0, width - w))
        colour = (bottom * 0.5 + ground * 0.5) * rng.uniform(0.5, 0.9)
        cv2.rectangle(canvas, (x, horizon - h), (x + w, horizon), colour.tolist(), -1)
    return canvas


def cartoon(rgb: np.ndarray, levels: int = 6) -> np.ndarray:
    """Flat colour areas with dark outlines: an unmistakable "rendered" look."""
    smooth = cv2.bilateralFilter(rgb, 9, 75, 9)
    step = 256 // levels
    flat = (smooth // step) * step + step // 2
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    edges = cv2.adaptiveThreshold(cv2.medianBlur(grey, 5), 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return (flat.astype(np.float32) * (edges[..., None] / 255.0)).astype(np.uint8)


def character(image: Image.Image, *, prompt: str, seed: int, width: int, height: int) -> Image.Image:
    """The person, stylized and cut out, standing in a scene drawn from the prompt."""
    rgb = _rgb(image)
    face = main_face(image)
    alpha = person_alpha(rgb, face)
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs):
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    else:
        x0, y0, x1, y1 = 0, 0, rgb.shape[1], rgb.shape[0]
    person = cartoon(rgb[y0:y1, x0:x1])
    a = alpha[y0:y1, x0:x1]
    rng = rng_for("pose", prompt.strip().lower(), seed)
    target_h = int(height * rng.uniform(0.6, 0.8))
    scale = min(target_h / person.shape[0], width * 0.9 / person.shape[1])
    pw, ph = max(1, int(person.shape[1] * scale)), max(1, int(person.shape[0] * scale))
    person = cv2.resize(person, (pw, ph), interpolation=cv2.INTER_AREA)
    a = cv2.resize(a, (pw, ph), interpolation=cv2.INTER_LINEAR)
    canvas = _scene(width, height, prompt, seed)
    left = int(np.clip(rng.uniform(0.2, 0.8) * width - pw / 2, 0, width - pw))
    top = height - ph
    region = canvas[top : top + ph, left : left + pw]
    canvas[top : top + ph, left : left + pw] = composite(person, a, region)
    return Image.fromarray(_clip8(canvas))


# --------------------------------------------------------------------------- Vtrix Spark Edit Portrait


def spark_portrait(
    image: Image.Image,
    *,
    width: int,
    height: int,
    gpen: float,
    skin: float,
    skin_unifi: float,
    gen_mode: str,
    prompt: str,
    seed: int,
) -> Image.Image:
    """Portrait optimisation at exactly width×height, each slider visibly scaled.

    gpen sharpens the face, skin smooths it, skin_unifi pulls the skin toward
    its own average tone. gen_mode decides the background: `reference` keeps
    it, `reference_char` replaces it with a plain studio tone, `creative`
    replaces it with a scene tinted by the prompt (and the seed).
    """
    src = _rgb(image)
    face0 = main_face(image)
    rgb, _ = cover_crop(src, face0, width, height, face_share=0.4)
    face = _moved_face(face0, src.shape, width, height, 0.4)
    face = FaceBox(
        max(0, face.x), max(0, face.y), min(face.w, width - max(0, face.x)), min(face.h, height - max(0, face.y))
    )
    out = rgb.astype(np.float32)

    region = np.zeros((height, width), np.float32)
    cv2.ellipse(
        region,
        (round(face.center[0]), round(face.center[1])),
        (round(face.w * 0.6), round(face.h * 0.75)),
        0,
        0,
        360,
        1.0,
        -1,
    )
    region = cv2.GaussianBlur(region, (0, 0), max(2.0, face.w * 0.06))[..., None]
    skin_small, s = effects.skin_mask(rgb, [face])
    skin_m = cv2.resize(skin_small, (width, height), interpolation=cv2.INTER_LINEAR)[..., None]

    if skin > 0:
        smooth = cv2.bilateralFilter(rgb, 11, 20 + 80 * skin, 9).astype(np.float32)
        out += skin_m * skin * (smooth - out)
    if skin_unifi > 0:
        weights = skin_m[..., 0]
        if weights.sum() > 1:
            mean = (out * skin_m).sum(axis=(0, 1)) / weights.sum()
            local = cv2.GaussianBlur(out, (0, 0), max(2.0, face.w * 0.05))
            out += skin_m * skin_unifi * 0.8 * (mean - local)
    if gpen > 0:
        blurred = cv2.GaussianBlur(out, (0, 0), 1.6)
        out += region * gpen * 1.5 * (out - blurred)

    if gen_mode in ("reference_char", "creative"):
        alpha = person_alpha(_clip8(out), face)
        if gen_mode == "reference_char":
            backdrop = studio_backdrop(width, height, np.array((150, 150, 152), np.float32), (0.5, 0.25))
        else:
            backdrop = _scene(width, height, prompt, seed)
        out = composite(out, alpha, backdrop)
    grain = rng_for("spark", seed).normal(0, 1.5, (height, width)).astype(np.float32)[..., None]
    return Image.fromarray(_clip8(out + grain))


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    return imaging.encode_png(image) if fmt == "PNG" else imaging.encode_jpeg(image, quality=90)
