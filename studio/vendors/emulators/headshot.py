"""A faithful emulator of the Headshot API (vendor-apis.md §4).

One synchronous call, `POST /api/generate-portrait`, authenticated by the
`apiKey` field in the JSON body; it answers `{"outputImages": [data URI, …]}`
with exactly `sampleNumber` JPEGs of exactly the requested size. The look of
each image (backdrop colour, light, grading, framing) is a pure function of
(prompt, seed, index), never of the person: the vendor's "same prompt + same
seed = same style for anyone" promise made real. Seed −1 picks a random seed.

Nothing about errors is documented; the shapes below are our choices [EMU].

Fault switches (`emulator.faults[name] = value`; counted ones take an int
"for the next N calls" or True "always"):
  rate_limited (counted)   429 {"error": "rate limit exceeded"} with Retry-After
  server_error (counted)   500 {"error": "internal error"}
  hang (counted)           the request is received (maybe billed), no answer until the
                           client's read timeout
  truncated (counted)      200 whose JSON body is cut off halfway
  empty_outputs (counted)  200 {"outputImages": []}
  fewer_outputs: int       that many images fewer than asked for
  quota_exhausted (counted) 402 {"error": "quota exhausted"}
  unsafe (counted)         400 {"error": "unsafe content detected in input image"}
  latency_per_image: float seconds of real delay per requested image
The Emulator base adds the generic ones, in this API's `{"error": …}` shape:
"500"/"502"/"503"/"429", "connect_timeout", "read_timeout", "reset" (the
connection drops before the call is handled), "reset_after", "malformed_json",
"slow_answer" (the images trickle in) and "oversized_answer".
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time

import httpx

from studio import imaging
from studio.vendors.emulators import pictures_portrait as pictures
from studio.vendors.emulators.base import STATUS_TEXT, Emulator, NetworkFault, json_response

SANDBOX_KEY = "hs_sandbox_key"
MAX_SEED = 2**31 - 1
SIZE_RANGE = (512, 2024)  # sic, as the vendor page writes it


class HeadshotEmulator(Emulator):
    vendor = "Headshot API"

    def __init__(self, *, api_keys: set[str] | None = None, path: str = "/api/generate-portrait", **kwargs):
        super().__init__(**kwargs)
        self.api_keys = set(api_keys) if api_keys is not None else {SANDBOX_KEY}
        self.requests: list[dict] = []  # bodies received, apiKey and images removed (for tests)
        self.input_sizes: list[tuple[int, int]] = []  # (width, height) of each accepted input image
        self.route("POST", path, self.generate)

    def error_response(self, status: int) -> httpx.Response:
        return _error(status, STATUS_TEXT[status].lower(), headers={"Retry-After": "1"} if status == 429 else None)

    # --- the one route -------------------------------------------------------------

    def generate(self, request: httpx.Request) -> httpx.Response:
        try:
            body = json.loads(request.content or b"null")
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        if body.get("apiKey") not in self.api_keys:
            return _error(401, "invalid api key")
        self.requests.append({k: v for k, v in body.items() if k not in ("apiKey", "inputImages")})

        if self.take_fault("hang"):
            raise NetworkFault("read_timeout")
        if self.take_fault("rate_limited"):
            self.counters["429"] += 1
            return _error(429, "rate limit exceeded", headers={"Retry-After": "1"})
        if self.take_fault("server_error"):
            return _error(500, "internal error")
        if self.take_fault("quota_exhausted"):
            return _error(402, "quota exhausted")

        problem, params = _validate(body)
        if problem:
            return _error(400, problem)
        if self.take_fault("unsafe"):
            return _error(400, "unsafe content detected in input image")

        self.input_sizes.append(params["image"].size)
        delay = float(self.fault("latency_per_image", 0) or 0)
        if delay:
            time.sleep(delay * params["count"])
        if self.take_fault("empty_outputs"):
            return json_response(200, {"outputImages": []})
        if self.take_fault("truncated"):
            text = json.dumps({"outputImages": ["data:image/jpeg;base64," + "A" * 4000]})
            return httpx.Response(
                200, content=text[: len(text) // 2].encode(), headers={"Content-Type": "application/json"}
            )

        seed = params["seed"] if params["seed"] != -1 else secrets.randbelow(MAX_SEED) + 1
        count = max(0, params["count"] - int(self.fault("fewer_outputs", 0) or 0))
        shots = pictures.headshots(
            params["image"],
            prompt=params["prompt"],
            seed=seed,
            count=count,
            identity=params["identity"],
            width=params["width"],
            height=params["height"],
        )
        self.counters["charges"] += count
        return json_response(
            200,
            {
                "outputImages": [
                    "data:image/jpeg;base64," + base64.b64encode(pictures.encode(shot)).decode() for shot in shots
                ]
            },
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return json_response(status, {"error": message}, headers)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(body: dict) -> tuple[str, dict]:
    """(problem, params): every range of §4.2; the problem is "" when the body is fine."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt is required", {}
    seed = body.get("seed", -1)
    if not _is_int(seed) or not (seed == -1 or 1 <= seed <= MAX_SEED):
        return "seed must be -1 or an integer between 1 and 2147483647", {}
    count = body.get("sampleNumber", 1)
    if not _is_int(count) or not 1 <= count <= 8:
        return "sampleNumber must be an integer between 1 and 8", {}
    identity = body.get("identityScale", 0.8)
    if isinstance(identity, bool) or not isinstance(identity, (int, float)) or not 0 <= identity <= 1:
        return "identityScale must be a number between 0 and 1", {}
    sizes = {}
    for field, default in (("outputImageWidth", 768), ("outputImageHeight", 1024)):
        value = body.get(field, default)
        if not _is_int(value) or not SIZE_RANGE[0] <= value <= SIZE_RANGE[1]:
            return f"{field} must be an integer between {SIZE_RANGE[0]} and {SIZE_RANGE[1]}", {}
        sizes[field] = value
    images = body.get("inputImages")
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        return "inputImages must hold exactly one base64 data URI", {}
    image = _decode_data_uri(images[0])
    if image is None:
        return "inputImages[0] is not a decodable image data URI", {}
    return "", {
        "prompt": prompt,
        "seed": seed,
        "count": count,
        "identity": float(identity),
        "width": sizes["outputImageWidth"],
        "height": sizes["outputImageHeight"],
        "image": image,
    }


def _decode_data_uri(uri: str):
    head, _, payload = uri.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64") or not payload:
        return None
    try:
        return imaging.load_image(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError, imaging.ImageRejected):
        return None
