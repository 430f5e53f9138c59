"""A local emulator of Perfect Corp's Perfect AI API, server-to-server v1.0
(and, through perfectcorp_v2.V2Family, the v2 family beside it).

It speaks the protocol restated in ../shared/vendor-apis.md §1 and does what
§1.11 asks of an emulator: RSA-encrypted `id_token` auth with 2-hour bearer
tokens, file slots with pre-signed uploads it serves itself, paginated style
catalogues with ids above 2^53, task runs de-duplicated by `request_id`,
status polling with `polling_interval`, the 10-second rule, both rate
limits, expiring result URLs and `dst_id` chaining. Results are real pictures
(see perfectcorp_pictures) so the sandbox flow is visible.

Times come from `self.clock` (tests move it forward to expire tokens, URLs
and files) and every duration is an attribute, so tests run the engine in
near zero time and the benchmark in a scaled one.

Fault and variant switches (`emulator.faults[name] = value`):

  counted (an int: the next N matching API calls; `fault_path` = regex to
  restrict them to some paths); the names are those of the Emulator base, but
  here they strike API calls only (not storage), and a faulted call is counted
  in `fault_<name>`, not logged:
    "429", "500", "502", "503", "401"  answer that HTTP status
    "read_timeout", "connect_timeout", "reset"   fail below HTTP, before the call is handled
    "reset_after"      handle the call, then drop the connection (the answer is lost)
    "malformed_json"   answer 200 with a body that is not JSON
  engine:
    "engine_error"        a §1.8.2 code: tasks end in `error` with it
    "engine_error_count"  only for the next N tasks (default: every task while set)
    "hang"                tasks stay `running` forever
    "lost_task"           (counted) the next N tasks are lost at their first poll
    "unknown_status"      report this status string instead of "running"
    "strict_polling"      the loss window is `polling_interval`, not 10 s
    "lenient_task_id"     accept an unencoded "+" (read as a space) in task_id
    "duplicate_request"   "same_task" (default) or "error": the answer to a repeated request_id
    "never_uploaded"      "task_error" (default) or "http_404": running on a never-uploaded slot
    "zero_credits"        runs answer 400 CreditInsufficiency
    "colorize_variants"   number of colorize results (default 1)
    "custom_info_at"      "results" (default) or "result": where aging's custom_info sits
  auth:
    "padding"             "pkcs1v15" (default) or "oaep-sha1": what the server decrypts with
  body and key-name variants (§1.10, §6):
    "envelope"            "result" (default) or "data"
    "group_key"           "groups" (default) or "style_groups"
    "title_style"         "info" (default), "flat" (title beside id) or "name"
    "thumb_position"      "info" (default) or "flat"
    "end_token"           "absent" (default), "null" or "empty": how the last page says so
    "feature_names"       {canonical: served} e.g. {"text-to-image": "image-gen"}
  rate limits:
    "window"              "sliding" (default) or "fixed"
    "count_storage"       uploads/downloads count towards the limits too (default off)
  storage:
    "expired_urls"        result URLs answer 403 as if 2 hours had passed
    "slow_download"       seconds to stall before serving a result file
    "oversized_download"  serve a result file padded to this many bytes
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import random
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from PIL import Image

from studio.vendors.emulators import perfectcorp_account
from studio.vendors.emulators import perfectcorp_pictures as pictures
from studio.vendors.emulators.base import Emulator, NetworkFault, json_response
from studio.vendors.emulators.perfectcorp_v2 import V2Family, is_v2_path

SANDBOX_WEBHOOK_SECRET = "whsec_cG9ydHJhaXQtc3R1ZGlvLXNhbmRib3gtd2ViaG9vay1zaWduaW5nLWtleSE="
SANDBOX_KEY = "pc_sandbox_v2_api_key"  # the v2 API key the emulator accepts (a test value, public)
MAX_FILE_BYTES = 10 * 1024 * 1024
STYLE_FEATURES = ("hair-style", "wig", "hair-ext", "hair-bang", "hair-vol", "text-to-image")
HAIR_FEATURES = ("hair-style", "wig", "hair-ext", "hair-bang", "hair-vol")
JPG = ("image/jpg", "image/jpeg")
JPG_PNG = ("image/jpg", "image/jpeg", "image/png")


@dataclass(frozen=True)
class FeatureSpec:
    content_types: tuple[str, ...]
    output_exts: tuple[str, ...]
    max_side: int | None
    needs_face: bool = False
    file_sets: tuple[str, ...] = ("src_ids",)
    request_id_optional: bool = False


FEATURES: dict[str, FeatureSpec] = {
    "hair-style": FeatureSpec(JPG, ("jpg",), 1024, needs_face=True),
    "wig": FeatureSpec(JPG_PNG, ("jpg",), 1024, needs_face=True),
    "hair-ext": FeatureSpec(JPG_PNG, ("jpg",), 1024, needs_face=True, request_id_optional=True),
    "hair-bang": FeatureSpec(JPG_PNG, ("jpg",), 1024, needs_face=True, request_id_optional=True),
    "hair-vol": FeatureSpec(JPG_PNG, ("jpg",), 1024, needs_face=True, request_id_optional=True),
    "aging": FeatureSpec(JPG, ("jpg",), 4096, needs_face=True),
    "mu-trans-rec": FeatureSpec(
        (*JPG_PNG, "image/tiff", "image/gif"), ("jpg",), 1024, needs_face=True, file_sets=("src_ids", "ref_ids")
    ),
    "obj-removal": FeatureSpec(JPG_PNG, ("jpg", "webp"), 4096, file_sets=("src_ids", "mask_ids")),
    "colorize": FeatureSpec(JPG_PNG, ("jpg", "webp"), 4096),
    "sod": FeatureSpec(JPG_PNG, ("png", "webp"), 4096),
    "enhance": FeatureSpec(JPG_PNG, ("jpg", "webp"), 4096),
    "text-to-image": FeatureSpec((), ("jpg",), None, file_sets=()),
}

GROUP_TITLES = {
    "hair-style": ("Women", "Men", "Short"),
    "wig": ("Long wigs", "Bob wigs", "Colour wigs"),
    "hair-ext": ("Straight", "Wavy", "Curly"),
    "hair-bang": ("Curtain", "Blunt", "Side-swept"),
    "hair-vol": ("Natural", "Full", "Extra"),
    "text-to-image": ("Photo", "Illustration", "Painting"),
}
STYLE_WORDS = (
    "Layered bob",
    "Pixie",
    "Beach waves",
    "Sleek straight",
    "Curly shag",
    "French bob",
    "Lob",
    "Undercut",
    "Braided crown",
    "Messy bun",
    "Wolf cut",
    "Butterfly layers",
    "Buzz",
    "Quiff",
    "Afro",
    "Mullet",
    "Side part",
    "Curtain fringe",
    "Ponytail",
    "Feathered",
    "Blowout",
    "Crop",
    "Asymmetric",
    "Top knot",
)
GROUP_ID_BASE = 20_480_000_000_000_001  # > 2**53 and odd: a float cannot hold these exactly
STYLE_ID_BASE = 30_720_000_000_001_001
TOKEN_BASE = 40_960_000_000_000_003

_XML_403 = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'


def _b64(n: int) -> str:
    return base64.b64encode(secrets.token_bytes(n)).decode()


def _opaque_id(prefix: str) -> str:
    """Ids like the vendor's: base64 with '+', '/' and '=' in them, so encoding bugs surface."""
    return f"{prefix}+{_b64(9)}/{_b64(8)}"


@dataclass
class Task:
    id: str
    feature: str
    client_id: str
    created: float
    duration: float
    inputs: dict[str, list[str]]
    params: dict[str, Any]
    output_ext: str
    error: str | None = None
    status: str = "running"
    last_seen: float = 0.0
    results: list[dict] = field(default_factory=list)
    custom_info: dict | None = None
    lose_at_first_poll: bool = False
    protocol: str = "v1"
    v2_path: str = ""  # "2.1/hair-transfer": where a v2 task is polled
    v2_results: str = "url"  # "url" | "output"


class PerfectCorpEmulator(V2Family, Emulator):
    vendor = "Perfect Corp"

    def __init__(self, *, clock=None, base_url: str = "http://perfectcorp.emulator.invalid", key_bits: int = 1024):
        super().__init__(clock=clock, base_url=base_url)
        # The test key pair: the public half is the "secret key" an adapter is configured with.
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        self.public_key_b64 = base64.b64encode(
            self._private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
        self.client_id = secrets.token_hex(16)  # 32 characters, like the console's keys
        self._signing_key = secrets.token_bytes(16)
        # Durations (seconds) and limits; tests and the benchmark change them.
        self.token_ttl = 7200.0
        self.timestamp_skew = 300.0
        self.engine_seconds = 3.0
        self.engine_seconds_by_feature: dict[str, float] = {}
        self.engine_jitter = 0.0  # each task takes engine_seconds × (1 ± this), uniformly (benchmarks)
        self.polling_interval_ms = 1000
        self.lost_after = 10.0
        self.rate_per_token = (100, 60.0)  # (requests, window seconds)
        self.rate_per_ip = (100, 300.0)
        self.upload_url_ttl = 7200.0
        self.result_url_ttl = 7200.0
        self.file_ttl = 86400.0
        self.result_ttl = 30 * 86400.0
        self.credits: int | None = None  # None: unlimited
        # State.
        self.tokens: dict[str, float] = {}  # token → expiry
        self.files: dict[str, dict] = {}  # file_id / dst_id → record
        self.slots: dict[str, dict] = {}  # upload slot → record
        self.tasks: dict[str, Task] = {}
        self.requests_seen: dict[tuple, str] = {}  # de-duplication key → task id
        self.stored: dict[str, dict] = {}  # result token → {data, content_type, expires}
        self._hits: dict[str, deque] = {}
        self._engine_lock = threading.Lock()
        self.catalogue = self._seed_catalogue()
        self._add_routes()
        self._init_v2(SANDBOX_KEY, SANDBOX_WEBHOOK_SECRET)
        # v2 task deletion and price list (perfectcorp_account.py); last, so the v2 key set exists.
        perfectcorp_account.install(self)

    # --- routes ----------------------------------------------------------------------

    def _add_routes(self) -> None:
        feature = r"(?P<feature>[a-z0-9-]+)"
        self.route("POST", r"/s2s/v1\.0/client/auth", self._auth)
        self.route("GET", r"/s2s/v1\.0/client/credit", self._credit)
        self.route("POST", r"/s2s/v(?P<version>1\.[01])/file/" + feature, self._create_files)
        self.route("GET", r"/s2s/v1\.0/task/style-group/" + feature, self._list_groups)
        self.route("GET", r"/s2s/v1\.0/task/style/" + feature, self._list_styles)
        self.route("POST", r"/s2s/v1\.0/task/" + feature, self._run_task)
        self.route("GET", r"/s2s/v1\.0/task/" + feature, self._task_status)
        self.route("PUT", r"/storage/upload/(?P<slot>[A-Za-z0-9_-]+)", self._upload)
        self.route("GET", r"/storage/result/(?P<token>[A-Za-z0-9_-]+)\.(?P<ext>jpg|png|webp)", self._download)
        self.route("GET", r"/storage/thumbs/(?P<style_id>[0-9]+)\.jpg", self._thumb)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        api_call = path.startswith("/s2s/")
        if api_call:
            for kind in ("connect_timeout", "read_timeout", "reset"):
                if self._take(kind, path):
                    with self.lock:
                        self.counters["requests"] += 1
                        self.counters[f"fault_{kind}"] += 1
                    raise NetworkFault(kind)
        if api_call or self.fault("count_storage"):
            limited = self._rate_limited(request)
            if limited is not None:
                with self.lock:
                    self.counters["requests"] += 1
                    self.log.append((request.method, path))
                return limited
        if api_call:
            for status in ("429", "500", "502", "503", "401"):
                if self._take(status, path):
                    with self.lock:
                        self.counters["requests"] += 1
                        self.counters[f"fault_{status}"] += 1
                    return self._error(int(status), _STATUS_TEXT[int(status)], _STATUS_CODE.get(int(status)))
            if self._canonical_feature_path(request) is None:
                with self.lock:
                    self.counters["requests"] += 1
                return self._error(404, "Not Found", "NotFound")
        # Not super().handle(): the generic switches above are Perfect Corp's own (API calls
        # only, around its rate limits), and must not fire a second time.
        with self.lock:
            self.counters["requests"] += 1
            self.log.append((request.method, path))
        response = self.dispatch(request)
        if api_call and self._take("malformed_json", path):
            return httpx.Response(200, content=b"<html>Service Unavailable", headers={"Content-Type": "text/html"})
        if api_call and self._take("reset_after", path):
            raise NetworkFault("reset")
        return response

    def _take(self, name: str, path: str) -> bool:
        pattern = self.fault("fault_path")
        if pattern and not re.search(pattern, path):
            return False
        return self.take_fault(name)

    def _canonical_feature_path(self, request: httpx.Request) -> str | None:
        """Rewrite a served feature name (switch "feature_names") to its canonical one."""
        served = self.fault("feature_names") or {}
        if not served:
            return request.url.path
        path = request.url.path
        for canonical, name in served.items():
            if re.search(rf"/{re.escape(canonical)}\Z", path) and canonical != name:
                return None  # the canonical name is not served under this variant
        return path

    def _feature(self, name: str) -> str | None:
        served = {v: k for k, v in (self.fault("feature_names") or {}).items()}
        name = served.get(name, name)
        return name if name in FEATURES else None

    # --- envelopes and errors -------------------------------------------------------------

    def _ok(self, result: dict) -> httpx.Response:
        return json_response(200, {"status": 200, self.fault("envelope", "result"): result})

    @staticmethod
    def _error(status: int, error: str, code: str | None = None) -> httpx.Response:
        body = {"status": status, "error": error}
        if code:
            body["error_code"] = code
        return json_response(status, body)

    def _bad(self, message: str, code: str = "InvalidParameters") -> httpx.Response:
        return self._error(400, message, code)

    @staticmethod
    def _body(request: httpx.Request) -> dict | None:
        try:
            body = json.loads(request.content or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    # --- rate limits ----------------------------------------------------------------------

    def _rate_limited(self, request: httpx.Request) -> httpx.Response | None:
        """Both limits must hold; every call counts (polls included). None when allowed."""
        now = self.clock.now()
        token = _bearer(request)
        if is_v2_path(request.url.path):
            windows = self.v2_windows(request)  # v2: 250 / 300 s per IP and per key
        else:
            windows = [("ip", *self.rate_per_ip)]
            if token:
                windows.append((f"token:{token}", *self.rate_per_token))
        fixed = self.fault("window") == "fixed"
        with self.lock:
            for key, limit, window in windows:
                hits = self._hits.setdefault(key, deque())
                if fixed:
                    start = now - (now % window)
                    while hits and hits[0] < start:
                        hits.popleft()
                else:
                    while hits and hits[0] <= now - window:
                        hits.popleft()
                if len(hits) >= limit:
                    self.counters["429"] += 1
                    self.counters[f"429_{key.split(':')[0]}"] += 1
                    return json_response(429, {"status": 429, "error": "Too many requests"})
            for key, _limit, _window in windows:
                self._hits[key].append(now)
        return None

    # --- auth -----------------------------------------------------------------------------

    def id_token(self, client_id: str | None = None, timestamp_ms: int | None = None, padding: str = "pkcs1v15") -> str:
        """Build an id_token as a client would (for tests of the server side)."""
        ts = int(self.clock.now() * 1000) if timestamp_ms is None else timestamp_ms
        plain = f"client_id={client_id or self.client_id}&timestamp={ts}".encode()
        return base64.b64encode(self._private_key.public_key().encrypt(plain, _padding(padding))).decode()

    def _auth(self, request: httpx.Request) -> httpx.Response:
        body = self._body(request)
        if not body or not isinstance(body.get("client_id"), str) or not isinstance(body.get("id_token"), str):
            return self._bad("client_id and id_token are required")
        unauthorized = self._error(401, "Unauthorized", "InvalidAccessToken")
        try:
            plain = self._private_key.decrypt(
                base64.b64decode(body["id_token"], validate=True), _padding(self.fault("padding", "pkcs1v15"))
            ).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            self.counters["auth_rejected"] += 1
            return unauthorized
        match = re.fullmatch(r"client_id=(?P<client_id>[^&]+)&timestamp=(?P<ts>\d{13})", plain)
        if not match or match["client_id"] != body["client_id"] or body["client_id"] != self.client_id:
            self.counters["auth_rejected"] += 1
            return unauthorized
        if abs(self.clock.now() - int(match["ts"]) / 1000) > self.timestamp_skew:
            self.counters["auth_rejected"] += 1
            return unauthorized
        token = f"at-{secrets.token_hex(16)}"
        with self.lock:
            self.tokens[token] = self.clock.now() + self.token_ttl
            self.counters["auth"] += 1
        return self._ok({"access_token": token})

    def _authorized(self, request: httpx.Request) -> bool:
        token = _bearer(request)
        expiry = self.tokens.get(token or "")
        return expiry is not None and self.clock.now() < expiry

    def expire_tokens(self) -> None:
        """Make every issued token invalid (as after 2 hours)."""
        with self.lock:
            for token in self.tokens:
                self.tokens[token] = 0.0

    def _credit(self, request: httpx.Request) -> httpx.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized", "InvalidAccessToken")
        amount = 1000 if self.credits is None else self.credits
        return json_response(200, {"status": 200, "results": [{"type": "subscription", "amount": amount}]})

    # --- files ------------------------------------------------------------------------------

    def _create_files(self, request: httpx.Request, version: str, feature: str) -> httpx.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized", "InvalidAccessToken")
        name = self._feature(feature)
        if name is None or not FEATURES[name].content_types:
            return self._error(404, "Not Found", "NotFound")
        body = self._body(request)
        files = body.get("files") if body else None
        if not isinstance(files, list) or not files:
            return self._bad("files is required")
        answers = []
        for entry in files:
            if not isinstance(entry, dict) or entry.get("content_type") not in FEATURES[name].content_types:
                return self._bad("unsupported content_type")
            if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
                return self._bad("file_name is required")
            size = entry.get("file_size")
            if version == "1.1" and (not isinstance(size, int) or size <= 0 or size >= MAX_FILE_BYTES):
                return self._bad("file_size is required and must be under 10 MB")
            file_id, slot = _opaque_id("F"), secrets.token_urlsafe(12)
            now = self.clock.now()
            with self.lock:
                self.files[file_id] = {
                    "feature": name,
                    "content_type": entry["content_type"],
                    "data": None,
                    "created": now,
                    "kind": "upload",
                }
                self.slots[slot] = {
                    "file_id": file_id,
                    "content_type": entry["content_type"],
                    "expires": now + self.upload_url_ttl,
                    "size": size if version == "1.1" else None,
                }
            headers = {"Content-Type": entry["content_type"]}
            if version == "1.1":
                headers["Content-Length"] = str(size)
            query = urlencode({"X-Amz-Expires": int(self.upload_url_ttl), "X-Amz-Signature": self._sign(slot)})
            answers.append(
                {
                    "content_type": entry["content_type"],
                    "file_name": entry["file_name"],
                    "file_id": file_id,
                    "requests": [
                        {"method": "PUT", "url": self.url(f"/storage/upload/{slot}?{query}"), "headers": headers}
                    ],
                }
            )
        self.counters["file_slots"] += len(answers)
        return self._ok({"files": answers})

    def _sign(self, value: str) -> str:
        return hmac.new(self._signing_key, value.encode(), hashlib.sha256).hexdigest()[:24]

    def _upload(self, request: httpx.Request, slot: str) -> httpx.Response:
        """The pre-signed PUT, checked the way S3 checks one."""
        record = self.slots.get(slot)
        if record is None or request.url.params.get("X-Amz-Signature") != self._sign(slot):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match.")
        if request.headers.get("Authorization"):
            self.counters["upload_rejected"] += 1
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed.")
        if self.clock.now() > record["expires"]:
            return _s3_error(403, "AccessDenied", "Request has expired")
        if request.headers.get("Content-Type") != record["content_type"]:
            self.counters["upload_rejected"] += 1
            return _s3_error(403, "SignatureDoesNotMatch", "Content-Type does not match the signed request.")
        if record["size"] is not None and len(request.content) != record["size"]:
            self.counters["upload_rejected"] += 1
            return _s3_error(403, "SignatureDoesNotMatch", "Content-Length does not match the signed request.")
        with self.lock:
            self.files[record["file_id"]].update(data=bytes(request.content), uploaded=self.clock.now())
            self.counters["uploads"] += 1
        return httpx.Response(200)

    # --- style catalogue -------------------------------------------------------------------

    def _seed_catalogue(self) -> dict[str, list[dict]]:
        catalogue = {}
        for f_index, feature in enumerate(STYLE_FEATURES):
            groups = []
            for g_index, title in enumerate(GROUP_TITLES[feature]):
                count = 23 if g_index == 0 else 6  # the first group needs two pages at page_size 20
                group_id = GROUP_ID_BASE + f_index * 1000 + g_index * 10
                styles = [
                    {
                        "id": STYLE_ID_BASE + f_index * 100_000 + g_index * 1000 + s * 2,
                        "title": f"{STYLE_WORDS[(s + g_index * 5) % len(STYLE_WORDS)]} {s + 1}",
                    }
                    for s in range(count)
                ]
                groups.append({"id": group_id, "title": title, "styles": styles})
            catalogue[feature] = groups
        return catalogue

    def style_ids(self, feature: str) -> list[tuple[int, int]]:
        """(group id, style id) of every style of a feature, for tests."""
        return [(g["id"], s["id"]) for g in self.catalogue.get(feature, []) for s in g["styles"]]

    def _page(self, request: httpx.Request, items: list) -> tuple[list, Any] | httpx.Response:
        raw_size = request.url.params.get("page_size", "20")
        try:
            size = int(raw_size)
        except ValueError:
            return self._bad("page_size must be an integer")
        if not 1 <= size <= 20:
            return self._bad("page_size must be between 1 and 20")
        start = 0
        token = request.url.params.get("starting_token")
        if token:
            try:
                start = int(token) - TOKEN_BASE
            except ValueError:
                return self._bad("invalid starting_token")
            if not 0 <= start <= len(items):
                return self._bad("invalid starting_token")
        page = items[start : start + size]
        end = start + size >= len(items)
        next_token = None if end else str(TOKEN_BASE + start + size)
        return page, next_token

    def _paged_answer(self, key: str, page: list, next_token) -> httpx.Response:
        result: dict[str, Any] = {key: page}
        if next_token is not None:
            result["next_token"] = next_token
        else:
            variant = self.fault("end_token", "absent")
            if variant == "null":
                result["next_token"] = None
            elif variant == "empty":
                result["next_token"] = ""
        return self._ok(result)

    def _titled(self, item: dict, thumb: str | None = None) -> dict:
        style = self.fault("title_style", "info")
        title_key = "name" if style == "name" else "title"
        out: dict[str, Any] = {"id": item["id"]}
        info: dict[str, Any] = {}
        (out if style in ("flat", "name") else info)[title_key] = item["title"]
        if thumb is not None:
            (out if self.fault("thumb_position", "info") == "flat" else info)["thumb"] = thumb
        if info:
            out["info"] = info
        return out

    def _list_groups(self, request: httpx.Request, feature: str) -> httpx.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized", "InvalidAccessToken")
        name = self._feature(feature)
        if name not in STYLE_FEATURES:
            return self._error(404, "Not Found", "NotFound")
        paged = self._page(request, self.catalogue[name])
        if isinstance(paged, httpx.Response):
            return paged
        page, next_token = paged
        key = self.fault("group_key", "groups")
        return self._paged_answer(key, [self._titled(g) for g in page], next_token)

    def _list_styles(self, request: httpx.Request, feature: str) -> httpx.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized", "InvalidAccessToken")
        name = self._feature(feature)
        if name not in STYLE_FEATURES:
            return self._error(404, "Not Found", "NotFound")
        group = self._group(name, request.url.params.get("style_group_id", ""))
        if group is None:
            return self._bad("unknown style_group_id", "InvalidStyleGroup")
        paged = self._page(request, group["styles"])
        if isinstance(paged, httpx.Response):
            return paged
        page, next_token = paged
        styles = [self._titled(s, self.url(f"/storage/thumbs/{s['id']}.jpg")) for s in page]
        return self._paged_answer("styles", styles, next_token)

    def _group(self, feature: str, group_id) -> dict | None:
        for group in self.catalogue.get(feature, []):
            if str(group["id"]) == str(group_id):
                return group
        return None

    def _thumb(self, request: httpx.Request, style_id: str) -> httpx.Response:
        data, content_type = pictures.encode(pictures.thumbnail(style_id, style_id[-6:]), "jpg")
        return httpx.Response(200, content=data, headers={"Content-Type": content_type})

    # --- tasks --------------------------------------------------------------------------------

    def _run_task(self, request: httpx.Request, feature: str) -> httpx.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized", "InvalidAccessToken")
        name = self._feature(feature)
        if name is None:
            return self._error(404, "Not Found", "NotFound")
        spec = FEATURES[name]
        body = self._body(request)
        if body is None:
            return self._bad("body must be a JSON object")
        request_id = body.get("request_id")
        if request_id is None and not spec.request_id_optional:
            return self._bad("request_id is required")
        if request_id is not None and (not isinstance(request_id, int) or isinstance(request_id, bool)):
            return self._bad("request_id must be an integer")
        payload = body.get("payload")
        if not isinstance(payload, dict):
            return self._bad("payload is required")
        actions = payload.get("actions")
        if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
            return self._bad("exactly one action is required")
        if not isinstance(actions[0].get("id"), int):
            return self._bad("actions[0].id must be an integer")
        params = actions[0].get("params") or {}
        output_ext = payload.get("output_ext", spec.output_exts[0])
        if output_ext not in spec.output_exts:
            return self._bad("unsupported output_ext")
        file_sets = payload.get("file_sets") or {}
        inputs: dict[str, list[str]] = {}
        for key in spec.file_sets:
            ids = file_sets.get(key)
            if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str):
                return self._bad(f"file_sets.{key} must hold one file id")
            if ids[0] not in self.files:
                return self._bad(f"unknown file id in {key}")
            inputs[key] = ids
        problem = self._check_params(name, params)
        if problem is not None:
            return problem
        if self.fault("zero_credits") or (self.credits is not None and self.credits <= 0):
            return self._bad("Insufficient credit", "CreditInsufficiency")
        never_uploaded = [i for ids in inputs.values() for i in ids if self.files[i]["data"] is None]
        if never_uploaded and self.fault("never_uploaded") == "http_404":
            return self._error(404, "file not found", "unknown_internal_error")
        dedup = (self.client_id, name, tuple(i for ids in inputs.values() for i in ids), request_id)
        with self.lock:
            if request_id is not None and dedup in self.requests_seen:
                self.counters["duplicate_requests"] += 1
                if self.fault("duplicate_request") == "error":
                    return self._bad("duplicate request_id")
                return self._ok({"task_id": self.requests_seen[dedup]})
        error, mask_problem = self._engine_check(name, inputs, never_uploaded)
        if mask_problem:
            return self._bad(mask_problem)
        task = self._new_task(name, inputs, params, output_ext, error, task_id=_opaque_id("T"))
        with self.lock:
            self.tasks[task.id] = task
            if request_id is not None:
                self.requests_seen[dedup] = task.id
            self.counters["tasks"] += 1
            self.counters["creates"] += 1
        return self._ok({"task_id": task.id})

    def _new_task(self, name: str, inputs: dict, params: dict, output_ext: str, error, *, task_id: str = "") -> Task:
        task = Task(
            id=task_id or secrets.token_urlsafe(40),  # v2 task ids are URL-safe (§2)
            feature=name,
            client_id=self.client_id,
            created=self.clock.now(),
            duration=self.engine_seconds_by_feature.get(name, self.engine_seconds)
            * (1 + random.uniform(-self.engine_jitter, self.engine_jitter)),
            inputs=inputs,
            params=params,
            output_ext=output_ext,
            error=error,
        )
        task.last_seen = task.created
        task.lose_at_first_poll = self.take_fault("lost_task")
        return task

    def _check_params(self, name: str, params: dict) -> httpx.Response | None:
        if not isinstance(params, dict):
            return self._bad("params must be an object")
        if name in STYLE_FEATURES:
            group_id, style_ids = params.get("style_group_id"), params.get("style_ids")
            if not isinstance(group_id, int) or not (isinstance(style_ids, list) and len(style_ids) == 1):
                return self._bad("style_group_id and one style id are required")
            if not isinstance(style_ids[0], int):
                return self._bad("style ids are integers")
            group = self._group(name, group_id)
            if group is None:
                return self._bad("style group not found", "InvalidStyleGroup")
            if style_ids[0] not in {s["id"] for s in group["styles"]}:
                return self._bad("style not found", "InvalidStyle")
        if name == "enhance" and params.get("scale") not in (1, 2, 4):
            return self._bad("scale must be 1, 2 or 4")
        if name == "text-to-image" and not (isinstance(params.get("prompt"), str) and params["prompt"].strip()):
            return self._bad("prompt is required")
        return None

    def _engine_check(self, name: str, inputs: dict, never_uploaded: list) -> tuple[str | None, str | None]:
        """(engine error the task will end with, or None; a 400 message for a wrong mask size)."""
        forced = self.fault("engine_error")
        if forced:
            remaining = self.fault("engine_error_count")
            if remaining is None or self.take_fault("engine_error_count"):
                return forced, None
        if never_uploaded:
            return "unknown_internal_error", None
        now = self.clock.now()
        for ids in inputs.values():
            record = self.files[ids[0]]
            ttl = self.result_ttl if record["kind"] == "result" else self.file_ttl
            if now - record.get("uploaded", record["created"]) > ttl:
                return ("error_download_mask" if ids is inputs.get("mask_ids") else "error_download_image"), None
        if not inputs:
            return None, None
        src = self.files[inputs["src_ids"][0]]["data"]
        if len(src) >= MAX_FILE_BYTES:
            return "exceed_max_filesize", None
        try:
            image = _decode(src)
        except ValueError:
            return "error_decode_image", None
        spec = FEATURES[name]
        if spec.max_side and max(image.size) > spec.max_side:
            return "error_exceed_max_image_size", None
        if "mask_ids" in inputs:
            try:
                mask = _decode(self.files[inputs["mask_ids"][0]]["data"])
            except ValueError:
                return "error_decode_mask", None
            if mask.size != image.size:
                return None, "the mask must have exactly the size of the image"
        if spec.needs_face:
            faces = _faces(image)
            prefix = "error_src_" if name == "mu-trans-rec" else "error_"
            if not faces:
                return f"{prefix}no_face", None
            if len(faces) > 1:
                return "error_multiple_people", None
            if name in HAIR_FEATURES and faces[0].w < 128:
                return "error_src_face_too_small", None
            if name == "mu-trans-rec":
                try:
                    ref = _decode(self.files[inputs["ref_ids"][0]]["data"])
                except ValueError:
                    return "error_decode_image", None
                if not _faces(ref):
                    return "error_ref_no_face", None
        return None, None

    def _task_status(self, request: httpx.Request, feature: str) -> httpx.Response:
        if not self._authorized(request):
            return self._error(401, "Unauthorized", "InvalidAccessToken")
        task_id = request.url.params.get("task_id", "")
        if self.fault("lenient_task_id"):
            task_id = task_id.replace(" ", "+")
        task = self.tasks.get(task_id)
        name = self._feature(feature)
        if task is None or task.feature != name:
            return self._bad("task not found", "InvalidTaskId")
        now = self.clock.now()
        with self.lock:
            if task.status == "lost":
                return self._bad("task not found", "InvalidTaskId")
            if task.status == "running":
                window = self.polling_interval_ms / 1000 if self.fault("strict_polling") else self.lost_after
                if task.lose_at_first_poll or now - task.last_seen > window:
                    # The engine assumed the client left: nothing processed, nothing charged.
                    task.status = "lost"
                    self.counters["lost"] += 1
                    return self._bad("task not found", "InvalidTaskId")
            task.last_seen = now
            self.counters["polls"] += 1
        finished = task.status == "running" and not self.fault("hang") and now - task.created >= task.duration
        if finished:
            with self._engine_lock:  # one poll computes the pictures, concurrent ones wait for them
                if task.status == "running":
                    self._finish(task)
        result: dict[str, Any] = {"polling_interval": self.polling_interval_ms, "status": task.status}
        if task.status == "running":
            result["status"] = self.fault("unknown_status") or "running"
        elif task.status == "error":
            result["error"] = task.error
        else:
            entry: dict[str, Any] = {"id": 0, "data": task.results}
            if task.custom_info is not None:
                if self.fault("custom_info_at") == "result":
                    result["custom_info"] = task.custom_info
                else:
                    entry["custom_info"] = task.custom_info
            result["results"] = [entry]
        return self._ok(result)

    def _finish(self, task: Task) -> None:
        """End a task: its error, or real result pictures, stored with URLs and dst_ids; charge."""
        if task.error:
            task.status = "error"
            self.counters["engine_errors"] += 1
            return
        outputs: list[tuple[Image.Image, dict]] = []
        images = {key: _decode(self.files[ids[0]]["data"]) for key, ids in task.inputs.items()}
        src = images.get("src_ids")
        name, params = task.feature, task.params
        if name in HAIR_FEATURES and "ref_ids" in images:  # v2 hair-transfer from a reference photo
            ref = images["ref_ids"]
            outputs.append((pictures.transfer_hair(src, _faces(src), ref, _faces(ref)), {}))
        elif name in HAIR_FEATURES:
            style = str(params["style_ids"][0])
            outputs.append((pictures.restyle_hair(src, _faces(src), style, name), {}))
        elif name == "aging":
            series, own_age = pictures.age_series(src, _faces(src))
            outputs = [(picture, {"res_age": age}) for age, picture in series]
            ages = [age for age, _ in series]
            task.custom_info = {
                "age": own_age,
                "age_idx": ages.index(own_age),
                "age_min": ages[0],
                "age_max": ages[-1],
                "num_of_photos": len(ages),
            }
        elif name == "mu-trans-rec":
            ref = images["ref_ids"]
            outputs.append((pictures.transfer_makeup(src, _faces(src), ref, _faces(ref)), {}))
        elif name == "obj-removal":
            outputs.append((pictures.remove_object(src, images["mask_ids"]), {}))
        elif name == "colorize":
            for variant in range(int(self.fault("colorize_variants", 1))):
                outputs.append((pictures.colorize(src, variant), {}))
        elif name == "sod":
            outputs.append((pictures.remove_background(src, _faces(src)), {}))
        elif name == "enhance":
            outputs.append((pictures.enhance(src, int(params["scale"])), {}))
        elif name == "text-to-image":
            outputs.append((pictures.generate(params["prompt"], str(params["style_ids"][0])), {}))
        now = self.clock.now()
        for picture, extra in outputs:
            data, content_type = pictures.encode(picture, task.output_ext)
            token, dst_id = secrets.token_urlsafe(16), _opaque_id("D")
            with self.lock:
                self.stored[token] = {"data": data, "content_type": content_type, "expires": now + self.result_url_ttl}
                self.files[dst_id] = {
                    "feature": name,
                    "content_type": content_type,
                    "data": data,
                    "created": now,
                    "uploaded": now,
                    "kind": "result",
                }
            query = urlencode({"X-Amz-Expires": int(self.result_url_ttl), "X-Amz-Signature": self._sign(token)})
            task.results.append(
                {"url": self.url(f"/storage/result/{token}.{task.output_ext}?{query}"), "dst_id": dst_id, **extra}
            )
        task.status = "success"
        with self.lock:
            self.counters["charges"] += 1
            if self.credits is not None:
                self.credits -= 1

    def _download(self, request: httpx.Request, token: str, ext: str) -> httpx.Response:
        record = self.stored.get(token)
        if record is None or request.url.params.get("X-Amz-Signature") != self._sign(token):
            return _s3_error(403, "AccessDenied", "Access Denied")
        if self.fault("expired_urls") or self.clock.now() > record["expires"]:
            self.counters["expired_downloads"] += 1
            return _s3_error(403, "AccessDenied", "Request has expired")
        stall = self.fault("slow_download")
        if stall:
            time.sleep(float(stall))
        data = record["data"]
        oversized = self.fault("oversized_download")
        if oversized:
            data = data + b"\0" * max(0, int(oversized) - len(data))
        self.counters["downloads"] += 1
        return httpx.Response(200, content=data, headers={"Content-Type": record["content_type"]})

    # --- helpers for tests -----------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


_STATUS_TEXT = {
    401: "Unauthorized",
    429: "Too many requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
_STATUS_CODE = {401: "InvalidAccessToken", 500: "unknown_internal_error"}


def _padding(name: str):
    if name == "oaep-sha1":
        return rsa_padding.OAEP(mgf=rsa_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return rsa_padding.PKCS1v15()


def _bearer(request: httpx.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.startswith("Bearer ") else None


def _s3_error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(
        status,
        content=_XML_403.format(code=code, message=message).encode(),
        headers={"Content-Type": "application/xml"},
    )


def _decode(data: bytes | None) -> Image.Image:
    if not data:
        raise ValueError("no data")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # Pillow raises many types for undecodable bytes
        raise ValueError("undecodable") from exc
    return image.convert("RGB") if image.mode not in ("RGB", "L") else image


def _faces(image: Image.Image):
    from studio.imaging import detect_faces

    return detect_faces(image)
