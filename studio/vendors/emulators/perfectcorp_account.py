"""Perfect Corp v2 account routes for the emulator: task deletion and the price list.

../shared/perfectcorp-v2.md §4 (task_management.json, unit_system.json):

  POST /s2s/v2.0/task/delete         {"task_id"} → 200 {"status":200}; 400 error_code
                                     OperationNotSupport (not a task id: e.g. a file id),
                                     OperationInvalid (the task has not finished yet),
                                     InvalidTaskId (unknown, or deleted already),
                                     InvalidParameters (no task_id); 401 bad API key
  GET  /s2s/v2.0/credit/feature-cost ?page_size=1..20&starting_token=… → 200
                                     {"status":200,"result":{"next_token","skus":[…]}}
                                     (note `result`, where the other v2 answers say `data`)

`install(emulator)` adds both routes to a PerfectCorpEmulator; it is kept apart
from the v1.0 and v2 task routes so each can change without the other. What it
relies on in the emulator: `route()`, `lock`, `counters`, `clock`, `url()`,
`faults`, `tasks` (task id → object with `status` "running" | "success" |
"error" | "lost", `created`, `duration`, `inputs` {slot: [file ids]} and
`results` [{"dst_id", "url"}]), `files` (file id → record) and `stored`
(result token → file). A task whose engine time is up counts as finished
even if nobody polled it (the engine has ended it); the "hang" switch keeps
it running.

Auth: the v2 family's own check (`V2Family._v2_refused`: the API key set, its
401 shapes and key states); refusals are also counted as `v2_auth_rejected`.

Counters: `tasks_deleted`, `delete_refused_running`, `feature_cost_pages`.
`emulator.deleted_tasks` lists the ids deleted, in order.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

import httpx

from studio.vendors.emulators.base import json_response

PAGE_SIZE_MAX = 20


@dataclass(frozen=True)
class Sku:
    description: str
    amount: float
    path: str  # the task endpoint it prices; served as an absolute run_task_url
    unit: str = "result_image"
    proc_unit: int = 1


# Units per §3 (each feature's own document). Features whose v2 path is not archived
# (wig, standard object removal) have no SKU here, so the studio shows no price for them.
SKUS: tuple[Sku, ...] = (
    Sku("AI Hairstyle Generator, preset mode", 1, "/s2s/v2.0/task/hair-style"),
    Sku("AI Hairstyle Generator V2.0, custom mode", 2, "/s2s/v2.0/task/hair-transfer"),
    Sku("AI Hairstyle Generator V2.1, preset or custom mode", 2, "/s2s/v2.1/task/hair-transfer"),
    Sku("AI Hair Extension", 1, "/s2s/v2.0/task/hair-ext"),
    Sku("AI Bangs", 1, "/s2s/v2.0/task/hair-bang"),
    Sku("AI Hair Volume", 2, "/s2s/v2.0/task/hair-vol"),
    Sku("AI Aging Simulation", 2, "/s2s/v2.0/task/aging"),
    Sku("AI Makeup Transfer", 2, "/s2s/v2.0/task/mu-transfer"),
    Sku("AI Object Removal Pro", 2, "/s2s/v2.0/task/generative-fill"),
    Sku("AI Photo Colorize", 2, "/s2s/v2.0/task/colorize"),
    Sku("AI Background Removal", 1, "/s2s/v2.0/task/sod"),
    Sku("AI Photo Enhance", 2, "/s2s/v2.0/task/enhance"),
    Sku("AI Image Generator V1.0", 2, "/s2s/v2.0/task/text-to-image"),
    Sku("AI Image Generator V2.0, text to image", 1, "/s2s/v2.0/task/text-to-image/youcam"),
    Sku("AI Image Generator V2.0, image to image", 1, "/s2s/v2.0/task/image-to-image/youcam"),
    # Products the studio does not use, so a client must pick its own out of the list
    # (the skin-analysis row is the document's example; the video row is priced by the second).
    Sku("AI Skin Analysis for SD 1~4 concerns", 9, "/s2s/v2.0/task/skin-analysis"),
    Sku("AI Skin Analysis for SD 5~7 concerns", 12, "/s2s/v2.0/task/skin-analysis"),
    Sku("AI Skin Analysis for HD 1~4 concerns", 15, "/s2s/v2.0/task/skin-analysis"),
    Sku("AI Face Analyzer", 1, "/s2s/v2.0/task/face-attr-analysis"),
    Sku("AI Skin Tone Analysis", 1, "/s2s/v2.0/task/skin-tone-analysis"),
    Sku("AI Face Reshape", 1, "/s2s/v2.0/task/face-reshape"),
    Sku("AI Video Enhance", 1, "/s2s/v2.0/task/video-enhance", unit="second", proc_unit=10),
)


def install(emulator) -> None:
    """Add the delete and feature-cost routes to a Perfect Corp emulator whose v2 family
    (perfectcorp_v2.V2Family: API keys, their 401 shapes) is already set up."""
    emulator.deleted_tasks = []
    emulator.skus = list(SKUS)
    emulator.route("POST", r"/s2s/v2\.0/task/delete", lambda request: _delete(emulator, request), first=True)
    emulator.route(
        "GET", r"/s2s/v2\.0/credit/feature-cost", lambda request: _feature_cost(emulator, request), first=True
    )


def _error(status: int, error: str | None, code: str | None = None) -> httpx.Response:
    body: dict = {"status": status}
    if error:
        body["error"] = error
    if code:
        body["error_code"] = code
    return json_response(status, body)


def _unauthorized(emulator, request: httpx.Request) -> httpx.Response | None:
    """The v2 family's one key check (its 401 shapes and key states), counted here too."""
    refused = emulator._v2_refused(request)
    if refused is not None:
        with emulator.lock:
            emulator.counters["v2_auth_rejected"] += 1
    return refused


def _finished(emulator, task) -> bool:
    if task.status != "running":
        return True
    if emulator.faults.get("hang"):
        return False
    return emulator.clock.now() - task.created >= task.duration


def _delete(emulator, request: httpx.Request) -> httpx.Response:
    refused = _unauthorized(emulator, request)
    if refused is not None:
        return refused
    try:
        body = json.loads(request.content or b"{}")
    except ValueError:
        body = None
    task_id = body.get("task_id") if isinstance(body, dict) else None
    if not isinstance(task_id, str) or not task_id:
        return _error(400, "task_id is required", "InvalidParameters")
    with emulator.lock:
        task = emulator.tasks.get(task_id)
        if task is None:
            if task_id in emulator.files:  # a file id or dst_id where the run's task id belongs
                return _error(400, "Operation not supported", "OperationNotSupport")
            return _error(400, "Invalid task ID", "InvalidTaskId")
        if not _finished(emulator, task):
            emulator.counters["delete_refused_running"] += 1
            return _error(400, "The task has not finished yet", "OperationInvalid")
        del emulator.tasks[task_id]
        # The task goes with its input files and every output (files, dst_ids, result links).
        for ids in (getattr(task, "inputs", None) or {}).values():
            for file_id in ids:
                emulator.files.pop(file_id, None)
        for result in getattr(task, "results", None) or []:
            emulator.files.pop(result.get("dst_id"), None)
            token = re.search(r"/storage/result/([A-Za-z0-9_-]+)\.", str(result.get("url", "")))
            if token:
                emulator.stored.pop(token.group(1), None)
        emulator.deleted_tasks.append(task_id)
        emulator.counters["tasks_deleted"] += 1
    return json_response(200, {"status": 200})


def _token(offset: int) -> str:
    """Page tokens like the document's example ("MjA" is base64 of "20"): opaque to clients."""
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def _offset(token: str) -> int | None:
    try:
        return int(base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode())
    except (ValueError, UnicodeDecodeError):
        return None


def _feature_cost(emulator, request: httpx.Request) -> httpx.Response:
    refused = _unauthorized(emulator, request)
    if refused is not None:
        return refused
    params = request.url.params
    try:
        size = int(params.get("page_size") or PAGE_SIZE_MAX)
    except ValueError:
        size = 0
    if not 1 <= size <= PAGE_SIZE_MAX:
        return _error(400, "Invalid parameter value", "InvalidParameters")
    start = 0
    if params.get("starting_token") not in (None, "", "null"):
        start = _offset(params["starting_token"])
        if start is None or not 0 <= start <= len(emulator.skus):
            return _error(400, "Invalid parameter value", "InvalidParameters")
    page = emulator.skus[start : start + size]
    end = start + len(page)
    skus = [
        {
            "description": sku.description,
            "amount": sku.amount,
            "unit": sku.unit,
            "proc_unit": sku.proc_unit,
            "run_task_url": emulator.url(sku.path),
        }
        for sku in page
    ]
    with emulator.lock:
        emulator.counters["feature_cost_pages"] += 1
    next_token = _token(end) if end < len(emulator.skus) else None
    return json_response(200, {"status": 200, "result": {"next_token": next_token, "skus": skus}})
