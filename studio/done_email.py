"""'E-mail me when it's done': one e-mail per batch (or lone job) once its last job has ended.

Every place that ends a job (results stored, failed, swept) calls
`notify_if_finished` after its commit. Several workers can end the last jobs
of a batch at the same moment, and each may then see the whole batch
finished; only the one whose conditional update sets `notified_at` on the
batch's first job (a single row) sends. So the e-mail goes exactly once.

The e-mail says how many results there are, names the jobs that failed and
why, and links to the comparison (a batch) or the job page. It never carries
the photo or a result: the link leads to them, behind the owner's log-in.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from studio.accounts import verified_email
from studio.models import Job

log = logging.getLogger(__name__)


def notify_if_finished(job_id) -> bool:
    """Send the e-mail if this job's batch asked for one and has just finished; True if this call sent it."""
    job = Job.objects.filter(pk=job_id).values("batch", "notify_email").first()
    if not job or not job["notify_email"]:
        return False
    group = Job.objects.filter(batch=job["batch"]) if job["batch"] else Job.objects.filter(pk=job_id)
    if group.exclude(status__in=Job.TERMINAL).exists():
        return False  # another job of the batch is still running: its end will call again
    lead = group.order_by("created_at", "pk").values_list("pk", flat=True).first()
    # The claim: exactly one caller turns notified_at from empty to now.
    if not Job.objects.filter(pk=lead, notified_at__isnull=True).update(notified_at=timezone.now()):
        return False
    jobs = list(
        group.select_related("owner_user", "style_template").annotate(result_count=Count("results")).order_by(
            "created_at", "pk"
        )
    )
    address = verified_email(jobs[0].owner_user) if jobs[0].owner_user_id else ""
    if not address:
        return False  # the account was deleted, or its address is no longer verified
    subject, body = compose(jobs)
    try:
        send_mail(subject, body, None, [address])
    except Exception:  # the mail server is down: the work itself is done and shown on the site
        log.exception("could not send the 'done' e-mail for job %s", lead)
        return False
    log.info("sent the 'done' e-mail for job %s (%d job(s))", lead, len(jobs))
    return True


def _job_name(job: Job) -> str:
    extra = job.params.get("style_name") or (job.style_template.name if job.style_template_id else "")
    return f"{job.operation_label} ({extra})" if extra else job.operation_label


def compose(jobs: list[Job]) -> tuple[str, str]:
    """Subject and plain-text body for these finished jobs (one batch, or one job)."""
    first = jobs[0]
    results = sum(job.result_count for job in jobs)
    failed = [job for job in jobs if job.status == Job.Status.FAILED]
    if first.batch:
        link = settings.STUDIO_PUBLIC_URL + reverse("studio:compare", kwargs={"batch": first.batch})
        what = f"Your batch of {len(jobs)} jobs"
    else:
        link = settings.STUDIO_PUBLIC_URL + reverse("studio:job", kwargs={"job_id": first.pk})
        what = f"Your {first.operation_label} job"
    outcome = f"{results} result{'s' if results != 1 else ''}"
    if failed:
        outcome += f", {len(failed)} failed"
    lines = [f"{what} is done: {outcome}.", ""]
    if failed:
        lines.append("Failed:")
        lines += [f"- {_job_name(job)}: {job.error_message or 'no reason given'}" for job in failed]
        lines.append("")
    lines += [
        "See them here (log in if asked):",
        link,
        "",
        "You get this e-mail because you ticked \"E-mail me when it's done\". We never send photos by e-mail.",
        "— Portrait Studio",
    ]
    return f"{what} is done: {outcome}", "\n".join(lines)
