"""The v2 family of the Perfect Corp emulator (../shared/perfectcorp-v2.md §1–§6).

Mixed into PerfectCorpEmulator, which serves v1.0 and v2 side by side on one
engine (same files, pictures, clock and counters):

- auth: `Authorization: Bearer <API key>` (`api_keys`), no token exchange;
  a refused key answers 401 in one of the documented shapes (`v2_401_shape`);
- `POST /s2s/v2.0/file`: every field required, answers `data.files[]` with a
  pre-signed PUT (the same storage routes as v1);
- `POST /s2s/v2.x/task/{feature}` → `data.task_id`; no request_id, so every
  accepted create is a new task (counters "creates"); `GET
  /s2s/v2.x/task/{feature}/{task_id}` → `data.task_status` (engine errors are
  HTTP 200 with `data.error`); results `data.results.url`, or `output[]` for
  aging (with `res_age` and the age facts) and colorize;
- a running task not polled within `lost_after` (or `polling_interval_ms`
  under "strict_polling") expires: `400 InvalidTaskId`;
- `GET /s2s/v2.x/task/template/{feature}` (page_size 1–20, starting_token,
  next_token) with `id`, `thumb`, `title`, `category_name`;
- 250 requests / 300 s per IP and per key (`rate_v2`);
- webhooks: with `webhook_url` set (sandbox mode: STUDIO_PUBLIC_URL's
  /webhooks/perfectcorp/), a task's end is POSTed there, Standard Webhooks
  signed with `webhook_secret`, payload `{"created_at", "data": {"task_id",
  "task_status"}}`.

Switches (`faults`), beside the shared ones of the v1 docstring:
  v2_401_shape        "error" (default) | "error_code" | "prose" | "live": the 401 body
  api_key_state       "active" (default) | "inactive" | "expired"
  invalid_task_shape  "error_code" (default) | "error": the InvalidTaskId body
  task_timeout (counted)   the next N polls answer 500 TaskTimeout
  v2_polling_interval      include `polling_interval` (ms) in poll answers (no schema has it)
  webhook_lost (counted)   the next N deliveries are never sent
  webhook_repeated: int    each delivery is sent this many extra times (same webhook-id)
  webhook_delay: float     seconds between a task's end and its delivery
Counters: creates, v2_creates, webhooks_delivered, webhooks_refused, webhooks_lost.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from studio import webhook_signatures
from studio.vendors.emulators import perfectcorp_pictures as pictures
from studio.vendors.emulators.base import json_response

MAX_FILE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class V2Spec:
    canonical: str  # the engine feature (the v1 name the pictures use)
    template: str = ""  # "required" | "alternative" (hair-transfer v2.1) | ""
    reference: str = ""  # "required" | "alternative" | ""
    mask: bool = False
    results: str = "url"  # "url" | "output"
    params: tuple[str, ...] = ()  # required extra fields: "scale", "prompt"
    output_ext: str = "jpg"


# (url version, feature) → what it takes and returns.
V2_SPECS: dict[tuple[str, str], V2Spec] = {
    ("2.0", "hair-style"): V2Spec("hair-style", template="required"),
    ("2.0", "hair-transfer"): V2Spec("hair-style", reference="required"),
    ("2.1", "hair-transfer"): V2Spec("hair-style", template="alternative", reference="alternative"),
    ("2.0", "wig"): V2Spec("wig", template="required"),  # not in any vendor document (third-party code)
    ("2.0", "hair-ext"): V2Spec("hair-ext", template="required"),
    ("2.0", "hair-bang"): V2Spec("hair-bang", template="required"),
    ("2.0", "hair-vol"): V2Spec("hair-vol", template="required"),
    ("2.0", "aging"): V2Spec("aging", results="output"),
    ("2.0", "mu-transfer"): V2Spec("mu-trans-rec", reference="required"),
    ("2.0", "generative-fill"): V2Spec("obj-removal", mask=True),
    ("2.0", "obj-removal"): V2Spec("obj-removal", mask=True),  # the standard engine's guessed path
    ("2.0", "colorize"): V2Spec("colorize", results="output"),
    ("2.0", "sod"): V2Spec("sod", output_ext="png"),
    ("2.0", "enhance"): V2Spec("enhance", params=("scale",)),
    ("2.0", "text-to-image"): V2Spec("text-to-image", template="required", params=("prompt",)),
}
TEMPLATE_CATEGORIES = ("Trending", "Classic", "Bold")
_401 = {
    "error": {"status": 401, "error": "Invalid API key"},
    "error_code": {"status": 401, "error_code": "InvalidApiKey"},
    "prose": {"status": 401, "error": "Unauthorized", "error_code": "InvalidAccessToken"},
    "live": {"status": 401, "error": "This API key is not recognized.", "error_code": "InvalidApiKey"},
}
_KEY_STATE = {"inactive": "InactiveApiKey", "expired": "ExpiredApiKey"}


def template_prefix(feature: str) -> str:
    return "".join(part[0] for part in feature.split("-")) + "_tpl"


class V2Family:
    """Routes and state of the v2 protocol; needs PerfectCorpEmulator's engine."""

    def _init_v2(self, sandbox_key: str, webhook_secret: str) -> None:
        self.api_keys = {sandbox_key}
        self.rate_v2 = (250, 300.0)  # per IP and per key
        self.webhook_url: str | None = ""  # "": no webhooks; None: read from settings (sandbox)
        self.webhook_secret = webhook_secret
        self.deliverer = None  # None: a real POST (emulators/fetch.http_deliver)
        self.templates = self._seed_templates()
        version = r"v(?P<version>2\.[01])"
        self.route("POST", r"/s2s/v2\.0/file", self._v2_files)
        self.route("GET", rf"/s2s/{version}/task/template/(?P<feature>[a-z0-9-]+)", self._v2_templates)
        self.route("POST", rf"/s2s/{version}/task/(?P<feature>[a-z0-9-]+)", self._v2_create)
        self.route("GET", rf"/s2s/{version}/task/(?P<feature>[a-z0-9-]+)/(?P<task_id>[A-Za-z0-9_-]+)", self._v2_status)
        self.route("GET", r"/storage/v2thumbs/(?P<template_id>[A-Za-z0-9_-]+)\.jpg", self._v2_thumb)

    def configure_for_sandbox(self) -> None:
        """Sandbox mode: deliver webhooks where the settings say the app listens."""
        self.webhook_url = None

    # --- auth, envelope, limits -----------------------------------------------------------

    def _v2_refused(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("Authorization", "")
        key = header[7:] if header.startswith("Bearer ") else None
        state = self.fault("api_key_state", "active")
        if key in self.api_keys and state == "active":
            return None
        self.counters["auth_rejected"] += 1
        if key in self.api_keys:
            return json_response(401, {"status": 401, "error_code": _KEY_STATE.get(state, "InvalidApiKey")})
        return json_response(401, _401.get(self.fault("v2_401_shape", "error"), _401["error"]))

    @staticmethod
    def _v2_ok(data: dict) -> httpx.Response:
        return json_response(200, {"status": 200, "data": data})

    def v2_windows(self, request: httpx.Request) -> list[tuple[str, int, float]]:
        header = request.headers.get("Authorization", "")
        windows = [("v2ip", *self.rate_v2)]
        if header.startswith("Bearer "):
            windows.append((f"v2key:{header[7:]}", *self.rate_v2))
        return windows

    # --- files --------------------------------------------------------------------------------

    def _v2_files(self, request: httpx.Request) -> httpx.Response:
        refused = self._v2_refused(request)
        if refused is not None:
            return refused
        body = self._body(request)
        files = body.get("files") if body else None
        if not isinstance(files, list) or not files:
            return self._bad("Invalid parameter value")
        answers = []
        for entry in files:
            content_type, size = (entry or {}).get("content_type"), (entry or {}).get("file_size")
            if not isinstance(content_type, str) or not content_type.startswith(("image/", "video/")):
                return self._bad("Invalid parameter value")
            if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
                return self._bad("Invalid parameter value")
            if not isinstance(size, int) or isinstance(size, bool) or not 0 < size < MAX_FILE_BYTES:
                return self._bad("Invalid parameter value")
            file_id, slot = _file_id(), secrets.token_urlsafe(12)
            now = self.clock.now()
            with self.lock:
                self.files[file_id] = {
                    "feature": "v2", "content_type": content_type, "data": None, "created": now, "kind": "upload",
                }
                self.slots[slot] = {
                    "file_id": file_id,
                    "content_type": content_type,
                    "expires": now + self.upload_url_ttl,
                    "size": size,
                }
            query = urlencode({"X-Amz-Expires": int(self.upload_url_ttl), "X-Amz-Signature": self._sign(slot)})
            headers = {"Content-Type": content_type, "Content-Length": str(size)}
            answers.append(
                {
                    "content_type": content_type,
                    "file_name": entry["file_name"],
                    "file_id": file_id,
                    "requests": [
                        {"method": "PUT", "url": self.url(f"/storage/upload/{slot}?{query}"), "headers": headers}
                    ],
                }
            )
        self.counters["file_slots"] += len(answers)
        return self._v2_ok({"files": answers})

    # --- templates ----------------------------------------------------------------------------

    def _seed_templates(self) -> dict[str, list[dict]]:
        """26 templates per template feature, in three categories (two pages at page_size 20)."""
        from studio.vendors.emulators.perfectcorp import STYLE_WORDS

        found: dict[str, list[dict]] = {}
        for (version, feature), spec in V2_SPECS.items():
            if not spec.template:
                continue
            prefix = template_prefix(feature)
            found[f"{version}/{feature}"] = [
                {
                    "id": f"{prefix}_{n + 1:03d}",
                    "title": f"{STYLE_WORDS[n % len(STYLE_WORDS)]} {n + 1}",
                    "category_name": TEMPLATE_CATEGORIES[0 if n < 12 else 1 if n < 20 else 2],
                }
                for n in range(26)
            ]
        return found

    def template_ids(self, path: str) -> list[str]:
        """Template ids of "2.1/hair-transfer" etc., for tests."""
        return [t["id"] for t in self.templates[path]]

    def _v2_templates(self, request: httpx.Request, version: str, feature: str) -> httpx.Response:
        refused = self._v2_refused(request)
        if refused is not None:
            return refused
        items = self.templates.get(f"{version}/{feature}")
        if items is None:
            return self._error(404, "Not Found", "NotFound")
        paged = self._page(request, items)
        if isinstance(paged, httpx.Response):
            return paged
        page, next_token = paged
        templates = [{**t, "thumb": self.url(f"/storage/v2thumbs/{t['id']}.jpg")} for t in page]
        return self._v2_ok({"templates": templates, "next_token": next_token})

    def _v2_thumb(self, request: httpx.Request, template_id: str) -> httpx.Response:
        data, content_type = pictures.encode(pictures.thumbnail(template_id, template_id[-3:]), "jpg")
        return httpx.Response(200, content=data, headers={"Content-Type": content_type})

    # --- tasks ------------------------------------------------------------------------------

    def _v2_create(self, request: httpx.Request, version: str, feature: str) -> httpx.Response:
        refused = self._v2_refused(request)
        if refused is not None:
            return refused
        spec = V2_SPECS.get((version, feature))
        if spec is None:
            return self._error(404, "Not Found", "NotFound")
        body = self._body(request)
        if body is None:
            return self._bad("Invalid parameter value")
        inputs: dict[str, list[str]] = {}
        fields = [("src_ids", "src_file_id", spec.canonical != "text-to-image")]
        has_ref = "ref_file_id" in body or "ref_file_url" in body
        fields.append(("ref_ids", "ref_file_id", spec.reference == "required" or (spec.reference and has_ref)))
        fields.append(("mask_ids", "msk_file_id", spec.mask))
        for key, name, wanted in fields:
            if not wanted:
                continue
            value = body.get(name)
            if value is None and body.get(name.replace("_id", "_url")):
                return self._bad("this emulator takes file ids, not URLs")
            if not isinstance(value, str) or value not in self.files:
                return self._bad("Invalid parameter value")
            inputs[key] = [value]
        template = body.get("template_id")
        if spec.template == "alternative" and (template is not None) == has_ref:
            return self._bad("exactly one of template_id, ref_file_id, ref_file_url is required")
        if spec.template == "required" or (spec.template == "alternative" and template is not None):
            if template not in {t["id"] for t in self.templates[f"{version}/{feature}"]}:
                return self._bad("template not found", "InvalidStyle")
        params: dict[str, Any] = {"style_ids": [template or "ref"]}
        if "scale" in spec.params:
            if body.get("scale") not in (1, 2, 4):
                return self._bad("Invalid parameter value")
            params["scale"] = body["scale"]
        if "prompt" in spec.params:
            if not (isinstance(body.get("prompt"), str) and body["prompt"].strip()):
                return self._bad("Invalid parameter value")
            params["prompt"] = body["prompt"]
        if self.fault("zero_credits") or (self.credits is not None and self.credits <= 0):
            return self._bad("Insufficient credit", "CreditInsufficiency")
        never_uploaded = [i for ids in inputs.values() for i in ids if self.files[i]["data"] is None]
        if never_uploaded and self.fault("never_uploaded") == "http_404":
            return self._error(404, "file not found", "unknown_internal_error")
        error, mask_problem = self._engine_check(spec.canonical, inputs, never_uploaded)
        if mask_problem:
            return self._bad(mask_problem)
        task = self._new_task(spec.canonical, inputs, params, spec.output_ext, error)
        task.protocol, task.v2_path, task.v2_results = "v2", f"{version}/{feature}", spec.results
        with self.lock:
            self.tasks[task.id] = task
            self.counters["tasks"] += 1
            self.counters["creates"] += 1
            self.counters["v2_creates"] += 1
        if self._webhook_target():
            threading.Thread(target=self._v2_run_and_notify, args=(task,), daemon=True,
                             name=f"pc-webhook-{task.id[:8]}").start()
        return self._v2_ok({"task_id": task.id})

    def _v2_status(self, request: httpx.Request, version: str, feature: str, task_id: str) -> httpx.Response:
        refused = self._v2_refused(request)
        if refused is not None:
            return refused
        task = self.tasks.get(task_id)
        if task is None or task.protocol != "v2" or task.v2_path != f"{version}/{feature}":
            return self._v2_invalid_task()
        if self._take("task_timeout", request.url.path):
            return json_response(500, {"status": 500, "error_code": "TaskTimeout"})
        now = self.clock.now()
        with self.lock:
            if task.status == "lost":
                return self._v2_invalid_task()
            if task.status == "running":
                window = self.polling_interval_ms / 1000 if self.fault("strict_polling") else self.lost_after
                due = task.last_seen + window
                if task.lose_at_first_poll or (now > due and task.created + task.duration > due):
                    task.status = "lost"  # not polled in time while running: expired
                    self.counters["lost"] += 1
                    return self._v2_invalid_task()
            task.last_seen = now
            self.counters["polls"] += 1
        self._finish_if_due(task, now)
        data: dict[str, Any] = {"task_status": task.status, "error": None}
        if self.fault("v2_polling_interval"):
            data["polling_interval"] = self.polling_interval_ms
        if task.status == "running":
            data["task_status"] = self.fault("unknown_status") or "running"
        elif task.status == "error":
            data.update(error=task.error, error_message=f"engine error: {task.error}")
        else:
            data["results"] = self._v2_results(task)
        return self._v2_ok(data)

    def _v2_invalid_task(self) -> httpx.Response:
        if self.fault("invalid_task_shape") == "error":
            return json_response(400, {"status": 400, "error": "Invalid task ID"})
        return json_response(400, {"status": 400, "error_code": "InvalidTaskId"})

    def _finish_if_due(self, task, now: float) -> None:
        if task.status == "running" and not self.fault("hang") and now - task.created >= task.duration:
            with self._engine_lock:  # one caller computes the pictures, others wait for them
                if task.status == "running":
                    self._finish(task)

    def _v2_results(self, task) -> dict:
        items = [{k: v for k, v in item.items() if k != "dst_id"} for item in task.results]  # no dst_id in v2
        if task.v2_results == "url":
            return {"url": items[0]["url"]}
        results: dict[str, Any] = {"output": items}
        if task.custom_info:  # aging: the input's age and its index among the outputs
            info = task.custom_info
            results.update(
                age=info["age"], agd_idx=info["age_idx"], age_min=info["age_min"], age_max=info["age_max"],
                num_of_photos=info["num_of_photos"],
            )
        return results

    # --- webhooks ---------------------------------------------------------------------------

    def _webhook_target(self) -> str:
        if self.webhook_url is None:
            from django.conf import settings

            return settings.PERFECTCORP_SANDBOX_WEBHOOK_URL or (
                settings.STUDIO_PUBLIC_URL.rstrip("/") + "/webhooks/perfectcorp/"
            )
        return self.webhook_url

    def _v2_run_and_notify(self, task) -> None:
        """Run the task as time passes (nobody need poll it), then send its webhook."""
        while task.status == "running" and not self.fault("hang"):
            if task.lose_at_first_poll:
                return  # forgotten: its first poll answers InvalidTaskId, no notification
            now = self.clock.now()
            self._finish_if_due(task, now)
            # Until the engine time is up, but looking at least every 0.1 s (a test may move
            # the clock): a 20 ms loop per task was half the emulators' CPU at 200 tasks.
            time.sleep(min(0.1, max(0.005, task.created + task.duration - now)))
        if task.status not in ("success", "error"):
            return
        time.sleep(float(self.fault("webhook_delay", 0) or 0))
        if self.take_fault("webhook_lost"):
            with self.lock:
                self.counters["webhooks_lost"] += 1
            return
        self.notify(task.id, task.status)

    def notify(self, task_id: str, status: str, *, url: str | None = None) -> list[int]:
        """POST one Standard Webhooks delivery (and its repeats, same webhook-id); the answers."""
        from studio.vendors.emulators.fetch import http_deliver

        body = json.dumps(
            {"created_at": int(self.clock.now()), "data": {"task_id": task_id, "task_status": status}},
            separators=(",", ":"),
        ).encode()
        message_id = f"msg_{secrets.token_hex(12)}"
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": webhook_signatures.sign(self.webhook_secret, message_id, timestamp, body),
        }
        deliver = self.deliverer or http_deliver
        answers = []
        for _ in range(1 + int(self.fault("webhook_repeated", 0) or 0)):
            status_code = deliver(url or self._webhook_target(), body, headers)
            answers.append(status_code)
            with self.lock:
                self.counters["webhooks_delivered" if 200 <= status_code < 300 else "webhooks_refused"] += 1
        return answers


def _file_id() -> str:
    """v2 file ids are base64 with '+', '/' and '=' (§2): they go in JSON, never in a path."""
    import base64

    return base64.b64encode(secrets.token_bytes(30)).decode()


def is_v2_path(path: str) -> bool:
    return bool(re.match(r"/s2s/v2\.", path))
