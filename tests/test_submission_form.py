"""The studio form (studio/submission.py): submitted data in, a typed Submission or per-field errors out.

The form is built as the view builds it, from a real multipart POST's data and
files (a QueryDict and a MultiValueDict), the owner and whether e-mail is allowed.
"""

from __future__ import annotations

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import Http404, QueryDict
from django.utils.datastructures import MultiValueDict
from PIL import Image

from studio.photos import photo_create
from studio.operations import OPERATIONS
from studio.ownership import Owner
from studio.submission import ParamField, Submission, SubmissionForm

pytestmark = pytest.mark.django_db

OWNER = Owner(visitor_id="visitor-submission-form")


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="selfie.jpg")


def post(pairs: list[tuple[str, str]]) -> QueryDict:
    """A POST body as the browser sends it: repeated names stay repeated."""
    data = QueryDict(mutable=True)
    for name, value in pairs:
        data.appendlist(name, value)
    data._mutable = False
    return data


def form_for(pairs, files=None, **kwargs) -> SubmissionForm:
    return SubmissionForm(post(pairs), MultiValueDict(files or {}), owner=OWNER, **kwargs)


def png(size: tuple[int, int], *, painted: bool = True) -> bytes:
    im = Image.new("L", size, 0)
    if painted:
        im.paste(255, (10, 10, 40, 40))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_a_valid_submission_is_one_typed_submission(photo):
    form = form_for([("operation", "background_blur"), ("photo", str(photo.pk)), ("strength", "0.35")])
    assert form.is_valid(), form.errors
    submission = form.submission
    assert isinstance(submission, Submission)
    assert submission.operation is OPERATIONS["background_blur"]
    assert submission.photo == photo
    assert submission.params == {"strength": 0.35}  # a float, from the catalogue's range check
    assert submission.templates == () and submission.compare_with == () and submission.styles == {}
    assert submission.reference_photo is None and submission.mask is None
    assert submission.seed_lock is None  # this operation takes no seed
    assert submission.notify is False
    assert submission.runs() == [(OPERATIONS["background_blur"], {"strength": 0.35})]


def test_an_empty_parameter_takes_the_catalogue_default(photo):
    form = form_for([("operation", "headshot_crop"), ("photo", str(photo.pk))])
    assert form.is_valid(), form.errors
    assert form.submission.params == {"preset": "4:5"}


def test_each_error_is_attached_to_its_field_and_the_values_are_kept(photo):
    form = form_for([("operation", "background_blur"), ("photo", str(photo.pk)), ("strength", "5")])
    assert not form.is_valid()
    assert form.submission is None
    assert list(form.errors) == ["strength"]
    assert form.errors_by_field() == {"strength": "Blur amount must be between 0.1 and 1."}
    assert form.shown_values()["strength"] == "5"  # shown again as sent

    form = form_for([("operation", "headshot_crop"), ("photo", str(photo.pk)), ("preset", "16:9")])
    assert form.errors_by_field() == {"preset": "Pick one of the offered options for Format."}


def test_an_unknown_operation_has_no_form_and_someone_elses_photo_is_404(photo):
    assert form_for([("operation", "no_such_thing")]).operation is None
    stranger = Owner(visitor_id="someone-else")
    with pytest.raises(Http404):
        SubmissionForm(post([("operation", "background_blur"), ("photo", str(photo.pk))]), owner=stranger)


def test_the_mask_error_is_on_the_mask_field(photo):
    base = [("operation", "pc_object_removal"), ("photo", str(photo.pk))]
    form = form_for(base)
    assert form.errors_by_field() == {"mask": "Paint over the area to remove first."}

    wrong = SimpleUploadedFile("mask.png", png((100, 80)), "image/png")
    form = form_for(base, {"mask": [wrong]})
    assert list(form.errors) == ["mask"]
    assert f"but the photo is {photo.width}×{photo.height} px" in form.errors_by_field()["mask"]

    right = SimpleUploadedFile("mask.png", png((photo.width, photo.height)), "image/png")
    form = form_for(base, {"mask": [right]})
    assert form.is_valid(), form.errors
    assert form.submission.mask.startswith(b"\x89PNG")


def test_a_missing_reference_photo_is_reported_on_the_reference_field(photo):
    form = form_for([("operation", "pc_makeup_transfer"), ("photo", str(photo.pk))])
    assert form.errors_by_field() == {"reference": "Add the photo with the look to copy."}


def test_a_kept_reference_photo_is_used(photo, portrait_jpeg):
    reference = photo_create(owner=OWNER, data=portrait_jpeg, filename="look.jpg")
    form = form_for(
        [("operation", "pc_makeup_transfer"), ("photo", str(photo.pk)), ("reference_photo", str(reference.pk))]
    )
    assert form.is_valid(), form.errors
    assert form.submission.reference_photo == reference
    assert form.shown_values()["reference_photo"] == str(reference.pk)


def test_a_locked_empty_seed_is_chosen_by_the_form(photo):
    base = [
        ("operation", "ai_headshot"), ("photo", str(photo.pk)), ("prompt", "grey backdrop"),
        ("num_images", "1"), ("identity_scale", "0.8"), ("size", "custom"), ("width", "512"), ("height", "512"),
    ]
    form = form_for([*base, ("seed", ""), ("seed_lock", "1")])
    assert form.is_valid(), form.errors
    seed = form.submission.params["seed"]
    assert isinstance(seed, int)
    assert form.submission.seed_lock is True and form.submission.locked_seed == seed
    assert form.shown_values()["seed"] == seed and form.shown_values()["seed_lock"] == "1"

    form = form_for([*base, ("seed", "1234")])
    assert form.is_valid(), form.errors
    assert form.submission.seed_lock is False and form.submission.locked_seed is None
    assert form.submission.params["seed"] == 1234
    assert form.shown_values()["seed"] == ""  # unlocked: a fresh random seed next time

    form = form_for([*base, ("seed", "-5")])
    assert list(form.errors) == ["seed"]


def test_notify_needs_the_box_and_permission(photo):
    base = [("operation", "background_blur"), ("photo", str(photo.pk)), ("notify", "1")]
    assert form_for(base, notify_allowed=True).submission is None  # not cleaned yet
    allowed = form_for(base, notify_allowed=True)
    assert allowed.is_valid() and allowed.submission.notify is True
    refused = form_for(base, notify_allowed=False)
    assert refused.is_valid() and refused.submission.notify is False


def test_compare_with_makes_one_run_per_operation(photo):
    form = form_for(
        [
            ("operation", "background_blur"), ("photo", str(photo.pk)), ("strength", "0.5"),
            ("compare_with", "studio_retouch"), ("compare_with", "no_such_op"),
        ]
    )
    assert form.is_valid(), form.errors
    assert form.submission.compare_with == (OPERATIONS["studio_retouch"],)
    runs = form.submission.runs()
    assert [run[0].key for run in runs] == ["background_blur", "studio_retouch"]


def test_the_fields_come_from_the_catalogue():
    op = OPERATIONS["background_blur"]
    fields = SubmissionForm.fields_for(op)
    strength = fields["strength"]
    assert isinstance(strength, ParamField) and strength.param is op.param("strength")
    assert strength.widget.attrs == {"id": "param-strength", "min": 0.1, "max": 1.0, "step": 0.05}
    assert "seed_lock" not in fields and "mask" not in fields
    assert "mask" in SubmissionForm.fields_for(OPERATIONS["pc_object_removal"])
    assert {"reference", "reference_photo"} <= set(SubmissionForm.fields_for(OPERATIONS["pc_makeup_transfer"]))
    assert "seed_lock" in SubmissionForm.fields_for(OPERATIONS["ai_headshot"])


def test_a_too_long_prompt_keeps_its_own_error(photo):
    form = form_for([("operation", "ws_portrait"), ("photo", str(photo.pk)), ("prompt", "x" * 1001)])
    assert form.errors_by_field() == {"prompt": "Edit instruction can be at most 1000 characters."}
    form = form_for([("operation", "ws_portrait"), ("photo", str(photo.pk)), ("prompt", "  ")])
    assert list(form.errors) == ["prompt"] and "write a few words" in form.errors_by_field()["prompt"]


def test_the_panel_sliders_are_the_forms_fields():
    op = OPERATIONS["background_blur"]
    fields = SubmissionForm.panel_fields(op, {"strength": "0.45"})
    html = str(fields["strength"])
    assert html.startswith('<input id="param-strength" type="range" name="strength"')
    assert 'min="0.1"' in html and 'max="1.0"' in html and 'step="0.05"' in html and 'value="0.45"' in html
    assert SubmissionForm.panel_fields(None, {}) == {}
