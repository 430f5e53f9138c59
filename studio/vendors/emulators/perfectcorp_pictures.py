"""Real image transformations behind the Perfect Corp emulator.

The emulator is about the protocol; this module makes its results visible:
each feature changes the photo in a way a person can see and a test can
measure (hair recoloured above the face, a greyer and softer face per age, a
PNG whose background is transparent, a mask area filled in, …). None of it
claims to be what the vendor's models do; it is sandbox output.
"""

from __future__ import annotations

import hashlib
import io
import math

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from studio.imaging import FaceBox


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()[:8], "big")


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _main_face(image: Image.Image, faces: list[FaceBox]) -> FaceBox:
    """The largest face, or a centred guess so every feature still shows an effect."""
    if faces:
        return max(faces, key=lambda f: f.w * f.h)
    w, h = image.size
    side = min(w, h) // 3
    return FaceBox(w // 2 - side // 2, h // 3 - side // 2, side, side)


def _ellipse_mask(shape, center, axes, blur: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cx, cy = center
    cv2.ellipse(mask, (round(cx), round(cy)), (max(1, round(axes[0])), max(1, round(axes[1]))), 0, 0, 360, 255, -1)
    out = mask.astype(np.float32) / 255.0
    if blur > 0:
        k = max(3, int(blur) * 2 + 1)
        out = cv2.GaussianBlur(out, (k, k), blur)
    return out


def hair_mask(shape: tuple[int, int], face: FaceBox, variant: str = "hair-style") -> np.ndarray:
    """A soft mask of where hair sits around a face: a crown above it, minus the face itself.

    Variants reshape it: extensions reach down past the shoulders, bangs are a
    band over the forehead, volume makes the crown wider and taller.
    """
    h, w = shape
    cx, cy = face.center
    fw, fh = face.w, face.h
    blur = max(2.0, fw * 0.05)
    crown_axes = {"hair-vol": (fw * 0.95, fh * 0.95), "wig": (fw * 0.8, fh * 0.85)}.get(variant, (fw * 0.72, fh * 0.8))
    hair = _ellipse_mask((h, w), (cx, cy - fh * 0.22), crown_axes, blur)
    if variant == "hair-ext":
        # Long strands on both sides, down to well below the chin.
        for side in (-1, 1):
            hair = np.maximum(
                hair, _ellipse_mask((h, w), (cx + side * fw * 0.55, cy + fh * 0.6), (fw * 0.22, fh * 1.1), blur)
            )
    face_core = _ellipse_mask((h, w), (cx, cy + fh * 0.08), (fw * 0.44, fh * 0.52), blur)
    if variant == "hair-bang":
        # Only a band across the forehead, over the face.
        band = _ellipse_mask((h, w), (cx, cy - fh * 0.28), (fw * 0.5, fh * 0.2), blur)
        return np.clip(band, 0, 1)
    return np.clip(hair - face_core, 0, 1)


def style_tint(style_id: str) -> tuple[np.ndarray, float, float]:
    """A style's colour (RGB 0..1), stripe angle and stripe frequency, derived from its id."""
    seed = _seed("style", style_id)
    hue = (seed % 360) / 360.0
    r, g, b = np.array(cv2.cvtColor(np.uint8([[[int(hue * 180), 200, 200]]]), cv2.COLOR_HSV2RGB)[0, 0]) / 255.0
    angle = ((seed >> 12) % 180) * math.pi / 180
    freq = 0.03 + ((seed >> 20) % 50) / 1000.0
    return np.array([r, g, b], np.float32), angle, freq


def restyle_hair(image: Image.Image, faces: list[FaceBox], style_id: str, variant: str = "hair-style") -> Image.Image:
    """Recolour and texture the hair region with the style's tint and stripe pattern."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    face = _main_face(image, faces)
    mask = hair_mask((h, w), face, variant)[..., None]
    tint, angle, freq = style_tint(style_id)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq * 2 * math.pi)
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    # Keep the photo's light and shade; replace its colour with the style's.
    shade = (0.35 + 0.65 * luma)[..., None] * (0.8 + 0.2 * stripes)[..., None]
    styled = np.clip(tint[None, None, :] * shade * 1.4, 0, 1)
    return _image(rgb * (1 - 0.85 * mask) + styled * 0.85 * mask)


def transfer_hair(
    image: Image.Image, faces: list[FaceBox], reference: Image.Image, ref_faces: list[FaceBox]
) -> Image.Image:
    """v2 hairstyle from a reference photo: the reference's hair colour on the user's hair region."""
    ref = _rgb(reference)
    ref_mask = hair_mask(ref.shape[:2], _main_face(reference, ref_faces))
    weight = ref_mask.sum()
    colour = (ref * ref_mask[..., None]).sum(axis=(0, 1)) / weight if weight > 1 else ref.mean(axis=(0, 1))
    rgb = _rgb(image)
    mask = hair_mask(rgb.shape[:2], _main_face(image, faces))[..., None]
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    shade = (0.35 + 0.65 * luma)[..., None]
    styled = np.clip(np.asarray(colour, np.float32)[None, None, :] * shade * 1.6, 0, 1)
    return _image(rgb * (1 - 0.85 * mask) + styled * 0.85 * mask)


def estimated_age(image: Image.Image) -> int:
    """A stable 'estimate' of the person's age (20–45), derived from the pixels."""
    return 20 + _seed("age", hashlib.sha256(image.tobytes()[:65536]).hexdigest()) % 26


def age_series(image: Image.Image, faces: list[FaceBox], count: int = 5) -> tuple[list[tuple[int, Image.Image]], int]:
    """(age, picture) pairs sorted by age, the original among them; and the original's age."""
    own_age = estimated_age(image)
    targets = sorted({15, 30, 45, 60, 75, own_age})
    targets = [a for a in targets if a == own_age or abs(a - own_age) >= 6][: count + 1]
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    face = _main_face(image, faces)
    hair = hair_mask((h, w), face)[..., None]
    skin = _ellipse_mask((h, w), (face.center[0], face.center[1] + face.h * 0.05), (face.w * 0.48, face.h * 0.6), 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wrinkle_lines = 0.5 + 0.5 * np.sin(yy * (2 * math.pi / max(4.0, face.h / 14)) + 0.15 * np.sin(xx / 9))
    series = []
    for age in targets:
        if age == own_age:
            series.append((age, image.convert("RGB")))
            continue
        t = float(np.clip((age - own_age) / 50.0, -1, 1))
        out = rgb.copy()
        luma = (out @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        if t > 0:
            # Older: greyer hair, less saturated and softer skin, fine lines on the face.
            grey = np.clip(luma * 0.6 + 0.45, 0, 1)
            out = out * (1 - hair * t) + grey * hair * t
            out = out * (1 - 0.45 * t) + luma * 0.45 * t
            soft = cv2.GaussianBlur(out, (0, 0), 1.0 + 2.0 * t)
            out = out * (1 - 0.4 * t) + soft * 0.4 * t
            lines = (wrinkle_lines * skin)[..., None] * 0.12 * t
            out = out - lines
        else:
            # Younger: smoother, a little brighter and more saturated.
            t = -t
            soft = cv2.GaussianBlur(out, (0, 0), 1.5 + 3.0 * t)
            out = out * (1 - skin[..., None] * 0.6 * t) + soft * skin[..., None] * 0.6 * t
            out = np.clip(luma + (out - luma) * (1 + 0.4 * t) + 0.04 * t, 0, 1)
        series.append((age, _image(out)))
    return series, own_age


def remove_background(image: Image.Image, faces: list[FaceBox]) -> Image.Image:
    """An RGBA cut-out of the person: a face-seeded segmentation, background transparent."""
    from studio.effects import person_mask

    rgb8 = np.asarray(image.convert("RGB"))
    face = _main_face(image, faces)
    alpha = person_mask(rgb8, face)
    rgba = np.dstack([rgb8, np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)])
    return Image.fromarray(rgba, "RGBA")


_WARM_PALETTES = (
    ((0.10, 0.05, 0.03), (0.62, 0.42, 0.30), (0.98, 0.92, 0.82)),
    ((0.05, 0.06, 0.10), (0.55, 0.45, 0.40), (0.96, 0.90, 0.86)),
    ((0.08, 0.07, 0.02), (0.60, 0.50, 0.28), (0.99, 0.95, 0.80)),
    ((0.12, 0.04, 0.06), (0.66, 0.40, 0.38), (0.99, 0.90, 0.88)),
)


def colorize(image: Image.Image, variant: int = 0) -> Image.Image:
    """Map a (greyscale) photo's tones onto a warm three-stop palette, keeping detail."""
    luma = _rgb(image) @ np.array([0.299, 0.587, 0.114], np.float32)
    dark, mid, light = (np.array(c, np.float32) for c in _WARM_PALETTES[variant % len(_WARM_PALETTES)])
    lo = np.clip(luma * 2, 0, 1)[..., None]
    hi = np.clip(luma * 2 - 1, 0, 1)[..., None]
    out = np.where(luma[..., None] < 0.5, dark + (mid - dark) * lo, mid + (light - mid) * hi)
    return _image(out)


def enhance(image: Image.Image, scale: int) -> Image.Image:
    """Upscale by `scale` (1, 2 or 4) and restore edges with an unsharp mask."""
    rgb = np.asarray(image.convert("RGB"))
    if scale > 1:
        rgb = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
    soft = cv2.GaussianBlur(rgb, (0, 0), 1.2)
    sharp = cv2.addWeighted(rgb, 1.6, soft, -0.6, 0)
    return Image.fromarray(sharp)


def remove_object(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Erase the white area of the mask by inpainting it from its surroundings."""
    rgb = np.asarray(image.convert("RGB"))
    m = (np.asarray(mask.convert("L")) > 127).astype(np.uint8) * 255
    m = cv2.dilate(m, np.ones((5, 5), np.uint8))
    return Image.fromarray(cv2.inpaint(rgb, m, 7, cv2.INPAINT_TELEA))


def transfer_makeup(
    source: Image.Image, source_faces: list[FaceBox], reference: Image.Image, reference_faces: list[FaceBox]
) -> Image.Image:
    """Move the reference face's colour statistics (Lab mean/std) onto the source face."""
    src = np.asarray(source.convert("RGB"))
    ref = np.asarray(reference.convert("RGB"))
    sf, rf = _main_face(source, source_faces), _main_face(reference, reference_faces)
    src_lab = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref_lab = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mask = _ellipse_mask(src.shape[:2], sf.center, (sf.w * 0.45, sf.h * 0.58), max(3.0, sf.w * 0.06))
    r_mask = _ellipse_mask(ref.shape[:2], rf.center, (rf.w * 0.45, rf.h * 0.58), 0) > 0.5
    s_px = src_lab[s_mask > 0.5]
    r_px = ref_lab[r_mask]
    if len(s_px) < 10 or len(r_px) < 10:
        return source.convert("RGB")
    s_mean, s_std = s_px.mean(0), s_px.std(0) + 1e-3
    r_mean, r_std = r_px.mean(0), r_px.std(0) + 1e-3
    moved = (src_lab - s_mean) * (r_std / s_std) + r_mean
    out_lab = src_lab * (1 - s_mask[..., None]) + moved * s_mask[..., None]
    out = cv2.cvtColor(np.clip(out_lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)
    return Image.fromarray(out)


def generate(prompt: str, style_id: str, size: int = 1024) -> Image.Image:
    """A picture made from the prompt: a seeded gradient and pattern with the prompt written in."""
    seed = _seed("gen", prompt, style_id)
    rng = np.random.default_rng(seed)
    c1, c2 = rng.uniform(0.1, 0.95, 3).astype(np.float32), rng.uniform(0.1, 0.95, 3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, math.pi)
    t = np.clip(xx * math.cos(angle) + yy * math.sin(angle), 0, 1)[..., None]
    base = c1 * (1 - t) + c2 * t
    for _ in range(6):  # soft circles, a different arrangement per prompt
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.25)
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))[..., None]
        base = base * (1 - 0.5 * blob) + rng.uniform(0, 1, 3).astype(np.float32) * 0.5 * blob
    picture = _image(base)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(16, size // 28))
    words, lines, line = prompt.split(), [], ""
    for word in words:
        if len(line) + len(word) > 34:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    lines.append(line)
    y = size - (len(lines[:6]) + 1) * (size // 24)
    for text in lines[:6]:
        draw.text((size // 20 + 2, y + 2), text, fill=(0, 0, 0), font=font)
        draw.text((size // 20, y), text, fill=(255, 255, 255), font=font)
        y += size // 24
    return picture


def thumbnail(style_id: str, title: str, size: int = 160) -> Image.Image:
    """A catalogue swatch: the style's tint and stripes with its title."""
    tint, angle, freq = style_tint(style_id)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * freq * 4 * math.pi)
    picture = _image(np.clip(tint[None, None, :] * (0.6 + 0.4 * stripes)[..., None], 0, 1))
    ImageDraw.Draw(picture).text((6, size - 18), title[:22], fill=(255, 255, 255))
    return picture


def encode(image: Image.Image, ext: str) -> tuple[bytes, str]:
    """Bytes and content type for an output extension (jpg, png, webp)."""
    buffer = io.BytesIO()
    if ext == "png":
        image.save(buffer, "PNG")
        return buffer.getvalue(), "image/png"
    if ext == "webp":
        image.save(buffer, "WEBP", quality=88)
        return buffer.getvalue(), "image/webp"
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg"
