"""The Vtrix adapter (vendor-apis.md §3): Spark Edit Portrait.

Vtrix downloads the input image from a URL, so the job hands it a signed,
minutes-long link to the photo's normalized JPEG under STUDIO_PUBLIC_URL
(studio.signed_media). The vendor page says photos that break its rules
"give poor results rather than errors", so the rules (JPG/PNG, ≤ 5 MB,
≤ 4096², exactly one face) are checked here before anything is sent.

Create a task, poll it until `completed` or `failed`, download every output
at once, record `usage.cost`. No idempotency key: a create is retried only
when it provably never reached the server; task errors the page marks as
transient (003010095–099) are resubmitted once.
"""

from __future__ import annotations

import io
import logging
import time

from django.conf import settings
from PIL import Image

from studio import signed_media
from studio.vendors.base import JobInput, Output, Progress, Submission, VendorError
from studio.vendors.http import NOT_SENT_ERRORS, UnreadableAnswer, VendorHttp
from studio.vendors.remote import RemoteProvider
from studio.vendors.seeds import seed_for

log = logging.getLogger(__name__)

MODEL = "spark_edit_portrait"
MAX_BYTES = 5 * 1024 * 1024
MAX_SIDE = 4096
UNAVAILABLE = "Spark portrait is temporarily unavailable. Please try again later."
SETTINGS_REJECTED = "These settings weren't accepted. Please adjust them and try again."
VENDOR_FAILED = "Processing failed on Vtrix's side. Please try again."
TIMED_OUT = "Vtrix took too long to finish this job. Please try again later."
LOST = "We lost track of this job at Vtrix. Please run it again."
UNREADABLE = "Vtrix sent an answer we couldn't read. Please try again."
# Output files: caps on size and on the time to fetch each one (module constants so tests can lower them).
DOWNLOAD_MAX_BYTES = 40 * 1024 * 1024
DOWNLOAD_MAX_SECONDS = 60.0
# The page's task error codes (§3.4) → what the user should do.
ERROR_CODES = {
    "003010001": "Please upload a photo first.",
    "003010002": SETTINGS_REJECTED,
    "003010003": "Please use a JPG or PNG photo.",
    "003010095": VENDOR_FAILED,
    "003010096": VENDOR_FAILED,
    "003010097": VENDOR_FAILED,
    "003010098": VENDOR_FAILED,
    "003010099": VENDOR_FAILED,
}
TRANSIENT_CODES = frozenset({"003010095", "003010096", "003010097", "003010098", "003010099"})
FETCH_FAILED = (
    "Vtrix couldn't download your photo from this server (the private link may have expired "
    "or the server is not reachable from the internet). Please run the job again."
)
UNSAFE = "Vtrix refused this photo or prompt as unsafe content. Try a different photo or prompt."
NON_TERMINAL = {
    "pending": ("Queued at Vtrix", 0.1),
    "in_queue": ("Queued at Vtrix", 0.1),
    "queued": ("Queued at Vtrix", 0.1),
    "processing": ("Retouching", 0.5),
    "in_progress": ("Retouching", 0.5),
}


class VtrixProvider(RemoteProvider):
    key = "vtrix"
    label = "Vtrix"
    required_settings = ("VTRIX_BASE_URL", "VTRIX_API_KEY", "STUDIO_PUBLIC_URL")
    base_url_setting = "VTRIX_BASE_URL"
    api_key_setting = "VTRIX_API_KEY"
    data_notice = (
        "Vtrix (cloud.vtrix.ai) downloads your photo from a private link of this server that expires "
        "within minutes and opens nothing else. Vtrix does not document how long it keeps photos or "
        "results and its API offers no deletion; we download the results at once."
    )
    deletion_notice = (
        "Vtrix offers no deletion through its API, so we cannot delete its copies; it does not say how long it keeps them."
    )

    def submit(self, job: JobInput) -> Submission:
        _check_input(job)
        seed = seed_for(job)
        http = self.http()
        try:
            task = self._create(http, job, seed)
            return Submission(task_id=task["id"], progress=self._finished_or_none(http, job, task))
        finally:
            http.close()

    def poll(self, job: JobInput, task_id: str) -> Progress:
        task_id = job.state.get("task_id") or task_id  # a transient failure may have resubmitted
        started = job.state.get("submitted_at") or time.time()
        if time.time() - started > settings.VTRIX_JOB_DEADLINE_S:
            raise VendorError(TIMED_OUT)
        http = self.http()
        try:
            response = http.request("GET", settings.VTRIX_TASK_PATH.format(id=task_id), headers=self.bearer_headers())
            try:
                task = self._task(http, response)
            except UnreadableAnswer:
                return self._garbled(job)
            status = str(task.get("status") or "").lower()
            if status == "failed":
                return self._failed(http, job, task)
            if status != "completed":
                stage, fraction = NON_TERMINAL.get(status, ("Waiting for Vtrix", 0.3))
                if isinstance(task.get("progress"), (int, float)):
                    fraction = max(0.05, min(0.95, float(task["progress"])))
                return Progress(
                    finished=False, stage=stage, fraction=fraction, poll_after=settings.VTRIX_POLL_MS / 1000
                )
            return self._completed(http, job, task)
        finally:
            http.close()

    def _garbled(self, job: JobInput) -> Progress:
        """One more query after an answer we couldn't read, a few times per job."""
        if not self.garbled_poll_allowed(job):
            raise VendorError(UNREADABLE, permanent=False)
        return Progress(finished=False, stage="Waiting for Vtrix", poll_after=settings.VTRIX_POLL_MS / 1000)

    # --- requests ---------------------------------------------------------------------------

    def _body(self, job: JobInput, seed: int) -> dict:
        p = job.params
        params = {
            "image_input": signed_media.photo_url(job.photo_id),
            "width": int(p.get("width") or 1328),
            "height": int(p.get("height") or 1328),
            # The vendor takes tenths only: a slider value in between is rounded.
            "gpen": _tenth(p.get("gpen"), 0.4),
            "skin": _tenth(p.get("skin"), 0.3),
            "skin_unifi": _tenth(p.get("skin_unifi"), 0.0),
            "seed": str(seed),  # a string on the vendor page
        }
        prompt = (p.get("prompt") or "").strip()
        if prompt:
            params["prompt"] = prompt
        mode = p.get("gen_mode") or "auto"
        if mode != "auto":
            params["gen_mode"] = mode
        if settings.VTRIX_BODY_MODE == "flat":
            return {"model": MODEL, **params}
        return {"model": MODEL, "input": [{"params": params}]}

    def _create(self, http: VendorHttp, job: JobInput, seed: int) -> dict:
        job.report("Sending to Vtrix", 0.05)
        response = http.request(
            "POST",
            settings.VTRIX_CREATE_PATH,
            json=self._body(job, seed),
            headers=self.bearer_headers(),
            retry_errors=NOT_SENT_ERRORS,
        )
        task = self._task(http, response)
        job.save_state(task_id=task["id"], submitted_at=job.state.get("submitted_at") or time.time(), seed=seed)
        return task

    def _task(self, http: VendorHttp, response) -> dict:
        status = response.status_code
        if status != 200:
            text = response.text[:200]
            log.warning("Vtrix answered %s: %s", status, text)
            if status == 400:
                raise VendorError(SETTINGS_REJECTED)
            if status in (401, 402, 403):
                raise VendorError(UNAVAILABLE)
            if status == 404:
                raise VendorError(LOST)
            if status >= 500:
                raise VendorError("Vtrix had a problem. Please try again.", permanent=False)
            raise VendorError(f"Vtrix refused the request (error {status}). Please try again later.")
        task = http.json(response)
        task_id = task.get("id") or task.get("task_id")
        if not task_id:
            raise UnreadableAnswer(UNREADABLE, permanent=False)
        task["id"] = str(task_id)
        return task

    # --- outcomes -----------------------------------------------------------------------------

    def _finished_or_none(self, http: VendorHttp, job: JobInput, task: dict) -> Progress | None:
        """A create answer may already be terminal (a very fast task, §3.2.1)."""
        status = str(task.get("status") or "").lower()
        if status == "completed":
            return self._completed(http, job, task)
        if status == "failed":
            progress = self._failed(http, job, task)
            return None if not progress.finished else progress
        return None

    def _failed(self, http: VendorHttp, job: JobInput, task: dict) -> Progress:
        code, message = _error_of(task.get("error"))
        log.info("Vtrix task %s failed: %s %s", task.get("id"), code, message[:200])
        if code in TRANSIENT_CODES and not job.state.get("resubmitted"):
            job.save_state(resubmitted=True)
            fresh = self._create(http, job, int(job.state.get("seed") or seed_for(job)))
            return self._finished_or_none(http, job, fresh) or Progress(
                finished=False, stage="Retrying at Vtrix", fraction=0.1, poll_after=settings.VTRIX_POLL_MS / 1000
            )
        lowered = message.lower()
        if code == "003010001" and any(word in lowered for word in ("download", "fetch", "http", "url")):
            raise VendorError(FETCH_FAILED)
        if any(word in lowered for word in ("moderation", "safety", "nsfw", "sensitive")):
            raise VendorError(UNSAFE)
        raise VendorError(ERROR_CODES.get(code, VENDOR_FAILED))

    def _completed(self, http: VendorHttp, job: JobInput, task: dict) -> Progress:
        urls = [
            item.get("url")
            for block in task.get("output") or []
            if isinstance(block, dict)
            for item in block.get("content") or []
            if isinstance(item, dict) and item.get("url")
        ]
        if not urls:
            raise VendorError("Vtrix returned no image. Please try again.", permanent=False)
        seed = job.state.get("seed")
        outputs = []
        for url in urls:
            data, content_type = http.download(
                url,
                max_bytes=DOWNLOAD_MAX_BYTES,
                max_seconds=DOWNLOAD_MAX_SECONDS,
            )
            outputs.append(Output(data=data, content_type=content_type, label=job.operation.label, meta={"seed": seed}))
        usage = task.get("usage") if isinstance(task.get("usage"), dict) else {}
        cost = _number(usage.get("cost"))
        meta = {"seed": seed, "usage": usage}
        if isinstance(task.get("metadata"), dict) and task["metadata"]:
            meta["vendor_metadata"] = task["metadata"]
        return Progress(finished=True, stage="Done", fraction=1.0, outputs=tuple(outputs), cost=cost, meta=meta)



def _check_input(job: JobInput) -> None:
    """The page's input rules, so a bad photo is refused here instead of giving a poor result."""
    if not job.image or not job.photo_id:
        raise VendorError("Please upload a photo first.")
    if not (job.image.startswith(b"\xff\xd8\xff") or job.image.startswith(b"\x89PNG\r\n\x1a\n")):
        raise VendorError("Please use a JPG or PNG photo.")
    if len(job.image) > MAX_BYTES:
        raise VendorError("This photo is larger than Vtrix accepts (5 MB). Please use a smaller photo.")
    try:
        width, height = Image.open(io.BytesIO(job.image)).size
    except Exception:  # noqa: BLE001 - any decoder failure means the same to the user
        raise VendorError("We couldn't read this photo. Please upload it again.") from None
    if max(width, height) > MAX_SIDE:
        raise VendorError("This photo is larger than 4096 × 4096 pixels. Please use a smaller photo.")
    if len(job.faces) != 1:
        raise VendorError(
            f"Spark portrait needs a photo with exactly one face, seen from the front. This photo has {len(job.faces)}."
        )


def _tenth(value, default: float) -> float:
    if value is None or value == "":
        return default
    return min(1.0, max(0.0, round(float(value) * 10) / 10))


def _number(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _error_of(error) -> tuple[str, str]:
    """(code, message) from any of the three documented shapes of `error`."""
    if isinstance(error, dict):
        return str(error.get("code") or ""), str(error.get("error_message") or error.get("message") or "")
    if isinstance(error, str):
        return "", error
    return "", ""
