"""The fault matrix (issue 6): every vendor × every fault its emulator can raise.

Each case is one row of data below. It creates a real Job on the astronaut
portrait through the services, switches the fault on in that vendor's
emulator (served over real HTTP on 127.0.0.1, or in-process where the fault
only exists there) and runs the job with studio.jobs.run.job_run. Then it checks:

- the job is terminal: a fault that clears ends in success, one that persists
  in `failed` with a message naming what went wrong and what to do next
  (never the generic "something went wrong", and no exception escapes);
- the faulted call was tried as often as the emulator says, never more than
  the configured retries + 1, and more than once where retrying is safe;
- every wait between two tries stays under a growing, jittered ceiling
  (VendorHttp waits through `studio.vendors.http.pause`, which is recorded
  here instead of sleeping, so the matrix runs in seconds).

Faults below the vendor's own protocol (a 5xx, a timeout, a reset, a garbled
or slow answer) use the switches every emulator inherits from the Emulator
base, aimed at one call with `fault_path`; the vendor-specific ones (engine
codes, lost or stuck tasks, NSFW flags, …) are each emulator's own.

Where a fault cannot happen to a vendor, NOT_APPLICABLE says why; a test
keeps the two tables covering the whole grid.
"""

from __future__ import annotations

import io
import re
import socket
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from django.core.cache import cache
from PIL import Image

from studio.errors import GENERIC_FAILURE
from studio.jobs.create import job_create
from studio.jobs.run import job_run
from studio.models import Job
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import base as vendor_base
from studio.vendors import headshot, perfectcorp, sandbox, vtrix, wavespeed
from studio.vendors import http as vendor_http
from studio.vendors.budget import RequestBudget
from studio.vendors.emulators.base import Emulator
from studio.vendors.emulators.fetch import django_client_fetch
from studio.vendors.emulators.headshot import HeadshotEmulator
from studio.vendors.emulators.vtrix import VtrixEmulator
from studio.vendors.emulators.wavespeed import WaveSpeedEmulator
from studio.vendors.http import VendorHttp
from tests.pc_support import new_emulator as new_perfectcorp_emulator

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = Owner(visitor_id="visitor-faults")
PUBLIC = "http://studio.test"  # Vtrix's emulator fetches the signed photo link through Django's test client
BACKOFF_BASE = VendorHttp.__dataclass_fields__["backoff_base"].default
DEFAULT_RETRIES = VendorHttp.__dataclass_fields__["retries"].default
# Tries of one call: the configured retries + 1 (headshot.py asks VendorHttp for 2 retries).
MAX_TRIES = {
    "perfectcorp": DEFAULT_RETRIES + 1,
    "headshot": 3,
    "wavespeed": DEFAULT_RETRIES + 1,
    "vtrix": DEFAULT_RETRIES + 1,
}
# For timeout cases: the client gives up after READ_TIMEOUT, the emulator holds its answer STALL seconds.
READ_TIMEOUT = 1.0
STALL = 2.0
NEXT_STEP = re.compile(r"\b(please|try|use|pick|upload|run)\b", re.I)

# The operation each vendor's cases run, with its parameters.
OPERATIONS = {
    "perfectcorp": ("pc_background_removal", {}),
    "headshot": ("ai_headshot", {"prompt": "corporate headshot, grey backdrop", "seed": 7, "size": "1:1"}),
    "wavespeed": ("ws_portrait", {"prompt": "soft light", "seed": 3}),
    "vtrix": ("vtrix_spark_portrait", {"seed": 5, "width": 768, "height": 768}),
}


def new_emulator(vendor: str) -> Emulator:
    if vendor == "perfectcorp":
        return new_perfectcorp_emulator()
    if vendor == "headshot":
        return HeadshotEmulator()
    if vendor == "wavespeed":
        return WaveSpeedEmulator()
    return VtrixEmulator(fetcher=django_client_fetch())


# --- the matrix, as data ------------------------------------------------------------------------

FAULTS = (
    "429",
    "500",
    "502",
    "503",
    "connect timeout",
    "connect refused",
    "read timeout",
    "connection reset",
    "malformed JSON",
    "unexpected status",
    "engine error",
    "lost task",
    "stuck task",
    "expired result URL",
    "slow download",
    "oversized download",
    "NSFW flag",
    "account refused",
)
VENDORS = ("perfectcorp", "headshot", "wavespeed", "vtrix")

# What the user must be told, per class of failure (matched case-insensitively).
BUSY = r"busy right now \(too many requests\)"
TROUBLE = r"having trouble right now \(error {status}\)"
NO_ANSWER = r"did not answer in time"
UNREACHABLE = r"couldn't reach"
BROKE_OFF = r"connection to .* broke off"
UNREADABLE = r"sent an answer we couldn't read"
EXPIRED = r"result has expired before we could fetch it\. please run the job again"
TOO_LARGE = r"returned a file too large to accept"
TOO_SLOW = r"fetching the result from .* took too long"


@dataclass(frozen=True)
class Case:
    vendor: str
    fault: str  # a column of FAULTS
    variant: str  # e.g. "clears", "persists"
    faults: dict[str, Any]  # the emulator's switches
    # Switch them on only when the emulator first sees this call (method, path regex), e.g. the
    # first poll: Perfect Corp's run and poll share one path, so `fault_path` can't tell them apart.
    starts_at: tuple[str, str] | None = None
    failure: str | None = None  # regex of the message; None: the job must succeed
    # The faulted call (method, path regex) and how often the emulator saw it.
    call: tuple[str, str] | None = None
    tries: int | None = None
    waits: int | None = None  # VendorHttp waits expected (default: tries - 1)
    retry_after: float | None = None  # the emulator's Retry-After, a floor for the waits
    wire: str = "http"  # "http" (127.0.0.1), "in-process", or "refused" (nothing listens)
    short_timeouts: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    patches: dict[str, Any] = field(default_factory=dict)  # "module.CONSTANT" → value
    emulator: dict[str, Any] = field(default_factory=dict)  # emulator attributes
    counters: dict[str, int] = field(default_factory=dict)  # the emulator's counters afterwards
    result_meta: dict[str, Any] = field(default_factory=dict)
    budget_backs_off: bool = False  # Perfect Corp's shared request budget paused after a 429

    @property
    def id(self) -> str:
        return f"{self.vendor}-{self.fault}-{self.variant}".replace(" ", "_")

    @property
    def expected_waits(self) -> int:
        if self.waits is not None:
            return self.waits
        if self.wire == "refused":
            return MAX_TRIES[self.vendor] - 1
        return (self.tries or 1) - 1


PC_FILE = ("POST", r"/s2s/v1\.0/file/sod$")
PC_RUN = ("POST", r"/s2s/v1\.0/task/sod$")
PC_POLL = ("GET", r"/s2s/v1\.0/task/sod$")
PC_AUTH = ("POST", r"/s2s/v1\.0/client/auth$")
HS_CALL = ("POST", r"/api/generate-portrait$")
WS_SUBMIT = ("POST", r"/api/v3/wavespeed-ai/portrait$")
WS_POLL = ("GET", r"/api/v3/predictions/")
VX_CREATE = ("POST", r"/model/v1/generation$")
VX_POLL = ("GET", r"/model/v1/generation/task/")
PC = dict(vendor="perfectcorp")
ON_AUTH = {"fault_path": "/client/auth"}
ON_FILE = {"fault_path": "/file/"}  # Perfect Corp: fault only the file-slot call
ON_TASK = {"fault_path": r"/task/sod$"}  # the run, and (with starts_at=PC_POLL) the polls
PC_DEADLINE = {"PERFECTCORP_JOB_DEADLINE_S": 1}
# The Emulator base's generic switches, aimed with `fault_path`.
WS_ON_SUBMIT = {"fault_path": r"/wavespeed-ai/portrait$"}
# Without a webhook the emulator moves a task on only when it is polled, so "charges 0" proves
# nobody polled a task whose submit answer was lost; with one, the emulator's own thread would
# finish (and charge) it at a moment the test cannot pin down.
NO_WS_WEBHOOK = {"WAVESPEED_WEBHOOKS": False}
WS_ON_POLL = {"fault_path": r"/predictions/"}
VX_ON_CREATE = {"fault_path": r"/generation$"}
VX_ON_POLL = {"fault_path": r"/task/"}

CASES: tuple[Case, ...] = (
    # --- Perfect Corp: every call retried (a run carries its request_id, so a retry is never billed twice)
    Case(**PC, fault="429", variant="clears", faults={"429": 2, **ON_FILE}, call=PC_FILE, tries=3,
         budget_backs_off=True),
    Case(**PC, fault="429", variant="persists", faults={"429": 99, **ON_FILE}, failure=BUSY, call=PC_FILE, tries=4,
         budget_backs_off=True),
    Case(**PC, fault="500", variant="clears", faults={"500": 2, **ON_FILE}, call=PC_FILE, tries=3),
    Case(**PC, fault="500", variant="persists", faults={"500": 99, **ON_FILE}, failure=TROUBLE.format(status=500),
         call=PC_FILE, tries=4),
    Case(**PC, fault="502", variant="clears", faults={"502": 3, **ON_FILE}, call=PC_FILE, tries=4),
    Case(**PC, fault="502", variant="persists", faults={"502": 99, **ON_FILE}, failure=TROUBLE.format(status=502),
         call=PC_FILE, tries=4),
    Case(**PC, fault="503", variant="clears on the poll", faults={"503": 1, **ON_TASK}, starts_at=PC_POLL,
         call=PC_POLL, tries=2),
    Case(**PC, fault="503", variant="persists on the poll", faults={"503": 99, **ON_TASK}, starts_at=PC_POLL,
         failure=TROUBLE.format(status=503), call=PC_POLL, tries=4, counters={"charges": 0}),
    Case(**PC, fault="503", variant="clears on the run", faults={"503": 2, **ON_TASK}, call=PC_RUN, tries=3,
         counters={"tasks": 1, "charges": 1}),
    Case(**PC, fault="connect timeout", variant="clears", faults={"connect_timeout": 2, **ON_FILE}, call=PC_FILE,
         tries=3, wire="in-process"),
    Case(**PC, fault="connect timeout", variant="persists", faults={"connect_timeout": 99, **ON_FILE},
         failure=NO_ANSWER, call=PC_FILE, tries=4, wire="in-process"),
    Case(**PC, fault="connect refused", variant="persists", faults={}, failure=UNREACHABLE, wire="refused"),
    # In-process: over the wire the client's timeout would also cut off the slow (picture-making) poll.
    Case(**PC, fault="read timeout", variant="clears", faults={"read_timeout": 2, **ON_FILE}, call=PC_FILE, tries=3,
         wire="in-process"),
    Case(**PC, fault="read timeout", variant="persists", faults={"read_timeout": 99, **ON_FILE}, failure=NO_ANSWER,
         call=PC_FILE, tries=4, short_timeouts=True),
    Case(**PC, fault="connection reset", variant="clears", faults={"reset": 2, **ON_FILE}, call=PC_FILE, tries=3),
    Case(**PC, fault="connection reset", variant="persists", faults={"reset": 99, **ON_FILE}, failure=BROKE_OFF,
         call=PC_FILE, tries=4),
    # The run is processed, then its answer is lost: the retry carries the same request_id, charged once.
    Case(**PC, fault="connection reset", variant="answer to the run lost", faults={"reset_after": 1, **ON_TASK},
         call=PC_RUN, tries=2, counters={"tasks": 1, "charges": 1, "duplicate_requests": 1}),
    # A garbled status answer is polled again (twice at most); one to any other call is asked for
    # once more (every call is safe to repeat: the run carries its request_id).
    Case(**PC, fault="malformed JSON", variant="clears on the poll", faults={"malformed_json": 1, **ON_TASK},
         starts_at=PC_POLL, call=PC_POLL, tries=2, waits=0, counters={"charges": 1}),
    Case(**PC, fault="malformed JSON", variant="persists on the poll", faults={"malformed_json": 99, **ON_TASK},
         starts_at=PC_POLL, failure=UNREADABLE, call=PC_POLL, tries=3, waits=0),
    Case(**PC, fault="malformed JSON", variant="clears on the auth call", faults={"malformed_json": 1, **ON_AUTH},
         call=PC_AUTH, tries=2),
    Case(**PC, fault="malformed JSON", variant="persists on the auth call", faults={"malformed_json": 99, **ON_AUTH},
         failure=UNREADABLE, call=PC_AUTH, tries=2),
    Case(**PC, fault="malformed JSON", variant="clears on the file call", faults={"malformed_json": 1, **ON_FILE},
         call=PC_FILE, tries=2),
    Case(**PC, fault="malformed JSON", variant="persists on the file call", faults={"malformed_json": 99, **ON_FILE},
         failure=UNREADABLE, call=PC_FILE, tries=2),
    # The run was processed, its answer garbled: the second ask carries the same request_id, charged once.
    Case(**PC, fault="malformed JSON", variant="clears on the run", faults={"malformed_json": 1, **ON_TASK},
         call=PC_RUN, tries=2, counters={"tasks": 1, "charges": 1, "duplicate_requests": 1}),
    Case(**PC, fault="unexpected status", variant="'queued' while running", faults={"unknown_status": "queued"},
         emulator={"engine_seconds": 0.8}),
    Case(**PC, fault="engine error", variant="photo problem", faults={"engine_error": "error_multiple_people"},
         failure=re.escape(perfectcorp.ENGINE_MESSAGES["error_multiple_people"]), counters={"tasks": 1}),
    Case(**PC, fault="engine error", variant="transient, clears on the re-run",
         faults={"engine_error": "error_inference", "engine_error_count": 1}, counters={"tasks": 2, "charges": 1}),
    Case(**PC, fault="engine error", variant="transient, persists",
         faults={"engine_error": "error_inference"}, failure=re.escape(perfectcorp.ENGINE_MESSAGES["error_inference"]),
         counters={"tasks": 2, "charges": 0}),
    Case(**PC, fault="engine error", variant="unknown code", faults={"engine_error": "error_brand_new"},
         failure=re.escape(perfectcorp.UNKNOWN_ENGINE_ERROR), counters={"tasks": 1}),
    Case(**PC, fault="lost task", variant="clears on the re-run", faults={"lost_task": 1},
         counters={"tasks": 2, "lost": 1, "charges": 1}),
    Case(**PC, fault="lost task", variant="persists", faults={"lost_task": 2}, failure=re.escape(perfectcorp.LOST),
         counters={"tasks": 2, "lost": 2, "charges": 0}),
    Case(**PC, fault="stuck task", variant="hangs past the deadline", faults={"hang": True}, settings=PC_DEADLINE,
         failure=r"took too long with this photo", counters={"charges": 0}),
    Case(**PC, fault="expired result URL", variant="403", faults={"expired_urls": True}, failure=EXPIRED),
    Case(**PC, fault="slow download", variant="past the time cap", faults={"slow_download": STALL},
         patches={"studio.vendors.perfectcorp.DOWNLOAD_MAX_SECONDS": 0.5}, failure=TOO_SLOW),
    Case(**PC, fault="oversized download", variant="past the size cap", faults={"oversized_download": 3 << 20},
         patches={"studio.vendors.perfectcorp.DOWNLOAD_MAX_BYTES": 2 << 20}, failure=TOO_LARGE),
    Case(**PC, fault="NSFW flag", variant="engine refuses", faults={"engine_error": "error_nsfw_content_detected"},
         failure=r"inappropriate content", counters={"charges": 0}),
    Case(**PC, fault="account refused", variant="no credits", faults={"zero_credits": True},
         failure=r"temporarily unavailable"),
    Case(**PC, fault="account refused", variant="401 on every call", faults={"401": 99},
         failure=re.escape(perfectcorp.UNAVAILABLE)),
    # --- Headshot API: one synchronous, billable call without an idempotency key: retried only
    # when it provably never arrived (connect errors) or was turned away (429).
    Case("headshot", "429", "clears", {"rate_limited": 2}, call=HS_CALL, tries=3, retry_after=1.0),
    Case("headshot", "429", "persists", {"rate_limited": 99}, failure=BUSY, call=HS_CALL, tries=3, retry_after=1.0),
    Case("headshot", "500", "once (not retried: may be billed)", {"server_error": 1},
         failure=re.escape(headshot.VENDOR_FAULT), call=HS_CALL, tries=1),
    Case("headshot", "502", "once (not retried: may be billed)", {"502": 1},
         failure=re.escape(headshot.VENDOR_FAULT), call=HS_CALL, tries=1, counters={"charges": 0}),
    Case("headshot", "503", "persists (not retried: may be billed)", {"503": 99},
         failure=re.escape(headshot.VENDOR_FAULT), call=HS_CALL, tries=1, counters={"charges": 0}),
    # A connection that was never made can't have been billed: retried.
    Case("headshot", "connect timeout", "clears", {"connect_timeout": 2}, call=HS_CALL, tries=3, wire="in-process",
         counters={"charges": 1}),
    Case("headshot", "connect timeout", "persists", {"connect_timeout": 99}, failure=NO_ANSWER, call=HS_CALL,
         tries=3, wire="in-process", counters={"charges": 0}),
    Case("headshot", "connect refused", "persists", {}, failure=UNREACHABLE, wire="refused"),
    Case("headshot", "read timeout", "once (not retried: may be billed)", {"hang": 1}, failure=NO_ANSWER,
         call=HS_CALL, tries=1, settings={"HEADSHOT_API_JOB_DEADLINE_S": READ_TIMEOUT}),
    Case("headshot", "connection reset", "once (not retried: may be billed)", {"reset": 1}, failure=BROKE_OFF,
         call=HS_CALL, tries=1),
    # The headshots were made (and billed), their answer lost: never asked for a second time.
    Case("headshot", "connection reset", "answer lost (not retried)", {"reset_after": 1}, failure=BROKE_OFF,
         call=HS_CALL, tries=1, counters={"charges": 1}),
    Case("headshot", "malformed JSON", "truncated body", {"truncated": 1}, failure=UNREADABLE, call=HS_CALL, tries=1),
    Case("headshot", "malformed JSON", "a proxy's HTML page", {"malformed_json": 1}, failure=UNREADABLE,
         call=HS_CALL, tries=1, counters={"charges": 1}),
    # The images come inside the answer: a trickle that each read timeout lets through is cut off
    # at the job's deadline, an answer past the size cap as soon as it says so.
    Case("headshot", "slow download", "the answer trickles in", {"slow_answer": 8.0}, failure=TOO_SLOW,
         call=HS_CALL, tries=1, settings={"HEADSHOT_API_JOB_DEADLINE_S": 3}),
    Case("headshot", "oversized download", "the answer past the size cap", {"oversized_answer": 3 << 20},
         patches={"studio.vendors.headshot.MAX_RESPONSE_BYTES": 2 << 20}, failure=re.escape(headshot.TOO_LARGE),
         call=HS_CALL, tries=1),
    Case("headshot", "engine error", "no images in the answer", {"empty_outputs": 1},
         failure=re.escape(headshot.NO_OUTPUT), call=HS_CALL, tries=1),
    Case("headshot", "NSFW flag", "unsafe input", {"unsafe": 1}, failure=re.escape(headshot.UNSAFE), call=HS_CALL,
         tries=1),
    Case("headshot", "account refused", "quota exhausted", {"quota_exhausted": 1},
         failure=re.escape(headshot.UNAVAILABLE), call=HS_CALL, tries=1),
    # --- WaveSpeed: no idempotency key; a submit is retried after 429/5xx (nothing created) and
    # connect errors, never after a timeout; polls are always safe to retry.
    Case("wavespeed", "429", "clears", {"rate_limited": 2}, call=WS_SUBMIT, tries=3, retry_after=1.0),
    Case("wavespeed", "429", "persists", {"rate_limited": 99}, failure=BUSY, call=WS_SUBMIT, tries=4, retry_after=1.0),
    Case("wavespeed", "502", "clears on the poll", {"poll_error": 2}, waits=2, counters={"submits": 1, "charges": 1}),
    Case("wavespeed", "502", "persists on the poll", {"poll_error": 99}, failure=TROUBLE.format(status=502),
         call=WS_POLL, tries=4),
    Case("wavespeed", "503", "clears on the submit", {"submit_error": 3}, call=WS_SUBMIT, tries=4,
         counters={"submits": 1}),
    Case("wavespeed", "503", "persists on the submit", {"submit_error": 99}, failure=TROUBLE.format(status=503),
         call=WS_SUBMIT, tries=4, counters={"submits": 0}),
    Case("wavespeed", "500", "clears on the poll", {"500": 2, **WS_ON_POLL}, waits=2,
         counters={"submits": 1, "charges": 1}),
    Case("wavespeed", "500", "persists on the submit", {"500": 99, **WS_ON_SUBMIT}, failure=TROUBLE.format(status=500),
         call=WS_SUBMIT, tries=4, counters={"submits": 0}),
    Case("wavespeed", "connect timeout", "clears on the submit", {"connect_timeout": 2, **WS_ON_SUBMIT},
         call=WS_SUBMIT, tries=3, wire="in-process", counters={"submits": 1}),
    Case("wavespeed", "connect timeout", "persists on the submit", {"connect_timeout": 99, **WS_ON_SUBMIT},
         failure=NO_ANSWER, call=WS_SUBMIT, tries=4, wire="in-process", counters={"submits": 0}),
    Case("wavespeed", "connect refused", "persists", {}, failure=UNREACHABLE, wire="refused"),
    Case("wavespeed", "read timeout", "answer to the submit lost (not retried)", {"submit_timeout": 1},
         failure=NO_ANSWER, call=WS_SUBMIT, tries=1, short_timeouts=True, counters={"submits": 1, "charges": 0}),
    Case("wavespeed", "read timeout", "clears on the poll", {"read_timeout": 2, **WS_ON_POLL}, waits=2,
         wire="in-process", counters={"submits": 1, "charges": 1}),
    # A submit that broke off may have created its task: it is not sent again.
    Case("wavespeed", "connection reset", "on the submit (not retried)", {"reset": 1, **WS_ON_SUBMIT},
         failure=BROKE_OFF, call=WS_SUBMIT, tries=1, counters={"submits": 0}),
    Case("wavespeed", "connection reset", "answer to the submit lost (not retried)", {"reset_after": 1, **WS_ON_SUBMIT},
         failure=BROKE_OFF, call=WS_SUBMIT, tries=1, counters={"submits": 1, "charges": 0},
         settings=NO_WS_WEBHOOK),
    Case("wavespeed", "connection reset", "clears on the poll", {"reset": 2, **WS_ON_POLL}, waits=2,
         counters={"submits": 1, "charges": 1}),
    Case("wavespeed", "malformed JSON", "on the submit (not retried)", {"malformed_json": 1, **WS_ON_SUBMIT},
         failure=UNREADABLE, call=WS_SUBMIT, tries=1, counters={"submits": 1, "charges": 0},
         settings=NO_WS_WEBHOOK),
    Case("wavespeed", "malformed JSON", "clears on the poll", {"malformed_json": 1, **WS_ON_POLL}, waits=0,
         counters={"submits": 1, "charges": 1}),
    Case("wavespeed", "malformed JSON", "persists on the poll", {"malformed_json": 99, **WS_ON_POLL},
         failure=UNREADABLE, call=WS_POLL, tries=3, waits=0, counters={"submits": 1}),
    Case("wavespeed", "lost task", "404 at the first poll", {"lost_task": 1}, failure=re.escape(wavespeed.LOST),
         call=WS_POLL, tries=1, counters={"submits": 1, "lost": 1, "charges": 0}),
    Case("wavespeed", "unexpected status", "'pending'", {"unknown_status": "pending"}),
    Case("wavespeed", "engine error", "generation failed", {"task_error": "out of memory"},
         failure=re.escape(wavespeed.FAILED)),
    Case("wavespeed", "engine error", "photo not fetched", {"task_error": "image could not be downloaded: 404"},
         failure=re.escape(wavespeed.UNREADABLE_PHOTO)),
    Case("wavespeed", "stuck task", "processing past the deadline", {"stuck": True},
         settings={"WAVESPEED_JOB_DEADLINE_S": 1}, failure=re.escape(wavespeed.TIMED_OUT)),
    Case("wavespeed", "expired result URL", "404", {"output_ttl": -1}, failure=EXPIRED),
    Case("wavespeed", "slow download", "past the time cap", {"slow_download": STALL},
         patches={"studio.vendors.wavespeed.DOWNLOAD_MAX_SECONDS": 0.5}, failure=TOO_SLOW),
    Case("wavespeed", "oversized download", "past the size cap", {"oversized_download": 3 << 20},
         patches={"studio.vendors.wavespeed.DOWNLOAD_MAX_BYTES": 2 << 20}, failure=TOO_LARGE),
    Case("wavespeed", "NSFW flag", "output flagged: kept, hidden", {"nsfw": True}, result_meta={"nsfw": True}),
    Case("wavespeed", "NSFW flag", "task refused", {"task_error": "NSFW content detected in output"},
         failure=re.escape(wavespeed.UNSAFE)),
    Case("wavespeed", "account refused", "no balance", {"insufficient_balance": True},
         failure=re.escape(wavespeed.UNAVAILABLE)),
    # --- Vtrix: no idempotency key either; task errors 003010095–099 are resubmitted once.
    Case("vtrix", "429", "clears", {"rate_limited": 2}, call=VX_CREATE, tries=3, retry_after=1.0),
    Case("vtrix", "429", "persists", {"rate_limited": 99}, failure=BUSY, call=VX_CREATE, tries=4, retry_after=1.0),
    Case("vtrix", "500", "clears", {"server_error": 3}, call=VX_CREATE, tries=4, counters={"creates": 1}),
    Case("vtrix", "500", "persists", {"server_error": 99}, failure=TROUBLE.format(status=500), call=VX_CREATE,
         tries=4, counters={"creates": 0}),
    Case("vtrix", "502", "clears on the poll", {"502": 2, **VX_ON_POLL}, waits=2,
         counters={"creates": 1, "charges": 1}),
    Case("vtrix", "502", "persists on the poll", {"502": 99, **VX_ON_POLL}, failure=TROUBLE.format(status=502),
         call=VX_POLL, tries=4, counters={"creates": 1, "charges": 0}),
    Case("vtrix", "503", "clears on the create", {"503": 3, **VX_ON_CREATE}, call=VX_CREATE, tries=4,
         counters={"creates": 1}),
    Case("vtrix", "503", "persists on the create", {"503": 99, **VX_ON_CREATE}, failure=TROUBLE.format(status=503),
         call=VX_CREATE, tries=4, counters={"creates": 0}),
    Case("vtrix", "connect timeout", "clears on the create", {"connect_timeout": 2, **VX_ON_CREATE},
         call=VX_CREATE, tries=3, wire="in-process", counters={"creates": 1}),
    Case("vtrix", "connect timeout", "persists on the create", {"connect_timeout": 99, **VX_ON_CREATE},
         failure=NO_ANSWER, call=VX_CREATE, tries=4, wire="in-process", counters={"creates": 0}),
    Case("vtrix", "connect refused", "persists", {}, failure=UNREACHABLE, wire="refused"),
    Case("vtrix", "read timeout", "answer to the create lost (not retried)", {"create_timeout": 1},
         failure=NO_ANSWER, call=VX_CREATE, tries=1, short_timeouts=True, counters={"creates": 1, "charges": 0}),
    Case("vtrix", "read timeout", "clears on the poll", {"read_timeout": 2, **VX_ON_POLL}, waits=2,
         wire="in-process", counters={"creates": 1, "charges": 1}),
    Case("vtrix", "connection reset", "on the create (not retried)", {"reset": 1, **VX_ON_CREATE},
         failure=BROKE_OFF, call=VX_CREATE, tries=1, counters={"creates": 0}),
    Case("vtrix", "connection reset", "answer to the create lost (not retried)", {"reset_after": 1, **VX_ON_CREATE},
         failure=BROKE_OFF, call=VX_CREATE, tries=1, counters={"creates": 1, "charges": 0}),
    Case("vtrix", "connection reset", "clears on the poll", {"reset": 2, **VX_ON_POLL}, waits=2,
         counters={"creates": 1, "charges": 1}),
    Case("vtrix", "malformed JSON", "on the create (not retried)", {"malformed_json": 1, **VX_ON_CREATE},
         failure=UNREADABLE, call=VX_CREATE, tries=1, counters={"creates": 1, "charges": 0}),
    Case("vtrix", "malformed JSON", "clears on the poll", {"malformed_json": 1, **VX_ON_POLL}, waits=0,
         counters={"creates": 1, "charges": 1}),
    Case("vtrix", "malformed JSON", "persists on the poll", {"malformed_json": 99, **VX_ON_POLL},
         failure=UNREADABLE, call=VX_POLL, tries=3, waits=0, counters={"creates": 1}),
    Case("vtrix", "lost task", "404 at the first poll", {"lost_task": 1}, failure=re.escape(vtrix.LOST),
         call=VX_POLL, tries=1, counters={"creates": 1, "lost": 1, "charges": 0}),
    Case("vtrix", "unexpected status", "'in_queue' / 'in_progress'", {"status_spelling": "alt"}),
    Case("vtrix", "engine error", "transient code, clears on the resubmit",
         {"task_error": "003010095", "task_error_times": 1}, counters={"creates": 2, "charges": 1}),
    Case("vtrix", "engine error", "transient code, persists", {"task_error": "003010095"},
         failure=re.escape(vtrix.VENDOR_FAILED), counters={"creates": 2, "charges": 0}),
    Case("vtrix", "engine error", "wrong format code", {"task_error": "003010003"},
         failure=re.escape(vtrix.ERROR_CODES["003010003"]), counters={"creates": 1}),
    Case("vtrix", "stuck task", "processing past the deadline", {"stuck": True}, settings={"VTRIX_JOB_DEADLINE_S": 1},
         failure=re.escape(vtrix.TIMED_OUT)),
    Case("vtrix", "expired result URL", "403", {"output_ttl": -1}, failure=EXPIRED),
    Case("vtrix", "slow download", "past the time cap", {"slow_download": STALL},
         patches={"studio.vendors.vtrix.DOWNLOAD_MAX_SECONDS": 0.5}, failure=TOO_SLOW),
    Case("vtrix", "oversized download", "past the size cap", {"oversized_download": 3 << 20},
         patches={"studio.vendors.vtrix.DOWNLOAD_MAX_BYTES": 2 << 20}, failure=TOO_LARGE),
    Case("vtrix", "NSFW flag", "moderation", {"moderation": True}, failure=re.escape(vtrix.UNSAFE)),
    Case("vtrix", "account refused", "no balance", {"no_balance": True}, failure=re.escape(vtrix.UNAVAILABLE)),
)

_SYNCHRONOUS = "one synchronous call answers with the images inline (as base64)"
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("headshot", "unexpected status"): _SYNCHRONOUS + ": there is no task status to read",
    ("headshot", "lost task"): _SYNCHRONOUS + ": there is no task to lose",
    ("headshot", "stuck task"): _SYNCHRONOUS + ": a stalled answer is the 'read timeout' case",
    ("headshot", "expired result URL"): _SYNCHRONOUS + ": no result link is handed out, so none can expire",
}


# --- running one case ----------------------------------------------------------------------------


class Waits:
    """Every wait VendorHttp and Perfect Corp's budget asked for; nobody actually waits.

    The budget reads a virtual clock that its own waits move forward, so a
    429 pause is honoured in full without taking real time.
    """

    def __init__(self):
        self.http: list[float] = []
        self.budget: list[float] = []
        self._offset = 0.0

    def clock(self) -> float:
        return time.time() + self._offset

    def budget_sleep(self, seconds: float) -> None:
        self.budget.append(seconds)
        self._offset += seconds


@pytest.fixture
def waits(monkeypatch) -> Waits:
    recorded = Waits()
    monkeypatch.setattr(vendor_http, "pause", recorded.http.append)
    monkeypatch.setitem(RequestBudget.__init__.__kwdefaults__, "clock", recorded.clock)
    monkeypatch.setitem(RequestBudget.__init__.__kwdefaults__, "sleep", recorded.budget_sleep)
    return recorded


@pytest.fixture(autouse=True)
def _vendors(settings, monkeypatch):
    cache.clear()  # Perfect Corp's token and request budget live there
    sandbox.reset()
    vendor_base._instances.clear()
    for name in ("HEADSHOT_API_KEY", "WAVESPEED_API_KEY", "VTRIX_API_KEY"):
        setattr(settings, name, "")
    settings.STUDIO_PUBLIC_URL = PUBLIC
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    settings.PERFECTCORP_POLL_CEILING_MS = 300
    settings.WAVESPEED_POLL_MS = 100
    settings.VTRIX_POLL_MS = 100
    settings.HEADSHOT_API_JOB_DEADLINE_S = 30
    yield
    sandbox.reset()
    vendor_base._instances.clear()


@pytest.fixture
def queued(monkeypatch) -> list:
    """Jobs are queued, not run on commit: each test calls job_run itself."""
    ids: list = []
    monkeypatch.setattr("studio.jobs.create.enqueue_job", ids.append)
    return ids


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def closed_port_url() -> str:
    """An address on 127.0.0.1 where nothing listens: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def arm_on_first(emulator: Emulator, call: tuple[str, str], faults: dict) -> None:
    """Switch `faults` on when the emulator first sees `call` (that request already meets them)."""
    method, pattern = call
    handle = emulator.handle

    def handle_and_arm(request: httpx.Request) -> httpx.Response:
        if not armed and request.method == method and re.search(pattern, request.url.path):
            armed.append(True)
            emulator.faults.update(faults)
        return handle(request)

    armed: list[bool] = []
    emulator.handle = handle_and_arm


def seen(emulator: Emulator, call: tuple[str, str], *, since: Books | None = None) -> int:
    """How often the emulator was asked `call` (since a snapshot of its books, if given).

    Perfect Corp's emulator answers its HTTP and network faults before
    routing (they count in `fault_*`, not in the log); the matrix restricts
    those to the faulted call with `fault_path`, so they all belong to it.
    """
    method, pattern = call
    log = emulator.log[since.log_length if since else 0 :]
    logged = sum(1 for m, path in log if m == method and re.search(pattern, path))
    if emulator.vendor == "Perfect Corp":
        faults = [name for name in emulator.counters if name.startswith("fault_")]
        logged += sum(since.delta(emulator, name) if since else emulator.counters[name] for name in faults)
    return logged


@dataclass
class Books:
    """A snapshot of an emulator's log length and counters (an emulator serving several rounds)."""

    log_length: int
    counters: dict[str, int]

    @classmethod
    def of(cls, emulator: Emulator) -> Books:
        return cls(len(emulator.log), dict(emulator.counters))

    def delta(self, emulator: Emulator, name: str) -> int:
        return emulator.counters[name] - self.counters.get(name, 0)


def run_case(case: Case, *, photo, queued, settings, monkeypatch, emulator=None) -> tuple[Job, Emulator]:
    for name, value in case.settings.items():
        setattr(settings, name, value)
    for target, value in case.patches.items():
        monkeypatch.setattr(target, value)
    if case.short_timeouts:
        short = httpx.Timeout(READ_TIMEOUT, connect=READ_TIMEOUT)
        monkeypatch.setattr(vendor_http, "DEFAULT_TIMEOUT", short)
        monkeypatch.setattr(perfectcorp, "API_TIMEOUT", short)
    emulator = emulator or new_emulator(case.vendor)
    for name, value in case.emulator.items():
        setattr(emulator, name, value)
    if case.starts_at is None:
        emulator.faults.update(case.faults)
    else:
        arm_on_first(emulator, case.starts_at, case.faults)
    key, raw = OPERATIONS[case.vendor]
    operation = get_operation(key)
    params, errors = operation.clean_params(raw)
    assert not errors, errors
    with ExitStack() as stack:
        if case.wire == "http":
            stack.enter_context(emulator.serve(read_timeout_sleep=STALL))
        elif case.wire == "refused":
            emulator.base_url = closed_port_url()
        stack.enter_context(sandbox.use(case.vendor, emulator, over_http=case.wire != "in-process"))
        job = job_create(owner=OWNER, photo=photo, operation=operation, params=params)
        assert queued == [job.pk]
        job_run(job.pk)  # an exception escaping here fails the case
    job.refresh_from_db()
    return job, emulator


# --- the tests -----------------------------------------------------------------------------------


def test_the_tables_cover_every_vendor_and_fault_once():
    covered = {(case.vendor, case.fault) for case in CASES}
    assert {case.fault for case in CASES} <= set(FAULTS) and {case.vendor for case in CASES} == set(VENDORS)
    assert not covered & NOT_APPLICABLE.keys(), "a fault is both run and declared not applicable"
    missing = {(v, f) for v in VENDORS for f in FAULTS} - covered - NOT_APPLICABLE.keys()
    assert not missing, f"neither run nor declared not applicable: {sorted(missing)}"
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fault(case: Case, photo, queued, waits, settings, monkeypatch):
    job, emulator = run_case(case, photo=photo, queued=queued, settings=settings, monkeypatch=monkeypatch)

    # Terminal, with the outcome this fault calls for.
    assert job.status in Job.TERMINAL and job.finished_at is not None
    if case.failure is None:
        assert job.status == Job.Status.SUCCEEDED, job.error_message
        results = list(job.results.all())
        assert results
        for result in results:
            with result.image.open("rb") as fh:
                Image.open(io.BytesIO(fh.read())).verify()
            for name, value in case.result_meta.items():
                assert result.meta.get(name) == value
    else:
        assert job.status == Job.Status.FAILED
        assert job.error_message != GENERIC_FAILURE
        assert re.search(case.failure, job.error_message, re.I), job.error_message
        assert NEXT_STEP.search(job.error_message), f"no next step in {job.error_message!r}"
        assert not job.results.exists()

    # Bounded tries of the faulted call, as the emulator saw them.
    if case.call is not None:
        tries = seen(emulator, case.call)
        assert tries == case.tries
        assert tries <= MAX_TRIES[case.vendor]
    for name, value in case.counters.items():
        assert emulator.counters[name] == value, name

    # Waits between tries: one per retry, each under a ceiling that doubles with every retry,
    # never under the vendor's Retry-After.
    assert len(waits.http) == case.expected_waits, waits.http
    for attempt, wait in enumerate(waits.http, start=1):
        ceiling = BACKOFF_BASE * 2 ** (attempt - 1)
        if case.retry_after is not None:
            assert wait >= case.retry_after
            ceiling = max(ceiling, case.retry_after + BACKOFF_BASE)
        assert 0 <= wait <= ceiling, (attempt, wait)
    if case.budget_backs_off:
        assert waits.budget and sum(waits.budget) >= 0.5, "a 429 pauses the shared budget"


def test_waits_grow_with_each_retry_and_are_jittered(photo, queued, waits, settings, monkeypatch):
    """Across many jobs (a persistent 500 at Vtrix: three waits each), the waits before the
    n-th retry spread over (0, base · 2^(n-1)]: the largest one is past the previous ceiling
    (growth), and no two are equal (jitter). Odds of a false failure: about 2 · 2^-20."""
    case = next(c for c in CASES if c.vendor == "vtrix" and c.fault == "500" and c.variant == "persists")
    by_retry: list[list[float]] = [[], [], []]
    for _ in range(20):
        waits.http.clear()
        job, _ = run_case(case, photo=photo, queued=queued, settings=settings, monkeypatch=monkeypatch)
        queued.clear()
        assert job.status == Job.Status.FAILED and len(waits.http) == 3
        for retry, wait in enumerate(waits.http):
            by_retry[retry].append(wait)
    for retry in (1, 2):
        previous_ceiling = BACKOFF_BASE * 2 ** (retry - 1)
        assert max(by_retry[retry]) > previous_ceiling, by_retry
    every = [w for waits_of_retry in by_retry for w in waits_of_retry]
    assert len(set(every)) == len(every), "identical waits: no jitter"


# Beyond the switches: a result image that arrives damaged (cut to a third of its bytes on the way).
DAMAGED_RESULTS = {  # vendor → the path its result images come from
    "perfectcorp": r"^/storage/result/",
    "headshot": HS_CALL[1],  # inline, as base64 in the one answer
    "wavespeed": r"^/files/",
    "vtrix": r"^/outputs/",
}


def damage_results(emulator: Emulator, pattern: str) -> None:
    """Cut every result image the emulator hands out (a file, or base64 in JSON) to a third."""
    handle = emulator.handle

    def handle_and_damage(request: httpx.Request) -> httpx.Response:
        response = handle(request)
        if response.status_code != 200 or not re.search(pattern, request.url.path):
            return response
        response.read()
        content_type = response.headers["Content-Type"]
        if content_type.startswith("application/json"):
            body = response.json()
            uris = [uri.split(",", 1) for uri in body["outputImages"]]
            body["outputImages"] = [f"{head},{payload[: len(payload) // 12 * 4]}" for head, payload in uris]
            return httpx.Response(200, json=body)
        third = response.content[: len(response.content) // 3]
        return httpx.Response(200, content=third, headers={"Content-Type": content_type})

    emulator.handle = handle_and_damage


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_damaged_result_image_fails_with_its_own_message(vendor, photo, queued, waits, settings, monkeypatch):
    case = Case(vendor, "damaged result", "cut to a third", {}, failure=r"returned a damaged image\. please try again")
    emulator = new_emulator(vendor)
    damage_results(emulator, DAMAGED_RESULTS[vendor])
    job, _ = run_case(
        case, photo=photo, queued=queued, settings=settings, monkeypatch=monkeypatch, emulator=emulator
    )
    assert job.status == Job.Status.FAILED and not job.results.exists()
    assert job.error_message != GENERIC_FAILURE
    assert re.search(case.failure, job.error_message, re.I), job.error_message


def test_not_applicable_faults_say_why():
    for (vendor, fault), reason in NOT_APPLICABLE.items():
        assert vendor in VENDORS and fault in FAULTS
        assert len(reason) > 20, (vendor, fault)


# --- a slice of the matrix through a real worker process ------------------------------------------

# Persistent faults, a few per vendor, run by a real `manage.py qcluster`: the worker fails each job
# with its message and lives on. The emulators are served from this process by one EmulatorHost
# (the worker reaches them through STUDIO_SANDBOX_URL), so their books are read here.
WORKER_SLICE = (
    "perfectcorp-503-persists_on_the_poll",
    "perfectcorp-connection_reset-persists",
    "perfectcorp-lost_task-persists",
    "headshot-429-persists",
    "headshot-500-once_(not_retried:_may_be_billed)",
    "headshot-malformed_JSON-truncated_body",
    "wavespeed-502-persists_on_the_poll",
    "wavespeed-engine_error-generation_failed",
    "wavespeed-expired_result_URL-404",
    "vtrix-500-persists",
    "vtrix-NSFW_flag-moderation",
    "vtrix-engine_error-transient_code,_persists",
    "perfectcorp-malformed_JSON-persists_on_the_file_call",
    "headshot-503-persists_(not_retried:_may_be_billed)",
    "wavespeed-lost_task-404_at_the_first_poll",
    "vtrix-connection_reset-answer_to_the_create_lost_(not_retried)",
)
WORKER_ENV = {
    "PERFECTCORP_POLL_FLOOR_MS": "100",
    "PERFECTCORP_POLL_CEILING_MS": "300",
    "WAVESPEED_POLL_MS": "100",
    "VTRIX_POLL_MS": "100",
    # Every case's job uploads its photo, as in the in-process cases (where each test starts with no
    # remembered upload): the worker lives through every round, all on one photo.
    "PERFECTCORP_UPLOAD_REUSE_S": "0",
}


def worker_rounds() -> list[list[Case]]:
    """The slice in rounds of at most one case per vendor (each vendor has one emulator to switch)."""
    by_id = {case.id: case for case in CASES}
    cases = [by_id[case_id] for case_id in WORKER_SLICE]
    per_vendor = [[case for case in cases if case.vendor == vendor] for vendor in VENDORS]
    return [[queue[i] for queue in per_vendor if i < len(queue)] for i in range(max(map(len, per_vendor)))]


@pytest.mark.qcluster
def test_a_slice_through_a_real_worker_fails_each_job_with_its_message(cluster, settings, portrait_jpeg):
    from studio.vendors.emulators.host import EmulatorHost

    emulators = {vendor: new_emulator(vendor) for vendor in VENDORS}
    host = EmulatorHost(emulators)
    with host.serve(read_timeout_sleep=STALL) as url:
        settings.STUDIO_SANDBOX = True
        settings.STUDIO_SANDBOX_URL = url
        settings.STUDIO_PUBLIC_URL = PUBLIC
        sandbox.reset()
        cluster.extra_env.update(WORKER_ENV)
        cluster.start()
        photo = photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")
        for round_ in worker_rounds():
            books, jobs = {}, []
            for case in round_:
                assert case.failure and case.wire == "http" and not (case.settings or case.patches or case.emulator)
                emulator = emulators[case.vendor]
                emulator.__dict__.pop("handle", None)  # unarm the previous round's starts_at
                emulator.faults.clear()
                books[case.vendor] = Books.of(emulator)
                if case.starts_at is None:
                    emulator.faults.update(case.faults)
                else:
                    arm_on_first(emulator, case.starts_at, case.faults)
                key, raw = OPERATIONS[case.vendor]
                operation = get_operation(key)
                params, errors = operation.clean_params(raw)
                assert not errors, errors
                jobs.append(job_create(owner=OWNER, photo=photo, operation=operation, params=params))
            finished = cluster.wait_for_jobs([job.pk for job in jobs], timeout=120)
            for case, job in zip(round_, finished, strict=True):
                emulator = emulators[case.vendor]
                assert job.status == Job.Status.FAILED, (case.id, job.error_message)
                assert re.search(case.failure, job.error_message, re.I), (case.id, job.error_message)
                assert job.attempts == 1, f"{case.id}: the task was run again (a worker died?)"
                if case.call is not None:
                    assert seen(emulator, case.call, since=books[case.vendor]) == case.tries, case.id
                for name, value in case.counters.items():
                    assert books[case.vendor].delta(emulator, name) == value, (case.id, name)
        assert cluster.proc.poll() is None, "the worker died"
        log = cluster.log()
        assert "Traceback" not in log and "crashed" not in log, log[-4000:]
    sandbox.reset()
