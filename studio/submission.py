"""One studio submission: the form that checks it and the typed `Submission` it yields.

This is the one place a studio submission is validated. The view builds
`SubmissionForm(request.POST, request.FILES, owner=..., notify_allowed=...)`;
the form's fields are generated from the operation's catalogue entry
(studio/operations.py): one `ParamField` per parameter, carrying its name,
range and step, plus the generic inputs the operation declares (style picks,
prompt, reference photo, painted mask: job_inputs.py checks those), the
picked template cards, the operations to compare with, the seed lock and the
"e-mail me" box. Every problem is attached to the field the page shows it
under (`errors_by_field()`), and a valid form's `.submission` is a
`Submission` whose `runs()` are what studio.jobs.create.job_create_batch starts.

Nothing here sees the request: the form gets the submitted data, the files,
the owner and what the view knows about the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import QueryDict
from django.template.loader import render_to_string
from django.utils.datastructures import MultiValueDict
from django.utils.safestring import mark_safe

from studio import job_inputs, selectors, templates_library
from studio.errors import ServiceError
from studio.models import Photo, Style, StyleTemplate
from studio.operations import OPERATIONS, Operation, Param, ParamError
from studio.vendors.base import PROVIDERS, get_provider


def takes(op: Operation | None, name: str) -> bool:
    return op is not None and any(param.name == name for param in op.params)


def compare_candidates(op: Operation) -> list[Operation]:
    """Other operations that can run on the same submission, to compare side by side.

    They take the same inputs (a selfie, no second photo, no mask), can run now,
    take a prompt when this one does, and need no choice beyond their defaults.
    """
    found = []
    for other in OPERATIONS.values():
        if other.key == op.key or other.inputs.selfie != op.inputs.selfie:
            continue
        if other.inputs.reference_label or other.inputs.mask:
            continue
        if takes(op, "prompt") != takes(other, "prompt"):
            continue
        if any(p.kind == "style" and not p.default for p in other.params):
            continue  # a style must be picked first
        if other.provider not in PROVIDERS or get_provider(other.provider).unavailable_reason():
            continue
        found.append(other)
    return found


@dataclass(frozen=True)
class Submission:
    """A checked studio submission: everything the jobs it starts need, typed."""

    operation: Operation
    photo: Photo | None
    params: dict[str, Any]  # the catalogue's parameters, cleaned (a picked card's prompt filled in)
    styles: dict[str, list[Style]] = field(default_factory=dict)  # style parameter -> picked styles, in order
    prompt: str | None = None  # the generic prompt input (Inputs.prompt_label), checked
    templates: tuple[StyleTemplate, ...] = ()  # picked template cards: one run each
    compare_with: tuple[Operation, ...] = ()  # other operations to run on the same submission
    reference_photo: Photo | None = None
    mask: bytes | None = None  # a clean black-and-white PNG of the photo's size
    # The seed policy: None when the operation takes no seed; True keeps params["seed"]
    # (picked here when left empty) for the next runs; False means a fresh random seed.
    seed_lock: bool | None = None
    notify: bool = False  # e-mail the owner when the last job ends

    @property
    def locked_seed(self) -> int | None:
        return self.params.get("seed") if self.seed_lock else None

    def shown_values(self) -> dict[str, Any]:
        """What the re-shown form's seed input and lock should say after this submission."""
        if self.seed_lock is None:
            return {}
        if self.seed_lock:
            return {"seed": self.params["seed"], "seed_lock": "1"}
        return {"seed": "", "seed_lock": ""}  # a fresh random seed next time

    def runs(self) -> list[tuple]:
        """The submission's runs, one job each: (operation, params[, template]).

        Picked template cards each give a run with the template's prompt, fixed
        seed and parameters over the form's values; operations picked to compare
        with each give a run with the same prompt and seed where they take them;
        every run of the submitted operation is repeated per picked style.
        Raises ServiceError when a template no longer fits the catalogue.
        """
        op, params = self.operation, dict(self.params)
        runs: list[tuple] = []
        if takes(op, "template"):
            params["template"] = ""  # the cards, not the field, say which templates run
        for template in self.templates:
            values = {**params, **template.run_params()}
            if takes(op, "template"):
                values["template"] = template.slug  # the adapter labels results with it
            cleaned, errors = op.clean_params(values)
            if errors:
                raise ServiceError(
                    f"The template “{template.name}” no longer fits: {' '.join(errors.values())}"
                )
            runs.append((op, cleaned, template))
        if not runs:
            runs.append((op, params))
        first = runs[0][1]
        for other in self.compare_with:
            shared = {p.name: first[p.name] for p in other.params if p.name in first}
            cleaned, errors = other.clean_params(shared)
            for name in errors:  # a value out of this operation's range: use its default
                cleaned[name] = other.param(name).default
            runs.append((other, cleaned))
        return self._per_style(runs)

    def _per_style(self, runs: list[tuple]) -> list[tuple]:
        """One run per picked style (per combination, for several style parameters).

        The exact vendor ids travel as strings: the style's and its group's (the
        vendor needs both to run a style).
        """
        expanded = []
        for run in runs:
            run_op, params, *rest = run
            variants = [dict(params)]
            if run_op.key == self.operation.key:
                # A run from a style template keeps the template's prompt.
                if self.prompt is not None and not rest:
                    variants = [{**v, job_inputs.PROMPT_FIELD: self.prompt} for v in variants]
                for name, picked in self.styles.items():
                    variants = [
                        # The name too, so cards and galleries show it without a query per job.
                        {**v, name: style.style_id, "style_group_id": style.group.group_id, "style_name": style.name}
                        for v in variants
                        for style in picked
                    ]
            expanded += [(run_op, variant, *rest) for variant in variants]
        return expanded


# --- Fields -------------------------------------------------------------------------


class RangeInput(forms.NumberInput):
    """A number parameter's slider in the operation panel, with the catalogue's range.

    Drawn with the site's templates (templates/studio/widgets/range.html), as
    params.html places it: the panel's sliders are this form's bound fields.
    """

    input_type = "range"
    template_name = "studio/widgets/range.html"

    def _render(self, template_name, context, renderer=None):
        return mark_safe(render_to_string(template_name, context))


def _widget_for(param: Param) -> forms.Widget:
    """The input a parameter is shown as, with the catalogue's range."""
    if param.kind in ("float", "int") and param.name != "seed":  # the seed has its own control
        return RangeInput(
            attrs={"id": f"param-{param.name}", "min": param.minimum, "max": param.maximum, "step": param.step or 1}
        )
    if param.kind in ("float", "int"):
        limits = {"min": param.minimum, "max": param.maximum}
        return forms.NumberInput(attrs={k: v for k, v in limits.items() if v is not None})
    if param.kind == "choice":
        return forms.RadioSelect(choices=param.choices)
    if param.kind == "text":
        return forms.Textarea(attrs={"maxlength": param.max_length, "rows": 2})
    return forms.TextInput()


class ParamField(forms.Field):
    """One catalogue parameter: cleaned by `Param.clean` (its range, choices, length)."""

    def __init__(self, param: Param):
        self.param = param
        super().__init__(required=False, label=param.label, help_text=param.help, widget=_widget_for(param))

    def clean(self, value):
        # Always the last submitted value (several style picks are read by job_inputs).
        if isinstance(value, (list, tuple)):
            value = value[-1] if value else None
        try:
            return self.param.clean(value)
        except ParamError as exc:
            raise ValidationError(exc.message, code="param") from None


class _RawField(forms.Field):
    """An input checked in `SubmissionForm.clean` (job_inputs.py), kept as submitted."""

    def __init__(self, widget=forms.HiddenInput, **kwargs):
        super().__init__(required=False, widget=widget, **kwargs)

    def clean(self, value):
        return value


class _PicksField(_RawField):
    """Several checkbox values under one name (template cards, compare-with), in order, once each."""

    def __init__(self):
        super().__init__(widget=forms.CheckboxSelectMultiple)

    def clean(self, value):
        return list(dict.fromkeys(v.strip() for v in value or () if v.strip()))


# --- The form -------------------------------------------------------------------------


class SubmissionForm(forms.Form):
    """The studio's operation form for the operation named in the submitted data.

    `operation` is None for an unknown operation (the view answers 404); the
    photo is looked up at once (someone else's photo is a 404 too) so a form
    with errors can be shown again around it.
    """

    operation_key = "operation"

    def __init__(
        self, data: QueryDict | None, files: MultiValueDict | None = None, *, owner=None, notify_allowed: bool = False,
        operation: Operation | None = None, initial: dict[str, Any] | None = None,
    ):
        if data is not None and files is None:
            files = MultiValueDict()
        super().__init__(data, files, initial=initial)
        self.owner = owner
        self.notify_allowed = notify_allowed
        # Submitted: the operation the data names. Shown (unbound): the one given.
        self.operation: Operation | None = (
            OPERATIONS.get(self.data.get(self.operation_key, "")) if data is not None else operation
        )
        self.photo: Photo | None = None
        self.inputs = job_inputs.FormInputs()
        self.submission: Submission | None = None
        op = self.operation
        if op is None:
            return
        if data is not None and (op.inputs.selfie or self.data.get("photo")):
            self.photo = selectors.photo_get_for_owner(owner, self.data.get("photo", ""))
        self.fields.update(self.fields_for(op))

    @classmethod
    def panel_fields(cls, op: Operation | None, values: dict[str, Any]) -> dict[str, forms.BoundField]:
        """The operation panel's parameter inputs (params.html), showing `values`: this form's fields."""
        if op is None:
            return {}
        form = cls(None, operation=op, initial=values)
        return {param.name: form[param.name] for param in op.params}

    @staticmethod
    def fields_for(op: Operation) -> dict[str, forms.Field]:
        """The form's fields for `op`, in the order errors are reported."""
        fields: dict[str, forms.Field] = {param.name: ParamField(param) for param in op.params}
        if op.inputs.prompt_label and job_inputs.PROMPT_FIELD not in fields:
            fields[job_inputs.PROMPT_FIELD] = _RawField(widget=forms.Textarea)
        if op.inputs.reference_label or op.inputs.style_reference_label:
            fields[job_inputs.REFERENCE_FIELD] = _RawField(widget=forms.FileInput)
            fields[job_inputs.REFERENCE_PHOTO_FIELD] = _RawField()
        if op.inputs.mask:
            fields[job_inputs.MASK_FIELD] = _RawField(widget=forms.FileInput)
        # A "template" parameter (AI headshot) is the card picks' name too: the cards decide.
        fields.setdefault("template", _PicksField())
        fields["compare_with"] = _PicksField()
        if takes(op, "seed"):
            fields["seed_lock"] = _RawField(widget=forms.CheckboxInput)
        fields["notify"] = _RawField(widget=forms.CheckboxInput)
        return fields

    # --- Cleaning ---

    def clean(self):
        op = self.operation
        if op is None:
            raise ValidationError("No such operation.")
        # A parameter with an error is left out (as Operation.clean_params leaves it out).
        params = {param.name: self.cleaned_data[param.name] for param in op.params if param.name in self.cleaned_data}
        templates = self._picked_templates(op)
        if templates and takes(op, "prompt") and not str(params.get("prompt") or "").strip():
            params["prompt"] = templates[0].prompt  # without JavaScript nothing copies a card's prompt
        self.inputs = job_inputs.collect(
            self.data, self.files, owner=self.owner, op=op, photo=self.photo, params=params
        )
        for name, message in self.inputs.errors.items():
            self._set_error(name, message)
        if self.errors:
            return self.cleaned_data
        seed_lock = None
        if takes(op, "seed"):
            seed_lock = self.data.get("seed_lock") == "1"
            if seed_lock and params.get("seed") in (None, ""):
                params["seed"] = templates_library.seed_pick()  # chosen now, so the form can show it
        wanted = set(self.data.getlist("compare_with"))
        self.submission = Submission(
            operation=op,
            photo=self.photo,
            params=params,
            styles=self.inputs.styles,
            prompt=self.inputs.prompt,
            templates=tuple(templates),
            compare_with=tuple(other for other in compare_candidates(op) if other.key in wanted),
            reference_photo=self.inputs.reference_photo,
            mask=self.inputs.mask,
            seed_lock=seed_lock,
            notify=self.data.get("notify") == "1" and self.notify_allowed,
        )
        return self.cleaned_data

    def _picked_templates(self, op: Operation) -> list[StyleTemplate]:
        slugs = self.data.getlist("template")
        if not slugs:
            return []
        return [t for t in selectors.templates_for_operation(op.key) if t.slug in slugs]

    def _set_error(self, name: str, message: str) -> None:
        """`message` becomes the field's one error (a generic input's check has the last word)."""
        if name not in self.fields:
            self.fields[name] = _RawField()
        if name in self._errors:
            self._errors[name] = self.error_class([message], renderer=self.renderer)
        else:
            self.add_error(name, message)

    # --- Showing it again ---

    def errors_by_field(self) -> dict[str, str]:
        """Each field's error as one text, under the names the page shows them (params.html, form_inputs.html)."""
        return {name: " ".join(messages) for name, messages in self.errors.items()}

    def shown_values(self) -> dict[str, Any]:
        """The values the re-shown form should have: what was sent, plus what the check settled."""
        op = self.operation
        values = {**op.defaults(), **self.data.dict()}
        if self.submission is not None:
            values.update(self.submission.shown_values())
        values.update(self.inputs.values)
        values.update({name: [s.style_id for s in picked] for name, picked in self.inputs.styles.items()})
        return values
