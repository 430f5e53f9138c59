"""Signal handlers: stored files follow their rows; visitors' work follows them into an account."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.db import transaction
from django.db.models.signals import post_delete, post_migrate
from django.dispatch import receiver
from django_q.signals import post_spawn

from studio.models import Job, Photo, Result
from studio.ownership import VISITOR_SESSION_KEY


def _delete_files_on_commit(*fields) -> None:
    names = [(f.storage, f.name) for f in fields if f and f.name]

    def delete():
        for storage, name in names:
            storage.delete(name)

    transaction.on_commit(delete)


@receiver(post_delete, sender=Photo)
def photo_files_delete(sender, instance, **kwargs):
    _delete_files_on_commit(instance.image, instance.thumbnail)


@receiver(post_delete, sender=Result)
def result_files_delete(sender, instance, **kwargs):
    _delete_files_on_commit(instance.image, instance.thumbnail)


@receiver(post_delete, sender=Job)
def job_files_delete(sender, instance, **kwargs):
    _delete_files_on_commit(instance.mask)  # a painted mask, made to send to a vendor


@receiver(user_logged_in)
def adopt_visitor_work(sender, request, user, **kwargs):
    """Every log-in moves this browser's anonymous work into the account.

    django-allauth sends user_logged_in for a log-in with the password and for
    the log-in that confirming the address (after sign-up) makes in the
    browser that signed up: the visitor's work follows on sign-up and on log-in.
    """
    from django.contrib import messages

    from studio.ownership import owner_adopt_visitor_work

    if request is not None and hasattr(request, "session"):
        visitor = request.session.pop(VISITOR_SESSION_KEY, "")
        if owner_adopt_visitor_work(user=user, visitor_id=visitor) and hasattr(request, "_messages"):
            messages.success(request, "Welcome! Your photos and results are now saved to your account.")


@receiver(post_spawn)
def start_job_recovery(sender, proc_name=None, **kwargs):
    """Each new django-q2 worker process checks for stranded jobs soon, then regularly (studio.jobs.recovery)."""
    from django_q.conf import Conf

    from studio.jobs import recovery

    # In sync mode (Q_SYNC, tests) django-q2 runs each task inline in the calling
    # process and sends post_spawn there too: that is a web process, not a worker.
    if Conf.SYNC:
        return
    recovery.start_ticker()


@receiver(post_migrate)
def ensure_schedules(sender, app_config=None, **kwargs):
    """Create the periodic tasks once; running migrate again changes nothing."""
    if getattr(app_config, "label", None) != "studio":
        return
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="sweep-stale-jobs",
        defaults={
            "func": "studio.tasks.sweep_stale_jobs",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
    # Crash recovery also runs from a thread in every worker (studio.jobs.recovery);
    # this minutely run is the safety net.
    Schedule.objects.update_or_create(
        name="recover-jobs",
        defaults={
            "func": "studio.tasks.recover_jobs",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
    # Retention: photos past STUDIO_RETENTION_HOURS go (deletion.photos_purge_expired).
    Schedule.objects.update_or_create(
        name="purge-expired-photos",
        defaults={
            "func": "studio.tasks.purge_expired_photos",
            "schedule_type": Schedule.MINUTES,
            "minutes": settings.STUDIO_PURGE_EVERY_MINUTES,
            "repeats": -1,
        },
    )
    # Vendor deletions not yet done (a vendor was down, a task still running) are tried again.
    Schedule.objects.update_or_create(
        name="vendor-deletions",
        defaults={
            "func": "studio.tasks.process_vendor_deletions",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
        },
    )
    # Vendor prices shown before submit (studio.costs); the first run is at the first worker start.
    Schedule.objects.update_or_create(
        name="refresh-unit-costs",
        defaults={"func": "studio.tasks.refresh_unit_costs", "schedule_type": Schedule.DAILY, "repeats": -1},
    )
    # Vendor style catalogues change rarely; once a day keeps the vendor's rate limit free (studio.styles).
    Schedule.objects.update_or_create(
        name="sync-styles",
        defaults={"func": "studio.tasks.sync_styles", "schedule_type": Schedule.DAILY, "repeats": -1},
    )
