"""Shared helpers for the Perfect Corp tests: an emulator routed to the real adapter, job inputs."""

from __future__ import annotations

import uuid
from contextlib import contextmanager

from studio import imaging
from studio.operations import OPERATIONS, Operation
from studio.vendors import sandbox
from studio.vendors.base import JobInput
from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator
from studio.vendors.perfectcorp import PerfectCorpProvider


def new_emulator() -> PerfectCorpEmulator:
    emulator = PerfectCorpEmulator()
    emulator.engine_seconds = 0.0  # tasks finish at their first poll
    emulator.polling_interval_ms = 100
    return emulator


@contextmanager
def routed(emulator: PerfectCorpEmulator, *, over_http: bool):
    """The adapter reaches this emulator over real HTTP on 127.0.0.1, or in-process."""
    if over_http:
        with emulator.serve(), sandbox.use("perfectcorp", emulator, over_http=True):
            yield emulator
    else:
        with sandbox.use("perfectcorp", emulator):
            yield emulator


def operation(key: str) -> Operation:
    return OPERATIONS.get(key) or Operation(key=key, label=key, summary="", provider="perfectcorp")


def job_input(key: str, image: bytes = b"", *, params=None, faces=None, **extra) -> JobInput:
    if image and faces is None:
        faces = imaging.detect_faces(imaging.load_image(image))
    return JobInput(
        job_id=uuid.uuid4().hex,
        operation=operation(key),
        params=dict(params or {}),
        image=image,
        faces=list(faces or []),
        request_id=uuid.uuid4().hex,
        sandbox=True,
        **extra,
    )


def run(
    provider: PerfectCorpProvider,
    job: JobInput,
    emulator: PerfectCorpEmulator | None = None,
    *,
    max_polls: int = 50,
    between_polls=None,
):
    """What the job runner does: submit, poll until finished, fetch results (no real waiting)."""
    submission = provider.submit(job)
    progress = submission.progress
    polls = 0
    while progress is None or not progress.finished:
        if between_polls:
            between_polls(progress)
        progress = provider.poll(job, submission.task_id)
        polls += 1
        assert polls <= max_polls, "the task never finished"
    return provider.fetch_results(job, progress), progress


def hair_params(emulator: PerfectCorpEmulator, feature: str = "hair-style", index: int = 0) -> dict:
    group_id, style_id = emulator.style_ids(feature)[index]
    return {"style_id": str(style_id), "style_group_id": str(group_id)}
