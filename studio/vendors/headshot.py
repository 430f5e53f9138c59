"""The Headshot API adapter (vendor-apis.md §4): AI headshots from a style template.

One synchronous call: the selfie goes in as a base64 data URI, up to eight
headshots come back as base64 data URIs in the same answer. A style template
is a (prompt, seed) pair; the vendor promises the same pair gives the same
look for anyone, so templates are sent unchanged.

The call has no idempotency key and may be billed as soon as it reaches the
vendor, so it is retried only when it provably never got there (connection
refused) or was turned away with 429; after a 5xx or a read timeout the user
decides whether to run it again.
"""

from __future__ import annotations

import base64
import binascii
import logging

import httpx
from django.conf import settings

from studio.vendors.base import JobInput, Output, Progress, Submission, VendorError
from studio.vendors.http import NOT_SENT_ERRORS, AnswerTooLarge
from studio.vendors.remote import RemoteProvider
from studio.vendors.seeds import seed_for
from studio.vendors.sending import jpeg_within

log = logging.getLogger(__name__)

MAX_INPUT_BYTES = 5 * 1024 * 1024  # our policy (§4.5): the vendor documents no limit
MAX_INPUT_SIDE = 2048
MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # eight large base64 JPEGs fit easily
SIZE_PRESETS = {"1:1": (768, 768), "3:4": (768, 1024)}  # the vendor's recommended sizes

UNAVAILABLE = "AI headshots are temporarily unavailable. Please try again later."
REJECTED = "This photo or these settings weren't accepted. Use one clear, front-facing photo and try again."
UNSAFE = "The Headshot API refused this photo or style as unsafe content. Try a different photo or template."
NO_OUTPUT = "No portrait could be generated from this photo. Try another photo."
VENDOR_FAULT = "The Headshot API had a problem. Please try again in a few minutes."
TOO_LARGE = "The Headshot API sent more data than we accept. Please try fewer images."


class HeadshotProvider(RemoteProvider):
    key = "headshot"
    label = "Headshot API"
    required_settings = ("HEADSHOT_API_BASE_URL", "HEADSHOT_API_KEY")
    base_url_setting = "HEADSHOT_API_BASE_URL"
    api_key_setting = "HEADSHOT_API_KEY"
    slow_calls = True  # one synchronous call of up to 3 minutes
    data_notice = (
        "Your photo is sent to the Headshot API (idphoto.ai) together with the template's prompt. "
        "The headshots come back in the same answer and are stored only here. The vendor does not "
        "document how long it keeps photos and offers no way to delete them through its API."
    )
    deletion_notice = (
        "The Headshot API offers no deletion, so we cannot delete its copies; it keeps nothing we can fetch later."
    )

    def submit(self, job: JobInput) -> Submission:
        params = self._params(job)
        image = jpeg_within(job.image, long_side=MAX_INPUT_SIDE, max_bytes=MAX_INPUT_BYTES, vendor=self.label)
        if len(job.faces) != 1:
            raise VendorError("AI headshots need a photo of exactly one person, facing the camera.")
        body = {
            "apiKey": self.api_key(),
            "prompt": params["prompt"],
            "seed": params["seed"],
            "sampleNumber": params["count"],
            "identityScale": params["identity"],
            "inputImages": ["data:image/jpeg;base64," + base64.b64encode(image).decode("ascii")],
            "outputImageWidth": params["width"],
            "outputImageHeight": params["height"],
        }
        job.report(f"Generating {params['count']} headshot{'s' if params['count'] > 1 else ''}", 0.1)
        deadline = float(settings.HEADSHOT_API_JOB_DEADLINE_S)
        http = self.http(timeout=httpx.Timeout(deadline, connect=5.0), retries=2)
        try:
            # The answer carries the images: read it as it comes, within a size and a time cap
            # (the read timeout alone would let a trickle of bytes go on for ever).
            response = http.request(
                "POST",
                settings.HEADSHOT_API_PATH,
                json=body,
                retry_statuses={429},
                retry_errors=NOT_SENT_ERRORS,
                max_bytes=MAX_RESPONSE_BYTES,
                max_seconds=deadline,
            )
            outputs = self._outputs(http, response, params)
        except AnswerTooLarge:
            raise VendorError(TOO_LARGE) from None
        finally:
            http.close()
        meta = {
            "seed": params["seed"],
            "images_requested": params["count"],
            "images_returned": len(outputs),
            "size": f"{params['width']}×{params['height']}",
        }
        if params["template"]:
            meta["template"] = params["template"]
        return Submission(
            task_id=f"headshot-{job.request_id}",
            progress=Progress(finished=True, stage="Done", fraction=1.0, outputs=tuple(outputs), meta=meta),
        )

    # --- request ---------------------------------------------------------------------

    def _params(self, job: JobInput) -> dict:
        """What to send: the job's values, falling back to its style template's prompt and seed."""
        values = job.params
        slug = (values.get("template") or "").strip()
        prompt = (values.get("prompt") or "").strip()
        seed = values.get("seed")
        template = None
        if slug and (not prompt or seed in (None, "")):
            from studio.models import StyleTemplate

            template = StyleTemplate.objects.filter(slug=slug, operation=job.operation.key).first()
            if template is None and not prompt:
                raise VendorError("This style template is no longer offered. Please pick another one.")
        if template is not None:
            prompt = prompt or template.prompt
            if seed in (None, ""):
                seed = template.seed
        if not prompt:
            raise VendorError("Pick a style template or describe the look you want.")
        size = values.get("size") or "3:4"
        if size in SIZE_PRESETS:
            width, height = SIZE_PRESETS[size]
        else:
            width, height = int(values.get("width") or 768), int(values.get("height") or 1024)
        return {
            "template": slug,
            "prompt": prompt,
            "seed": seed_for(job, seed),
            "count": int(values.get("num_images") or 1),
            "identity": float(values.get("identity_scale", 0.8) if values.get("identity_scale") is not None else 0.8),
            "width": width,
            "height": height,
        }

    # --- response --------------------------------------------------------------------

    def _outputs(self, http, response: httpx.Response, params: dict) -> list[Output]:
        status = response.status_code
        if status != 200:
            raise self._error(response)
        images = http.json(response).get("outputImages")
        if not isinstance(images, list) or not images:
            raise VendorError(NO_OUTPUT)
        if len(images) < params["count"]:
            # Keep what arrived (§4.4); the job's vendor_meta notes the shortfall.
            log.info("Headshot API returned %s of %s images", len(images), params["count"])
        label = params["template"].replace("-", " ").capitalize() if params["template"] else "Headshot"
        outputs = []
        for index, uri in enumerate(images):
            data, content_type = _decode_data_uri(uri)
            outputs.append(
                Output(
                    data=data,
                    content_type=content_type,
                    label=f"{label} {index + 1}" if len(images) > 1 else label,
                    meta={
                        "seed": params["seed"],
                        "index": index,
                        **({"template": params["template"]} if params["template"] else {}),
                    },
                )
            )
        return outputs

    def _error(self, response: httpx.Response) -> VendorError:
        status = response.status_code
        text = _error_text(response)
        log.warning("Headshot API answered %s: %s", status, text[:200])
        if status in (400, 422):
            if any(word in text for word in ("unsafe", "nsfw", "inappropriate", "safety")):
                return VendorError(UNSAFE)
            return VendorError(REJECTED)
        if status in (401, 402, 403):
            return VendorError(UNAVAILABLE)
        if status == 413:
            return VendorError("This photo is too large for the Headshot API. Use a smaller image.")
        if status >= 500:
            # Not retried on our own: the call may already have been billed.
            return VendorError(VENDOR_FAULT, permanent=False)
        return VendorError(f"The Headshot API refused the request (error {status}). Please try again later.")


def _error_text(response: httpx.Response) -> str:
    """The error wording, lower-cased, for mapping and logs (bodies are undocumented)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500].lower()
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body).lower()
    return str(body).lower()


def _decode_data_uri(uri) -> tuple[bytes, str]:
    """(bytes, content type) of a data URI; plain base64 is accepted too (assumed JPEG)."""
    if not isinstance(uri, str):
        raise VendorError("The Headshot API sent an image we couldn't read. Please try again.", permanent=False)
    content_type = "image/jpeg"
    payload = uri
    if uri.startswith("data:"):
        head, _, payload = uri.partition(",")
        declared = head[5:].split(";")[0].strip().lower()
        if declared in ("image/png", "image/jpeg"):
            content_type = declared
    try:
        return base64.b64decode(payload, validate=True), content_type
    except (binascii.Error, ValueError):
        raise VendorError(
            "The Headshot API sent an image we couldn't read. Please try again.", permanent=False
        ) from None
