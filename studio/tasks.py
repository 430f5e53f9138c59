"""django-q2 entry points only: load by id, call a service."""

from __future__ import annotations

import logging

from studio import deletion
from studio.errors import GENERIC_FAILURE, TIMED_OUT
from studio.jobs import recovery, run

log = logging.getLogger(__name__)


def run_job(job_id: str) -> str:
    return run.job_run(job_id)  # "ran" or "skipped", kept as the task's result


def run_job_finished(task) -> None:
    """Hook after every run_job task, successful or not.

    A django-q2 timeout kills the task with SystemExit, which no `except
    Exception` inside the task sees; this hook makes sure the job still ends
    in a terminal state with a message. A worker killed outright (SIGKILL)
    calls no hook at all: studio.jobs.recovery finds its job by the heartbeat.
    """
    if task.success:
        return
    job_id = task.args[0] if task.args else None
    timed_out = "timeout" in str(task.result).lower()
    message = TIMED_OUT if timed_out else GENERIC_FAILURE
    if job_id and run.job_mark_failed(job_id, message):
        log.warning("job %s failed in its worker: %s", job_id, str(task.result)[:500])


def sweep_stale_jobs() -> int:
    return recovery.jobs_sweep_stale()


def recover_jobs() -> dict:
    return recovery.jobs_recover()


def purge_expired_photos() -> int:
    return deletion.photos_purge_expired()


def process_vendor_deletions() -> dict:
    """Ask vendors to delete their copies of deleted work (studio.vendor_deletion)."""
    from studio import vendor_deletion

    return vendor_deletion.deletions_process()


def delete_remote_copies(snapshots: list) -> int:
    """The previous release's deletion task, for tasks still queued across an upgrade."""
    from studio import vendor_deletion

    adopted = vendor_deletion.snapshots_adopt(snapshots)
    vendor_deletion.deletions_process()
    return adopted


def sync_styles() -> str:
    """Daily: refresh the vendor style catalogues (studio.styles)."""
    from studio import styles

    return styles.sync_summary(styles.styles_sync())


def refresh_unit_costs() -> dict:
    """Daily (and when the kept copy is gone): the vendors' unit costs, for the studio page (studio.costs)."""
    from studio import costs

    return {key: str(units) for key, units in costs.unit_costs_refresh().items()}
