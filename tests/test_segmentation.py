"""Person segmentation measured against a hand-traced outline (tests/segmentation_truth.py).

Pure functions: no database. The figures with timings are in docs/benchmarks.md
(bench/segmentation.py); here the thresholds guard against regressions.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio import effects, segmentation
from tests import segmentation_truth as truth

# Pure computation: ./scripts/test-scaled leaves these to the embedded run (tests/conftest.py).
pytestmark = pytest.mark.backend_free


@pytest.fixture(autouse=True)
def _isolated_media():
    """Overrides the conftest's Django fixture: these tests touch no media or settings."""


@pytest.fixture(autouse=True)
def _sync_jobs():
    """Overrides the conftest's django-q fixture: no jobs run here."""


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr(segmentation, "model_file", lambda: None)


def test_the_model_ships_in_the_installed_package():
    path = segmentation.model_file()
    assert path is not None and path.stat().st_size > 100_000


def test_model_matches_the_traced_outline():
    case = truth.traced()
    found = segmentation.person_mask(case.rgb, [])
    assert found.method == segmentation.MODEL
    assert found.alpha.shape == case.truth.shape and found.alpha.dtype == np.float32
    assert truth.iou(found.alpha > 0.5, case.truth) >= 0.95
    # The edge is soft (a feathered rim), not a hard cut.
    partial = (found.alpha > 0.05) & (found.alpha < 0.95)
    assert 0.002 < partial.mean() < 0.05


@pytest.mark.parametrize("case", truth.composited(), ids=lambda c: c.name)
def test_model_finds_the_cut_out_on_other_backgrounds(case):
    found = segmentation.person_mask(case.rgb, _faces(case.rgb))
    assert truth.iou(found.alpha > 0.5, case.truth) >= 0.93


def test_model_beats_grabcut_on_the_traced_portrait(no_model):
    case = truth.traced()
    faces = [f for f in _faces(case.rgb)]
    grabcut = segmentation.person_mask(case.rgb, faces)
    assert grabcut.method == segmentation.GRABCUT
    grabcut_iou = truth.iou(grabcut.alpha > 0.5, case.truth)
    assert grabcut_iou < 0.95


def test_without_the_model_grabcut_runs_and_says_so(no_model):
    photo = Image.fromarray(truth.traced().rgb)
    out = effects.background_replace(photo, _faces(truth.traced().rgb), backdrop="navy")
    assert out.info["segmentation"] == segmentation.GRABCUT
    with pytest.raises(effects.EffectError) as err:
        effects.background_blur(photo, [])
    assert "face" in err.value.message


def test_removal_alpha_matches_the_traced_mask():
    case = truth.traced()
    out = effects.background_remove(Image.fromarray(case.rgb), _faces(case.rgb))
    assert out.mode == "RGBA" and out.info["segmentation"] == segmentation.MODEL
    alpha = np.asarray(out)[..., 3]
    assert truth.iou(alpha > 127, case.truth) >= 0.95
    assert alpha[case.truth].mean() > 240 and alpha[~case.truth].mean() < 20


@pytest.mark.parametrize("key", sorted(segmentation.BACKDROPS))
def test_replacement_puts_the_person_on_the_backdrop(key):
    case = truth.traced()
    out = np.asarray(effects.background_replace(Image.fromarray(case.rgb), _faces(case.rgb), backdrop=key))
    out = out.astype(float)
    back = segmentation.render_backdrop(key, case.rgb.shape[1], case.rgb.shape[0]).astype(float)
    inner, outer = _erode(case.truth, 12), _erode(~case.truth, 12)
    assert np.abs(out - back)[outer].mean() < 4  # the old backdrop is gone
    assert np.abs(out - case.rgb)[inner].mean() < 4  # the person is untouched


def test_blur_keeps_the_subject_sharp_and_softens_the_backdrop():
    case = truth.traced()
    out = np.asarray(effects.background_blur(Image.fromarray(case.rgb), _faces(case.rgb), strength=0.6))
    inner, outer = _erode(case.truth, 12), _erode(~case.truth, 12)
    assert _sharpness(out, inner) > 0.85 * _sharpness(case.rgb, inner)
    assert _sharpness(out, outer) < 0.25 * _sharpness(case.rgb, outer)


def test_unknown_backdrop_is_refused():
    with pytest.raises(ValueError):
        effects.background_replace(Image.fromarray(truth.traced().rgb), _faces(truth.traced().rgb), backdrop="plaid")


# ---------------------------------------------------------------- helpers


def _faces(rgb):
    from studio import imaging

    return imaging.detect_faces(Image.fromarray(rgb))


def _erode(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    return cv2.erode(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


def _sharpness(rgb: np.ndarray, where: np.ndarray) -> float:
    """Mean squared Laplacian (fine detail) of the grey image inside `where`."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float((cv2.Laplacian(grey, cv2.CV_64F) ** 2)[where].mean())
