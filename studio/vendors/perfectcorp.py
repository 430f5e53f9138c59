"""Perfect Corp (Perfect AI API, server-to-server v1.0), vendor-apis.md §1.

A job runs as: pre-flight (fix the photo or refuse it before any credit is
spent) → wait for room in the shared request budget → upload through the
file API and its pre-signed request (or reuse a `dst_id` of an earlier
result) → run the task with a `request_id` stored before the call and reused
on every retry → poll just after the engine is expected to finish, never
leaving a task unpolled for 10 s → download every result URL at once.

Everything the vendor page leaves uncertain is a setting (feature paths,
file API version, RSA padding) and responses are read tolerantly (`result`
or `data`, `groups` or `style_groups`, `info.title` or `title`).

Two protocol families (PERFECTCORP_API_VERSION, ../shared/perfectcorp-v2.md):
"v1" as above, "v2" with the API key as bearer token, the one v2 file API,
tasks polled by path and templates instead of style groups. `PROTOCOLS`
says per family which settings, limits and steps apply; v2's feature table
(paths, body fields, result shapes) is in perfectcorp_v2.py. v2 has no
request_id, so its create call is never sent twice (see `_v2_start`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from django.conf import settings
from django.core.cache import cache
from PIL import Image

from studio import imaging
from studio.imaging import FaceBox
from studio.vendors import perfectcorp_account, sandbox
from studio.vendors.base import JobInput, Output, Progress, Submission, VendorError
from studio.vendors.budget import BudgetTimeout, CapacityWait, RequestBudget, Window
from studio import webhooks
from studio.vendors import perfectcorp_v2 as v2
from studio.vendors.http import NOT_SENT_ERRORS, UnreadableAnswer, VendorHttp, origin_of, pause
from studio.vendors.recent_photos import RecentlyPrepared
from studio.vendors.remote import RemoteProvider

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 10 * 1024 * 1024  # the vendor's limit is "< 10 MB"
DST_ID_VALID_S = 30 * 86400  # results (and their dst_id) are kept 30 days
UPLOAD_VALID_S = 86400  # uploaded files are kept one day
DEFAULT_EXPECTED_SHARE = 0.6  # engine time assumed before any job was seen, as a share of the 10-second rule
DOWNLOAD_MAX_BYTES = 40 * 1024 * 1024
DOWNLOAD_MAX_SECONDS = 60.0
API_TIMEOUT = httpx.Timeout(20.0, connect=5.0)
STORAGE_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
WAITING = "Waiting for Perfect Corp capacity"
PROCESSING = "Processing at Perfect Corp"


@dataclass(frozen=True)
class Feature:
    """What one Perfect Corp feature needs; keyed by our operation key."""

    name: str  # the §1.5 path segment (default; PERFECTCORP_FEATURE_PATHS overrides)
    file_sets: tuple[str, ...] = ("src_ids",)  # which of our inputs go where, in order
    styles: bool = False
    max_long_side: int | None = 4096
    needs_face: bool = False
    single_face: bool = False
    min_face_width: int | None = None
    output_ext: str = "jpg"


HAIR = dict(styles=True, max_long_side=1024, needs_face=True, single_face=True, min_face_width=128)
FEATURES: dict[str, Feature] = {
    "pc_hairstyle": Feature("hair-style", **HAIR),
    "pc_wig": Feature("wig", **HAIR),
    "pc_hair_extension": Feature("hair-ext", **HAIR),
    "pc_bangs": Feature("hair-bang", **HAIR),
    "pc_hair_volume": Feature("hair-vol", **HAIR),
    "pc_aging": Feature("aging", needs_face=True, single_face=True),
    "pc_makeup_transfer": Feature(
        "mu-trans-rec", file_sets=("src_ids", "ref_ids"), max_long_side=1024, needs_face=True, single_face=True
    ),
    "pc_object_removal": Feature("obj-removal", file_sets=("src_ids", "mask_ids")),
    "pc_colorize": Feature("colorize"),
    "pc_background_removal": Feature("sod", output_ext="png"),
    "pc_enhance": Feature("enhance"),
    "pc_image_generator": Feature("text-to-image", file_sets=(), styles=True, max_long_side=None),
}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

# §1.8.2: engine error code → what the user should do next.
_RETRY = "Processing failed on Perfect Corp's side. Please try again."
_FRONTAL = "Please face the camera directly and keep your head level, then try again."
_EYES = "Eyes and lips must be open and visible in both photos. Please use clearer photos."
ENGINE_MESSAGES: dict[str, str] = {
    "exceed_max_filesize": "This photo is too large. Use an image under 10 MB.",
    "error_exceed_max_image_size": "This photo's dimensions are too large. Use a smaller image.",
    "invalid_parameter": "Something went wrong with these settings. Please try again.",
    "error_download_image": "We couldn't read your photo. Please upload it again.",
    "error_download_mask": "We couldn't read the selection. Please mark the area again.",
    "error_decode_image": "This file isn't a valid JPG or PNG image. Please upload another photo.",
    "error_decode_mask": "The selection couldn't be read. Please mark the area again.",
    "error_nsfw_content_detected": (
        "This photo can't be processed because it may contain inappropriate content. Please use a different photo."
    ),
    "exceed_nsfw_retry_limits": "We couldn't produce a suitable result for this photo. Try a different photo or style.",
    "error_no_face": "We couldn't find a face. Use a clear, front-facing photo of one person.",
    "error_pose": "We couldn't detect your pose. Use a photo showing your head and shoulders clearly.",
    "error_face_parsing": "We couldn't analyse the face. Use a sharp, well-lit photo with nothing covering the face.",
    "error_multiple_people": "Please use a photo with only one person in it.",
    "error_no_shoulder": "Please use a photo that shows your shoulders.",
    "error_large_face_angle": _FRONTAL,
    "error_face_pose": _FRONTAL,
    "error_insufficient_landmarks": "We couldn't see enough of your face and shoulders. Use a clearer photo.",
    "error_hair_too_short": "This effect needs longer hair in the photo. Try another style.",
    "error_bald_image": "This effect needs visible hair in the photo. Try another photo.",
    "error_src_face_too_small": "Your face is too small in the photo. Move closer or crop the photo.",
    "error_src_no_face": "We couldn't find a face in your photo. Use a clear, front-facing photo of one person.",
    "error_ref_no_face": "We couldn't find a face in the reference look photo. Pick a clear, front-facing one.",
    "error_src_large_face_angle": "Please use front-facing photos for both you and the reference look.",
    "error_ref_large_face_angle": "Please use front-facing photos for both you and the reference look.",
    "error_src_eye_closed": _EYES,
    "error_ref_eye_closed": _EYES,
    "error_src_eye_occluded": _EYES,
    "error_ref_eye_occluded": _EYES,
    "error_src_lip_occluded": _EYES,
    "error_ref_lip_occluded": _EYES,
    "error_inference": _RETRY,
    "error_upload": _RETRY,
    "unknown_internal_error": _RETRY,
}
# Codes worth one more run with a new request_id (after a fresh upload for the download ones).
RETRY_ONCE = {
    "error_inference",
    "error_upload",
    "unknown_internal_error",
    "error_download_image",
    "error_download_mask",
}
REUPLOAD = {"error_download_image", "error_download_mask", "unknown_internal_error"}
UNKNOWN_ENGINE_ERROR = "Processing failed. Please try a different photo."
UNAVAILABLE = "The service is not available right now. Please try again later."
STYLE_GONE = "That style is no longer available. Please pick another one."
LOST = "Processing took too long and was cancelled. Please try again."
BUSY = "Perfect Corp is busy right now. Please try again in a few minutes."


# v2 (§6): no request_id, so a create whose answer was lost may have started a task.
UNCONFIRMED_CREATE = (
    "Perfect Corp may have started this job, but its answer never reached us. It was not sent again, "
    "so you are not charged twice. Please check back in a minute and run it again if no result appears."
)
EXPIRED = (
    "Perfect Corp no longer knows this job's task (it expired before its result was read). Please run it again."
)
TIMED_OUT_THERE = "Perfect Corp stopped this job because it took too long. Please try again."


@dataclass(frozen=True)
class Protocol:
    """What differs between the v1.0 and v2 families, beyond the feature tables."""

    name: str
    required_settings: tuple[str, ...]
    base_url_setting: str
    # (limit setting, window setting) of every rate limit that must hold.
    windows: tuple[tuple[str, str], ...]
    # Provider methods for each step (data, so no step branches on the version).
    start: str
    poll: str
    list_groups: str
    list_styles: str
    style_id_pattern: str  # what a style / template id looks like


PROTOCOLS: dict[str, Protocol] = {
    "v1": Protocol(
        "v1",
        ("PERFECTCORP_CLIENT_ID", "PERFECTCORP_CLIENT_SECRET"),
        "PERFECTCORP_BASE_URL",
        (
            ("PERFECTCORP_RATE_PER_TOKEN", "PERFECTCORP_RATE_WINDOW_TOKEN_S"),
            ("PERFECTCORP_RATE_PER_IP", "PERFECTCORP_RATE_WINDOW_IP_S"),
        ),
        start="_start",
        poll="_v1_poll",
        list_groups="_v1_style_groups",
        list_styles="_v1_styles",
        style_id_pattern=r"[0-9]{1,30}",
    ),
    "v2": Protocol(
        "v2",
        ("PERFECTCORP_API_KEY",),
        "PERFECTCORP_V2_BASE_URL",
        # 250 / 300 s per client IP and per API key (§6): both are the same window from here.
        (
            ("PERFECTCORP_V2_RATE_LIMIT", "PERFECTCORP_V2_RATE_WINDOW_S"),
            ("PERFECTCORP_V2_RATE_LIMIT", "PERFECTCORP_V2_RATE_WINDOW_S"),
        ),
        start="_v2_start",
        poll="_v2_poll",
        list_groups="_v2_template_groups",
        list_styles="_v2_templates",
        style_id_pattern=r"[A-Za-z0-9_.:-]{1,64}",
    ),
}


@dataclass
class Prepared:
    """The inputs after pre-flight: what will be uploaded, already fixed up."""

    image: bytes = b""
    size: tuple[int, int] = (0, 0)
    reference: bytes = b""
    mask: bytes = b""
    notes: tuple[str, ...] = ()


class PerfectCorpProvider(RemoteProvider):
    key = "perfectcorp"
    polls_expire = True  # v1.0: a task not polled for 10 s is lost; v2 warns an unpolled task may expire
    label = "Perfect Corp"
    api_key_setting = "PERFECTCORP_API_KEY"
    webhook_secret_setting = "PERFECTCORP_WEBHOOK_SECRET"
    data_notice = (
        "Your photo is sent to Perfect Corp (YouCam AI API) for processing. Perfect Corp deletes uploaded "
        "photos after one day and results after 30 days; we download the results at once and keep our own copy."
    )

    def __init__(self, *, sleep=None):
        self.sleep = sleep  # None: VendorHttp's `pause`

    # --- configuration ------------------------------------------------------------------

    def protocol(self) -> Protocol:
        return PROTOCOLS[settings.PERFECTCORP_API_VERSION]

    @property
    def style_reference_offered(self) -> bool:  # type: ignore[override]
        """v2's hair-transfer takes a reference photo instead of a template (§3.1)."""
        return self.protocol().name == "v2"

    @property
    def required_settings(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.protocol().required_settings

    @property
    def base_url_setting(self) -> str:  # type: ignore[override]
        return self.protocol().base_url_setting

    def feature(self, key: str) -> Feature:
        """The feature of an operation key (or of a §1.5 feature name)."""
        if key in FEATURES:
            return FEATURES[key]
        for feature in FEATURES.values():
            if feature.name == key:
                return feature
        raise VendorError("This Perfect Corp operation is not supported. Please pick another one.")

    def path_segment(self, feature: Feature) -> str:
        """The `{feature}` path segment; PERFECTCORP_FEATURE_PATHS may override it (keys: op key or name)."""
        raw = settings.PERFECTCORP_FEATURE_PATHS
        if raw:
            try:
                table = json.loads(raw) if isinstance(raw, str) else dict(raw)
            except ValueError:
                log.error("PERFECTCORP_FEATURE_PATHS is not a JSON object; using the defaults")
                table = {}
            for op_key, known in FEATURES.items():
                if known is feature and op_key in table:
                    return str(table[op_key])
            if feature.name in table:
                return str(table[feature.name])
        return feature.name

    def credentials(self) -> tuple[str, str]:
        """(client id, base64 SPKI public key); in sandbox mode the emulator's test pair."""
        if self.is_sandboxed():
            emulator = sandbox.emulator_for(self.key)
            return emulator.client_id, emulator.public_key_b64
        return settings.PERFECTCORP_CLIENT_ID, settings.PERFECTCORP_CLIENT_SECRET

    def _namespace(self) -> str:
        protocol = self.protocol()
        route = sandbox.routed(self.key)
        base = route[0] if route else getattr(settings, protocol.base_url_setting)
        account = v2.key_fingerprint(self.api_key()) if protocol.name == "v2" else self.credentials()[0]
        return hashlib.sha1(f"{protocol.name}|{base}|{account}".encode()).hexdigest()[:16]

    def budget(self) -> RequestBudget:
        """The request budget every process shares for this account and address; its
        limits are the active protocol's (v1: 100/60 s per token and 100/300 s per IP;
        v2: 250/300 s per key and per IP)."""
        return RequestBudget(
            f"perfectcorp:{self._namespace()}",
            tuple(
                Window(getattr(settings, limit), getattr(settings, window))
                for limit, window in self.protocol().windows
            ),
            reservation_ttl=max(60.0, float(settings.PERFECTCORP_JOB_DEADLINE_S)),
        )

    def status(self) -> dict[str, Any]:
        status = super().status()
        status["api_version"] = self.protocol().name
        try:
            status["budget"] = self.budget().snapshot()
        except Exception:  # the console must render even if the cache is unreachable
            log.exception("perfectcorp budget snapshot failed")
        try:
            status["unconfirmed_creates_24h"] = unconfirmed_creates()
        except Exception:
            log.exception("counting unconfirmed Perfect Corp creates failed")
        return status

    def uses_webhooks(self) -> bool:
        """v2 only: a Standard Webhooks notification will wake the job (studio/webhooks.py)."""
        return (
            self.protocol().name == "v2"
            and settings.PERFECTCORP_WEBHOOKS
            and bool(self.webhook_secret())
            and webhooks.vendor_can_call_back(sandboxed=self.is_sandboxed())
        )

    # --- v2 account calls: vendor-side deletion and unit costs (perfectcorp_account.py) ---------

    deletion_notice = perfectcorp_account.DELETION_NOTICE

    def delete_remote(self, job) -> None:
        perfectcorp_account.delete_job_tasks(self, job)

    def feature_costs(self) -> dict:
        return perfectcorp_account.operation_costs(self)

    def submission_meta(self) -> dict:
        return perfectcorp_account.submission_meta()

    # --- HTTP: API calls counted in the budget, storage calls not ---------------------------

    def _api_http(self, budget: RequestBudget, job_key: str | None, *, poll=False, urgent=False) -> VendorHttp:
        def before(method: str, url: str) -> None:
            budget.take(job_key, poll=poll, urgent=urgent)

        def limited(response: httpx.Response) -> None:
            budget.rate_limited(base=1.0 if poll else 2.0)

        return self.http(
            sleep=self.sleep, before_request=before, on_rate_limited=limited, timeout=API_TIMEOUT
        )

    def catalogue_http(self) -> VendorHttp:
        """For the style sync's thumbnail downloads.

        A thumbnail on the API's own host (a staging endpoint, the emulator,
        or a vendor that counts every request from our IP) is drawn from the
        shared budget like a listing page, behind running jobs; one on a CDN
        is not. Without this a first sync of six catalogues fired some 200
        unbudgeted thumbnail requests into the per-IP window. Paced, a first
        sync against such a vendor takes minutes (about 250 requests at 100
        per 5 minutes); later syncs fetch only changed thumbnails.
        """
        budget = self.budget()
        http = self.http(sleep=self.sleep, timeout=STORAGE_TIMEOUT)
        api_origin = origin_of(http.base_url)
        if self.is_sandboxed():
            # Our emulator serves thumbnails on its API host but, like the vendor's
            # CDN, does not count them, unless its count_storage fault says it does;
            # pacing them anyway would stretch a first sandbox sync to ~12 minutes.
            faults = getattr(sandbox.emulator_for(self.key), "faults", None) or {}
            counted = bool(faults.get("count_storage"))
        else:
            counted = True

        def before(method: str, url: str) -> None:
            if counted and origin_of(url) == api_origin:
                budget.take(None)

        http.before_request = before
        http.on_rate_limited = lambda response: budget.rate_limited(base=2.0)
        return http

    def _storage_http(self) -> VendorHttp:
        return self.http(sleep=self.sleep, timeout=STORAGE_TIMEOUT)

    def _call(
        self, method: str, path: str, *, job_key: str | None, budget: RequestBudget, poll: bool = False, **kwargs
    ) -> tuple[int, dict]:
        """An authenticated API call: (HTTP status, parsed body). Refreshes the token once on 401.

        A 2xx answer we can't read is asked for once more: every call is safe
        to repeat (a run carries its request_id). A poll is not repeated
        here: `poll` decides what a garbled status answer means.
        """
        http = self._api_http(budget, job_key, poll=poll)
        try:
            for garbled in (0, 1):
                token = None
                for attempt in (1, 2):
                    token = self._token(budget, rejected=token)
                    response = http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
                    if response.status_code != 401:
                        break
                    log.warning("Perfect Corp answered 401 to %s (attempt %s)", path, attempt)
                else:
                    log.error("Perfect Corp refused a fresh access token; check PERFECTCORP_CLIENT_ID/SECRET")
                    raise VendorError(UNAVAILABLE, permanent=True)
                if response.status_code < 400:
                    budget.succeeded()
                try:
                    return response.status_code, self._parse(http, response)
                except UnreadableAnswer:
                    if poll or garbled:
                        raise
                    log.warning("Perfect Corp sent an answer we couldn't read to %s; asking once more", path)
                    if job_key is not None:
                        budget.extend(job_key, 1)
                    http.backoff(1)
            raise AssertionError("unreachable")
        finally:
            http.close()

    @staticmethod
    def _parse(http: VendorHttp, response: httpx.Response) -> dict:
        """The JSON body, or {} for an error status without one. Python's json keeps big ints exact."""
        if response.status_code >= 400:
            try:
                data = json.loads(response.content)
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {}
        return http.json(response)  # UnreadableAnswer when it is not a JSON object

    @staticmethod
    def _result(body: dict) -> dict:
        """The envelope's payload: `result`, or `data` as the newer API family names it."""
        for key in ("result", "data"):
            if isinstance(body.get(key), dict):
                return body[key]
        return body

    def _raise_http(self, status: int, body: dict, *, during: str) -> None:
        """Map a non-2xx answer (§1.8.1) to a VendorError."""
        code = str(body.get("error_code") or "")
        if status == 400 and code in ("InvalidStyleGroup", "InvalidStyle"):
            raise VendorError(STYLE_GONE, permanent=True)
        if status == 400 and code == "CreditInsufficiency":
            log.error("Perfect Corp: the account has no units left")
            raise VendorError("This feature is temporarily unavailable. Please try again later.", permanent=True)
        if status == 400:
            log.error("Perfect Corp refused %s: %s %s", during, code, str(body.get("error", ""))[:200])
            raise VendorError(
                "This request couldn't be processed. Please try again; if it keeps failing, contact support.",
                permanent=True,
            )
        if status == 404:
            raise VendorError("We couldn't read your photo. Please upload it again.", permanent=False)
        raise VendorError(f"{self.label} had a problem (error {status}). Please try again.", permanent=False)

    # --- auth ---------------------------------------------------------------------------------

    def id_token(self, client_id: str, secret_b64: str, *, now_ms: int | None = None) -> str:
        """RSA-encrypt `client_id=…&timestamp=…` with the account's public key (§1.3.2)."""
        try:
            key = serialization.load_der_public_key(base64.b64decode(secret_b64))
        except ValueError:
            log.error("PERFECTCORP_CLIENT_SECRET is not a base64 X.509 public key")
            raise VendorError(UNAVAILABLE, permanent=True) from None
        timestamp = int(time.time() * 1000) if now_ms is None else now_ms
        plain = f"client_id={client_id}&timestamp={timestamp}".encode()
        if settings.PERFECTCORP_RSA_PADDING == "oaep-sha1":
            padding = rsa_padding.OAEP(mgf=rsa_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        else:
            padding = rsa_padding.PKCS1v15()
        return base64.b64encode(key.encrypt(plain, padding)).decode()

    def _token(self, budget: RequestBudget, *, rejected: str | None = None) -> str:
        """The shared access token: from the cache, or a fresh one (one process asks at a time).

        `rejected` is a token the vendor just answered 401 to; a different
        cached token (another process refreshed meanwhile) is used instead.
        """
        key = f"perfectcorp:token:{self._namespace()}"
        cached = cache.get(key)
        if cached and cached["token"] != rejected and time.time() < cached["refresh_at"]:
            return cached["token"]
        if not cache.add(f"{key}:lock", 1, timeout=15):
            for _ in range(50):  # another process is asking; use its token
                (self.sleep or pause)(0.1)
                fresh = cache.get(key)
                if fresh and fresh["token"] not in (rejected, (cached or {}).get("token")):
                    return fresh["token"]
        try:
            client_id, secret = self.credentials()
            http = self._api_http(budget, None, urgent=True)
            try:
                for garbled in (0, 1):
                    response = http.request(
                        "POST",
                        "/s2s/v1.0/client/auth",
                        json={"client_id": client_id, "id_token": self.id_token(client_id, secret)},
                    )
                    if response.status_code in (400, 401, 403):
                        log.error("Perfect Corp refused our credentials (HTTP %s)", response.status_code)
                        raise VendorError(UNAVAILABLE, permanent=True)
                    if response.status_code >= 300:
                        raise VendorError(UNAVAILABLE, permanent=False)
                    try:
                        token = self._result(http.json(response)).get("access_token")
                        break
                    except UnreadableAnswer:  # asking for a token again is harmless
                        if garbled:
                            raise
                        log.warning("Perfect Corp sent an auth answer we couldn't read; asking once more")
                        http.backoff(1)
            finally:
                http.close()
            if not isinstance(token, str) or not token:
                raise VendorError(f"{self.label} sent an answer we couldn't read. Please try again.", permanent=False)
            refresh = float(settings.PERFECTCORP_TOKEN_REFRESH_S)
            cache.set(
                key,
                {"token": token, "obtained": time.time(), "refresh_at": time.time() + refresh},
                timeout=int(refresh) + 600,
            )
            return token
        finally:
            cache.delete(f"{key}:lock")

    # --- pre-flight -----------------------------------------------------------------------------

    def preflight(self, job: JobInput, feature: Feature) -> Prepared:
        """Fix what can be fixed (size, format, mask size) and refuse the rest, before any call."""
        protocol = self.protocol()
        with_reference = self._takes_reference(job, feature)
        if feature.styles and not (with_reference and "ref_ids" not in feature.file_sets):
            style = str(job.params.get("style_id") or "").strip()
            if not re.fullmatch(protocol.style_id_pattern, style):
                raise VendorError("Pick a style first.", permanent=True)
        if feature.name == "text-to-image":
            if not str(job.params.get("prompt") or "").strip():
                raise VendorError("Describe the picture you want in the prompt.", permanent=True)
            return Prepared()
        if not job.image:
            raise VendorError("Upload a photo first.", permanent=True)
        max_side = feature.max_long_side
        if feature.name == "enhance":
            scale = int(job.params.get("scale") or 2)
            max_side = min(max_side or 4096, 4096 // max(1, scale))  # keep the result within 4096 px
        # A batch sends one photo many times: it is decoded, resized and encoded once.
        photo = _prepared_photos.get_or_make(
            job.image, (max_side, MAX_FILE_BYTES), lambda: _prepare_photo(job.image, max_side)
        )
        faces = list(job.faces) if job.faces else []
        notes: list[str] = []
        if photo.factor is not None:
            factor = photo.factor
            faces = [
                FaceBox(round(f.x * factor), round(f.y * factor), round(f.w * factor), round(f.h * factor))
                for f in faces
            ]
            notes.append(f"resized to {photo.size[0]}×{photo.size[1]}")
        if feature.needs_face:
            self._check_faces(faces, feature, photo.size, whose="this photo")
        prepared = Prepared(image=photo.jpeg, size=photo.size, notes=tuple(notes))
        if with_reference:
            if not job.reference:
                raise VendorError("Add the photo whose look you want to copy.", permanent=True)
            reference = imaging.load_image(job.reference, max_long_side=feature.max_long_side)
            ref_faces = imaging.detect_faces(reference)
            if not ref_faces:
                raise VendorError(ENGINE_MESSAGES["error_ref_no_face"], permanent=True)
            if len(ref_faces) > 1:
                raise VendorError(
                    "The reference look photo shows several people. Use one with a single face.", permanent=True
                )
            prepared.reference = _jpeg_under(reference, MAX_FILE_BYTES)
        if "mask_ids" in feature.file_sets:
            prepared.mask = self._prepare_mask(job.mask, photo.size)
        return prepared

    def _takes_reference(self, job: JobInput, feature: Feature) -> bool:
        """Makeup transfer always; on v2 a hairstyle from the user's reference photo too (§3.1)."""
        if "ref_ids" in feature.file_sets:
            return True
        op_key = self._op_key(feature)
        spec = v2.V2_FEATURES.get(op_key)
        return bool(
            self.protocol().name == "v2" and spec and spec.reference_instead_of_template and job.reference
        )

    @staticmethod
    def _op_key(feature: Feature) -> str:
        return next(key for key, known in FEATURES.items() if known is feature)

    @staticmethod
    def _check_faces(faces: list[FaceBox], feature: Feature, size: tuple[int, int], *, whose: str) -> None:
        if not faces:
            raise VendorError(
                f"We couldn't find a face in {whose}. Use a clear, front-facing photo of one person.", permanent=True
            )
        if feature.single_face and len(faces) > 1:
            raise VendorError(
                f"{whose.capitalize()} shows {len(faces)} faces; {feature.name} needs exactly one person. "
                "Crop the photo to one person or pick another photo.",
                permanent=True,
            )
        if feature.min_face_width and faces[0].w < feature.min_face_width:
            raise VendorError(
                f"The face is too small ({faces[0].w} px wide at {size[0]}×{size[1]}; at least "
                f"{feature.min_face_width} px needed). Use a photo where your face fills more of the frame.",
                permanent=True,
            )

    @staticmethod
    def _prepare_mask(mask: bytes | None, size: tuple[int, int]) -> bytes:
        """A greyscale mask of exactly the image's size, white = erase (§1.6.5)."""
        if not mask:
            raise VendorError("Paint over what you want removed first.", permanent=True)
        try:
            picture = Image.open(io.BytesIO(mask))
            picture.load()
        except Exception:
            raise VendorError("The selection couldn't be read. Please mark the area again.", permanent=True) from None
        grey = picture.convert("L")
        if grey.size != size:
            grey = grey.resize(size, Image.Resampling.NEAREST)
        grey = grey.point(lambda v: 255 if v > 127 else 0)
        if grey.getbbox() is None:
            raise VendorError("Paint over what you want removed first.", permanent=True)
        buffer = io.BytesIO()
        grey.save(buffer, "PNG")
        return buffer.getvalue()

    # --- timing: when to poll, how many requests a job needs ----------------------------------------

    def _lost_after(self) -> float:
        return float(settings.PERFECTCORP_TASK_LOST_AFTER_S)

    def _max_gap(self, interval: float = 0.0) -> float:
        """The longest we let a task go unpolled: the poll ceiling, well inside the 10-second rule
        (and, on v2, inside a polling_interval the vendor states, read as its polling window)."""
        gap = min(settings.PERFECTCORP_POLL_CEILING_MS / 1000, self._lost_after() * 0.85)
        if interval > 0 and self.protocol().name == "v2":
            gap = min(gap, max(interval, settings.PERFECTCORP_POLL_FLOOR_MS / 1000))
        return gap

    def expected_seconds(self, feature: Feature) -> float:
        """The engine time learned from recent jobs; before any, 6 s (0.6 of the 10-second rule)."""
        learned = cache.get(f"perfectcorp:engine-time:{feature.name}")
        return float(learned) if learned else DEFAULT_EXPECTED_SHARE * self._lost_after()

    def _learn(self, feature: Feature, *, finished_at: float, last_running_at: float | None, interval: float):
        """Tune the expected engine time from this task.

        Finding the task done on the first poll only says "no longer than
        this", so the estimate creeps down 0.5 % to find the edge; finding it
        still running moves the estimate one polling interval past that
        moment. A second poll costs a request of the shared budget, so the
        estimate errs late: about one job in twenty polls twice.
        """
        key = f"perfectcorp:engine-time:{feature.name}"
        current = self.expected_seconds(feature)
        if last_running_at is None:
            estimate = min(current, finished_at) * 0.995
        else:
            estimate = max(current, last_running_at + interval)
        cache.set(key, round(estimate, 3), timeout=7 * 86400)

    def _poll_after(self, feature: Feature, elapsed: float, interval_s: float) -> float:
        floor = settings.PERFECTCORP_POLL_FLOOR_MS / 1000
        remaining = self.expected_seconds(feature) - elapsed
        # Not before the vendor's polling_interval, nor (much) before the engine should be done.
        wait = max(remaining, interval_s) if remaining > 0 else max(interval_s, floor)
        return max(floor, min(wait, self._max_gap()))

    def expected_requests(self, feature: Feature, job: JobInput) -> int:
        """File calls + the run + the polls the expected engine time needs."""
        if self.protocol().name == "v2":  # no dst_id reuse; a hairstyle's reference photo is one more file
            files = len(v2.files_for(job.operation.key, with_reference=self._takes_reference(job, feature)))
        else:
            files = 0 if self._reusable_dst(job, feature) else len(feature.file_sets)
        polls = max(1, math.ceil(self.expected_seconds(feature) / self._max_gap()))
        return files + 1 + polls

    # --- submit and poll ---------------------------------------------------------------------------

    def submit(self, job: JobInput) -> Submission:
        feature = self.feature(job.operation.key)
        prepared = self.preflight(job, feature)
        budget = self.budget()
        job_deadline = job.deadline or time.time() + settings.PERFECTCORP_JOB_DEADLINE_S
        # The worker must keep time to run and poll the task after waiting.
        worker_limit = time.time() + max(settings.STUDIO_JOB_TIMEOUT * 0.5, settings.STUDIO_JOB_TIMEOUT - 60)
        try:
            budget.admit(
                job.job_id,
                lambda: self.expected_requests(feature, job),  # re-estimated while the job waits
                deadline=min(job_deadline, worker_limit),
                on_wait=lambda: job.report(WAITING, None),
            )
        except BudgetTimeout:
            if worker_limit < job_deadline:
                raise CapacityWait(WAITING, permanent=False) from None
            raise VendorError(BUSY, permanent=False) from None
        start = getattr(self, self.protocol().start)
        try:
            task_id = start(job, feature, prepared, budget, attempt=int(job.state.get("attempt", 0)))
        except BaseException:
            budget.release(job.job_id)
            raise
        job.report(PROCESSING, 0.1)
        return Submission(task_id, self._running(job, feature, 0.1, elapsed=0.0, interval=0.0))

    def _running(
        self, job: JobInput, feature: Feature, fraction: float, *, elapsed: float, interval: float
    ) -> Progress:
        """A task still running: when to poll next, and whether a webhook will come first.

        With a webhook (v2) the job waits for it, and polls only as the backstop,
        never later than the polling window allows: the v2 documents warn a task
        not polled in time may expire, and they state no window (v1's 10 s rule
        and its 8.5 s ceiling are kept, shortened to a polling_interval if the
        vendor sends one).
        """
        if job.state.get("webhook"):
            wait = min(float(settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS), self._max_gap(interval))
            return Progress(False, PROCESSING, fraction, poll_after=wait, webhook=True)
        return Progress(False, PROCESSING, fraction, poll_after=self._poll_after(feature, elapsed, interval))

    def _request_id(self, job: JobInput, run_index: int) -> int:
        """The run's integer request_id: from the job's id for this run, one more per deliberate re-run."""
        base = int(hashlib.sha256(job.request_id.encode()).hexdigest()[:12], 16)  # < 2**48, safe everywhere
        return base * 8 + run_index

    def _start(
        self, job: JobInput, feature: Feature, prepared: Prepared, budget: RequestBudget, *, attempt: int
    ) -> str:
        used_dst = self._reusable_dst(job, feature)
        file_sets = self._file_sets(job, feature, prepared, budget)
        run_index = int(job.state.get("run_index", 0))  # one more per deliberate new run of this job
        request_id = self._request_id(job, run_index)
        # Stored before the call: a retry after a lost answer sends the same id, and is not charged twice.
        job.save_state(request_id=request_id, attempt=attempt, run_index=run_index)
        action: dict[str, Any] = {"id": 0}
        params = self._action_params(job, feature, budget)
        if params:
            action["params"] = params
        payload: dict[str, Any] = {"actions": [action], "output_ext": feature.output_ext}
        if file_sets:
            payload["file_sets"] = file_sets
        status, body = self._call(
            "POST",
            f"/s2s/v1.0/task/{self.path_segment(feature)}",
            job_key=job.job_id,
            budget=budget,
            json={"request_id": request_id, "payload": payload},
        )
        if status >= 400:
            if self._upload_again(job, status):
                # Run on a file whose bytes never arrived, or no longer there: upload again, once.
                job.save_state(uploads={}, reuploaded=True, borrowed_files=None, run_index=run_index + 1)
                budget.extend(job.job_id, len(feature.file_sets) + 1)
                return self._start(job, feature, prepared, budget, attempt=attempt)
            if status == 400 and used_dst and body.get("error_code") in (None, "InvalidParameters", "BadRequest"):
                # The vendor no longer knows the earlier result: send the photo itself, once.
                job.save_state(dst_failed=True, run_index=run_index + 1)
                budget.extend(job.job_id, len(feature.file_sets))
                return self._start(job, feature, prepared, budget, attempt=attempt)
            self._raise_http(status, body, during="the task")
        result = self._result(body)
        task_id = result.get("task_id") or result.get("id")
        if not isinstance(task_id, str) or not task_id:
            raise VendorError(f"{self.label} sent an answer we couldn't read. Please try again.", permanent=False)
        now = time.time()
        job.save_state(task_id=task_id, run_at=now, last_poll=now, last_running=None)
        return task_id

    def _action_params(self, job: JobInput, feature: Feature, budget: RequestBudget) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if feature.styles:
            style_id = int(str(job.params["style_id"]).strip())
            group_id = job.params.get("style_group_id") or self.style_group_of(feature, style_id, budget)
            params.update(style_group_id=int(group_id), style_ids=[style_id])
        if feature.name == "enhance":
            params["scale"] = int(job.params.get("scale") or 2)
        if feature.name == "text-to-image":
            params["prompt"] = str(job.params.get("prompt")).strip()
        return params

    def _reusable_dst(self, job: JobInput, feature: Feature) -> str | None:
        """A dst_id of the result this photo came from, when the vendor still keeps it."""
        meta = job.source_meta or {}
        if meta.get("provider") != self.key or not feature.file_sets or not meta.get("dst_id"):
            return None
        if time.time() - float(meta.get("dst_id_at") or 0) > DST_ID_VALID_S - 3600:
            return None
        if feature.max_long_side and max(meta.get("width") or 0, meta.get("height") or 0) > feature.max_long_side:
            return None
        if job.state.get("dst_failed"):
            return None
        return str(meta["dst_id"])

    def _file_sets(self, job: JobInput, feature: Feature, prepared: Prepared, budget: RequestBudget) -> dict:
        uploads: dict[str, list] = dict(job.state.get("uploads") or {})
        file_sets: dict[str, list[str]] = {}
        sources = {
            "src_ids": (prepared.image, "photo.jpg", "image/jpeg"),
            "ref_ids": (prepared.reference, "look.jpg", "image/jpeg"),
            "mask_ids": (prepared.mask, "mask.png", "image/png"),
        }
        for slot in feature.file_sets:
            if slot == "src_ids" and (dst := self._reusable_dst(job, feature)):
                file_sets[slot] = [dst]
                continue
            saved = uploads.get(slot)
            if saved and time.time() - saved[1] < UPLOAD_VALID_S - 3600:
                file_sets[slot] = [saved[0]]  # a resumed job: the file is already there
                continue
            data, name, content_type = sources[slot]
            send = functools.partial(self._upload, job, feature, data, name, content_type, budget)
            file_id, borrowed = self._uploaded_once(job, data, self.path_segment(feature), send)
            uploads[slot] = [file_id, time.time()]
            job.save_state(uploads=uploads, **({"borrowed_files": True} if borrowed else {}))
            file_sets[slot] = [file_id]
        return file_sets

    def _uploaded_once(self, job: JobInput, data: bytes, file_api: str, upload: Callable[[], str]) -> tuple[str, bool]:
        """(file id, borrowed): the id of this file as uploaded lately to this account
        (`_recent_uploads`; borrowed), else what `upload()` returns. A job whose create
        was refused on a borrowed file uploads its own (`reuploaded`), past the memory."""
        where = (self._namespace(), file_api)
        if job.state.get("reuploaded"):
            _recent_uploads.forget(data, where)
        sent = []
        file_id = _recent_uploads.get_or_make(
            data, where, lambda: sent.append(1) or upload(), ttl=settings.PERFECTCORP_UPLOAD_REUSE_S
        )
        return file_id, not sent

    @staticmethod
    def _upload_again(job: JobInput, status: int) -> bool:
        """Whether a refused create (4xx: no task exists, nothing billed) is sent once more
        on files uploaded anew: its file never arrived (404, §2), or it was one uploaded for
        an earlier job that the vendor may no longer keep (it does not document how it
        refuses an unknown file id)."""
        borrowed = bool(job.state.get("borrowed_files"))
        return not job.state.get("reuploaded") and (status == 404 or (borrowed and 400 <= status < 500))

    def _upload(
        self, job: JobInput, feature: Feature, data: bytes, name: str, content_type: str, budget: RequestBudget
    ) -> str:
        """Create a file slot, then send the bytes with exactly the pre-signed request it returned."""
        version = "v1.1" if settings.PERFECTCORP_FILE_API == "v1.1" else "v1.0"
        entry: dict[str, Any] = {"content_type": content_type, "file_name": name}
        if version == "v1.1":
            entry["file_size"] = len(data)
        status, body = self._call(
            "POST",
            f"/s2s/{version}/file/{self.path_segment(feature)}",
            job_key=job.job_id,
            budget=budget,
            json={"files": [entry]},
        )
        if status >= 400:
            self._raise_http(status, body, during="the file upload")
        return self._put_presigned(body, data)

    def _put_presigned(self, body: dict, data: bytes) -> str:
        """Send the bytes with exactly the pre-signed request a file answer holds; its file id."""
        try:
            slot = self._result(body)["files"][0]
            file_id, upload = slot["file_id"], slot["requests"][0]
            method, url, headers = upload["method"], upload["url"], dict(upload.get("headers") or {})
        except (KeyError, IndexError, TypeError):
            raise VendorError(
                f"{self.label} sent an answer we couldn't read. Please try again.", permanent=False
            ) from None
        # Storage host: no bearer token, the signed headers verbatim.
        headers = {k: str(v) for k, v in headers.items() if k.lower() != "authorization"}
        storage = self._storage_http()
        try:
            response = storage.request(method, url, content=data, headers=headers)
        finally:
            storage.close()
        if response.status_code >= 300:
            log.error("Perfect Corp storage refused the upload: %s %s", response.status_code, response.text[:200])
            raise VendorError("Uploading your photo to Perfect Corp failed. Please try again.", permanent=False)
        return file_id

    def poll(self, job: JobInput, task_id: str) -> Progress:
        return getattr(self, self.protocol().poll)(job, task_id)

    def _v1_poll(self, job: JobInput, task_id: str) -> Progress:
        feature = self.feature(job.operation.key)
        budget = self.budget()
        task_id = job.state.get("task_id") or task_id
        run_at = float(job.state.get("run_at") or time.time())
        if time.time() - run_at > settings.PERFECTCORP_JOB_DEADLINE_S:
            budget.release(job.job_id)
            raise VendorError(
                f"{self.label} took too long with this photo and the job was stopped. Please try again.",
                permanent=True,
            )
        try:
            status, body = self._call(
                "GET",
                f"/s2s/v1.0/task/{self.path_segment(feature)}",
                job_key=job.job_id,
                budget=budget,
                poll=True,
                params={"task_id": task_id},
            )
        except UnreadableAnswer:
            # One garbled status answer does not end the job: the task is still there.
            if not self.garbled_poll_allowed(job, last_poll=time.time()):
                budget.release(job.job_id)
                raise
            return Progress(False, PROCESSING, None, poll_after=min(1.0, self._max_gap()))
        except VendorError:
            budget.release(job.job_id)
            raise
        now = time.time()
        if status >= 400:
            if status == 400 and str(body.get("error_code")) == "InvalidTaskId":
                log.warning("Perfect Corp lost task of job %s", job.job_id)
                return self._run_again(job, feature, budget, reason="lost", message=LOST)
            budget.release(job.job_id)
            self._raise_http(status, body, during="the status check")
        result = self._result(body)
        interval = _seconds(result.get("polling_interval"))
        state = str(result.get("status") or "").lower()
        elapsed = now - run_at
        if state == "success":
            self._learn(feature, finished_at=elapsed, last_running_at=job.state.get("last_running"), interval=interval)
            try:
                outputs = self._download_all(job, feature, result)
            finally:
                budget.release(job.job_id)
            meta = {"perfectcorp_feature": feature.name, "engine_seconds": round(elapsed, 1)}
            return Progress(True, "Done", 1.0, outputs=tuple(outputs), meta=meta)
        if state == "error":
            code = str(result.get("error") or "")
            if code in RETRY_ONCE:
                return self._run_again(
                    job, feature, budget, reason=code, message=ENGINE_MESSAGES.get(code, UNKNOWN_ENGINE_ERROR)
                )
            budget.release(job.job_id)
            if code not in ENGINE_MESSAGES:
                log.error("Perfect Corp engine error we don't know: %r", code[:80])
            raise VendorError(ENGINE_MESSAGES.get(code, UNKNOWN_ENGINE_ERROR), permanent=True)
        # "running", or a status we don't know: keep polling until the deadline (never success).
        if state != "running":
            log.warning("Perfect Corp reported an unknown status %r; treating it as running", state[:40])
        job.save_state(last_poll=now, last_running=elapsed)
        return self._running(job, feature, self._fraction(feature, elapsed), elapsed=elapsed, interval=interval)

    def _fraction(self, feature: Feature, elapsed: float) -> float:
        return min(0.9, 0.1 + 0.8 * elapsed / max(self.expected_seconds(feature), 0.1))

    def _run_again(
        self, job: JobInput, feature: Feature, budget: RequestBudget, *, reason: str, message: str
    ) -> Progress:
        """One more run with a new request_id (§1.8): after a lost task or a retryable engine error."""
        attempt = int(job.state.get("attempt", 0))
        if attempt >= 1:
            budget.release(job.job_id)
            raise VendorError(message, permanent=True)
        job.save_state(run_index=int(job.state.get("run_index", 0)) + 1)  # a new request_id
        if reason in REUPLOAD:  # the vendor could not read the file: a fresh upload, not a remembered one
            job.save_state(uploads={}, dst_failed=True, reuploaded=True)
        prepared = self.preflight(job, feature)
        budget.extend(job.job_id, self.expected_requests(feature, job))
        job.save_state(task_id=None)  # a new task, not the failed one (v2 reuses a saved task id)
        getattr(self, self.protocol().start)(job, feature, prepared, budget, attempt=attempt + 1)
        progress = self._running(job, feature, 0.1, elapsed=0.0, interval=0.0)
        return Progress(
            False, "Retrying at Perfect Corp", 0.1, poll_after=progress.poll_after, webhook=progress.webhook
        )

    def _download_all(self, job: JobInput, feature: Feature, result: dict) -> list[Output]:
        """v1: `result.results[].data[]` (each {url, dst_id, res_age}), custom_info beside them."""
        entries = result.get("results") or []
        items: list[tuple[dict, dict]] = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            for item in entry.get("data") or []:
                if isinstance(item, dict) and item.get("url"):
                    items.append((item, entry.get("custom_info") or result.get("custom_info") or {}))
        return self._download_items(job, feature, items)

    def _download_items(self, job: JobInput, feature: Feature, items: list[tuple[dict, dict]]) -> list[Output]:
        """Fetch every result file now (URLs expire after 2 hours) into ordered Outputs."""
        if not items:
            raise VendorError(f"{self.label} returned no image. Please try again.", permanent=False)
        if feature.name == "aging":
            items.sort(key=lambda pair: int(pair[0].get("res_age") or 0))
        storage = self._storage_http()
        outputs = []
        now = time.time()
        try:
            for index, (item, custom) in enumerate(items):
                data, content_type = storage.download(
                    item["url"],
                    max_bytes=DOWNLOAD_MAX_BYTES,
                    max_seconds=DOWNLOAD_MAX_SECONDS,
                )
                try:
                    picture = imaging.load_image(data, max_bytes=DOWNLOAD_MAX_BYTES)
                except imaging.ImageRejected:  # its message speaks of an upload; this came from the vendor
                    raise VendorError(
                        f"{self.label} returned a damaged image. Please try again.", permanent=False
                    ) from None
                meta: dict[str, Any] = {"dst_id_at": now, "width": picture.width, "height": picture.height}
                if item.get("dst_id"):
                    meta["dst_id"] = str(item["dst_id"])
                label = ""
                if feature.styles and job.params.get("style_id"):
                    meta["style_id"] = str(job.params.get("style_id"))
                if feature.name == "aging" and item.get("res_age") is not None:
                    meta["age"] = int(item["res_age"])
                    label = f"Age {meta['age']}"
                    if custom.get("age") is not None and int(custom.get("age_idx", -1)) == index:
                        meta["original"] = True
                elif len(items) > 1:
                    label = f"Variant {index + 1}"
                outputs.append(Output(data=data, content_type=content_type, label=label, meta=meta))
        finally:
            storage.close()
        return outputs

    # --- v2: API key, one file API, tasks by path, no request_id (perfectcorp_v2.py) ----------

    def v2_auth_headers(self) -> dict[str, str]:
        """The one place a v2 request gets its credentials: the API key itself as bearer token (§1).
        In sandbox mode the emulator's test key (a real key never goes to an emulator)."""
        return {"Authorization": f"Bearer {self.api_key()}"}

    def v2_http(self, budget: RequestBudget | None = None, job_key: str | None = None, *, poll=False) -> VendorHttp:
        """A client on the v2 base URL (PERFECTCORP_V2_BASE_URL, or the emulator), every
        request drawn from the shared budget. For any v2 call: tasks, files, templates, credit."""
        return self._api_http(budget or self.budget(), job_key, poll=poll)

    def _v2_call(
        self,
        method: str,
        path: str,
        *,
        job_key: str | None,
        budget: RequestBudget,
        poll: bool = False,
        repeat_garbled: bool = True,
        **kwargs,
    ) -> tuple[int, dict]:
        """(HTTP status, parsed body). A 401 in any of its documented shapes ends the job."""
        http = self.v2_http(budget, job_key, poll=poll)
        try:
            for garbled in (0, 1):
                response = http.request(method, path, headers=self.v2_auth_headers(), **kwargs)
                if response.status_code == 401:
                    reason = v2.describe_401(self._parse(http, response))
                    log.error("Perfect Corp refused the API key (%s); check PERFECTCORP_API_KEY", reason)
                    raise KeyRefused(UNAVAILABLE, permanent=True)
                if response.status_code < 400:
                    budget.succeeded()
                try:
                    return response.status_code, self._parse(http, response)
                except UnreadableAnswer:
                    if not repeat_garbled or garbled:
                        raise
                    log.warning("Perfect Corp sent an answer we couldn't read to %s; asking once more", path)
                    if job_key is not None:
                        budget.extend(job_key, 1)
                    http.backoff(1)
            raise AssertionError("unreachable")
        finally:
            http.close()

    def _v2_upload(self, job: JobInput, data: bytes, name: str, content_type: str, budget: RequestBudget) -> str:
        """`POST /s2s/v2.0/file` (every field required, §2), then the PUT it hands back."""
        entry = {"content_type": content_type, "file_name": name, "file_size": len(data)}
        status, body = self._v2_call("POST", v2.FILE_PATH, job_key=job.job_id, budget=budget, json={"files": [entry]})
        if status >= 400:
            self._raise_http(status, body, during="the file upload")
        return self._put_presigned(body, data)

    def _v2_start(
        self, job: JobInput, feature: Feature, prepared: Prepared, budget: RequestBudget, *, attempt: int
    ) -> str:
        """Upload, then create the task: sent at most once.

        v2 has no request_id (§6): a create that reached Perfect Corp but whose
        answer we lost would be billed again if repeated. So it is retried only
        when it provably never arrived (no connection) or was refused (429, 4xx),
        and a "creating" mark is saved before it goes out. A job that finds the
        mark without a task id (its worker died in between) ends with a clear
        message instead of creating a second task; staff see the count.
        """
        if job.state.get("task_id"):
            return str(job.state["task_id"])  # created and saved; the runner had not stored it yet
        if job.state.get("creating"):
            job.save_state(create_unconfirmed=True, creating=None)
            log.error("job %s: a Perfect Corp create may have run before its worker stopped", job.job_id)
            raise VendorError(UNCONFIRMED_CREATE, permanent=True)
        op_key = job.operation.key
        sources = {
            "image": (prepared.image, "photo.jpg", "image/jpeg"),
            "reference": (prepared.reference, "reference.jpg", "image/jpeg"),
            "mask": (prepared.mask, "mask.png", "image/png"),
        }
        uploads: dict[str, list] = dict(job.state.get("uploads") or {})
        file_ids: dict[str, str] = {}
        borrowed_any = False
        for source, field in v2.files_for(op_key, with_reference=bool(prepared.reference)):
            saved = uploads.get(field)
            if saved and time.time() - saved[1] < UPLOAD_VALID_S - 3600:
                file_ids[field] = saved[0]
                continue
            data, name, content_type = sources[source]
            send = functools.partial(self._v2_upload, job, data, name, content_type, budget)
            file_ids[field], borrowed = self._uploaded_once(job, data, "v2", send)
            uploads[field] = [file_ids[field], time.time()]
            if borrowed:
                borrowed_any = True  # saved with the "creating" mark below: one write
            else:
                job.save_state(uploads=uploads)
        payload = v2.body(op_key, job.params, file_ids)
        job.save_state(creating=time.time(), attempt=attempt, webhook=self.uses_webhooks(), uploads=uploads,
                       **({"borrowed_files": True} if borrowed_any else {}))
        try:
            status, body = self._v2_call(
                "POST",
                v2.task_path(op_key),
                job_key=job.job_id,
                budget=budget,
                json=payload,
                repeat_garbled=False,
                retry_statuses=(429,),  # refused, not run: safe to send again
                retry_errors=NOT_SENT_ERRORS,  # never arrived: safe to send again
            )
        except VendorError as exc:
            refused = isinstance(exc, KeyRefused) or getattr(exc, "not_sent", False) or getattr(exc, "status", 0) == 429
            if refused:
                job.save_state(creating=None)
                raise
            job.save_state(create_unconfirmed=True, creating=None)
            log.error("job %s: Perfect Corp create answer lost (%s); not sent again", job.job_id, exc.message)
            raise VendorError(UNCONFIRMED_CREATE, permanent=True) from None
        if status >= 500:
            job.save_state(create_unconfirmed=True, creating=None)
            log.error("job %s: Perfect Corp answered %s to a create; not sent again", job.job_id, status)
            raise VendorError(UNCONFIRMED_CREATE, permanent=True)
        if status >= 400:
            job.save_state(creating=None)  # refused: no task exists
            if self._upload_again(job, status):
                # A file whose bytes never arrived (§2), or no longer there: upload again, once.
                job.save_state(uploads={}, reuploaded=True, borrowed_files=None)
                budget.extend(job.job_id, len(file_ids) + 1)
                return self._v2_start(job, feature, prepared, budget, attempt=attempt)
            self._raise_http(status, body, during="the task")
        task_id = self._result(body).get("task_id")
        if not isinstance(task_id, str) or not task_id:
            job.save_state(create_unconfirmed=True, creating=None)
            raise VendorError(UNCONFIRMED_CREATE, permanent=True)
        now = time.time()
        job.save_state(task_id=task_id, run_at=now, last_poll=now, last_running=None, creating=None)
        return task_id

    def _v2_poll(self, job: JobInput, task_id: str) -> Progress:
        feature = self.feature(job.operation.key)
        budget = self.budget()
        task_id = job.state.get("task_id") or task_id
        run_at = float(job.state.get("run_at") or time.time())
        if time.time() - run_at > settings.PERFECTCORP_JOB_DEADLINE_S:
            budget.release(job.job_id)
            raise VendorError(
                f"{self.label} took too long with this photo and the job was stopped. Please try again.",
                permanent=True,
            )
        try:
            status, body = self._v2_call(
                "GET",
                v2.status_path(job.operation.key, task_id),
                job_key=job.job_id,
                budget=budget,
                poll=True,
                repeat_garbled=False,
                retry_statuses=(429, 502, 503, 504),  # a 500 may be TaskTimeout: read it
            )
        except UnreadableAnswer:
            if not self.garbled_poll_allowed(job, last_poll=time.time()):
                budget.release(job.job_id)
                raise
            return Progress(False, PROCESSING, None, poll_after=min(1.0, self._max_gap()), webhook=False)
        except VendorError:
            budget.release(job.job_id)
            raise
        now = time.time()
        code = str(body.get("error_code") or body.get("error") or "")
        if status == 400 and code in ("InvalidTaskId", "Invalid task ID"):
            # Not run again: a finished task that expired unpolled may have been charged (§3).
            budget.release(job.job_id)
            log.warning("Perfect Corp no longer knows the task of job %s", job.job_id)
            raise VendorError(EXPIRED, permanent=True)
        if status == 500 and code in ("TaskTimeout", "Task execution timed out"):
            budget.release(job.job_id)
            raise VendorError(TIMED_OUT_THERE, permanent=True)
        if status >= 400:
            budget.release(job.job_id)
            self._raise_http(status, body, during="the status check")
        data = self._result(body)
        interval = _seconds(data.get("polling_interval")) if data.get("polling_interval") is not None else 0.0
        state = str(data.get("task_status") or "").lower()
        elapsed = now - run_at
        if state == "success":
            self._learn(feature, finished_at=elapsed, last_running_at=job.state.get("last_running"), interval=interval)
            items, facts = v2.result_items(data.get("results"))
            try:
                outputs = self._download_items(job, feature, [(item, facts) for item in items])
            finally:
                budget.release(job.job_id)
            meta = {"perfectcorp_feature": v2.feature_path(job.operation.key), "engine_seconds": round(elapsed, 1)}
            return Progress(True, "Done", 1.0, outputs=tuple(outputs), meta=meta)
        if state == "error":
            # Engine failures come as HTTP 200 (§3); units are charged only on success.
            code = str(data.get("error") or "")
            if code in RETRY_ONCE:
                return self._run_again(
                    job, feature, budget, reason=code, message=ENGINE_MESSAGES.get(code, UNKNOWN_ENGINE_ERROR)
                )
            budget.release(job.job_id)
            if code not in ENGINE_MESSAGES:
                detail = str(data.get("error_message"))[:200]
                log.error("Perfect Corp engine error we don't know: %r (%s)", code[:80], detail)
            raise VendorError(ENGINE_MESSAGES.get(code, UNKNOWN_ENGINE_ERROR), permanent=True)
        if state != "running":
            log.warning("Perfect Corp reported an unknown task_status %r; treating it as running", state[:40])
        job.save_state(last_poll=now, last_running=elapsed)
        return self._running(job, feature, self._fraction(feature, elapsed), elapsed=elapsed, interval=interval)

    def _v2_template_groups(self, feature_key: str) -> Iterator[dict]:
        """v2 has no style groups: its templates' `category_name`s stand in for them."""
        seen: dict[str, str] = {}
        for template in self._v2_template_list(feature_key, fresh=True):
            category = template["category"]
            if category not in seen:
                seen[category] = _group_id(category)
                yield {"id": seen[category], "name": category, "title": category}

    def _v2_templates(self, feature_key: str, group_id: str | int) -> Iterator[dict]:
        for template in self._v2_template_list(feature_key):
            if _group_id(template["category"]) == str(group_id):
                yield {
                    "id": template["id"],
                    "name": template["title"],
                    "title": template["title"],
                    "thumb": template["thumb"],
                    "group_id": str(group_id),
                }

    def _v2_template_list(self, feature_key: str, *, fresh: bool = False) -> list[dict]:
        """Every template of a catalogue (`GET /s2s/v2.x/task/template/{feature}`, 20 a page).

        The listing is read once per sync (`fresh` on the group pass) and kept
        for the per-group pass, so a sync costs one request per page.
        """
        op_key = self._op_key(self.feature(feature_key))
        cache_key = f"perfectcorp:v2-templates:{self._namespace()}:{op_key}"
        if not fresh:
            known = cache.get(cache_key)
            if known is not None:
                return known
        templates = []
        for item in self._pages_v2(v2.template_path(op_key)):
            templates.append(
                {
                    "id": str(item["id"]),
                    "title": str(item.get("title") or item["id"]),
                    "thumb": str(item.get("thumb") or ""),
                    "category": str(item.get("category_name") or "Templates").strip() or "Templates",
                }
            )
        cache.set(cache_key, templates, timeout=3600)
        return templates

    def _pages_v2(self, path: str) -> Iterator[dict]:
        budget = self.budget()
        token: str | None = None
        for _ in range(500):  # a runaway next_token must not loop forever
            query = {"page_size": "20"}
            if token:
                query["starting_token"] = token
            status, body = self._v2_call("GET", path, job_key=None, budget=budget, params=query)
            if status >= 400:
                self._raise_http(status, body, during="the template listing")
            data = self._result(body)
            items = data.get("templates") if isinstance(data.get("templates"), list) else []
            for item in items:
                if isinstance(item, dict) and item.get("id") is not None:
                    yield item
            next_token = data.get("next_token")
            if not items or next_token in (None, "", 0):
                return
            token = str(next_token)

    # --- style catalogue (called by the sync command) ------------------------------------------

    def list_style_groups(self, feature_key: str) -> Iterator[dict]:
        """Every style group (v1) or template category (v2) of a catalogue; see `_v1_style_groups`."""
        return getattr(self, self.protocol().list_groups)(feature_key)

    def list_styles(self, feature_key: str, group_id: str | int) -> Iterator[dict]:
        """Every style (v1) or template (v2) of one group; see `_v1_styles`."""
        return getattr(self, self.protocol().list_styles)(feature_key, group_id)

    def _v1_style_groups(self, feature_key: str) -> Iterator[dict]:
        """Every style group of a feature, page by page (20 a page).

        `feature_key` is an operation key ("pc_hairstyle") or a §1.5 name
        ("hair-style"). Yields {"id": str (exact, ids exceed 2**53), "name": str, "title": str (the same)}.
        Each page is one request from the shared budget, behind running jobs.
        """
        feature = self.feature(feature_key)
        for item in self._pages(
            f"/s2s/v1.0/task/style-group/{self.path_segment(feature)}", {}, ("groups", "style_groups")
        ):
            title = _title(item)
            yield {"id": str(item["id"]), "name": title, "title": title}

    def _v1_styles(self, feature_key: str, group_id: str | int) -> Iterator[dict]:
        """Every style of one group: {"id", "name", "title" (= name), "thumb" (URL or ""), "group_id"}, all str.

        Also remembers each style's group, so a job that only knows the
        style id can name its group to the vendor.
        """
        feature = self.feature(feature_key)
        for item in self._pages(
            f"/s2s/v1.0/task/style/{self.path_segment(feature)}", {"style_group_id": str(group_id)}, ("styles",)
        ):
            info = item.get("info") if isinstance(item.get("info"), dict) else {}
            style = {
                "id": str(item["id"]),
                "name": _title(item),
                "title": _title(item),
                "thumb": str(info.get("thumb") or item.get("thumb") or ""),
                "group_id": str(group_id),
            }
            cache.set(f"perfectcorp:style-group:{feature.name}:{style['id']}", style["group_id"], timeout=30 * 86400)
            yield style

    def style_group_of(self, feature: Feature, style_id: int, budget: RequestBudget | None = None) -> int:
        """The group of a style: remembered from listing, else found by listing the catalogue."""
        known = cache.get(f"perfectcorp:style-group:{feature.name}:{style_id}")
        if known:
            return int(known)
        for group in self._v1_style_groups(feature.name):
            for style in self._v1_styles(feature.name, group["id"]):
                if style["id"] == str(style_id):
                    return int(group["id"])
        raise VendorError(STYLE_GONE, permanent=True)

    def _pages(self, path: str, params: dict, keys: tuple[str, ...]) -> Iterator[dict]:
        budget = self.budget()
        token: str | None = None
        for _ in range(500):  # a runaway next_token must not loop forever
            query = {**params, "page_size": "20"}
            if token:
                query["starting_token"] = token
            status, body = self._call("GET", path, job_key=None, budget=budget, params=query)
            if status >= 400:
                self._raise_http(status, body, during="the style listing")
            result = self._result(body)
            items = next((result[k] for k in keys if isinstance(result.get(k), list)), [])
            for item in items:
                if isinstance(item, dict) and item.get("id") is not None:
                    yield item
            next_token = result.get("next_token")
            if not items or next_token in (None, "", 0):
                return
            token = str(next_token)


class KeyRefused(VendorError):
    """The vendor answered 401 to our key or token: nothing was run."""


def _group_id(category: str) -> str:
    """A stable group id (≤ 32 characters) for a v2 template category."""
    return "c" + hashlib.sha1(category.encode()).hexdigest()[:15]


def unconfirmed_creates(hours: int = 24) -> int:
    """Jobs that ended because a v2 create may have run unseen (staff console)."""
    from datetime import timedelta

    from django.utils import timezone

    from studio.models import Job

    since = timezone.now() - timedelta(hours=hours)
    return Job.objects.filter(
        provider="perfectcorp", created_at__gte=since, vendor_state__create_unconfirmed=True
    ).count()


def _title(item: dict) -> str:
    info = item.get("info") if isinstance(item.get("info"), dict) else {}
    return str(info.get("title") or item.get("title") or item.get("name") or info.get("name") or item["id"])


def _seconds(polling_interval) -> float:
    try:
        return max(0.0, float(polling_interval) / 1000)
    except (TypeError, ValueError):
        return 1.0


@dataclass(frozen=True)
class _PreparedPhoto:
    jpeg: bytes  # what is uploaded
    size: tuple[int, int]
    factor: float | None  # how much it was reduced (face boxes scale by it); None: not resized


# Personal data: a few entries, a minute each, this process only (see recent_photos).
_prepared_photos: RecentlyPrepared[_PreparedPhoto] = RecentlyPrepared(entries=4, ttl=60.0)

# The file ids of files uploaded lately, by their bytes and where they went (protocol, base
# URL, account; v1 also the feature, whose file API it is): a batch of styles on one photo
# uploads it once. Perfect Corp lets one file serve many tasks while it keeps it (v1.0: "to get
# a new result from the same file, increment request_id"; files kept a day, vendor-apis.md
# §1.9.4-5; v2's retention page: 30 days, secondary source); ten minutes by default is inside
# that (PERFECTCORP_UPLOAD_REUSE_S, 0 turns it off). A create refused on a remembered file is
# sent once more on a fresh upload (`_upload_again`). Ids only, no bytes; this process only.
_recent_uploads: RecentlyPrepared[str] = RecentlyPrepared(entries=32)


def _prepare_photo(data: bytes, max_side: int | None) -> _PreparedPhoto:
    """The user's photo as uploaded: within `max_side`, a metadata-free JPEG under the size limit."""
    image = imaging.load_image(data)
    factor = None
    if max_side and max(image.size) > max_side:
        factor = max_side / max(image.size)
        image = imaging.resize_long_side(image, max_side)
    return _PreparedPhoto(jpeg=_jpeg_under(image, MAX_FILE_BYTES), size=image.size, factor=factor)


def _jpeg_under(image: Image.Image, limit: int) -> bytes:
    """A metadata-free JPEG under `limit` bytes (quality steps down if it must)."""
    for quality in (92, 85, 75, 60):
        data = imaging.encode_jpeg(image, quality=quality)
        if len(data) < limit:
            return data
    raise VendorError("This photo is too large. Use an image under 10 MB.", permanent=True)
