"""Perfect Corp's v2 API family as data (../shared/perfectcorp-v2.md §1–§7).

v1.0 and v2 differ in auth, envelope, paths, feature names, body fields and
result shapes. This module holds v2's side of those differences as tables;
studio/vendors/perfectcorp.py runs a job the same way for both protocols and
reads from here what to send and how to read the answer:

- one `V2Feature` per operation: the URL version and feature segment
  (`v2.1/hair-transfer`), which prepared input goes into which file-id field,
  whether a `template_id` is sent, what else the body carries, and whether
  the result is `data.results.url` or `data.results.output[]`;
- the template listing (`/task/template/{feature}`, paged by `page_size`,
  `starting_token`, `next_token`) replaces v1's style groups: templates are
  grouped by `category_name` into the same catalogue models.

Where the v2 documents are silent the path is a setting
(PERFECTCORP_V2_FEATURES), never a guess hidden in code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from django.conf import settings

log = logging.getLogger(__name__)

FILE_PATH = "/s2s/v2.0/file"  # one file endpoint for every feature (§2)


def _scale(params: dict) -> dict:
    return {"scale": int(params.get("scale") or 2)}


def _prompt(params: dict) -> dict:
    return {"prompt": str(params.get("prompt") or "").strip()}


def _nothing(params: dict) -> dict:
    return {}


SRC = (("image", "src_file_id"),)


@dataclass(frozen=True)
class V2Feature:
    path: str  # "<url version>/<feature>", e.g. "v2.1/hair-transfer"
    # (attribute of perfectcorp.Prepared, body field) for every file sent, in order.
    files: tuple[tuple[str, str], ...] = SRC
    template: bool = False  # job.params["style_id"] goes out as `template_id`
    # The reference photo may stand in for the template (hair-transfer v2.1:
    # exactly one of template_id, ref_file_id, ref_file_url).
    reference_instead_of_template: bool = False
    extra: Callable[[dict], dict] = _nothing  # more body fields from the job's params
    results: str = "url"  # "url": data.results.url; "output": data.results.output[] (each {url, …})
    documented: bool = True  # False: no archived v2 document; the path is a guess to override


V2_FEATURES: dict[str, V2Feature] = {
    # §3.1: the guide's recommended engine; a template or the user's reference photo.
    "pc_hairstyle": V2Feature("v2.1/hair-transfer", template=True, reference_instead_of_template=True),
    # §3.2: no v2 document for wig exists; this path appears only in third-party
    # code. UNCONFIRMED: set PERFECTCORP_V2_FEATURES {"pc_wig": "…"} against the live API.
    "pc_wig": V2Feature("v2.0/wig", template=True, documented=False),
    "pc_hair_extension": V2Feature("v2.0/hair-ext", template=True),
    "pc_bangs": V2Feature("v2.0/hair-bang", template=True),
    "pc_hair_volume": V2Feature("v2.0/hair-vol", template=True),
    "pc_aging": V2Feature("v2.0/aging", results="output"),
    "pc_makeup_transfer": V2Feature("v2.0/mu-transfer", files=(*SRC, ("reference", "ref_file_id"))),
    # §3.8: only "Object Removal Pro" (generative-fill) has a v2 document. The
    # standard engine's v2 path is UNCONFIRMED (probably v2.0/obj-removal); a
    # PERFECTCORP_V2_FEATURES entry switches to it once confirmed.
    "pc_object_removal": V2Feature("v2.0/generative-fill", files=(*SRC, ("mask", "msk_file_id"))),
    "pc_colorize": V2Feature("v2.0/colorize", results="output"),
    "pc_background_removal": V2Feature("v2.0/sod"),
    "pc_enhance": V2Feature("v2.0/enhance", extra=_scale),
    # §3.12: the V1.0 engine, the one with templates (the studio's style picker).
    "pc_image_generator": V2Feature("v2.0/text-to-image", files=(), template=True, extra=_prompt),
}

_PATH = re.compile(r"v2\.\d/[a-z0-9][a-z0-9/-]*\Z")


def _overrides() -> dict[str, str]:
    raw = settings.PERFECTCORP_V2_FEATURES
    if not raw:
        return {}
    try:
        table = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except ValueError:
        log.error("PERFECTCORP_V2_FEATURES is not a JSON object; using the defaults")
        return {}
    return {str(k): str(v).strip("/").removeprefix("s2s/").removeprefix("task/") for k, v in table.items()}


def feature_path(op_key: str) -> str:
    """`v2.x/<feature>` of an operation: PERFECTCORP_V2_FEATURES (by operation key or by
    the default feature name), else the table."""
    default = V2_FEATURES[op_key].path
    table = _overrides()
    chosen = table.get(op_key) or table.get(default.split("/", 1)[1]) or default
    if not _PATH.match(chosen):
        log.error("PERFECTCORP_V2_FEATURES has %r for %s; expected e.g. v2.0/wig", chosen, op_key)
        return default
    return chosen


def task_path(op_key: str) -> str:
    version, name = feature_path(op_key).split("/", 1)
    return f"/s2s/{version}/task/{name}"


def status_path(op_key: str, task_id: str) -> str:
    """Polled by path (§3); task ids are URL-safe, but are quoted anyway."""
    return f"{task_path(op_key)}/{quote(task_id, safe='')}"


def template_path(op_key: str) -> str:
    version, name = feature_path(op_key).split("/", 1)
    return f"/s2s/{version}/task/template/{name}"


def body(op_key: str, params: dict, file_ids: dict[str, str]) -> dict[str, Any]:
    """The create body: file-id fields, the template (or the reference instead), extras."""
    feature = V2_FEATURES[op_key]
    out: dict[str, Any] = dict(file_ids)
    if feature.template and not (feature.reference_instead_of_template and "ref_file_id" in file_ids):
        out["template_id"] = str(params.get("style_id") or "").strip()
    out.update(feature.extra(params))
    return out


def files_for(op_key: str, *, with_reference: bool) -> tuple[tuple[str, str], ...]:
    """Which prepared inputs this job uploads: a hairstyle from a reference photo adds it."""
    feature = V2_FEATURES[op_key]
    files = feature.files
    if feature.reference_instead_of_template and with_reference:
        files = (*files, ("reference", "ref_file_id"))
    return files


def result_items(results: Any) -> tuple[list[dict], dict]:
    """(items with a `url`, the series facts) from `data.results`.

    Read tolerantly whatever the table says: a single `url`, an `output`
    list (colorize, aging; image generator's count is UNCONFIRMED).
    Aging's facts: `age` and the index of the input photo (`agd_idx`
    in the document, `age_idx` accepted too).
    """
    if not isinstance(results, dict):
        return [], {}
    items: list[dict] = []
    output = results.get("output")
    if isinstance(output, list):
        items = [item for item in output if isinstance(item, dict) and item.get("url")]
    elif results.get("url"):
        items = [{"url": results["url"]}]
    facts: dict[str, Any] = {}
    if results.get("age") is not None:
        facts["age"] = results["age"]
        index = results.get("agd_idx", results.get("age_idx"))
        if index is not None:
            facts["age_idx"] = index
    return items, facts


def key_fingerprint(api_key: str) -> str:
    """Names the key in budget and cache keys without putting the key itself there."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


# 401 shapes (§1): "error" text, "error_code", or both; all mean the key is refused.
AUTH_CODES = {
    "InvalidApiKey": "the API key is not recognised",
    "InactiveApiKey": "the API key is inactive",
    "ExpiredApiKey": "the API key has expired",
    "InvalidAccessToken": "the API key was refused",
}


def describe_401(body: dict) -> str:
    code = str(body.get("error_code") or "")
    return AUTH_CODES.get(code) or str(body.get("error") or "the API key was refused")[:120]
