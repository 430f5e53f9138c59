"""The local portrait operations, measured on a real photograph.

Pure functions: no database, no settings. Runs with or without pytest-django
(`pytest tests/test_effects.py -p no:django`); the conftest's Django-only
autouse fixtures are overridden with no-ops below.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from PIL import Image

from studio.effects import (
    CROP_PRESETS,
    EffectError,
    background_blur,
    crop_box,
    headshot_crop,
    person_mask,
    studio_retouch,
)
from studio.imaging import FaceBox
from tests.images import astronaut, no_face, two_faces

# Pure computation: ./scripts/test-scaled leaves these to the embedded run (tests/conftest.py).
pytestmark = pytest.mark.backend_free

HEAD_PER_BOX = 1.75  # crown-to-chin height per Haar box height, as studio.effects assumes


@pytest.fixture(autouse=True)
def _isolated_media():
    """Overrides the conftest's Django fixture: these tests touch no media or settings."""


@pytest.fixture(autouse=True)
def _sync_jobs():
    """Overrides the conftest's django-q fixture: no jobs run here."""


_CASCADE = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def detect(img: Image.Image) -> list[FaceBox]:
    """Haar faces, largest first; detection runs on a ≤512 px copy (fast, no false hits)."""
    a = np.asarray(img.convert("RGB"))
    s = min(1.0, 512 / max(a.shape[:2]))
    if s < 1:
        a = cv2.resize(a, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    boxes = _CASCADE.detectMultiScale(
        cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), scaleFactor=1.1, minNeighbors=5, minSize=(30, 30)
    )
    faces = [FaceBox(*(round(v / s) for v in b)) for b in boxes]
    return sorted(faces, key=lambda f: -f.w * f.h)


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.float64)


def lap_var(img, box) -> float:
    """Sharpness of a region: variance of the Laplacian of its luminance."""
    x, y, w, h = (int(v) for v in box)
    g = cv2.cvtColor(np.asarray(img)[y:y + h, x:x + w], cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(g, cv2.CV_64F).var())


def sub(face: FaceBox, x0, y0, x1, y1):
    """A region given in fractions of the face box."""
    return (face.x + x0 * face.w, face.y + y0 * face.h, (x1 - x0) * face.w, (y1 - y0) * face.h)


def cast_of(a: np.ndarray) -> np.ndarray:
    """log(R/G), log(B/G) of the channel means: 0, 0 is neutral grey."""
    m = a.reshape(-1, 3).mean(axis=0)
    return np.log(m[[0, 2]] / m[1])


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return astronaut()


@pytest.fixture(scope="module")
def face(photo) -> FaceBox:
    faces = detect(photo)
    assert len(faces) == 1 and abs(faces[0].x - 177) < 6 and abs(faces[0].w - 95) < 6
    return faces[0]


TOP_RIGHT = (430, 0, 80, 60)  # backdrop far from the person
FLAG = (0, 100, 60, 120)  # the flag: detailed, not skin


# ---------------------------------------------------------------- retouch


@pytest.fixture(scope="module")
def retouched(photo, face) -> Image.Image:
    return studio_retouch(photo, [face])


def test_retouch_smooths_skin(photo, face, retouched):
    skin = [
        sub(face, 0.30, 0.06, 0.72, 0.25),  # forehead
        sub(face, 0.66, 0.55, 0.87, 0.78),  # cheek
        sub(face, 0.30, 1.00, 0.72, 1.19),  # chin
    ]
    ratios = [lap_var(retouched, b) / lap_var(photo, b) for b in skin]
    assert np.mean(ratios) < 0.75, ratios
    assert max(ratios) < 0.9, ratios
    # Over the whole face box too, although eyes and mouth keep their edges.
    box = (face.x, face.y, face.w, face.h)
    assert lap_var(retouched, box) < 0.92 * lap_var(photo, box)


def test_retouch_keeps_detail_outside_skin(photo, retouched):
    for box in (FLAG, TOP_RIGHT):
        ratio = lap_var(retouched, box) / lap_var(photo, box)
        assert 0.8 < ratio < 2.5, (box, ratio)  # not smoothed; at most lightly sharpened


def test_retouch_leaves_a_good_photo_colours_alone(photo, retouched):
    shift = np.abs(cast_of(arr(retouched)) - cast_of(arr(photo))).sum()
    assert shift < 0.1
    assert abs(arr(retouched).mean() - arr(photo).mean()) < 8


def test_retouch_corrects_a_colour_cast(photo, face):
    a = arr(photo)
    cast = np.clip(a * [1.25, 1.0, 0.8], 0, 255).astype(np.uint8)
    fixed = arr(studio_retouch(Image.fromarray(cast), detect(Image.fromarray(cast))))
    before = np.abs(cast_of(cast.astype(float)) - cast_of(a)).sum()
    after = np.abs(cast_of(fixed) - cast_of(a)).sum()
    assert after < 0.4 * before, (before, after)
    # The grey backdrop, in particular, is grey again.
    x, y, w, h = TOP_RIGHT
    wall_before = np.abs(cast_of(cast[y:y + h, x:x + w].astype(float))).sum()
    wall_after = np.abs(cast_of(fixed[y:y + h, x:x + w])).sum()
    assert wall_after < 0.5 * wall_before, (wall_before, wall_after)


def test_retouch_brightens_a_dark_photo(photo, face):
    dark = (arr(photo) * 0.5).astype(np.uint8)
    out = arr(studio_retouch(Image.fromarray(dark), [face]))
    assert out.mean() > 1.4 * dark.mean()
    assert out.mean() < arr(photo).mean() * 1.15  # brighter, not blown out


def test_retouch_strength_zero_is_identity(photo, face):
    out = studio_retouch(photo, [face], strength=0)
    assert np.abs(arr(out) - arr(photo)).mean() < 1
    weak = studio_retouch(photo, [face], strength=0.3)
    strong = studio_retouch(photo, [face], strength=1.0)
    assert np.abs(arr(weak) - arr(photo)).mean() < np.abs(arr(strong) - arr(photo)).mean()


def test_retouch_without_faces_still_corrects(photo):
    out = studio_retouch(photo, [])
    assert out.size == photo.size and out.mode == "RGB"
    dark = Image.fromarray((arr(no_face()) * 0.5).astype(np.uint8))
    fixed = studio_retouch(dark, [])
    assert fixed.size == dark.size
    assert arr(fixed).mean() > 1.3 * arr(dark).mean()


def test_retouch_output_size_mode_and_progress(photo, face):
    stages = []
    out = studio_retouch(photo.convert("RGBA"), [face], progress=lambda s, f: stages.append((s, f)))
    assert out.size == photo.size and out.mode == "RGB"
    names = [s for s, _ in stages]
    assert "Correcting exposure" in names and "Smoothing skin" in names
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


# ---------------------------------------------------------------- headshot crop


def map_box(face: FaceBox, box, out: Image.Image) -> tuple[float, float, float, float]:
    """The face box in the output's pixels, given the crop box used."""
    left, top, cw, ch = box
    s = out.height / ch
    return ((face.x - left) * s, (face.y - top) * s, face.w * s, face.h * s)


def check_framing(out: Image.Image, preset: str, mapped) -> None:
    p = CROP_PRESETS[preset]
    w, h = out.size
    if p.size:
        assert out.size == p.size
    else:
        assert abs(w / h - p.aspect) < 0.005
        assert max(w, h) <= 2048
    found = detect(out)
    assert len(found) == 1, found
    f = found[0]
    assert abs(f.center[0] / w - 0.5) < 0.04  # horizontally centred
    assert f.y > 0.12 * h  # head room above the face
    assert f.y + 0.4 * f.h < 0.5 * h  # eye line in the upper half
    if not p.size:
        assert f.center[1] < 0.5 * h
    # Detection on the output agrees with the mapped input box.
    mx, my, mw, mh = mapped
    assert abs(f.center[0] - (mx + mw / 2)) < 0.05 * w and abs(f.w - mw) < 0.15 * mw


@pytest.mark.parametrize("preset", list(CROP_PRESETS))
def test_crop_frames_the_face(photo, face, preset):
    out = headshot_crop(photo, [face], preset=preset)
    box = crop_box(photo.size, [face], preset)
    mapped = map_box(face, box, out)
    check_framing(out, preset, mapped)
    head = HEAD_PER_BOX * mapped[3] / out.height
    if preset == "passport":
        assert out.size == (827, 1063)
        assert 32 / 45 <= head <= 36 / 45  # ICAO-like: head 32–36 mm of 45 mm
        crown_mm = (mapped[1] - 0.5 * mapped[3]) / out.height * 45
        assert 3 <= crown_mm <= 5, crown_mm
        redetected = HEAD_PER_BOX * detect(out)[0].h / out.height
        assert 0.69 <= redetected <= 0.82  # detector jitter on top of the rule
    else:
        assert 0.55 <= head <= 0.65
        crown = (mapped[1] - 0.5 * mapped[3]) / out.height
        assert 0.05 <= crown <= 0.2, crown  # space above the hair, not a wasted top third


def test_crop_no_face():
    with pytest.raises(EffectError) as err:
        headshot_crop(no_face(), detect(no_face()))
    assert "couldn't find a face" in err.value.message


def test_crop_two_people():
    img = two_faces()
    faces = detect(img)
    assert len(faces) == 2
    with pytest.raises(EffectError) as err:
        headshot_crop(img, faces)
    assert "2 faces" in err.value.message


def test_crop_ignores_small_background_faces(photo, face):
    bystander = FaceBox(420, 300, 25, 25)
    out = headshot_crop(photo, [face, bystander], preset="1:1")
    assert out.size == headshot_crop(photo, [face], preset="1:1").size


@pytest.mark.parametrize("preset", ["4:5", "passport"])
def test_crop_face_at_the_image_edge(photo, preset):
    img = Image.fromarray(np.asarray(photo)[:, 170:])  # face now touches the left border
    faces = detect(img)
    assert faces and faces[0].x < 20
    out = headshot_crop(img, faces, preset=preset)
    box = crop_box(img.size, faces, preset)
    assert box[0] < 0  # needed canvas beyond the photo...
    check_framing(out, preset, map_box(faces[0], box, out))
    # ...filled smoothly (defocused), not with streaks or black.
    fill = np.ascontiguousarray(np.asarray(out)[:, : int(-box[0] * out.height / box[3]) - 4])
    assert fill.mean() > 40
    assert lap_var(fill, (0, 0, fill.shape[1], fill.shape[0])) < 5


def test_crop_unknown_preset(photo, face):
    with pytest.raises(ValueError):
        headshot_crop(photo, [face], preset="16:9")


# ---------------------------------------------------------------- background blur


@pytest.fixture(scope="module")
def blurred(photo, face) -> dict[float, Image.Image]:
    return {s: background_blur(photo, [face], strength=s) for s in (0.3, 0.6, 0.9)}


@pytest.fixture(scope="module")
def mask(photo, face) -> np.ndarray:
    return person_mask(np.asarray(photo), face)


def test_blur_softens_background_keeps_person(photo, face, blurred):
    out = blurred[0.6]
    assert out.size == photo.size and out.mode == "RGB"
    for box in (TOP_RIGHT, (0, 20, 60, 60)):
        assert lap_var(out, box) < lap_var(photo, box) / 3
    face_box = (face.x, face.y, face.w, face.h)
    assert lap_var(out, face_box) > 0.7 * lap_var(photo, face_box)
    badge = (150, 360, 60, 60)  # the mission patch on the suit: part of the person
    assert lap_var(out, badge) > 0.7 * lap_var(photo, badge)


def test_blur_mask_covers_the_person(face, mask):
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    # The box's lower corners show backdrop beside the jaw; everything else is face.
    x, y, w, h = (round(v) for v in sub(face, 0.1, 0.0, 0.9, 0.9))
    assert mask[y:y + h, x:x + w].mean() > 0.99
    assert mask[y:y + h, x:x + w].min() > 0.8
    assert mask[200:240, 200:250].mean() > 0.9  # neck / collar
    assert mask[330:420, 120:260].mean() > 0.9  # chest
    # The white tether strap and the round connector look like the pale backdrop but
    # are enclosed by the suit: they must stay sharp, not smudged.
    assert mask[400:500, 250:270].mean() > 0.9
    assert mask[440:490, 160:190].mean() > 0.9
    assert mask[0:60, 430:510].mean() < 0.05  # backdrop
    assert mask[20:200, 0:60].mean() < 0.1  # flag


def test_blur_strength_sets_the_amount(photo, blurred):
    x, y, w, h = TOP_RIGHT
    region = np.s_[y:y + h, x:x + w]
    change = [np.abs(arr(blurred[s])[region] - arr(photo)[region]).mean() for s in (0.3, 0.6, 0.9)]
    assert change[0] < change[1] < change[2], change
    assert lap_var(blurred[0.9], FLAG) < lap_var(blurred[0.3], FLAG)
    same = background_blur(photo, detect(photo), strength=0)
    assert np.abs(arr(same) - arr(photo)).mean() < 1


def test_blur_has_no_halo(photo, face, blurred, mask):
    """Just outside the person the backdrop must not take on the person's colours."""
    a = np.asarray(photo)
    hard = (mask > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(1 - hard, cv2.DIST_L2, 5)
    band = (dist > 3) & (dist < 12)
    sigma = 0.025 * 0.6 * 512  # what strength 0.6 uses on a 512 px photo
    naive_bg = cv2.GaussianBlur(a, (0, 0), sigma).astype(np.float64)
    naive = mask[..., None] * a + (1 - mask[..., None]) * naive_bg
    ours_err = np.abs(arr(blurred[0.6]) - a)[band].mean()
    naive_err = np.abs(naive - a)[band].mean()
    assert ours_err < 0.8 * naive_err, (ours_err, naive_err)


def test_blur_needs_a_face(monkeypatch):
    from studio import segmentation

    # The face says which person to keep, with the model (which alone takes part of the
    # coffee cup for a person) and without it (GrabCut starts from the face).
    for model in (segmentation.model_file, lambda: None):
        monkeypatch.setattr(segmentation, "model_file", model)
        with pytest.raises(EffectError) as err:
            background_blur(no_face(), [])
        assert "face" in err.value.message


def test_blur_progress(photo, face):
    stages = []
    background_blur(photo, [face], progress=lambda s, f: stages.append(s))
    assert stages[0] == "Finding the person" and stages[-1] == "Done"
    assert "Separating person from background" in stages


# ---------------------------------------------------------------- large photos


def test_large_photo_runs_every_effect(face, capsys):
    big = astronaut(scale=4)  # 2048 px
    faces = [FaceBox(face.x * 4, face.y * 4, face.w * 4, face.h * 4)]
    timings = {}
    for name, run in (
        ("retouch", lambda: studio_retouch(big, faces)),
        ("crop", lambda: headshot_crop(big, faces, preset="passport")),
        ("blur", lambda: background_blur(big, faces)),
    ):
        start = time.perf_counter()
        out = run()
        timings[name] = round(time.perf_counter() - start, 2)
        assert out.mode == "RGB"
        assert out.size == ((827, 1063) if name == "crop" else big.size)
    with capsys.disabled():
        print(f"\n2048 px timings (s): {timings}")
