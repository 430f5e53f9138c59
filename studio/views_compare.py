"""Style templates, seeds and comparisons: the parts of the studio they add.

- Picked template cards and operations to compare with make one batch of runs
  (the studio form, submission.py, checks them and says which can be compared).
- The seed lock: a locked seed is kept (per operation, in the session) for the
  next runs; the form chooses an empty locked seed so it can be shown at once.
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
from studio.operations import Operation
from studio.ownership import owner_for
from studio.submission import takes

SEED_LOCK_SESSION_KEY = "studio_seed_locks"  # {operation key: locked seed}


def seed_locked(session, op: Operation) -> int | None:
    return session.get(SEED_LOCK_SESSION_KEY, {}).get(op.key)


def form_values(session, op: Operation) -> dict[str, Any]:
    """The studio form's starting values: defaults, plus a seed the user locked earlier."""
    values = op.defaults()
    locked = seed_locked(session, op)
    if takes(op, "seed") and locked is not None:
        values.update(seed=locked, seed_lock="1")
    return values


def seed_lock_store(session, op: Operation, seed: int | None) -> None:
    """Keep `seed` for `op`'s next runs (None: a fresh random seed next time)."""
    locks = dict(session.get(SEED_LOCK_SESSION_KEY, {}))
    if seed is None:
        locks.pop(op.key, None)
    else:
        locks[op.key] = seed
    session[SEED_LOCK_SESSION_KEY] = locks


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
