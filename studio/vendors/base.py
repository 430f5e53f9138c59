"""The provider interface every vendor adapter (and the local one) implements.

A job runs as submit → poll until finished → fetch results. Providers raise
one error type, VendorError, whose message is safe to show to the user and
which says whether trying again could help.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any
from collections.abc import Callable

from studio.errors import UserFacingError

from studio.imaging import FaceBox
from studio.operations import Operation


class VendorError(UserFacingError):
    """A failure with a user-facing message; `permanent` means retrying won't help."""

    def __init__(self, message: str, *, permanent: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class Output:
    """One finished image, in memory, before it is stored as a Result."""

    data: bytes
    content_type: str = "image/jpeg"
    label: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    finished: bool
    stage: str = ""
    fraction: float | None = None
    poll_after: float = 1.0  # seconds until the next poll is useful
    # A webhook will wake the job when the task ends (studio/wakeup.py), so
    # poll_after is only a slow backstop, in case that webhook is lost.
    webhook: bool = False
    outputs: tuple[Output, ...] = ()
    cost: float | None = None  # what the vendor says the job cost, when it says
    meta: dict[str, Any] = field(default_factory=dict)  # stored on Job.vendor_meta (no secrets)


@dataclass(frozen=True)
class Submission:
    task_id: str
    progress: Progress | None = None  # set when the provider finished at once


StageReporter = Callable[[str, float | None], None]


@dataclass
class JobInput:
    """Everything a provider needs for one job; built by the job runner."""

    job_id: str
    operation: Operation
    params: dict[str, Any]
    image: bytes  # the normalized JPEG, metadata already stripped
    faces: list[FaceBox]
    request_id: str
    reference: bytes | None = None  # a second photo (e.g. the look to copy)
    mask: bytes | None = None  # PNG, white where the user painted, same size as `image`
    # Vendor bookkeeping of the photo this job's input came from, when it is a
    # result of an earlier job (e.g. Perfect Corp's dst_id for chaining).
    source_meta: dict[str, Any] = field(default_factory=dict)
    photo_id: str = ""
    sandbox: bool = False
    # State the provider saved on the job earlier (e.g. an uploaded file id),
    # so a resumed run can skip what already happened.
    state: dict[str, Any] = field(default_factory=dict)
    # Epoch seconds by which the job must end (0: no deadline given); a provider
    # that has to wait for vendor capacity waits at most until then.
    deadline: float = 0.0
    report: StageReporter = lambda stage, fraction=None: None
    save_state_callback: Callable[[dict[str, Any]], None] = lambda state: None

    def save_state(self, **values: Any) -> None:
        """Persist provider state on the job now, before the next vendor call."""
        self.state.update(values)
        self.save_state_callback(dict(self.state))


class _ReadOnFirstUse:
    """A JobInput file (or photo detail) given as a zero-argument function is read the
    first time it is used.

    The job runner builds a JobInput for every step of a job, and most steps
    (a poll) never look at the photo: on S3 that would be a download per poll,
    and every step would load the photo's row (and its source's) for nothing.
    """

    def __set_name__(self, owner, name):
        self.slot = f"_{name}"

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        value = obj.__dict__[self.slot]
        if callable(value):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


# Installed after @dataclass made __init__, whose assignments now go through them.
for _name in ("image", "reference", "mask", "faces", "source_meta"):
    _field = _ReadOnFirstUse()
    _field.__set_name__(JobInput, _name)
    setattr(JobInput, _name, _field)


class Provider(ABC):
    key: str = ""
    label: str = ""
    # True when the photo never leaves this server.
    runs_locally: bool = False
    # True when a call may hold its connection for minutes (a synchronous API):
    # the step runner gives such calls threads of their own (studio/jobs/steps.py).
    slow_calls: bool = False
    # True when the vendor drops a task not polled often enough (Perfect Corp's
    # 10-second rule): the step runner sends such polls before all others.
    polls_expire: bool = False
    # Shown before submit: where the photo goes and how long it is kept there.
    data_notice: str = ""
    # Shown on the privacy page: whether we can have the vendor delete its copies, and how.
    deletion_notice: str = ""
    # Whether a second photo may replace a style pick (Inputs.style_reference_label).
    style_reference_offered: bool = False

    def unavailable_reason(self) -> str | None:
        """Why this provider cannot run now (e.g. missing keys), or None."""
        return None

    def status(self) -> dict[str, Any]:
        """For the staff console: configured, sandbox or live, budget in use, … (no secrets)."""
        return {"configured": self.unavailable_reason() is None}

    def delete_remote(self, job) -> None:
        """Ask the vendor to delete its copies of this job's files, where it offers that."""
        return None

    def submission_meta(self) -> dict[str, Any]:
        """Recorded on Job.vendor_meta when a job is created (e.g. which API family it goes to)."""
        return {}

    @abstractmethod
    def submit(self, job: JobInput) -> Submission: ...

    def poll(self, job: JobInput, task_id: str) -> Progress:
        raise VendorError("This job's task was lost; please run it again.", permanent=True)

    def fetch_results(self, job: JobInput, progress: Progress) -> list[Output]:
        return list(progress.outputs)


# Provider key → dotted path, imported on first use so a vendor module's
# dependencies load only when that vendor is used.
PROVIDERS: dict[str, str] = {
    "local": "studio.vendors.local.LocalProvider",
    "perfectcorp": "studio.vendors.perfectcorp.PerfectCorpProvider",
    "headshot": "studio.vendors.headshot.HeadshotProvider",
    "wavespeed": "studio.vendors.wavespeed.WaveSpeedProvider",
    "vtrix": "studio.vendors.vtrix.VtrixProvider",
}

_instances: dict[str, Provider] = {}


def get_provider(key: str) -> Provider:
    if key not in _instances:
        module_name, _, class_name = PROVIDERS[key].rpartition(".")
        _instances[key] = getattr(import_module(module_name), class_name)()
    return _instances[key]
