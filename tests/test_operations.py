"""The catalogue as data: parameters validate themselves, limits explain refusals."""

import pytest

from studio.imaging import FaceBox
from studio.operations import OPERATIONS, InputLimits, Param, ParamError, get_operation

# Pure computation: ./scripts/test-scaled leaves these to the embedded run (tests/conftest.py).
pytestmark = pytest.mark.backend_free


def test_every_operation_is_complete_and_its_defaults_are_valid():
    assert {"studio_retouch", "headshot_crop", "background_blur"} <= set(OPERATIONS)
    for op in OPERATIONS.values():
        assert op.label and op.summary and op.provider and op.outputs >= 1
        cleaned, errors = op.clean_params({})
        assert errors == {} and cleaned == op.defaults()
        for param in op.params:
            if param.kind in ("float", "int") and param.default is not None:  # None: optional (a random seed)
                assert param.minimum <= param.default <= param.maximum, (op.key, param.name)
            if param.kind == "choice":
                assert param.default in dict(param.choices)


def test_numbers_are_range_checked():
    strength = get_operation("studio_retouch").param("strength")
    assert strength.clean("0.25") == 0.25
    assert strength.clean("") == strength.default
    for bad in ("1.5", "-0.1", "nan", "abc"):
        with pytest.raises(ParamError):
            strength.clean(bad)


def test_choices_only_accept_offered_values():
    preset = get_operation("headshot_crop").param("preset")
    assert preset.clean("passport") == "passport"
    with pytest.raises(ParamError, match="Format"):
        preset.clean("16:9")


def test_clean_params_reports_each_bad_field_and_ignores_unknown_ones():
    op = get_operation("studio_retouch")
    cleaned, errors = op.clean_params({"strength": "9", "sneaky": "x"})
    assert set(errors) == {"strength"} and "sneaky" not in cleaned


def test_text_params_are_length_limited():
    prompt = Param("prompt", "Prompt", "text", "", max_length=10)
    assert prompt.clean("  short ") == "short"
    with pytest.raises(ParamError):
        prompt.clean("x" * 11)


def test_input_limits_explain_what_to_do():
    one_face = InputLimits(min_faces=1, max_faces=1, min_face_width=128, formats=frozenset({"JPEG"}))
    assert one_face.problems(faces=[FaceBox(0, 0, 200, 200)], source_format="JPEG") == []
    assert "couldn't find a face" in one_face.problems(faces=[], source_format="JPEG")[0]
    two = one_face.problems(faces=[FaceBox(0, 0, 200, 200)] * 2, source_format="JPEG")
    assert "2 faces" in two[0]
    small = one_face.problems(faces=[FaceBox(0, 0, 60, 60)], source_format="JPEG")
    assert "too small" in small[0] and "128" in small[0]
    assert "JPEG" in one_face.problems(faces=[FaceBox(0, 0, 200, 200)], source_format="PNG")[0]


def test_every_operation_has_a_picker_group_a_tagline_and_the_local_ones_an_example():
    from pathlib import Path

    from studio.operations import GROUPS, LOCAL_OPERATIONS

    examples = Path(__file__).resolve().parent.parent / "static" / "studio" / "examples"
    for op in OPERATIONS.values():
        assert op.group in GROUPS, op.key
        assert op.tagline and len(op.tagline) <= 24, op.key  # one short line on a phone tile
    for op in LOCAL_OPERATIONS:
        assert (examples / f"{op.key}.jpg").is_file(), op.key
    assert {op.key for op in LOCAL_OPERATIONS if op.group == "background"} == {
        "background_blur", "background_remove", "background_replace"}
    assert get_operation("background_remove").output_format == "PNG"
