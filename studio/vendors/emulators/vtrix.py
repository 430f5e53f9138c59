"""A faithful emulator of Vtrix's Spark Edit Portrait (`spark_edit_portrait`, vendor-apis.md §3).

Protocol: Bearer key; `POST /model/v1/generation` accepts the flat body
(parameters beside `model`) and the wrapped one (`input[0].params`), and
answers a task object (`pending`). Like the vendor it downloads
`image_input` itself, from the URL it is given, through an injectable
fetcher (by default a real HTTP GET, in sandbox mode to STUDIO_PUBLIC_URL).
Input problems become task errors with the documented codes: no image or an
unfetchable URL → 003010001, bad values (and > 5 MB / > 4096 px [EMU]) →
003010002, bytes that are not JPG/PNG → 003010003. `GET
/model/v1/generation/task/{id}` moves a task one step per poll
(pending → processing → completed/failed) once `stage_seconds` have passed,
with `progress` rising to 1, and on completion `output[0].content[]` (a JPEG
of exactly width × height on a loopback URL, `size` = its byte length),
`usage` and `metadata`. A positive seed gives the same picture every time.

Fault and variant switches (`emulator.faults[name]`; counted ones take an int
"for the next N calls" or True "always"):
  rate_limited (counted)     429 {"message": "rate limit exceeded"}
  server_error (counted)     500 on any API call
  create_timeout (counted)   the task is created but the answer never comes
  no_balance: bool           403 {"message": "insufficient balance"}
  rate_per_minute: int       429 beyond this many creates per key per minute
  task_error: str            tasks fail with this code (e.g. "003010095")
  task_error_times: int      …only the next N tasks (unset: every task)
  moderation: bool           tasks fail with a content-safety message (no documented code [EMU])
  stuck: bool                tasks stay `processing`
  instant: bool              the create answer is already `completed`
  status_spelling: "alt"     `in_queue` / `in_progress` instead of `pending` / `processing`
  error_format: "object" | "string" | "message"
  created_at: "unix" | "iso"
  output_ttl: float          output URLs answer 403 after this many seconds
  params_as_http_400: bool   bad parameter values → HTTP 400 instead of a 003010002 task
  lost_task (counted)        the next N tasks are forgotten at their first query: it answers
                             404 {"message": "task not found"}, as for an unknown id
The Emulator base adds the generic ones, in the `{"message": …}` shape:
"429"/"500"/"502"/"503", "connect_timeout", "read_timeout", "reset",
"reset_after" (a create makes its task, its answer is lost), "malformed_json",
"slow_answer", "oversized_answer" (`fault_path` to aim them, e.g. "/task/"),
and on the output files "slow_download" and "oversized_download".
"""

from __future__ import annotations

import io
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from PIL import Image

from studio import imaging
from studio.vendors.emulators import pictures_portrait as pictures
from studio.vendors.emulators.base import STATUS_TEXT, Emulator, NetworkFault, json_response
from studio.vendors.emulators.fetch import Fetcher, http_fetch

SANDBOX_KEY = "vtrix_sandbox_key"
MODEL = "spark_edit_portrait"
TENTHS = {round(i / 10, 1) for i in range(11)}
MODES = ("creative", "reference", "reference_char")
MAX_BYTES = 5 * 1024 * 1024
MAX_SIDE = 4096
COST = "0.0300"
MESSAGES = {
    "003010001": "missing image input",
    "003010002": "invalid parameter",
    "003010003": "invalid image format, only JPG/JPEG/PNG supported",
    "003010095": "internal generation error",
    "003010096": "result parsing error",
    "003010097": "http error response",
    "003010098": "status check error",
    "003010099": "task creation error",
}


@dataclass
class Task:
    id: str
    key: str
    params: dict
    created: float
    changed: float
    status: str = "pending"
    image: Image.Image | None = None
    error_code: str = ""
    error_message: str = ""
    content: list[dict] = field(default_factory=list)
    completed_at: float = 0.0
    queried: bool = False


class VtrixEmulator(Emulator):
    vendor = "Vtrix"

    def __init__(
        self, *, api_keys: set[str] | None = None, fetcher: Fetcher | None = None, stage_seconds: float = 0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.api_keys = set(api_keys) if api_keys is not None else {SANDBOX_KEY}
        self.fetcher = fetcher or http_fetch
        self.stage_seconds = stage_seconds
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, tuple[bytes, float]] = {}
        self.bodies: list[dict] = []  # create bodies received (tests)
        self.fetched: list[tuple[str, int]] = []  # (url, status) of every image download
        self._starts: dict[str, list[float]] = {}
        self.route("POST", r"/model/v1/generation", self.create)
        self.route("GET", r"/model/v1/generation/task/(?P<task_id>[\w-]+)", self.query)
        self.route("GET", r"/outputs/(?P<name>[\w.-]+)", self.serve_output)

    # --- routes ---------------------------------------------------------------------------

    def error_response(self, status: int) -> httpx.Response:
        return _message(status, STATUS_TEXT[status].lower(), headers={"Retry-After": "1"} if status == 429 else None)

    def _gate(self, request: httpx.Request) -> tuple[str | None, httpx.Response | None]:
        header = request.headers.get("Authorization", "")
        key = header[7:] if header.startswith("Bearer ") else ""
        if key not in self.api_keys:
            return None, _message(401, "invalid api key")
        if self.take_fault("rate_limited"):
            self.counters["429"] += 1
            return None, _message(429, "rate limit exceeded", headers={"Retry-After": "1"})
        if self.take_fault("server_error"):
            return None, _message(500, "internal server error")
        return key, None

    def create(self, request: httpx.Request) -> httpx.Response:
        key, refusal = self._gate(request)
        if refusal:
            return refusal
        if self.fault("no_balance"):
            return _message(403, "insufficient balance")
        try:
            body = json.loads(request.content or b"null")
        except ValueError:
            return _message(400, "request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _message(400, "model is required")
        if body["model"] != MODEL:
            return _message(400, f"unknown model {body['model']}")
        params = _params_of(body)
        if params is None:
            return _message(400, "input must be a list with one params object")
        cap = self.fault("rate_per_minute")
        now = self.clock.now()
        if cap:
            with self.lock:
                starts = [t for t in self._starts.get(key, []) if now - t < 60]
                if len(starts) >= int(cap):
                    self.counters["429"] += 1
                    return _message(429, "rate limit exceeded", headers={"Retry-After": "60"})
                self._starts[key] = [*starts, now]
        self.bodies.append(body)
        task = Task(id="task_" + secrets.token_hex(8), key=key, params=params, created=now, changed=now)
        problem = _validate(params)
        if problem and self.fault("params_as_http_400"):
            return _message(400, problem)
        if problem:
            task.status, task.error_code, task.error_message = "failed", "003010002", problem
        else:
            self._load_image(task)
        self.tasks[task.id] = task
        self.counters["creates"] += 1
        if self.take_fault("create_timeout"):
            raise NetworkFault("read_timeout")
        if self.fault("instant") and task.status == "pending":
            self._finish(task)
        return json_response(200, self._task_json(task))

    def query(self, request: httpx.Request, task_id: str) -> httpx.Response:
        _, refusal = self._gate(request)
        if refusal:
            return refusal
        task = self.tasks.get(task_id)
        if task is not None and not task.queried and self.take_fault("lost_task"):
            self.counters["lost"] += 1
            del self.tasks[task_id]
            task = None
        if task is None:
            return _message(404, "task not found")
        task.queried = True
        now = self.clock.now()
        if now - task.changed >= self.stage_seconds:
            if task.status == "pending":
                task.status, task.changed = "processing", now
            elif task.status == "processing" and not self.fault("stuck"):
                self._finish(task)
                task.changed = now
        return json_response(200, self._task_json(task))

    def serve_output(self, request: httpx.Request, name: str) -> httpx.Response:
        entry = self.files.get(name)
        if entry is None:
            return httpx.Response(404, text="Not Found")
        ttl = self.fault("output_ttl")
        if ttl is not None and self.clock.now() - entry[1] > float(ttl):
            return httpx.Response(403, text="AccessDenied: Request has expired")
        return self.file_response(entry[0], "image/jpeg")

    # --- task work ------------------------------------------------------------------------------

    def _load_image(self, task: Task) -> None:
        """Download image_input as the vendor does, and apply the page's input rules."""
        url = task.params.get("image_input")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            task.status, task.error_code = "failed", "003010001"
            task.error_message = "missing image input"
            return
        status, data, _ = self.fetcher(url)
        self.fetched.append((url, status))
        if status != 200 or not data:
            task.status, task.error_code = "failed", "003010001"
            task.error_message = f"failed to download image_input (HTTP {status or 'no answer'})"
            return
        if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
            task.status, task.error_code, task.error_message = "failed", "003010003", MESSAGES["003010003"]
            return
        if len(data) > MAX_BYTES:
            task.status, task.error_code = "failed", "003010002"
            task.error_message = "image exceeds 5 MB"
            return
        try:
            size = Image.open(io.BytesIO(data)).size  # the header only, before decoding
        except (OSError, ValueError):
            size = None
        if size and max(size) > MAX_SIDE:
            task.status, task.error_code = "failed", "003010002"
            task.error_message = "image resolution exceeds 4096 * 4096"
            return
        try:
            task.image = imaging.load_image(data)
        except imaging.ImageRejected:
            task.status, task.error_code, task.error_message = "failed", "003010003", MESSAGES["003010003"]

    def _finish(self, task: Task) -> None:
        code = self.fault("task_error")
        if code and "task_error_times" in self.faults and not self.take_fault("task_error_times"):
            code = None  # the counted error has been used up
        if code:
            task.status, task.error_code = "failed", str(code)
            task.error_message = MESSAGES.get(str(code), "error")
            return
        if self.fault("moderation"):
            task.status, task.error_code = "failed", "moderation"
            task.error_message = "content rejected by safety moderation"
            return
        p = task.params
        prompt = p.get("prompt") or ""
        mode = p.get("gen_mode") or ("creative" if prompt else "reference")
        seed = int(p.get("seed", -1))
        seed = secrets.randbelow(2**31 - 1) + 1 if seed <= 0 else seed
        picture = pictures.spark_portrait(
            task.image,
            width=int(p.get("width", 1328)),
            height=int(p.get("height", 1328)),
            gpen=float(p.get("gpen", 0.4)),
            skin=float(p.get("skin", 0.3)),
            skin_unifi=float(p.get("skin_unifi", 0)),
            gen_mode=mode,
            prompt=prompt,
            seed=seed,
        )
        data = pictures.encode(picture)
        name = f"{task.id}-{secrets.token_hex(6)}.jpg"
        self.files[name] = (data, self.clock.now())
        task.content = [
            {
                "type": "image",
                "url": self.url(f"/outputs/{name}"),
                "size": len(data),
                "jobId": "job-" + secrets.token_hex(4),
            }
        ]
        task.status, task.completed_at = "completed", self.clock.now()
        self.counters["charges"] += 1

    def _task_json(self, task: Task) -> dict:
        status = task.status
        if self.fault("status_spelling") == "alt":
            status = {"pending": "in_queue", "processing": "in_progress"}.get(status, status)
        created = (
            datetime.fromtimestamp(task.created, UTC).isoformat().replace("+00:00", "Z")
            if self.fault("created_at") == "iso"
            else int(task.created)
        )
        body = {
            "id": task.id,
            "status": status,
            "model": MODEL,
            "created_at": created,
            "progress": {"pending": 0, "processing": 0.5}.get(task.status, 1),
        }
        if task.status == "completed":
            body["output"] = [{"content": task.content}]
            body["usage"] = {"cost": COST, "discount": 0}
            body["metadata"] = {"in_queue_at": int(task.created), "completed_at": int(task.completed_at)}
        elif task.status == "failed":
            style = self.fault("error_format", "object")
            if style == "string":
                body["error"] = task.error_message
            elif style == "message":
                body["error"] = {"message": task.error_message}
            else:
                body["error"] = {"code": task.error_code, "error_message": task.error_message}
        return body


def _message(status: int, text: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return json_response(status, {"message": text}, headers)


def _params_of(body: dict) -> dict | None:
    """The generation parameters of a flat or a wrapped body."""
    if "input" in body:
        items = body["input"]
        if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
            return None
        params = items[0].get("params")
        return params if isinstance(params, dict) else None
    return {k: v for k, v in body.items() if k not in ("model", "moderation")}


def _validate(p: dict) -> str:
    """The first invalid value (→ task error 003010002), or ""."""
    for name in ("width", "height"):
        if name in p:
            value = p[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 512 <= value <= 2048:
                return f"{name} must be an integer between 512 and 2048"
    for name in ("gpen", "skin", "skin_unifi"):
        if name in p:
            value = p[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or round(float(value), 1) not in TENTHS
                or abs(float(value) - round(float(value), 1)) > 1e-9
            ):
                return f"{name} must be one of 0, 0.1, …, 1"
    if "gen_mode" in p and p["gen_mode"] not in MODES:
        return "gen_mode must be creative, reference or reference_char"
    if "prompt" in p and not isinstance(p["prompt"], str):
        return "prompt must be a string"
    if "seed" in p:
        seed = p["seed"]
        try:
            if isinstance(seed, bool) or int(str(seed)) < -1 or int(str(seed)) > 2**31 - 1:
                raise ValueError
        except ValueError:
            return "seed must be -1 or a positive integer"
    return ""
