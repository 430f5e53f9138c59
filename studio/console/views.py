"""Staff console pages. Every view is wrapped in `staff_only`."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import wraps

from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.db.models.functions import TruncDate
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from studio import costs
from studio.console.redaction import redact
from studio.errors import ServiceError
from studio.jobs import create
from studio.models import Job
from studio.operations import OPERATIONS
from studio.ownership import Owner
from studio.vendors.base import PROVIDERS, get_provider

PAGE_SIZE = 50
PERIODS = (("1", "Last 24 hours"), ("7", "Last 7 days"), ("30", "Last 30 days"), ("all", "All time"))
DEFAULT_PERIOD = "7"

DURATION = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())


def staff_only(view):
    """Anonymous: to the admin login. Signed in but not staff: 404, as if there were no console."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        if not (user.is_active and user.is_staff):
            raise Http404("Not found.")
        return view(request, *args, **kwargs)

    return wrapper


def _filters(request) -> dict[str, str]:
    """The monitor's filters from the query string, unknown values dropped."""
    status = request.GET.get("status", "")
    provider = request.GET.get("provider", "")
    operation = request.GET.get("operation", "")
    period = request.GET.get("period", DEFAULT_PERIOD)
    return {
        "status": status if status in Job.Status.values else "",
        "provider": provider if provider in _provider_keys() else "",
        "operation": operation if operation in _operation_keys() else "",
        "period": period if period in dict(PERIODS) else DEFAULT_PERIOD,
    }


def _provider_keys() -> list[str]:
    seen = set(Job.objects.values_list("provider", flat=True).distinct())
    return sorted(set(PROVIDERS) | seen)


def _operation_keys() -> list[str]:
    seen = set(Job.objects.values_list("operation", flat=True).distinct())
    return sorted(set(OPERATIONS) | seen)


def _filtered_jobs(filters: dict[str, str]):
    jobs = Job.objects.all()
    if filters["period"] != "all":
        jobs = jobs.filter(created_at__gte=timezone.now() - timedelta(days=int(filters["period"])))
    for name in ("status", "provider", "operation"):
        if filters[name]:
            jobs = jobs.filter(**{name: filters[name]})
    return jobs


def _aggregates(jobs) -> dict:
    """Totals, per day and per provider, computed by the database."""
    failed = Count("id", filter=Q(status=Job.Status.FAILED))
    succeeded = Count("id", filter=Q(status=Job.Status.SUCCEEDED))
    finished = Q(finished_at__isnull=False, started_at__isnull=False)
    # Perfect Corp charges units only for a task that succeeded (perfectcorp-v2.md §3).
    units = Sum("units", filter=Q(status=Job.Status.SUCCEEDED))
    totals = jobs.aggregate(
        jobs=Count("id"),
        succeeded=succeeded,
        failed=failed,
        cost=Sum("cost"),
        units=units,
        avg_duration=Avg(DURATION, filter=finished),
    )
    per_day = list(
        jobs.annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(jobs=Count("id"), succeeded=succeeded, failed=failed, cost=Sum("cost"), units=units)
        .order_by("-day")
    )
    per_provider = list(
        jobs.values("provider")
        .annotate(
            jobs=Count("id"),
            succeeded=succeeded,
            failed=failed,
            cost=Sum("cost"),
            units=units,
            avg_duration=Avg(DURATION, filter=finished),
        )
        .order_by("provider")
    )
    return {"totals": totals, "per_day": per_day, "per_provider": per_provider}


@require_GET
@staff_only
def monitor(request):
    filters = _filters(request)
    jobs = _filtered_jobs(filters)
    page = Paginator(jobs.select_related("owner_user").annotate(duration=DURATION), PAGE_SIZE).get_page(
        request.GET.get("page", 1)
    )
    query = "&".join(f"{name}={value}" for name, value in filters.items() if value)
    return render(
        request,
        "studio/console/monitor.html",
        {
            "filters": filters,
            "filter_query": query,
            "page": page,
            "statuses": Job.Status.choices,
            "providers": _provider_keys(),
            "operations": [(key, OPERATIONS[key].label if key in OPERATIONS else key) for key in _operation_keys()],
            "periods": PERIODS,
            **_aggregates(jobs),
        },
    )


@require_GET
@staff_only
def job_detail(request, job_id):
    job = get_object_or_404(Job.objects.select_related("photo", "owner_user", "rerun_of"), pk=job_id)
    payloads = [
        ("Vendor report (vendor_meta)", job.vendor_meta),
        ("Resume state (vendor_state)", job.vendor_state),
        ("Parameters", job.params),
    ]
    return render(
        request,
        "studio/console/job.html",
        {
            "job": job,
            "request_id": redact(job.request_id),
            "vendor_task_id": redact(job.vendor_task_id),
            "error_message": redact(job.error_message),
            "payloads": [
                (title, json.dumps(redact(data), indent=2, sort_keys=True, default=str)) for title, data in payloads
            ],
            "results": list(job.results.all()),
            "reruns": list(Job.objects.filter(rerun_of=job).order_by("-created_at")[:10]),
            "duration": (job.finished_at - job.started_at).total_seconds()
            if job.finished_at and job.started_at
            else None,
        },
    )


@require_POST
@staff_only
def job_retry(request, job_id):
    """Run a failed job again as a new job of the same owner.

    A new job rather than re-queueing the failed one: the failed job stays as
    the record of what went wrong (its message and vendor payload), the retry
    gets a fresh request id so a vendor's idempotency cache cannot hand back
    the failed outcome, and terminal states stay terminal.
    """
    job = get_object_or_404(Job, pk=job_id)
    if job.status != Job.Status.FAILED:
        messages.error(request, "Only failed jobs can be retried.")
        return redirect("studio:console:job", job_id=job.pk)
    owner = Owner(user_id=job.owner_user_id) if job.owner_user_id else Owner(visitor_id=job.owner_visitor)
    if job.operation_spec is None:
        messages.error(request, "This operation is no longer offered, so the job cannot be retried.")
        return redirect("studio:console:job", job_id=job.pk)
    try:
        new_job = create.job_rerun(owner=owner, job=job, params=job.params)
    except ServiceError as exc:
        messages.error(request, f"Not retried: {getattr(exc, 'reason', exc.message)}")
        return redirect("studio:console:job", job_id=job.pk)
    messages.success(request, "Retry queued as a new job for the same owner.")
    return redirect("studio:console:job", job_id=new_job.pk)


def provider_rows() -> list[dict]:
    """One row per registered provider: its own status() plus the last failure we saw."""
    since = timezone.now() - timedelta(hours=24)
    recent = {
        row["provider"]: row
        for row in Job.objects.filter(created_at__gte=since)
        .values("provider")
        .annotate(jobs=Count("id"), failed=Count("id", filter=Q(status=Job.Status.FAILED)))
    }
    from studio.vendor_deletion import deletions_summary

    deletions = deletions_summary()
    prices = costs.kept_summary()
    rows = []
    for key in PROVIDERS:
        row = {"key": key, "label": key, "status": {}, "load_error": "", "runs_locally": False}
        try:
            provider = get_provider(key)
            row["label"] = provider.label or key
            row["runs_locally"] = provider.runs_locally
            row["status"] = redact(dict(provider.status()))
        except Exception as exc:  # a broken adapter must not take the console down with it
            row["load_error"] = f"{type(exc).__name__}: {exc}"
        status = row["status"]
        row["configured"] = status.get("configured")
        row["mode"] = status.get("mode") or ("local" if row["runs_locally"] else "")
        row["missing"] = status.get("missing") or []
        # Anything else the provider reports (request budget in use, …), shown as it is.
        row["facts"] = [
            (name.replace("_", " "), value)
            for name, value in status.items()
            if name not in ("configured", "mode", "missing")
        ]
        row["last_failure"] = (
            Job.objects.filter(provider=key, status=Job.Status.FAILED)
            .order_by("-finished_at", "-created_at")
            .values("id", "error_message", "finished_at", "operation")
            .first()
        )
        if row["last_failure"]:
            row["last_failure"]["error_message"] = redact(row["last_failure"]["error_message"])
        row["recent"] = recent.get(key, {"jobs": 0, "failed": 0})
        row["deletions"] = deletions.get(key)
        row["prices"] = prices.get(key)
        rows.append(row)
    return rows


def catalogue_links(request) -> list[dict]:
    """Admin pages for the studio's models (style catalogue, templates, …) that exist and this user may see."""
    links = []
    registry = admin.site._registry
    for model in sorted(registry, key=lambda m: m._meta.verbose_name_plural):
        meta = model._meta
        if meta.app_label != "studio" or not registry[model].has_view_or_change_permission(request):
            continue
        try:
            url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        except NoReverseMatch:
            continue
        links.append({"label": str(meta.verbose_name_plural).capitalize(), "url": url, "model": meta.model_name})
    return links


def hidden_operations() -> list[dict]:
    """Operations visitors don't see because they cannot run here, with the reason (settings named)."""
    rows = []
    for op in OPERATIONS.values():
        try:
            reason = get_provider(op.provider).unavailable_reason() if op.provider in PROVIDERS else (
                "This service isn't installed on this server.")
        except Exception as exc:  # a broken adapter: hidden, and the console says why
            reason = f"The adapter could not be loaded: {type(exc).__name__}: {exc}"
        if reason:
            rows.append({"key": op.key, "label": op.label, "reason": reason})
    return rows


@require_GET
@staff_only
def vendors(request):
    return render(
        request,
        "studio/console/vendors.html",
        {"providers": provider_rows(), "catalogue": catalogue_links(request), "hidden": hidden_operations()},
    )
