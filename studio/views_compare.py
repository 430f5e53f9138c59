"""Style templates, seeds and comparisons: the parts of the studio they add.

- Turning one studio submission into its runs: one per picked template card,
  plus one per other operation picked to compare with (one batch of jobs).
- The seed lock: a locked seed is kept (per operation, in the session) for the
  next runs; an empty locked seed is chosen here so it can be shown at once.
- The comparison page of a batch, re-runs with the same or a new seed, staff's
  "save as template", and the public cover images of active templates.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from studio import media, selectors, templates_library
from studio.errors import ServiceError
from studio.jobs import create
from studio.limits import limited
from studio.models import StyleTemplate
from studio.operations import OPERATIONS, Operation
from studio.ownership import owner_for
from studio.vendors.base import PROVIDERS, get_provider

SEED_LOCK_SESSION_KEY = "studio_seed_locks"  # {operation key: locked seed}


def takes(op: Operation | None, name: str) -> bool:
    return op is not None and any(param.name == name for param in op.params)


# --- The studio form -------------------------------------------------------------


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


def seed_locked(request, op: Operation) -> int | None:
    return request.session.get(SEED_LOCK_SESSION_KEY, {}).get(op.key)


def form_values(request, op: Operation) -> dict[str, Any]:
    """The studio form's starting values: defaults, plus a seed the user locked earlier."""
    values = op.defaults()
    locked = seed_locked(request, op)
    if takes(op, "seed") and locked is not None:
        values.update(seed=locked, seed_lock="1")
    return values


def _set_seed_lock(request, op: Operation, seed: int | None) -> None:
    locks = dict(request.session.get(SEED_LOCK_SESSION_KEY, {}))
    if seed is None:
        locks.pop(op.key, None)
    else:
        locks[op.key] = seed
    request.session[SEED_LOCK_SESSION_KEY] = locks


def picked_templates(request, op: Operation) -> list:
    slugs = request.POST.getlist("template")
    if not slugs:
        return []
    return [t for t in selectors.templates_for_operation(op.key) if t.slug in slugs]


def fill_from_templates(request, op: Operation, params: dict[str, Any]) -> dict[str, Any]:
    """Without JavaScript nothing copies a picked card's prompt into the form: do it here."""
    templates = picked_templates(request, op)
    if templates and takes(op, "prompt") and not str(params.get("prompt") or "").strip():
        return {**params, "prompt": templates[0].prompt}
    return params


def submission_runs(request, op: Operation, params: dict[str, Any]) -> tuple[list[tuple], dict[str, Any]]:
    """The runs of one studio submission, and the values the re-shown form should have.

    Picked template cards each give a run with the template's prompt, fixed seed
    and parameters over the form's values; operations picked to compare with
    each give a run with the same prompt and seed where they take them.
    """
    params = dict(params)
    shown: dict[str, Any] = {}
    if takes(op, "seed"):
        if request.POST.get("seed_lock") == "1":
            if params.get("seed") in (None, ""):
                params["seed"] = templates_library.seed_pick()
            _set_seed_lock(request, op, params["seed"])
            shown = {"seed": params["seed"], "seed_lock": "1"}
        else:
            _set_seed_lock(request, op, None)
            shown = {"seed": "", "seed_lock": ""}  # a fresh random seed next time

    templates = picked_templates(request, op)
    runs: list[tuple] = []
    if takes(op, "template"):
        params["template"] = ""  # the cards, not the field, say which templates run
    for template in templates:
        values = {**params, **template.run_params()}
        if takes(op, "template"):
            values["template"] = template.slug  # the adapter labels results with it
        cleaned, errors = op.clean_params(values)
        if errors:
            raise ServiceError(f"The template “{template.name}” no longer fits: {' '.join(errors.values())}")
        runs.append((op, cleaned, template))
    if not runs:
        runs.append((op, params))

    first = runs[0][1]
    wanted = set(request.POST.getlist("compare_with"))
    for other in compare_candidates(op):
        if other.key in wanted:
            shared = {p.name: first[p.name] for p in other.params if p.name in first}
            cleaned, _errors = other.clean_params(shared)
            for name in _errors:  # a value out of this operation's range: use its default
                cleaned[name] = other.param(name).default
            runs.append((other, cleaned))
    return runs, shown


# --- Comparison page -------------------------------------------------------------


@require_GET
def compare(request, batch):
    """All jobs of one submission side by side; running columns poll for themselves."""
    jobs = selectors.batch_jobs_for_owner(owner_for(request), batch)
    column_id = request.GET.get("job")
    if column_id:
        job = next((job for job in jobs if str(job.pk) == column_id), None)
        if job is None:
            raise Http404("No such job in this comparison.")
        response = render(request, "studio/compare.html#compare_column", {"job": job})
        if job.is_terminal:
            response.status_code = HttpResponseStopPolling.status_code  # 286: htmx stops polling
        return response
    return render(request, "studio/compare.html", {"jobs": jobs, "batch": batch})


# --- Seeds: re-run with the same seed (new prompt) or a new seed (same prompt) -------


@require_POST
@limited("jobs")
def result_reseed(request, result_id):
    owner = owner_for(request)
    result = selectors.result_get_for_owner(owner, result_id)
    job = result.job
    op = job.operation_spec
    mode = request.POST.get("mode", "")
    if not takes(op, "seed") or mode not in ("same_seed", "new_seed"):
        raise Http404("This result cannot be re-run with a seed.")
    raw = dict(job.params)
    old_seed = result.meta.get("seed", job.params.get("seed"))
    if mode == "same_seed":
        if old_seed in (None, ""):
            messages.error(request, "The seed of this result is unknown, so it cannot be reused.")
            return redirect("studio:result", result_id=result.pk)
        raw["seed"] = old_seed
        if takes(op, "prompt"):
            raw["prompt"] = request.POST.get("prompt", "")
    else:
        seed = templates_library.seed_pick()
        while str(seed) == str(old_seed):
            seed = templates_library.seed_pick()
        raw["seed"] = seed
    params, errors = op.clean_params(raw)
    if errors:
        messages.error(request, " ".join(errors.values()))
        return redirect("studio:result", result_id=result.pk)
    try:
        new_job = create.job_rerun(owner=owner, job=job, params=params)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("studio:result", result_id=result.pk)
    return redirect("studio:job", job_id=new_job.pk)


# --- Style templates ---------------------------------------------------------------


@require_POST
def result_save_template(request, result_id):
    """Staff: a new template from this result's prompt, seed and parameters."""
    if not (request.user.is_authenticated and request.user.is_staff):
        raise Http404("Not found.")
    result = selectors.result_get_for_owner(owner_for(request), result_id)
    if not request.user.has_perm("studio.add_styletemplate"):
        messages.error(request, "You may not add style templates.")
        return redirect("studio:result", result_id=result.pk)
    try:
        template = templates_library.template_save_from_result(result=result, name=request.POST.get("name", ""))
    except (ServiceError, ValidationError) as exc:
        text = exc.message if isinstance(exc, ServiceError) else " ".join(exc.messages)
        messages.error(request, f"Could not save a template: {text}")
        return redirect("studio:result", result_id=result.pk)
    messages.success(
        request,
        f"Saved the template “{template.name}” (inactive). Run “Preview” to make its cover, then activate it.",
    )
    return redirect(reverse("admin:studio_styletemplate_change", args=[template.pk]))


@require_GET
def template_cover(request, slug):
    """A template's cover image: public for active templates (it shows the sample portrait)."""
    template = StyleTemplate.objects.filter(slug=slug).first()
    staff = request.user.is_authenticated and request.user.is_staff
    if template is None or not template.cover or not (template.active or staff):
        raise Http404("No such cover.")
    return media.serve(
        template.cover, "image/jpeg", public=template.active, max_age=300 if template.active else 0,
        missing="No such cover.",
    )
