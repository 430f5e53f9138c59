"""Perfect Corp v2 hairstyle jobs: vendor requests per job with webhooks vs polling alone.

As bench/webhooks.py, everything is real and on 127.0.0.1: the Perfect Corp
emulator's v2 family over HTTP, the studio behind a threaded WSGI server
(the emulator POSTs signed Standard Webhooks to /webhooks/perfectcorp/),
and the studio's own runner (studio.jobs.run.job_run) running `--workers` jobs at
once. The jobs are v2 hairstyles (hair-transfer v2.1 with a template); each
task takes `--engine` seconds ± `--jitter` (a uniform spread: real engine
times vary, which is what makes polling cost more than one status check).

Runs, on the same jobs:
  - polling (adapter): no webhooks; the adapter polls when it expects the
    engine to be done (learned from earlier jobs), at most 8.5 s apart;
  - polling 1 s: no webhooks; a poll every second, the v2 documents' "safe
    client rule" when no polling_interval is given;
  - webhooks: the job waits for the webhook, then reads the task once;
    backstop polls come at most 8.5 s apart (the polling window, see
    docs/deploy.md, "Webhooks");
  - webhooks, 1 in 5 lost: the emulator drops its first jobs/5 deliveries.

Requests per job count every v2 API call (file slot, create, polls) per job
that reached the vendor (a job still waiting for room in the 250 / 300 s
budget when its worker's time runs out goes back to the queue having sent
nothing; this benchmark runs each job once, so such jobs are reported, not
retried). The PUT of the photo and the result download go to storage and
are not counted. Ratios are against "polling (adapter)" in the same run.

Run: .venv/bin/python -m bench.pc_webhooks [--jobs 60] [--workers 20] [--engine 6] [--jitter 0.5] [--rate 250]
     [--modes adapter,1s,webhooks,lost]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.webhooks import _serve_studio, _setup_django

MODES = ("polling (adapter)", "polling 1 s", "webhooks", "webhooks, 1 in 5 lost")
SHORT = {"adapter": MODES[0], "1s": MODES[1], "webhooks": MODES[2], "lost": MODES[3]}


def run(*, mode: str, jobs: int, workers: int, engine: float, jitter: float, rate: int, photo_bytes: bytes) -> dict:
    from django.conf import settings
    from django.core.cache import cache
    from django.db import connection

    from studio.jobs.create import job_create
    from studio.jobs.run import job_run
    from studio.models import Job
    from studio.operations import get_operation
    from studio.ownership import Owner
    from studio.photos import photo_create
    from studio.vendors import sandbox
    from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator

    cache.clear()  # the learned engine time and the budget start afresh for each run
    settings.PERFECTCORP_API_VERSION = "v2"
    settings.PERFECTCORP_WEBHOOKS = mode.startswith("webhooks")
    settings.PERFECTCORP_POLL_CEILING_MS = 1000 if mode == "polling 1 s" else 8500
    settings.PERFECTCORP_POLL_FLOOR_MS = 1000
    settings.PERFECTCORP_V2_RATE_LIMIT = rate
    settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS = 25
    emulator = PerfectCorpEmulator()
    emulator.engine_seconds, emulator.engine_jitter = engine, jitter
    emulator.rate_v2 = (rate, 300.0)
    if mode == "webhooks, 1 in 5 lost":
        emulator.faults["webhook_lost"] = jobs // 5
    template = emulator.template_ids("2.1/hair-transfer")[0]

    owner = Owner(visitor_id=f"bench-pc-{MODES.index(mode)}")
    op = get_operation("pc_hairstyle")
    photo = photo_create(owner=owner, data=photo_bytes, filename="me.jpg")
    durations: list[float] = []
    lock = threading.Lock()
    with emulator.serve(), sandbox.use("perfectcorp", emulator, over_http=True):
        # Without webhooks nothing is registered in the console: the emulator sends none.
        hooks = settings.PERFECTCORP_WEBHOOKS
        emulator.webhook_url = settings.STUDIO_PUBLIC_URL + "/webhooks/perfectcorp/" if hooks else ""
        created = [
            job_create(owner=owner, photo=photo, operation=op, params={"style_id": template})
            for _ in range(jobs)
        ]

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
        time.sleep(0.5)  # deliveries still being answered are counted too

    done = Job.objects.filter(pk__in=[job.pk for job in created])
    api = [(m, p) for m, p in emulator.log if p.startswith("/s2s/")]
    polls = sum(1 for m, p in api if m == "GET" and "/task/hair-transfer/" in p)
    durations.sort()
    # Per job that reached the vendor: a job still waiting for budget room when its
    # worker's time ran out goes back to the queue having sent nothing.
    sent = max(1, emulator.counters["v2_creates"])
    return {
        "mode": mode,
        "succeeded": done.filter(status=Job.Status.SUCCEEDED).count(),
        "failures": sorted(
            {f"{job.status}: {job.error_message or job.stage}" for job in done.exclude(status=Job.Status.SUCCEEDED)}
        ),
        "requests_per_job": len(api) / sent,
        "polls_per_job": polls / sent,
        "creates": emulator.counters["v2_creates"],
        "median_s": statistics.median(durations),
        "p95_s": durations[min(len(durations) - 1, int(len(durations) * 0.95))],
        "delivered": emulator.counters["webhooks_delivered"],
        "lost": emulator.counters["webhooks_lost"],
        "expired": emulator.counters["lost"],
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--engine", type=float, default=6.0, help="engine seconds per task (mean)")
    parser.add_argument("--jitter", type=float, default=0.5, help="engine time spread, ± this share")
    parser.add_argument("--rate", type=int, default=250, help="requests per 300 s (v2: 250)")
    parser.add_argument("--modes", default=",".join(SHORT), help=f"comma-separated subset of {', '.join(SHORT)}")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        _setup_django(tmp)
        from django.conf import settings

        from tests import images

        server, base_url = _serve_studio()
        settings.STUDIO_PUBLIC_URL = base_url
        settings.ALLOWED_HOSTS = ["127.0.0.1"]
        photo_bytes = images.to_bytes(images.astronaut(1).resize((768, 768)), "JPEG", quality=90)
        print(
            f"Perfect Corp v2 hairstyle, {args.jobs} jobs, {args.workers} at once, engine {args.engine:g} s "
            f"± {args.jitter:.0%}, {args.rate} requests / 300 s; studio at {base_url}"
        )
        results = []
        try:
            for mode in [SHORT[m] for m in args.modes.split(",")]:
                results.append(
                    run(mode=mode, jobs=args.jobs, workers=args.workers, engine=args.engine,
                        jitter=args.jitter, rate=args.rate, photo_bytes=photo_bytes)
                )
        finally:
            server.shutdown()

    print(
        f"{'run':<24}{'ok':>4}{'req/job':>9}{'polls/job':>11}{'creates':>9}{'median s':>10}{'p95 s':>8}"
        f"{'hooks':>7}{'lost':>6}{'expired':>9}{'wall s':>8}"
    )
    for r in results:
        print(
            f"{r['mode']:<24}{r['succeeded']:>4}{r['requests_per_job']:>9.2f}{r['polls_per_job']:>11.2f}"
            f"{r['creates']:>9}{r['median_s']:>10.2f}{r['p95_s']:>8.2f}{r['delivered']:>7}{r['lost']:>6}"
            f"{r['expired']:>9}{r['wall_s']:>8.1f}"
        )
        for failure in r["failures"]:
            print(f"    failed: {failure}")
    base = results[0]
    for r in results[1:]:
        print(
            f"{r['mode']} vs {base['mode']}: requests per job ×{r['requests_per_job'] / base['requests_per_job']:.2f}, "
            f"polls per job ×{r['polls_per_job'] / base['polls_per_job']:.2f}, "
            f"median job time ×{r['median_s'] / base['median_s']:.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
