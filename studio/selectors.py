"""Every read that depends on who is asking.

Each owned model has one access helper: it returns the object when the
requester owns it and raises Http404 otherwise, so another person's photo,
job or result is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Prefetch
from django.http import Http404
from django.utils import timezone

from studio.models import Job, Photo, Result, ShareLink
from studio.ownership import Owner


def photo_get_for_owner(owner: Owner, photo_id) -> Photo:
    return _get_or_404(Photo.objects.filter(owner.q()), photo_id)


def job_get_for_owner(owner: Owner, job_id) -> Job:
    return _get_or_404(Job.objects.filter(owner.q()).select_related("photo"), job_id)


def result_get_for_owner(owner: Owner, result_id) -> Result:
    return _get_or_404(Result.objects.filter(owner.q("job__")).select_related("job", "job__photo"), result_id)


# --- The job card's status poll ---------------------------------------------------


def card_version(status: str, stage: str, progress: float | None) -> str:
    """A short token for what a job card shows that can change while it is polled."""
    return hashlib.blake2s(f"{status}|{stage}|{progress!r}".encode(), digest_size=6).hexdigest()


@dataclass(frozen=True)
class CardState:
    status: str
    stage: str
    progress: float | None
    # Only when the state was read for a signed-in user: that user, to check the session against.
    owner_user: object | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in Job.TERMINAL

    @property
    def version(self) -> str:
        return card_version(self.status, self.stage, self.progress)


def job_card_state(owner: Owner, job_id) -> CardState | None:
    """The changing part of an owned job's card (status, stage, progress), or None.

    Every open card asks this every second, so it is one indexed lookup written
    in SQL: the ORM spends about 15 times longer building this query than
    SQLite spends answering it, which decides whether a poll costs about as
    much as a trivial request (bench/status_endpoint.py). Standard SQL, for
    SQLite and PostgreSQL alike.
    """
    if owner.user_id is not None:
        where, params = '"owner_user_id" = %s', [owner.user_id]
    elif owner.visitor_id:
        where, params = '"owner_user_id" IS NULL AND "owner_visitor" = %s', [owner.visitor_id]
    else:
        return None
    row = _card_row(f'SELECT "status", "stage", "progress" FROM "{Job._meta.db_table}" WHERE "id" = %s AND {where}',
                    job_id, params)
    return CardState(*row) if row else None


def job_card_state_for_user(user_id, job_id) -> CardState | None:
    """As job_card_state, for the user a session claims to be, with that user's sign-in fields.

    The same single query also reads the owner's password hash and active
    flag, so the caller can check the session the way Django's auth does
    (ownership.session_signed_in_as) without a second query for the user.
    """
    user_model = get_user_model()
    user_table = user_model._meta.db_table
    pk_column = user_model._meta.pk.column
    try:
        user_pk = user_model._meta.pk.to_python(user_id)
    except ValidationError:
        return None
    row = _card_row(
        f'SELECT j."status", j."stage", j."progress", u."password", u."is_active" '
        f'FROM "{Job._meta.db_table}" j JOIN "{user_table}" u ON u."{pk_column}" = j."owner_user_id" '
        f'WHERE j."id" = %s AND j."owner_user_id" = %s',
        job_id, [user_pk],
    )
    if not row:
        return None
    status, stage, progress, password, is_active = row
    # Only what the session check reads; never saved.
    user = user_model(pk=user_pk, password=password, is_active=is_active)
    return CardState(status, stage, progress, owner_user=user)


def _card_row(sql: str, job_id, params: list):
    try:
        job_pk = Job._meta.pk.get_db_prep_value(Job._meta.pk.to_python(job_id), connection)
    except ValidationError:
        return None  # a malformed id is just another unknown id
    with connection.cursor() as cursor:
        cursor.execute(sql, [job_pk, *params])
        return cursor.fetchone()


def job_for_card(owner: Owner, job_id, *, status: str) -> tuple[Job, list[Result] | None]:
    """An owned job with what its card shows, in one query: (job, its results or None).

    A succeeded job is read through its results, joined with it, so the poll
    that finds a job done costs no more queries than one that finds it running.
    """
    if status == Job.Status.SUCCEEDED:
        results = list(
            Result.objects.filter(owner.q("job__"), job_id=job_id)
            .select_related("job", "job__style_template")
            .order_by("index")
        )
        if results:
            job = results[0].job
            for result in results:
                result.job = job
            return job, results
        # Succeeded, but its results were deleted since: the job alone (one more query).
    return _get_or_404(Job.objects.filter(owner.q()).select_related("style_template"), job_id), None


SHARE_LOOKUP_PREFIX = 8  # characters (48 bits) used to find the row; the rest is compared in constant time


def share_get_active(token: str) -> ShareLink:
    """The active share link with this token, or 404 (revoked and expired too).

    The database finds candidates by a short prefix only; the whole token is
    then compared with hmac.compare_digest, so response time says nothing
    about how much of a guessed token was right beyond that public prefix
    (the remaining 144 bits are still far above 128).
    """
    now = timezone.now()
    if not isinstance(token, str) or len(token) < 32 or len(token) > 64:
        raise Http404("No such shared portrait.")
    candidates = ShareLink.objects.select_related("result", "result__job", "result__job__photo").filter(
        token__startswith=token[:SHARE_LOOKUP_PREFIX], revoked_at__isnull=True
    )
    link = None
    for candidate in candidates:
        if hmac.compare_digest(candidate.token.encode(), token.encode()):
            link = candidate
    if link is None or (link.expires_at is not None and link.expires_at <= now):
        raise Http404("No such shared portrait.")
    return link


def _get_or_404(queryset, pk):
    try:
        return queryset.get(pk=pk)
    except (queryset.model.DoesNotExist, ValidationError, ValueError, TypeError):
        # A malformed id is just another unknown id.
        raise Http404("Not found.") from None


def photos_recent(owner: Owner, limit: int = 8):
    return list(Photo.objects.filter(owner.q())[:limit])


def gallery_page(owner: Owner, *, operation: str = "", status: str = "", page: int | str = 1, per_page: int = 12):
    """The owner's jobs, newest first, with results prefetched (constant query count)."""
    jobs = Job.objects.filter(owner.q()).select_related("photo", "style_template").prefetch_related(
        Prefetch("results", queryset=Result.objects.order_by("index"))
    )
    if operation:
        jobs = jobs.filter(operation=operation)
    if status:
        jobs = jobs.filter(status=status)
    return Paginator(jobs, per_page).get_page(page)


def results_for_archive(owner: Owner, *, favourites: bool = False, batch=None):
    """The owner's results for a ZIP, oldest job first: all, the favourites, or one batch."""
    results = Result.objects.filter(owner.q("job__")).select_related("job", "job__style_template")
    if favourites:
        results = results.filter(favourite=True)
    if batch is not None:
        results = results.filter(job__batch=batch)
    return results.order_by("job__created_at", "job_id", "index")


# --- Style templates and comparisons ---------------------------------------------


def templates_for_operation(operation_key: str):
    """The active templates users can pick for an operation, in the staff's order."""
    from studio.models import StyleTemplate

    return list(StyleTemplate.objects.filter(operation=operation_key, active=True).order_by("order", "name"))


def operations_with_templates() -> set[str]:
    from studio.models import StyleTemplate

    return set(StyleTemplate.objects.filter(active=True).values_list("operation", flat=True).distinct())


def batch_jobs_for_owner(owner: Owner, batch) -> list[Job]:
    """The jobs of one submission, in submission order; 404 unless the requester owns them."""
    jobs = list(
        Job.objects.filter(owner.q(), batch=batch)
        .select_related("photo", "style_template")
        .prefetch_related(Prefetch("results", queryset=Result.objects.order_by("index")))
        .order_by("created_at", "pk")
    )
    if not jobs:
        raise Http404("No such comparison.")
    return jobs


# --- Typical durations (the "usually takes about N s" hint) -------------------

TYPICAL_MIN_JOBS = 3  # fewer finished jobs than this: no estimate yet
TYPICAL_WINDOW_DAYS = 30
TYPICAL_CACHE_SECONDS = 60
# (expires at, {operation: seconds}) for every operation at once.
_typical_cache: dict[str, tuple[float, dict[str, float]]] = {}


def operation_typical_seconds(operation: str) -> float | None:
    """How long recent successful jobs of this operation ran (started → finished), or None.

    One aggregate query for all operations, remembered for a minute in this
    process: a page of cards of many operations (the gallery) asks once, and
    the figure barely moves.
    """
    import time

    from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F

    now = time.monotonic()
    cached = _typical_cache.get("all")
    if cached and cached[0] > now:
        return cached[1].get(operation)
    since = timezone.now() - timezone.timedelta(days=TYPICAL_WINDOW_DAYS)
    rows = (
        Job.objects.filter(
            status=Job.Status.SUCCEEDED, started_at__isnull=False, finished_at__isnull=False, finished_at__gte=since,
        )
        .values("operation")
        .annotate(
            count=Count("id"),
            average=Avg(ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())),
        )
        .order_by()
    )
    figures = {}
    for row in rows:
        average = row["average"]
        if row["count"] >= TYPICAL_MIN_JOBS and average is not None:
            figures[row["operation"]] = (
                average.total_seconds() if hasattr(average, "total_seconds") else float(average) / 1e6
            )
    _typical_cache["all"] = (now + TYPICAL_CACHE_SECONDS, figures)
    return figures.get(operation)


def typical_cache_clear() -> None:
    _typical_cache.clear()
