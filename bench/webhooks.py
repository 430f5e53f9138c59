"""Webhooks vs polling: vendor requests and time per job, WaveSpeed portrait jobs.

The whole path is real: the WaveSpeed emulator on 127.0.0.1 over HTTP, the
studio served by a threaded WSGI server on 127.0.0.1 (so webhooks arrive as
real POSTs at /webhooks/wavespeed/<token>/), and jobs run by the studio's
own runner (studio.jobs.run.job_run: submit, wait between polls on studio.wakeup,
fetch, store), several at once as a worker pool would.

The emulator runs at a tier that admits every job at once (1000 submissions
a minute, `--workers` processing together), so the figures measure waiting
for results, not the queue of WaveSpeed's Bronze tier (10 a minute, 3 at once).

Three runs of the same jobs:
  - polling: WAVESPEED_WEBHOOKS off; the adapter polls every WAVESPEED_POLL_MS
    (1 s, doubled after 10 s) — the baseline a careful client without
    webhooks uses;
  - webhooks: the job waits for the callback, which wakes it; it then reads
    the prediction once (the callback is only a hint) and stores the result;
    the backstop poll (STUDIO_WEBHOOK_BACKSTOP_SECONDS) never fires;
  - webhooks, 1 in 5 lost: the emulator drops every fifth delivery, so those
    jobs finish on the backstop poll — slower, never stuck.

Printed per run: vendor requests per job (all calls: upload, submit, polls),
polls per job, job time (created → stored; the engine alone takes
2 × --stage seconds), webhooks delivered and lost, and the ratios of the
webhook runs against the polling run measured in the same invocation.

Run: .venv/bin/python -m bench.webhooks [--jobs 60] [--workers 20] [--stage 4] [--backstop 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def _setup_django(tmp: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portraitstudio.settings")
    os.environ["DATABASE_URL"] = f"sqlite:///{os.path.join(tmp, 'bench.sqlite3')}"
    os.environ["STUDIO_MEDIA_ROOT"] = os.path.join(tmp, "media")
    os.environ["STUDIO_SANDBOX"] = "true"
    import django
    from django.core.management import call_command

    django.setup()
    import logging

    for name in ("django-q", "studio"):  # a line per job would drown the figures
        logging.getLogger(name).setLevel(logging.WARNING)
    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)


def _serve_studio():
    """The studio on a free 127.0.0.1 port in a thread; returns (server, base URL)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):  # one line per webhook would drown the figures
            pass

    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler, allow_reuse_address=False)
    server.set_app(WSGIHandler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def run(*, mode: str, jobs: int, workers: int, stage: float, backstop: int, photo_bytes: bytes) -> dict:
    from django.conf import settings
    from django.db import connection

    from studio.jobs.create import job_create
    from studio.jobs.run import job_run
    from studio.models import Job
    from studio.operations import get_operation
    from studio.ownership import Owner
    from studio.photos import photo_create
    from studio.vendors import sandbox
    from studio.vendors.emulators.wavespeed import WaveSpeedEmulator

    settings.WAVESPEED_WEBHOOKS = mode != "polling"
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = backstop
    # A higher tier than the emulator's default Bronze (10 submissions a minute,
    # 3 at once): the figures are about waiting, not about the tier's queue.
    emulator = WaveSpeedEmulator(stage_seconds=stage, rate_per_minute=1000, concurrency=workers)
    lost_every = 5 if mode == "webhooks, 1 in 5 lost" else 0
    if lost_every:
        # The emulator drops its next N deliveries: the first jobs to finish lose theirs.
        emulator.faults["webhook_lost"] = jobs // lost_every

    owner = Owner(visitor_id=f"bench-{mode.split(',')[0]}")
    op = get_operation("ws_portrait")
    params, _ = op.clean_params({"prompt": "soft window light", "seed": 7})
    photo = photo_create(owner=owner, data=photo_bytes, filename="me.jpg")
    durations: list[float] = []
    lock = threading.Lock()

    with emulator.serve(), sandbox.use("wavespeed", emulator, over_http=True):
        created = [job_create(owner=owner, photo=photo, operation=op, params=params) for _ in range(jobs)]

        def one(job) -> None:
            try:
                started = time.monotonic()
                job_run(job.pk)
                with lock:
                    durations.append(time.monotonic() - started)
            finally:
                connection.close()

        wall = time.monotonic()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, created))
        wall = time.monotonic() - wall

    done = Job.objects.filter(pk__in=[job.pk for job in created])
    succeeded = done.filter(status=Job.Status.SUCCEEDED).count()
    failures = sorted({job.error_message for job in done.exclude(status=Job.Status.SUCCEEDED)})
    requests = len(emulator.log)
    polls = sum(1 for method, path in emulator.log if method == "GET" and "/predictions/" in path)
    durations.sort()
    return {
        "mode": mode,
        "jobs": jobs,
        "succeeded": succeeded,
        "failures": failures,
        "requests_per_job": requests / jobs,
        "polls_per_job": polls / jobs,
        "median_s": statistics.median(durations),
        "p95_s": durations[min(len(durations) - 1, int(len(durations) * 0.95))],
        "max_s": durations[-1],
        "delivered": emulator.counters["webhooks_delivered"],
        "lost": emulator.counters["webhooks_lost"],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=20, help="jobs running at once (a worker pool's size)")
    parser.add_argument("--stage", type=float, default=4.0, help="emulator seconds per stage (2 stages a job)")
    parser.add_argument("--backstop", type=int, default=25, help="STUDIO_WEBHOOK_BACKSTOP_SECONDS")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        _setup_django(tmp)
        from django.conf import settings

        from tests import images

        server, base_url = _serve_studio()
        settings.STUDIO_PUBLIC_URL = base_url
        settings.ALLOWED_HOSTS = ["127.0.0.1"]
        photo_bytes = images.to_bytes(images.astronaut(2).resize((768, 768)), "JPEG", quality=90)
        print(
            f"Webhooks vs polling: {args.jobs} WaveSpeed portrait jobs, {args.workers} at once, engine "
            f"{2 * args.stage:g} s, poll {settings.WAVESPEED_POLL_MS} ms (doubled after 10 s), backstop "
            f"{args.backstop} s; studio at {base_url}"
        )
        results = []
        try:
            for mode in ("polling", "webhooks", "webhooks, 1 in 5 lost"):
                result = run(
                    mode=mode, jobs=args.jobs, workers=args.workers, stage=args.stage,
                    backstop=args.backstop, photo_bytes=photo_bytes,
                )
                results.append(result)
        finally:
            server.shutdown()

    print(
        f"{'run':<24}{'ok':>4}{'req/job':>9}{'polls/job':>11}{'median s':>10}{'p95 s':>8}{'max s':>8}"
        f"{'hooks':>7}{'lost':>6}{'wall s':>8}"
    )
    for r in results:
        print(
            f"{r['mode']:<24}{r['succeeded']:>4}{r['requests_per_job']:>9.2f}{r['polls_per_job']:>11.2f}"
            f"{r['median_s']:>10.2f}{r['p95_s']:>8.2f}{r['max_s']:>8.2f}{r['delivered']:>7}{r['lost']:>6}"
            f"{r['wall_s']:>8.1f}"
        )
        for failure in r["failures"]:
            print(f"    failed: {failure}")
    base = results[0]
    for r in results[1:]:
        print(
            f"{r['mode']} vs polling: requests per job ×{r['requests_per_job'] / base['requests_per_job']:.2f}, "
            f"polls per job ×{r['polls_per_job'] / base['polls_per_job']:.2f}, "
            f"median job time ×{r['median_s'] / base['median_s']:.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
