"""Write static/studio/examples/<operation>.jpg: the picker's before/after pictures.

Run once (the files are committed): .venv/bin/python scripts/make_examples.py

Source: studio/assets/sample-portrait.jpg (skimage.data.astronaut(), Eileen
Collins, NASA, public domain). Each picture is the photo before (left) and
after (right). The local operations' "after" is the real operation run here;
the vendor operations' "after" is made by the offline vendor emulators
(studio/vendors/emulators), an illustration of what the service does, not
the vendor's own output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portraitstudio.settings")

import django  # noqa: E402

django.setup()

from PIL import Image  # noqa: E402

from studio import effects, imaging  # noqa: E402
from studio.operations import OPERATIONS  # noqa: E402
from studio.vendors.emulators import perfectcorp_pictures as pc  # noqa: E402
from studio.vendors.emulators import pictures_portrait as pp  # noqa: E402

OUT = ROOT / "static" / "studio" / "examples"
HALF = 180  # each side of the picture, px (shown at 120 px: sharp on 1.5x screens)


def _after(key: str, photo: Image.Image, faces) -> Image.Image:
    makers = {
        "studio_retouch": lambda: effects.studio_retouch(photo, faces, strength=0.8),
        "headshot_crop": lambda: effects.headshot_crop(photo, faces, preset="1:1"),
        "background_blur": lambda: effects.background_blur(photo, faces, strength=0.8),
        "background_remove": lambda: _on_checkerboard(effects.background_remove(photo, faces)),
        "background_replace": lambda: effects.background_replace(photo, faces, backdrop="ocean"),
        "pc_hairstyle": lambda: pc.restyle_hair(photo, faces, "101", "hair-style"),
        "pc_wig": lambda: pc.restyle_hair(photo, faces, "202", "wig"),
        "pc_hair_extension": lambda: pc.restyle_hair(photo, faces, "303", "hair-ext"),
        "pc_bangs": lambda: pc.restyle_hair(photo, faces, "404", "hair-bang"),
        "pc_hair_volume": lambda: pc.restyle_hair(photo, faces, "505", "hair-vol"),
        "pc_aging": lambda: pc.age_series(photo, faces, count=3)[0][-1][1],
        "pc_object_removal": lambda: pc.remove_object(photo, _patch_mask(photo)),
        "pc_colorize": lambda: pc.colorize(photo.convert("L").convert("RGB")),
        "pc_background_removal": lambda: _on_checkerboard(pc.remove_background(photo, faces)),
        "pc_enhance": lambda: pc.enhance(photo, 1),
        "pc_image_generator": lambda: pc.generate("studio portrait of a ceramic fox", "1", size=512),
        "ws_portrait": lambda: pp.portrait_edit(photo, prompt="soft warm light", seed=7),
        "ws_character": lambda: pp.character(photo, prompt="waving from a sunny beach", seed=7,
                                             width=512, height=512),
    }
    return makers[key]()


def _patch_mask(photo: Image.Image) -> Image.Image:
    mask = Image.new("L", photo.size, 0)
    w, h = photo.size
    mask.paste(255, (int(w * 0.26), int(h * 0.67), int(w * 0.42), int(h * 0.83)))  # the mission patch
    return mask


def _on_checkerboard(rgba: Image.Image) -> Image.Image:
    tile = max(8, rgba.width // 32)
    board = Image.new("RGB", rgba.size, (236, 236, 236))
    grey = Image.new("RGB", (tile, tile), (204, 204, 204))
    for y in range(0, rgba.height, tile):
        for x in range((y // tile) % 2 * tile, rgba.width, 2 * tile):
            board.paste(grey, (x, y))
    board.paste(rgba, (0, 0), rgba)
    return board


def _framed(image: Image.Image, photo_size: tuple[int, int]) -> Image.Image:
    """A square of head, shoulders and background, so the change shows at tile size.

    Results the size of the photo get the same framing as the "before"; others
    (a crop, a generated picture) are shown whole, centred on their top part.
    """
    w, h = image.size
    if (w, h) == photo_size:
        side = round(0.7 * min(w, h))
        box = ((w - side) // 2, 0, (w - side) // 2 + side, side)
    else:
        side = min(w, h)
        box = ((w - side) // 2, 0, (w - side) // 2 + side, side)
    return image.convert("RGB").crop(box).resize((HALF, HALF), Image.Resampling.LANCZOS)


def main() -> None:
    photo = Image.open(ROOT / "studio" / "assets" / "sample-portrait.jpg").convert("RGB")
    faces = imaging.detect_faces(photo)
    OUT.mkdir(parents=True, exist_ok=True)
    before = _framed(photo, photo.size)
    for key in OPERATIONS:
        try:
            after = _framed(_after(key, photo, faces), photo.size)
        except KeyError:
            print(f"skip {key}: no example maker (the picker shows its icon)")
            continue
        picture = Image.new("RGB", (2 * HALF, HALF))
        picture.paste(before, (0, 0))
        picture.paste(after, (HALF, 0))
        path = OUT / f"{key}.jpg"
        picture.save(path, "JPEG", quality=78, optimize=True)
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
