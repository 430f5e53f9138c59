"""The WaveSpeed adapter (vendor-apis.md §2): Portrait enhance and InstantCharacter.

Submit a prediction, poll it until `completed` or `failed`, download the
outputs into our storage at once (their lifetime is undocumented). Portrait
takes the photo as base64; InstantCharacter needs a URL, so the photo is first
put on WaveSpeed's own media storage (the vendor SDK's upload route) and the
link is remembered on the job so a resumed run does not upload it again.

WaveSpeed has no idempotency key: a submit is retried only when it provably
never reached the server, or was refused with 429/5xx (not created).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time

from django.conf import settings

from studio import webhooks
from studio.vendors.base import JobInput, Output, Progress, Submission, VendorError
from studio.vendors.http import NOT_SENT_ERRORS, UnreadableAnswer, VendorHttp
from studio.vendors.remote import RemoteProvider
from studio.vendors.seeds import seed_for
from studio.vendors.sending import jpeg_within

log = logging.getLogger(__name__)

UNAVAILABLE = "WaveSpeed is temporarily unavailable. Please try again later."
SETTINGS_REJECTED = "These settings weren't accepted. Please adjust them and try again."
LOST = "We lost track of this job at WaveSpeed. Please run it again."
UNREADABLE_PHOTO = "WaveSpeed couldn't read your photo. Please upload it again."
UNSAFE = "The result was withheld because it may contain inappropriate content. Try a different photo or prompt."
FAILED = "Processing failed at WaveSpeed. Please try again with a different photo."
TIMED_OUT = "WaveSpeed took too long to finish this job. Please try again later."
UNREADABLE = "WaveSpeed sent an answer we couldn't read. Please try again."
STAGES = {"created": ("Queued at WaveSpeed", 0.15), "processing": ("Generating", 0.5)}
# Output files: caps on size and on the time to fetch each one (module constants so tests can lower them).
DOWNLOAD_MAX_BYTES = 40 * 1024 * 1024
DOWNLOAD_MAX_SECONDS = 60.0


class WaveSpeedProvider(RemoteProvider):
    key = "wavespeed"
    label = "WaveSpeed"
    required_settings = ("WAVESPEED_BASE_URL", "WAVESPEED_API_KEY")
    base_url_setting = "WAVESPEED_BASE_URL"
    api_key_setting = "WAVESPEED_API_KEY"
    data_notice = (
        "Your photo and your text are sent to WaveSpeed AI (api.wavespeed.ai); for Character the photo is "
        "first uploaded to WaveSpeed's media storage. WaveSpeed does not document how long it keeps "
        "photos or results and its API offers no deletion; we download the results at once."
    )
    deletion_notice = (
        "WaveSpeed offers no deletion through its API, so we cannot delete its copies; it does not say how long it keeps them."
    )

    # --- the three steps -----------------------------------------------------------------

    def submit(self, job: JobInput) -> Submission:
        prompt = (job.params.get("prompt") or "").strip()
        if not prompt:
            raise VendorError("Describe what you want first: the prompt is required.")
        seed = seed_for(job)
        image = jpeg_within(job.image, long_side=2048, max_bytes=10 * 1024 * 1024, vendor=self.label)  # §2.5 policy
        http = self._http()
        try:
            if job.operation.key == "ws_character":
                model = settings.WAVESPEED_CHARACTER_PATH
                width, height = int(job.params.get("width") or 1024), int(job.params.get("height") or 1024)
                body = {
                    "prompt": prompt,
                    "image": self._uploaded_url(http, job, image),
                    "size": f"{width}*{height}",
                    "seed": seed,
                }
            else:
                model = settings.WAVESPEED_PORTRAIT_PATH
                body = {
                    "prompt": prompt,
                    "image": "data:image/jpeg;base64," + base64.b64encode(image).decode("ascii"),
                    "seed": seed,
                    "enable_base64_output": False,
                }
            job.report("Sending to WaveSpeed", 0.1)
            # No idempotency key: never retried after it may have reached the server.
            callback = self._callback_url(job)
            response = http.request(
                "POST",
                f"/api/v3/{model.strip('/')}",
                json=body,
                params={"webhook": callback} if callback else None,
                headers=self.bearer_headers(),
                retry_errors=NOT_SENT_ERRORS,
            )
            data = self._data(http, response)
            task_id = str(data.get("id") or "")
            if not task_id:
                raise VendorError(UNREADABLE, permanent=False)
            job.save_state(submitted_at=time.time(), seed=seed, webhook=bool(callback))
            progress = self._progress(http, job, data)
        finally:
            http.close()
        # With a webhook registered the job waits for it first, instead of polling at once.
        return Submission(task_id=task_id, progress=progress if progress.finished or progress.webhook else None)

    def poll(self, job: JobInput, task_id: str) -> Progress:
        started = job.state.get("submitted_at") or time.time()
        if time.time() - started > settings.WAVESPEED_JOB_DEADLINE_S:
            raise VendorError(TIMED_OUT)
        http = self._http()
        try:
            path = settings.WAVESPEED_RESULT_PATH.format(id=task_id)
            response = http.request("GET", path, headers=self.bearer_headers())
            try:
                data = self._data(http, response)
            except UnreadableAnswer:
                return self._garbled(job)
            return self._progress(http, job, data)
        finally:
            http.close()

    def _garbled(self, job: JobInput) -> Progress:
        """One more poll after an answer we couldn't read, a few times per job."""
        if not self.garbled_poll_allowed(job):
            raise VendorError(UNREADABLE, permanent=False)
        return Progress(
            finished=False,
            stage="Waiting for WaveSpeed",
            poll_after=self._poll_after(job),
            webhook=bool(job.state.get("webhook")),
        )

    # --- helpers -----------------------------------------------------------------------------

    def _http(self) -> VendorHttp:
        return self.http()

    def _uploaded_url(self, http: VendorHttp, job: JobInput, image: bytes) -> str:
        """A WaveSpeed-hosted URL of the photo (InstantCharacter takes URLs only)."""
        if job.state.get("image_url"):
            return job.state["image_url"]
        job.report("Uploading photo to WaveSpeed", 0.05)
        response = http.request(
            "POST",
            settings.WAVESPEED_UPLOAD_PATH,
            headers=self.bearer_headers(),
            files={"file": ("photo.jpg", image, "image/jpeg")},
        )
        url = self._data(http, response).get("download_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise VendorError("WaveSpeed didn't accept the photo upload. Please try again.", permanent=False)
        job.save_state(image_url=url)
        return url

    def _data(self, http: VendorHttp, response) -> dict:
        """The envelope's `data`, or the VendorError its HTTP status / `code` stands for."""
        body = None
        if response.headers.get("Content-Type", "").startswith("application/json"):
            try:
                body = response.json()
            except ValueError:
                body = None
        code = response.status_code
        if code == 200 and isinstance(body, dict) and body.get("code") not in (None, 200):
            code = body.get("code") if isinstance(body.get("code"), int) else 500  # an app error in a 200
        if code != 200:
            message = str(body.get("message", "")) if isinstance(body, dict) else response.text[:200]
            log.warning("WaveSpeed answered %s: %s", code, message[:200])
            raise _http_error(code, message)
        data = http.json(response).get("data")
        if not isinstance(data, dict):
            raise UnreadableAnswer(UNREADABLE, permanent=False)
        return data

    def _progress(self, http: VendorHttp, job: JobInput, data: dict) -> Progress:
        status = str(data.get("status") or "").lower()
        if status == "failed":
            raise _task_error(str(data.get("error") or ""))
        if status != "completed":
            # created, processing and anything unknown: keep polling until the deadline.
            stage, fraction = STAGES.get(status, ("Waiting for WaveSpeed", 0.3))
            return Progress(
                finished=False,
                stage=stage,
                fraction=fraction,
                poll_after=self._poll_after(job),
                webhook=bool(job.state.get("webhook")),
            )
        outputs = data.get("outputs") or []
        if not outputs:
            raise VendorError("WaveSpeed returned no image. Please try again.", permanent=False)
        flags = data.get("has_nsfw_contents") or []
        seed = job.state.get("seed")
        results = []
        for index, item in enumerate(outputs):
            payload, content_type = self._output_bytes(http, job, item)
            meta = {"seed": seed}
            if index < len(flags) and flags[index] is True:
                meta["nsfw"] = True  # shown only after the user chooses "show anyway"
            results.append(Output(data=payload, content_type=content_type, label=job.operation.label, meta=meta))
        timings = data.get("timings") if isinstance(data.get("timings"), dict) else {}
        meta = {"model": data.get("model", ""), "seed": seed}
        if isinstance(timings.get("inference"), (int, float)):
            meta["inference_ms"] = timings["inference"]
        if any(output.meta.get("nsfw") for output in results):
            meta["nsfw_outputs"] = sum(1 for output in results if output.meta.get("nsfw"))
        return Progress(finished=True, stage="Done", fraction=1.0, outputs=tuple(results), meta=meta)

    def _output_bytes(self, http: VendorHttp, job: JobInput, item) -> tuple[bytes, str]:
        if not isinstance(item, str) or not item:
            raise VendorError("WaveSpeed returned a result we couldn't read. Please try again.", permanent=False)
        if item.startswith(("http://", "https://")):
            return http.download(
                item,
                max_bytes=DOWNLOAD_MAX_BYTES,
                max_seconds=DOWNLOAD_MAX_SECONDS,
            )
        # base64, plain or as a data URI (the format is undocumented, §2.6)
        content_type = "image/png"
        payload = item
        if item.startswith("data:"):
            head, _, payload = item.partition(",")
            content_type = head[5:].split(";")[0] or content_type
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise VendorError(
                "WaveSpeed returned a result we couldn't read. Please try again.", permanent=False
            ) from None
        if raw.startswith(b"\xff\xd8"):
            content_type = "image/jpeg"
        return raw, content_type


    def _callback_url(self, job: JobInput) -> str:
        """Where WaveSpeed should call when the prediction ends; "" to rely on polling alone."""
        if not settings.WAVESPEED_WEBHOOKS or not webhooks.vendor_can_call_back(sandboxed=self.is_sandboxed()):
            return ""
        return webhooks.wavespeed_callback_url(job.job_id)

    def _poll_after(self, job: JobInput) -> float:
        if job.state.get("webhook"):
            return float(settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS)  # the webhook wakes the job first
        base = settings.WAVESPEED_POLL_MS / 1000
        started = job.state.get("submitted_at") or time.time()
        return base if time.time() - started < 10 else base * 2


def _http_error(code: int, message: str) -> VendorError:
    lowered = message.lower()
    if code in (401, 402, 403) or "balance" in lowered or "credit" in lowered:
        return VendorError(UNAVAILABLE)
    if code in (400, 422):
        return VendorError(SETTINGS_REJECTED)
    if code == 404:
        return VendorError(LOST)
    if code == 429:
        return VendorError("The service is busy. Please try again in a minute.", permanent=False)
    if code >= 500:
        return VendorError("WaveSpeed had a problem. Please try again.", permanent=False)
    return VendorError(f"WaveSpeed refused the request (error {code}). Please try again later.")


def _task_error(text: str) -> VendorError:
    lowered = text.lower()
    log.info("WaveSpeed task failed: %s", text[:200])
    if any(word in lowered for word in ("download", "url", "fetch", "decode")):
        return VendorError(UNREADABLE_PHOTO)
    if any(word in lowered for word in ("nsfw", "safety", "inappropriate", "sensitive")):
        return VendorError(UNSAFE)
    return VendorError(FAILED)
