"""The studio form's generic inputs beyond plain parameters, driven by the catalogue.

What an operation declares in `Inputs` and in its "style" parameters decides
what the form asks for and what is checked here, for every vendor alike:

- style picks (kind "style"): each submitted id must be an offered style of
  the operation's catalogue in our database; several picks of a `multiple`
  parameter become one run (one job) per style;
- a prompt (`Inputs.prompt_label`): required, length-limited;
- a reference photo (`Inputs.reference_label`): a second upload, ingested
  like any photo (normalized, metadata stripped, owned by the submitter);
- a mask (`Inputs.mask`): the PNG painted in the browser, which must have
  exactly the stored photo's pixel size; it is re-encoded as a clean
  black-and-white PNG before it is stored or sent anywhere.

They are read from the submitted form data and files: the studio form,
submission.SubmissionForm, calls `collect` and attaches each error to its field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict
from PIL import Image

from studio import photos, selectors, styles
from studio.imaging import ImageRejected, encode_png
from studio.models import Photo, Style
from studio.operations import Operation
from studio.vendors.base import get_provider

REFERENCE_FIELD = "reference"  # the uploaded file
REFERENCE_PHOTO_FIELD = "reference_photo"  # an already uploaded reference (kept across a failed submit)
MASK_FIELD = "mask"
PROMPT_FIELD = "prompt"
PROMPT_MAX_LENGTH = 1000
MAX_STYLES_PER_SUBMIT = 6  # each style is a vendor task; keeps one click within the vendor's rate limit
MASK_MAX_BYTES = 8 * 1024 * 1024


@dataclass
class FormInputs:
    styles: dict[str, list[Style]] = field(default_factory=dict)  # param name -> picked styles, in order
    prompt: str | None = None
    reference_photo: Photo | None = None
    mask: bytes | None = None
    errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # to re-show the form (e.g. the reference kept)


def collect(
    data: QueryDict, files: MultiValueDict, *, owner, op: Operation, photo: Photo | None, params: dict[str, Any]
) -> FormInputs:
    """Read and check the generic inputs `op` declares; problems go to `.errors` by field.

    `data` and `files` are the submitted form (submission.SubmissionForm hands them over).
    """
    found = FormInputs()
    if _style_reference_given(data, files, op):
        # A photo of the look stands in for the style pick (e.g. Perfect Corp v2's hairstyle).
        _collect_reference(data, files, owner, op, found, label=op.inputs.style_reference_label)
    else:
        _collect_styles(data, op, found)
    if op.inputs.prompt_label:
        _collect_prompt(data, op, params, found)
    if op.inputs.reference_label:
        _collect_reference(data, files, owner, op, found)
    if op.inputs.mask:
        _collect_mask(files, photo, found)
    return found


def rerun_params(op: Operation, job, cleaned: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Parameters of a re-run: the form's values over the job's own (prompt, style group kept).

    A style changed in the re-run form is checked and its group looked up again.
    """
    declared = {param.name for param in op.params}
    params = {**{k: v for k, v in job.params.items() if k not in declared}, **cleaned}
    errors: dict[str, str] = {}
    for param in styles.style_params(op):
        style_id = params.get(param.name) or job.params.get(param.name) or ""
        params[param.name] = style_id
        if not style_id:
            errors[param.name] = f"Pick a {param.label.lower()}."
            continue
        try:
            style = styles.style_resolve(op, param, str(style_id))
        except styles.StyleNotOffered as exc:
            errors[param.name] = exc.message
        else:
            params["style_group_id"] = style.group.group_id
            params["style_name"] = style.name
    if op.inputs.prompt_label and not str(params.get(PROMPT_FIELD) or "").strip():
        errors[PROMPT_FIELD] = f"{op.inputs.prompt_label}: please write a few words first."
    return params, errors


# --- Each input ----------------------------------------------------------------------


def _collect_styles(data: QueryDict, op: Operation, found: FormInputs) -> None:
    for param in styles.style_params(op):
        raw_ids = [raw.strip() for raw in data.getlist(param.name) if raw.strip()]
        ids = list(dict.fromkeys(raw_ids))  # a style listed in two groups counts once
        if not param.multiple:
            ids = ids[:1]
        found.values[param.name] = ids  # the form is shown again with every pick kept
        if not ids:
            found.errors[param.name] = f"Pick a {param.label.lower()}."
            continue
        if len(ids) > MAX_STYLES_PER_SUBMIT:
            found.errors[param.name] = f"Pick at most {MAX_STYLES_PER_SUBMIT} at once."
            continue
        picked = []
        for style_id in ids:
            try:
                picked.append(styles.style_resolve(op, param, param.clean(style_id)))
            except (styles.StyleNotOffered, ValueError) as exc:
                found.errors[param.name] = getattr(exc, "message", str(exc))
                break
        else:
            found.styles[param.name] = picked


def _collect_prompt(data: QueryDict, op: Operation, params: dict[str, Any], found: FormInputs) -> None:
    declared = any(p.name == PROMPT_FIELD for p in op.params)
    text = str(params.get(PROMPT_FIELD) if declared else data.get(PROMPT_FIELD, "")).strip()
    if not text:
        found.errors[PROMPT_FIELD] = f"{op.inputs.prompt_label}: please write a few words first."
    elif len(text) > PROMPT_MAX_LENGTH:
        found.errors[PROMPT_FIELD] = f"The description can be at most {PROMPT_MAX_LENGTH} characters."
    else:
        found.prompt = text


def _style_reference_given(data: QueryDict, files: MultiValueDict, op: Operation) -> bool:
    if not op.inputs.style_reference_label or not get_provider(op.provider).style_reference_offered:
        return False
    return bool(files.get(REFERENCE_FIELD) or data.get(REFERENCE_PHOTO_FIELD))


def _collect_reference(
    data: QueryDict, files: MultiValueDict, owner, op: Operation, found: FormInputs, *, label: str = ""
) -> None:
    upload = files.get(REFERENCE_FIELD)
    label = label or op.inputs.reference_label
    reference = None
    if upload is not None:
        if upload.size > settings.STUDIO_MAX_UPLOAD_MB * 1024 * 1024:
            found.errors[REFERENCE_FIELD] = (
                f"{label}: this file is larger than {settings.STUDIO_MAX_UPLOAD_MB} MB. Please use a smaller photo."
            )
            return
        try:
            reference = photos.photo_create(owner=owner, data=upload.read(), filename=upload.name or "")
        except ImageRejected as exc:
            found.errors[REFERENCE_FIELD] = f"{label}: {exc.message}"
            return
    elif data.get(REFERENCE_PHOTO_FIELD):
        reference = selectors.photo_get_for_owner(owner, data[REFERENCE_PHOTO_FIELD])
    if reference is None:
        found.errors[REFERENCE_FIELD] = f"Add the {label[:1].lower()}{label[1:]}."
        return
    # Kept for the re-shown form, so a mistake elsewhere doesn't mean uploading it again.
    found.values[REFERENCE_PHOTO_FIELD] = str(reference.pk)
    found.values["reference_photo_obj"] = reference
    problems = op.limits.problems(
        faces=reference.face_boxes,
        source_format=reference.source_format,
        long_side=max(reference.width, reference.height),
    )
    if problems:
        found.errors[REFERENCE_FIELD] = f"{label}: {problems[0]}"
        return
    found.reference_photo = reference


def _collect_mask(files: MultiValueDict, photo: Photo | None, found: FormInputs) -> None:
    upload = files.get(MASK_FIELD)
    if photo is None:
        return  # the missing photo is reported on its own
    if upload is None or upload.size == 0:
        found.errors[MASK_FIELD] = "Paint over the area to remove first."
        return
    try:
        found.mask = mask_clean(upload.read(), size=(photo.width, photo.height))
    except ImageRejected as exc:
        found.errors[MASK_FIELD] = exc.message


def mask_clean(data: bytes, *, size: tuple[int, int]) -> bytes:
    """A painted mask as a clean greyscale PNG: white = remove, black = keep.

    It must be a PNG of exactly `size` (the stored photo's pixels) with some
    area painted; raises ImageRejected with a message otherwise.
    """
    again = "Please paint the area again."
    if len(data) > MASK_MAX_BYTES or not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ImageRejected(f"The painted area couldn't be read. {again}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.size != size:
                raise ImageRejected(
                    f"The painted area is {im.width}×{im.height} px but the photo is {size[0]}×{size[1]} px. {again}"
                )
            im.load()
            grey = im.convert("L")
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                alpha = im.convert("RGBA").getchannel("A")
                if alpha.getextrema()[0] < 255:
                    # Strokes on a transparent canvas: the alpha is the painted area.
                    grey = alpha
    except ImageRejected:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageRejected(f"The painted area couldn't be read. {again}") from None
    mask = grey.point(lambda value: 255 if value >= 128 else 0)
    if mask.getbbox() is None:
        raise ImageRejected("Paint over the area to remove first.")
    return encode_png(mask)  # no metadata: an ICC profile or text would otherwise travel to the vendor
