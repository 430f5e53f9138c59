"""A faithful emulator of WaveSpeed's `portrait` and `instant-character` models (vendor-apis.md §2).

Protocol: Bearer key on every API route; `POST /api/v3/{model-path}` answers
the envelope `{code, message, data}` with a `created` prediction (hex id,
ISO `created_at` with milliseconds and Z); `GET /api/v3/predictions/{id}`
and `…/{id}/result` both serve it. Each poll moves a task one step,
created → processing → completed/failed, once `stage_seconds` have passed
on the emulator's clock; at most `concurrency` tasks per key are processing
(the rest wait in `created`), and at most `rate_per_minute` submissions per
key are accepted per minute (429 beyond). Image inputs are URLs fetched like
the vendor does (its own upload route, or any URL through the injectable
fetcher) or, for Portrait only, base64. Outputs are real images served on
the emulator's own URLs (or base64 with `enable_base64_output`), with
`has_nsfw_contents` of the same length and `timings.inference` in ms.

Fault and variant switches (`emulator.faults[name]`; counted ones take an int
"for the next N calls" or True "always"):
  rate_limited (counted)      429 on any API call
  submit_error (counted)      503 on submit
  poll_error (counted)        502 on a poll
  submit_timeout (counted)    the task is created but the answer never comes
  inactive_key: bool          401 for every key ("top up first")
  insufficient_balance: bool  submit refused with `balance_status` (default 402)
  task_error: str             tasks fail with this `error` text
  stuck: bool                 tasks stay `processing` forever
  nsfw: bool                  every output is flagged in has_nsfw_contents
  unknown_status: str         the next poll answers this status (e.g. "pending")
  base64_data_uri: bool       base64 outputs carry a data: prefix (default plain)
  output_ttl: float           output URLs answer `expired_status` (default 404) after this many seconds
  lost_task (counted)         the next N tasks are forgotten at their first poll: it answers
                              404 "prediction not found", as for an id WaveSpeed never knew
Webhooks: a submit with `?webhook=<url>` (WaveSpeed's documented query parameter,
wavespeed.ai/docs-api/webhooks) has its task moved on by a background thread, not
only by polls, and once it is completed or failed the prediction object (the
`data` of a poll, without the envelope) is POSTed to that URL through the
injectable `deliverer`. Counters: "webhooks_delivered" (2xx answers),
"webhooks_refused" (other answers or no connection), "webhooks_lost". Switches:
  webhook_lost (counted)      the next N deliveries are never sent
  webhook_repeated: int       each delivery is sent this many extra times
  webhook_delay: float        seconds between the task's end and its delivery
The Emulator base adds the generic ones, in the `{code, message}` envelope:
"429"/"500"/"502"/"503", "connect_timeout", "read_timeout", "reset",
"reset_after" (a submit creates its task, its answer is lost), "malformed_json",
"slow_answer", "oversized_answer" (`fault_path` to aim them, e.g. "/predictions/"),
and on the output files "slow_download" and "oversized_download".
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from studio import imaging
from studio.vendors.emulators import pictures_portrait as pictures
from studio.vendors.emulators.base import STATUS_TEXT, Emulator, NetworkFault, json_response
from studio.vendors.emulators.fetch import Deliverer, Fetcher, http_deliver, http_fetch

SANDBOX_KEY = "ws_sandbox_key"
MAX_SEED = 2**31 - 1


@dataclass
class Task:
    id: str
    model: str
    key: str
    body: dict
    created: float
    image: bytes | None = None
    fetch_error: str = ""
    status: str = "created"
    changed: float = 0.0
    outputs: list[str] = field(default_factory=list)
    nsfw: list[bool] = field(default_factory=list)
    error: str = ""
    inference_ms: int = 0
    polled: bool = False
    webhook: str = ""  # where to POST the prediction when it ends


class WaveSpeedEmulator(Emulator):
    vendor = "WaveSpeed"

    def __init__(
        self,
        *,
        api_keys: set[str] | None = None,
        portrait_path: str = "wavespeed-ai/portrait",
        character_path: str = "wavespeed-ai/instant-character",
        fetcher: Fetcher | None = None,
        deliverer: Deliverer | None = None,
        rate_per_minute: int = 10,
        concurrency: int = 3,
        stage_seconds: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.api_keys = set(api_keys) if api_keys is not None else {SANDBOX_KEY}
        self.models = {portrait_path: "portrait", character_path: "character"}
        self.fetcher = fetcher or http_fetch
        self.deliverer = deliverer or http_deliver
        self._submitted = threading.local()  # tasks the current request created with a webhook
        self.rate_per_minute = rate_per_minute
        self.concurrency = concurrency
        self.stage_seconds = stage_seconds
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, tuple[bytes, str, float]] = {}  # path → (bytes, type, created)
        self.submissions: list[dict] = []  # bodies received, image removed (for tests)
        self._starts: dict[str, list[float]] = {}
        self.route("POST", r"/api/v3/media/upload/binary", self.upload)
        self.route("GET", r"/api/v3/predictions/(?P<task_id>[0-9a-f]+)(?:/result)?", self.get_result)
        self.route("POST", r"/api/v3/(?P<model>[\w.-]+/[\w.-]+)", self.submit)
        self.route("GET", r"/files/(?P<name>[\w.-]+)", self.serve_file)

    # --- helpers -----------------------------------------------------------------------

    def _auth(self, request: httpx.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        key = header[7:] if header.startswith("Bearer ") else ""
        if key not in self.api_keys or self.fault("inactive_key"):
            return None
        return key

    def error_response(self, status: int) -> httpx.Response:
        return _envelope_error(status, STATUS_TEXT[status], headers={"Retry-After": "1"} if status == 429 else None)

    def _api_fault(self) -> httpx.Response | None:
        if self.take_fault("rate_limited"):
            self.counters["429"] += 1
            return _envelope_error(429, "Too Many Requests", headers={"Retry-After": "1"})
        return None

    def _store(self, data: bytes, content_type: str) -> str:
        name = secrets.token_hex(12) + (".png" if content_type == "image/png" else ".jpg")
        self.files[name] = (data, content_type, self.clock.now())
        return self.url(f"/files/{name}")

    def _fetch(self, url: str) -> tuple[bytes | None, str]:
        """(bytes, error text): the emulator's own files directly, anything else through the fetcher."""
        prefix = self.url("/files/")
        if url.startswith(prefix):
            entry = self.files.get(url[len(prefix) :])
            return (entry[0], "") if entry else (None, "image could not be downloaded: 404")
        status, body, _ = self.fetcher(url)
        if status != 200 or not body:
            return None, f"image could not be downloaded: HTTP {status or 'connection failed'}"
        return body, ""

    # --- routes --------------------------------------------------------------------------

    def upload(self, request: httpx.Request) -> httpx.Response:
        if self._auth(request) is None:
            return _envelope_error(401, "Unauthorized")
        fault = self._api_fault()
        if fault:
            return fault
        data = _multipart_file(request)
        if not data:
            return _envelope_error(400, "file is required")
        try:
            imaging.load_image(data)
        except imaging.ImageRejected:
            return _envelope_error(400, "file is not a supported image")
        url = self._store(data, "image/jpeg")
        return json_response(
            200,
            {
                "code": 200,
                "message": "success",
                "data": {"type": "image", "download_url": url, "filename": url.rsplit("/", 1)[1], "size": len(data)},
            },
        )

    def submit(self, request: httpx.Request, model: str) -> httpx.Response:
        key = self._auth(request)
        if key is None:
            return _envelope_error(401, "Unauthorized")
        fault = self._api_fault()
        if fault:
            return fault
        if self.take_fault("submit_error"):
            return _envelope_error(503, "Service Unavailable")
        kind = self.models.get(model)
        if kind is None:
            return _envelope_error(404, f"model {model} not found")
        if self.fault("insufficient_balance"):
            return _envelope_error(int(self.fault("balance_status", 402)), "Insufficient balance, please top up")
        try:
            body = json.loads(request.content or b"null")
        except ValueError:
            return _envelope_error(400, "invalid JSON body")
        problem = _validate(kind, body)
        if problem:
            return _envelope_error(400, problem)
        now = self.clock.now()
        with self.lock:
            starts = [t for t in self._starts.get(key, []) if now - t < 60.0]
            if len(starts) >= self.rate_per_minute:
                self.counters["429"] += 1
                return _envelope_error(429, "Too Many Requests", headers={"Retry-After": "60"})
            starts.append(now)
            self._starts[key] = starts
        task = Task(
            id=secrets.token_hex(16),
            model=model,
            key=key,
            body=body,
            created=now,
            changed=now,
            webhook=request.url.params.get("webhook", ""),
        )
        image = body["image"]
        if image.startswith(("http://", "https://")):
            task.image, task.fetch_error = self._fetch(image)
        else:
            task.image = _decode_base64(image)
            if task.image is None:
                task.fetch_error = "image could not be decoded"
        self.tasks[task.id] = task
        self.submissions.append({k: v for k, v in body.items() if k != "image"})
        self.counters["submits"] += 1
        if self.take_fault("submit_timeout"):
            raise NetworkFault("read_timeout")
        if body.get("enable_sync_mode"):
            self._advance(task, force=True)
            self._advance(task, force=True)
        elif task.webhook:
            self._submitted.tasks.append(task)  # its thread starts once the answer is on its way (handle)
        return json_response(200, self._envelope(task))

    def get_result(self, request: httpx.Request, task_id: str) -> httpx.Response:
        if self._auth(request) is None:
            return _envelope_error(401, "Unauthorized")
        fault = self._api_fault()
        if fault:
            return fault
        if self.take_fault("poll_error"):
            return _envelope_error(502, "Bad Gateway")
        task = self.tasks.get(task_id)
        if task is not None and not task.polled and self.take_fault("lost_task"):
            self.counters["lost"] += 1
            del self.tasks[task_id]
            task = None
        if task is None:
            return _envelope_error(404, "prediction not found")
        task.polled = True
        odd = self.fault("unknown_status")
        if odd:
            self.faults.pop("unknown_status", None)
            return json_response(200, self._envelope(task, status=odd))
        with self.lock:  # a webhook task's thread moves it on too
            self._advance(task)
        return json_response(200, self._envelope(task))

    def serve_file(self, request: httpx.Request, name: str) -> httpx.Response:
        entry = self.files.get(name)
        if entry is None:
            return httpx.Response(404, text="Not Found")
        data, content_type, created = entry
        ttl = self.fault("output_ttl")
        if ttl is not None and self.clock.now() - created > float(ttl):
            return httpx.Response(int(self.fault("expired_status", 404)), text="link expired")
        return self.file_response(data, content_type)

    # --- the task lifecycle ------------------------------------------------------------------

    def _advance(self, task: Task, *, force: bool = False) -> None:
        now = self.clock.now()
        if not force and now - task.changed < self.stage_seconds:
            return
        if task.status == "created":
            busy = sum(1 for t in self.tasks.values() if t.key == task.key and t.status == "processing")
            if busy >= self.concurrency and not force:
                return  # waits for a slot, still "created"
            task.status, task.changed = "processing", now
        elif task.status == "processing" and not self.fault("stuck"):
            self._finish(task)
            task.changed = now

    # --- webhooks --------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """As the base, then start the webhook thread of a task this request created.

        Not when the answer was lost (a network fault): such a task stays
        `created` until polled, as it does without a webhook.
        """
        self._submitted.tasks = []
        response = super().handle(request)
        for task in self._submitted.tasks:
            threading.Thread(target=self._run_and_call_back, args=(task,), name=f"ws-webhook-{task.id}",
                             daemon=True).start()
        return response

    def _run_and_call_back(self, task: Task) -> None:
        """Move the task on as time passes (nobody may poll it), then deliver its webhook.

        `lost_task` forgets such a task before it runs (its first poll then answers 404).
        """
        if self.take_fault("lost_task"):
            with self.lock:
                self.counters["lost"] += 1
                self.tasks.pop(task.id, None)
            return
        while task.status not in ("completed", "failed") and task.id in self.tasks:
            with self.lock:
                self._advance(task)
                next_stage = task.changed + self.stage_seconds - self.clock.now()
                if task.status in ("completed", "failed"):
                    break  # deliver now: a sleep here held every webhook back 50 ms
            # To the next stage's time, looking at least every 50 ms (a test may move the clock):
            # a fixed 50 ms step finished each stage up to 50 ms late. Overdue and not moved on,
            # the task waits for a free slot (or is stuck): look again in 50 ms.
            time.sleep(max(0.002, next_stage) if 0 < next_stage < 0.05 else 0.05)
        if task.id not in self.tasks:
            return
        time.sleep(float(self.fault("webhook_delay", 0) or 0))
        if self.take_fault("webhook_lost"):
            with self.lock:
                self.counters["webhooks_lost"] += 1
            return
        body = json.dumps(self._envelope(task)["data"]).encode()
        for _ in range(1 + int(self.fault("webhook_repeated", 0) or 0)):
            status = self.deliverer(task.webhook, body, {"Content-Type": "application/json"})
            with self.lock:
                self.counters["webhooks_delivered" if 200 <= status < 300 else "webhooks_refused"] += 1

    def _finish(self, task: Task) -> None:
        started = time.monotonic()
        if task.fetch_error:
            task.status, task.error = "failed", task.fetch_error
            return
        if self.fault("task_error"):
            task.status, task.error = "failed", str(self.fault("task_error"))
            return
        body = task.body
        seed = body.get("seed", -1)
        seed = secrets.randbelow(MAX_SEED) if seed == -1 else seed
        try:
            image = imaging.load_image(task.image)
        except imaging.ImageRejected:
            task.status, task.error = "failed", "image format is not supported"
            return
        if self.models[task.model] == "portrait":
            picture = pictures.portrait_edit(image, prompt=body["prompt"], seed=seed)
            data, content_type = pictures.encode(picture, "PNG"), "image/png"
        else:
            width, height = (int(v) for v in body.get("size", "1024*1024").split("*"))
            picture = pictures.character(image, prompt=body["prompt"], seed=seed, width=width, height=height)
            data, content_type = pictures.encode(picture), "image/jpeg"
        if body.get("enable_base64_output"):
            encoded = base64.b64encode(data).decode()
            task.outputs = [f"data:{content_type};base64,{encoded}" if self.fault("base64_data_uri") else encoded]
        else:
            task.outputs = [self._store(data, content_type)]
        task.nsfw = [bool(self.fault("nsfw"))] * len(task.outputs)
        task.inference_ms = max(1, round((time.monotonic() - started) * 1000))
        task.status = "completed"
        self.counters["charges"] += 1

    def _envelope(self, task: Task, *, status: str | None = None) -> dict:
        status = status or task.status
        done = status == "completed"
        return {
            "code": 200,
            "message": "success",
            "data": {
                "id": task.id,
                "model": task.model,
                "outputs": list(task.outputs) if done else [],
                "urls": {"get": self.url(f"/api/v3/predictions/{task.id}/result")},
                "has_nsfw_contents": list(task.nsfw) if done else [],
                "status": status,
                "created_at": datetime.fromtimestamp(task.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "error": task.error if status == "failed" else "",
                "timings": {"inference": task.inference_ms if done else 0},
            },
        }


def _envelope_error(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return json_response(status, {"code": status, "message": message}, headers)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(kind: str, body) -> str:
    """The first problem with a submit body, or ""."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
        return "prompt is required"
    image = body.get("image")
    if not isinstance(image, str) or not image:
        return "image is required"
    if kind == "character" and not image.startswith(("http://", "https://")):
        return "image must be a URL"
    if "seed" in body and (not _is_int(body["seed"]) or not -1 <= body["seed"] <= MAX_SEED):
        return "seed must be an integer between -1 and 2147483647"
    if kind == "portrait" and not isinstance(body.get("enable_base64_output", False), bool):
        return "enable_base64_output must be a boolean"
    if kind == "character" and "size" in body:
        size = body["size"]
        parts = size.split("*") if isinstance(size, str) else []
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return "size must be formatted as width*height"
        if not all(256 <= int(p) <= 1536 for p in parts):
            return "size must be between 256 and 1536 per dimension"
    return ""


def _decode_base64(value: str) -> bytes | None:
    payload = value.partition(",")[2] if value.startswith("data:") else value
    try:
        return base64.b64decode(payload, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _multipart_file(request: httpx.Request) -> bytes:
    """The `file` part of a multipart/form-data body (enough parsing for one file)."""
    content_type = request.headers.get("Content-Type", "")
    if "boundary=" not in content_type:
        return b""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    for part in request.content.split(b"--" + boundary):
        head, _, body = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return body[:-2] if body.endswith(b"\r\n") else body
    return b""
