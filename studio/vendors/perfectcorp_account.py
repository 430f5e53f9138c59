"""Perfect Corp v2 account calls: deleting a job's tasks and reading the price list.

../shared/perfectcorp-v2.md §4. Both calls take the API key as a bearer token
(`PERFECTCORP_API_KEY`; the emulator's sandbox key when an emulator serves
Perfect Corp) and draw from the adapter's shared request budget, behind
running jobs: they are background work.

- `POST /s2s/v2.0/task/delete` deletes a finished task with its input files and
  outputs. Only v2 tasks can be deleted: the v1.0 API has no such call, so a
  job run on v1.0 is left to Perfect Corp's own retention (DELETION_NOTICE says
  so on the privacy page). studio/vendor_deletion.py calls `delete_job_tasks`
  through `PerfectCorpProvider.delete_remote` and retries what is worth retrying.
- `GET /s2s/v2.0/credit/feature-cost` lists SKUs whose `run_task_url` names the
  task endpoint they price; `operation_units` maps them onto our operations
  (COST_PATHS), for studio/costs.py to keep in the cache.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from studio.vendors import sandbox
from studio.vendors.base import VendorError
from studio.vendors.budget import BudgetTimeout
from studio.vendors.http import UnreadableAnswer

log = logging.getLogger(__name__)

API_TIMEOUT = httpx.Timeout(20.0, connect=5.0)
# A background call that finds no room in the budget soon gives up and is tried later (a
# deletion run handles up to 100 rows; it must not sit on a worker while jobs use the budget).
BUDGET_WAIT_S = 2.0
MAX_PAGES = 50  # a runaway next_token must not loop forever
# Job.vendor_meta key naming the API family a job was submitted on (set by job_create).
API_MARK = "perfectcorp_api"

DELETION_NOTICE = (
    "with Perfect Corp's current API (v2) we ask it to delete each task, with the photos sent for it and its "
    "results; a task still running there is deleted once it has finished. Jobs run on its older API (v1.0) "
    "cannot be deleted through it: Perfect Corp deletes those uploads after a day and results after 30 days."
)

# error_code of a refused delete → None: the task is gone already (unknown, expired or
# deleted before), nothing left to do; else (message for the staff console, permanent).
DELETE_ERRORS: dict[str, tuple[str, bool] | None] = {
    "InvalidTaskId": None,
    "OperationInvalid": ("The task is still running at Perfect Corp; it is deleted once it has finished.", False),
    "OperationNotSupport": ("Perfect Corp does not accept this task id for deletion.", True),
    "InvalidParameters": ("Perfect Corp refused the deletion request as malformed.", True),
}
BAD_KEY = "Perfect Corp refused the API key; check PERFECTCORP_API_KEY."
NO_KEY = "PERFECTCORP_API_KEY is not set, so Perfect Corp can't be asked to delete its copies."

# Our operation → the task endpoint that runs it, per API family, to find its SKU. A v1.0
# operation is priced by the v2 endpoint of the same engine; one with no archived v2
# document (wig; standard object removal on v1.0) keeps a guess or nothing, so no price shows.
COST_PATHS: dict[str, dict[str, str]] = {
    "v1": {
        "pc_hairstyle": "/s2s/v2.0/task/hair-style",
        "pc_wig": "/s2s/v2.0/task/wig",  # UNCONFIRMED path (§3.2)
        "pc_hair_extension": "/s2s/v2.0/task/hair-ext",
        "pc_bangs": "/s2s/v2.0/task/hair-bang",
        "pc_hair_volume": "/s2s/v2.0/task/hair-vol",
        "pc_aging": "/s2s/v2.0/task/aging",
        "pc_makeup_transfer": "/s2s/v2.0/task/mu-transfer",
        "pc_object_removal": "/s2s/v2.0/task/obj-removal",  # UNCONFIRMED path (§3.8, standard engine)
        "pc_colorize": "/s2s/v2.0/task/colorize",
        "pc_background_removal": "/s2s/v2.0/task/sod",
        "pc_enhance": "/s2s/v2.0/task/enhance",
        "pc_image_generator": "/s2s/v2.0/task/text-to-image",
    },
    "v2": {
        "pc_hairstyle": "/s2s/v2.1/task/hair-transfer",
        "pc_wig": "/s2s/v2.0/task/wig",  # UNCONFIRMED path (§3.2)
        "pc_hair_extension": "/s2s/v2.0/task/hair-ext",
        "pc_bangs": "/s2s/v2.0/task/hair-bang",
        "pc_hair_volume": "/s2s/v2.0/task/hair-vol",
        "pc_aging": "/s2s/v2.0/task/aging",
        "pc_makeup_transfer": "/s2s/v2.0/task/mu-transfer",
        "pc_object_removal": "/s2s/v2.0/task/generative-fill",
        "pc_colorize": "/s2s/v2.0/task/colorize",
        "pc_background_removal": "/s2s/v2.0/task/sod",
        "pc_enhance": "/s2s/v2.0/task/enhance",
        "pc_image_generator": "/s2s/v2.0/task/text-to-image",
    },
}


# --- configuration -----------------------------------------------------------------------


def api_version() -> str:
    """The API family new jobs use, "v1" or "v2" (PERFECTCORP_API_VERSION, default v1)."""
    version = str(getattr(settings, "PERFECTCORP_API_VERSION", "v1") or "v1").lower()
    return version if version in COST_PATHS else "v1"


def api_key(provider) -> str:
    """The v2 API key the adapter sends (RemoteProvider.api_key: the emulator's sandbox key
    when one serves Perfect Corp, never the real one there)."""
    return provider.api_key()


def submission_meta() -> dict[str, str]:
    """What job_create records on a Perfect Corp job: which API family it goes to."""
    return {API_MARK: api_version()}


def _call(provider, method: str, path: str, **kwargs) -> tuple[int, dict]:
    """One budgeted v2 call: (HTTP status, JSON body or {}). Transport failures and
    429/5xx answers (after one quick retry) raise a non-permanent VendorError."""
    key = api_key(provider)
    if not key:
        raise VendorError(NO_KEY, permanent=False)
    budget = provider.budget()

    def before(method: str, url: str) -> None:
        try:
            budget.take(None, deadline=time.time() + BUDGET_WAIT_S)
        except BudgetTimeout:
            busy = "Perfect Corp's request budget is in use by jobs; trying later."
            raise VendorError(busy, permanent=False) from None

    http = provider.http(
        sleep=provider.sleep,
        retries=1,
        timeout=API_TIMEOUT,
        before_request=before,
        on_rate_limited=lambda response: budget.rate_limited(base=2.0),
    )
    try:
        response = http.request(method, path, headers=provider.v2_auth_headers(), **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            return response.status_code, body if isinstance(body, dict) else {}
        budget.succeeded()
        return response.status_code, http.json(response)
    finally:
        http.close()


# --- deleting tasks ------------------------------------------------------------------------


def job_api_version(job) -> str:
    """The API family a job ran on: what the adapter saved, else what job_create recorded,
    else (a job from before either existed) today's setting."""
    state = job.vendor_state or {}
    meta = job.vendor_meta or {}
    return str(state.get("api_version") or meta.get(API_MARK) or api_version()).lower()


def job_task_ids(job) -> list[str]:
    """Every Perfect Corp task of a job: the one the runner saved, the latest the adapter
    saved, and any earlier ones it listed (`task_ids`: a task run again after an engine error)."""
    state = job.vendor_state or {}
    found = [job.vendor_task_id, state.get("task_id"), *(state.get("task_ids") or [])]
    return list(dict.fromkeys(str(t) for t in found if t))


def delete_task(provider, task_id: str) -> bool:
    """Delete one v2 task; True when deleted, False when Perfect Corp no longer has it."""
    status, body = _call(provider, "POST", "/s2s/v2.0/task/delete", json={"task_id": task_id})
    if status < 300:
        return True
    if status == 401:
        log.error("Perfect Corp refused the API key (%s)", str(body.get("error_code") or body.get("error"))[:60])
        raise VendorError(BAD_KEY, permanent=False)  # a key can be fixed: bounded retries
    code = str(body.get("error_code") or "")
    if status == 400 and code in DELETE_ERRORS:
        meaning = DELETE_ERRORS[code]
        if meaning is None:
            return False
        raise VendorError(meaning[0], permanent=meaning[1])
    raise VendorError(f"Perfect Corp answered {status} to a deletion; trying later.", permanent=False)


def delete_job_tasks(provider, job) -> int:
    """Ask Perfect Corp to delete every v2 task of a job; returns how many it deleted.

    Every task is tried even when one fails; then the first failure worth a
    retry is raised (a task deleted already answers InvalidTaskId next time,
    which counts as done), else the first permanent one.
    """
    if job_api_version(job) != "v2":
        return 0  # v1.0 offers no deletion (DELETION_NOTICE)
    if job.sandbox and not sandbox.is_enabled():
        return 0  # an emulator's task: nothing of it is at the real vendor
    if not job.sandbox and sandbox.is_enabled():
        # Sandbox mode reaches only the emulator; asked again for a day in case it is switched off.
        raise VendorError("This job ran at the live Perfect Corp, which sandbox mode does not reach.", permanent=False)
    deleted, failures = 0, []
    for task_id in job_task_ids(job):
        try:
            deleted += delete_task(provider, task_id)
        except VendorError as exc:
            failures.append(exc)
    if failures:
        raise next((exc for exc in failures if not exc.permanent), failures[0])
    return deleted


# --- unit costs --------------------------------------------------------------------------------


def feature_costs(provider, *, page_size: int = 20) -> list[dict[str, Any]]:
    """Every SKU of the price list, page by page: {"description", "amount" (Decimal),
    "unit", "proc_unit", "path" (the run_task_url's path)}; malformed entries are skipped."""
    skus: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(MAX_PAGES):
        params = {"page_size": str(page_size)}
        if token:
            params["starting_token"] = token
        try:
            status, body = _call(provider, "GET", "/s2s/v2.0/credit/feature-cost", params=params)
        except UnreadableAnswer:
            raise VendorError("Perfect Corp sent a price list we couldn't read.", permanent=False) from None
        if status == 401:
            raise VendorError(BAD_KEY, permanent=False)
        if status >= 400:
            raise VendorError(f"Perfect Corp answered {status} to the price list.", permanent=False)
        result = body.get("result") if isinstance(body.get("result"), dict) else body.get("data") or {}
        page = result.get("skus") if isinstance(result, dict) else None
        for entry in page if isinstance(page, list) else []:
            sku = _sku(entry)
            if sku is not None:
                skus.append(sku)
        token = result.get("next_token") if isinstance(result, dict) else None
        if not page or token in (None, "", "null"):
            return skus
        token = str(token)
    log.warning("Perfect Corp's price list did not end after %s pages", MAX_PAGES)
    return skus


def _sku(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, dict) or not entry.get("run_task_url"):
        return None
    try:
        amount = Decimal(str(entry.get("amount")))
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return {
        "description": str(entry.get("description") or ""),
        "amount": amount,
        "unit": str(entry.get("unit") or "result_image"),
        "proc_unit": entry.get("proc_unit") or 1,
        "path": urlsplit(str(entry["run_task_url"])).path.rstrip("/"),
    }


def operation_units(skus: list[dict[str, Any]], version: str) -> dict[str, Decimal]:
    """Units one run of each of our operations costs, for the API family `version`.

    A run makes one charge of `amount` (a photo operation is priced per result
    image); the first SKU listed for a path wins; SKUs priced by the second
    (video) are not ours.
    """
    by_path: dict[str, Decimal] = {}
    for sku in skus:
        if sku["unit"] == "result_image":
            by_path.setdefault(sku["path"], sku["amount"])
    return {op: by_path[path] for op, path in COST_PATHS[version].items() if path in by_path}


def operation_costs(provider) -> dict[str, Decimal]:
    """The price list read now and mapped onto our operations (for studio/costs.py)."""
    if not api_key(provider):
        return {}  # a v1.0-only account: no price list to read (nothing shown, nothing logged)
    return operation_units(feature_costs(provider), api_version())
