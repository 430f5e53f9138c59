"""Pipeline overhead: submit → result stored, minus the vendor's own time,
with django-q2's ORM broker (embedded SQLite) and with its Redis broker.

What runs. For each broker a child process makes a fresh data directory and
SQLite database, serves the Headshot API emulator over real HTTP on
127.0.0.1, configures the provider with its address and test key (as for a
real vendor account, so not sandbox mode) and starts a real
`manage.py qcluster` on that database (2 workers). It then submits AI-headshot jobs one at a time, each
after the previous one finished and a random pause, so no job ever waits
behind another and queueing is not measured. Each job is created the way a
web request creates it (`studio.jobs.create.job_create` in a transaction, enqueued on
commit) and runs the whole production path in the worker: broker delivery,
claim, heartbeat, reading the photo, the Headshot API call, checking and
storing the returned image with its thumbnail, the success update.

Why the Headshot API: its call is synchronous (one POST returns the images),
so the vendor's time is exactly the time the emulator spends answering, and
no polling interval of ours mixes into it. The emulator sleeps a fixed
engine time (`--engine-ms`) and then renders the headshot on this machine;
the bench times every answer inside the emulator (from the parsed request to
the built response) and subtracts that measured time, sleep and rendering
both, from each job's total. What remains is ours: on_commit enqueue, the
broker and django-q2's hand-over to a worker, every database write, the
photo read, the HTTP exchange on 127.0.0.1, decoding and storing the result.

    total    = finished_at - created_at          (the job row's own timestamps)
    vendor   = time inside the emulator's handler during that window
    overhead = total - vendor
    pickup   = started_at - created_at           (commit, enqueue, broker, claim)

finished_at is written in the same transaction as the result rows, just
before it commits.

Run: .venv/bin/python -m bench.pipeline [--jobs 50] [--engine-ms 300] [--brokers orm,redis]
The Redis broker uses REDIS_URL (default redis://127.0.0.1:6379/5) with a
queue name and cache prefix of its own, so it shares that database safely.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SANDBOX_KEY = "hs_sandbox_key"  # the emulator's test key (studio/vendors/emulators/headshot.py)
PYTHON = BASE_DIR / ".venv" / "bin" / "python"
GOALS_MS = {"orm": 250, "redis": 50}  # issue 6: overhead p50 per broker


# --------------------------------------------------------------------------
# The parent: one child process per broker, then the comparison
# --------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50, help="measured jobs per broker")
    parser.add_argument("--warmup", type=int, default=4, help="jobs run first and not measured")
    parser.add_argument("--engine-ms", type=int, default=300, help="the emulated vendor's fixed engine time")
    parser.add_argument("--gap-ms", type=int, default=300,
                        help="mean pause between one job's end and the next submit (drawn from 0.5-1.5x)")
    parser.add_argument("--brokers", default="orm,redis")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    results = {}
    for broker in args.brokers.split(","):
        results[broker] = run_child(broker, args)
        if results[broker] is None:
            continue
        report(broker, results[broker], args)
    if results.get("orm") and results.get("redis"):
        orm, redis = summary(results["orm"]), summary(results["redis"])
        print(
            f"ratio redis/orm overhead: p50 {redis['p50']/orm['p50']:.2f}x, p95 {redis['p95']/orm['p95']:.2f}x"
        )


def run_child(broker: str, args) -> dict | None:
    with tempfile.TemporaryDirectory(prefix=f"bench-pipeline-{broker}-") as tmp:
        tmp = Path(tmp)
        # Only what this run sets: no database, Redis, S3 or sandbox host from the caller's environment.
        dropped = ("REDIS_URL", "DATABASE_URL", "SECRET_KEY", "STUDIO_SANDBOX_URL", "CACHE_KEY_PREFIX")
        env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("AWS_")}
        env.update(
            DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite3'}",
            STUDIO_DATA_DIR=str(tmp),
            STUDIO_SANDBOX="0",
            HEADSHOT_API_KEY=SANDBOX_KEY,
            DJANGO_SETTINGS_MODULE="portraitstudio.settings",
            # A queue and cache keys of this run's own on a shared Redis database.
            STUDIO_QUEUE_NAME=f"bench-pipeline-{os.getpid()}",
            CACHE_KEY_PREFIX=f"bench-pipeline-{os.getpid()}",
            LOG_LEVEL="WARNING",
        )
        if broker == "redis":
            env["REDIS_URL"] = args.redis_url
        elif broker != "orm":
            raise SystemExit(f"unknown broker {broker!r}: orm or redis")
        out = tmp / "result.json"
        command = [str(PYTHON), "-m", "bench.pipeline", "--child", broker, "--out", str(out),
                   "--jobs", str(args.jobs), "--warmup", str(args.warmup),
                   "--engine-ms", str(args.engine_ms), "--gap-ms", str(args.gap_ms)]
        done = subprocess.run(command, cwd=BASE_DIR, env=env)
        if done.returncode != 0 or not out.exists():
            print(f"{broker}: the run failed (exit code {done.returncode})")
            return None
        return json.loads(out.read_text())


def summary(result: dict) -> dict:
    overhead = sorted(job["overhead_ms"] for job in result["jobs"])
    return {"p50": _percentile(overhead, 50), "p95": _percentile(overhead, 95)}


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(pct / 100 * len(values)))
    return values[rank - 1]


def report(broker: str, result: dict, args) -> None:
    jobs = result["jobs"]
    failed = [job for job in jobs if job["status"] != "succeeded"]

    def stats(key):
        values = sorted(job[key] for job in jobs)
        return f"p50 {_percentile(values, 50):6.0f}  p95 {_percentile(values, 95):6.0f}"

    print(f"\n{broker} broker ({result['broker']}), database {result['database']}: "
          f"{len(jobs)} jobs, {len(failed)} failed; engine {args.engine_ms} ms, load {result['load']}")
    print(f"  total    (created → finished)    {stats('total_ms')} ms")
    print(f"  vendor   (inside the emulator)   {stats('vendor_ms')} ms")
    print(f"  pickup   (created → claimed)     {stats('pickup_ms')} ms")
    print(f"  in worker: claimed → request at the vendor   {stats('before_vendor_ms')} ms")
    print(f"  in worker: vendor answered → finished         {stats('after_vendor_ms')} ms")
    print(f"  OVERHEAD (total − vendor)        {stats('overhead_ms')} ms   (goal: p50 <= {GOALS_MS[broker]} ms)")
    for job in failed[:3]:
        print(f"  failed job: {job['error']}")


# --------------------------------------------------------------------------
# The child: one broker configuration, set by the environment
# --------------------------------------------------------------------------


class TimedEmulator:
    """Records how long each answer of the wrapped emulator took (wall time, seconds since the epoch)."""

    def __init__(self, emulator):
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        handle = emulator.handle

        def timed(request):
            start = time.time()
            try:
                return handle(request)
            finally:
                with self._lock:
                    self.spans.append((start, time.time()))

        emulator.handle = timed

    def inside(self, start: float, end: float) -> tuple[float, float, float]:
        """(time answering, first answer's start, last answer's end) within [start, end]."""
        with self._lock:
            spans = [(a, b) for a, b in self.spans if b > start and a < end]
        if not spans:
            return 0.0, end, end
        busy = sum(min(b, end) - max(a, start) for a, b in spans)
        return busy, spans[0][0], spans[-1][1]


def child(args) -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.cache import cache
    from django.core.management import call_command
    from django.db import connection, transaction

    from studio.jobs.create import job_create
    from studio.models import Job
    from studio.operations import get_operation
    from studio.ownership import Owner
    from studio.photos import photo_create
    from studio.vendors.emulators.headshot import HeadshotEmulator
    from tests.images import astronaut, to_bytes
    from tests.live import Cluster

    call_command("migrate", verbosity=0)
    owner = Owner(visitor_id="bench-pipeline")
    photo = photo_create(owner=owner, data=to_bytes(astronaut(2)), filename="portrait.jpg")
    operation = get_operation("ai_headshot")
    params, errors = operation.clean_params({"prompt": "studio headshot, grey backdrop", "seed": 7})
    assert not errors, errors

    headshot = HeadshotEmulator()
    headshot.faults["latency_per_image"] = args.engine_ms / 1000  # one image per job
    vendor = TimedEmulator(headshot)
    with headshot.serve() as url:
        settings.HEADSHOT_API_BASE_URL = url
        cluster = Cluster(database_url=os.environ["DATABASE_URL"], data_dir=Path(os.environ["STUDIO_DATA_DIR"]),
                          secret_key=settings.SECRET_KEY, workers=2, env={"HEADSHOT_API_BASE_URL": url})
        cluster.start(timeout=60)
        try:
            measured = []
            # Random pauses: a fixed one could lock every submit to the same
            # phase of the ORM broker's poll loop and bias its figures.
            pauses = random.Random(0)
            for number in range(args.warmup + args.jobs):
                with transaction.atomic():
                    job = job_create(owner=owner, photo=photo, operation=operation, params=params)
                (job,) = cluster.wait_for_jobs([job.pk], timeout=120)
                if job.status != Job.Status.SUCCEEDED and number < args.warmup:
                    raise SystemExit(f"a warm-up job failed: {job.error_message}\n{cluster.log()[-3000:]}")
                if number >= args.warmup:
                    measured.append(job)
                time.sleep(args.gap_ms / 1000 * pauses.uniform(0.5, 1.5))
            load = os.getloadavg()
        finally:
            cluster.stop()
            cache.clear()  # this run's keys only (its own prefix; studio.cache.RedisCache)

    jobs = []
    for job in measured:
        created = job.created_at.timestamp()
        started = (job.started_at or job.created_at).timestamp()  # a job failed before its claim has none
        finished = job.finished_at.timestamp()
        vendor_s, vendor_from, vendor_to = vendor.inside(created, finished)
        jobs.append({
            "status": job.status,
            "error": job.error_message,
            "total_ms": (finished - created) * 1000,
            "vendor_ms": vendor_s * 1000,
            "pickup_ms": (started - created) * 1000,
            "before_vendor_ms": (vendor_from - started) * 1000,
            "after_vendor_ms": (finished - vendor_to) * 1000,
            "overhead_ms": (finished - created - vendor_s) * 1000,
        })
    Path(args.out).write_text(json.dumps({
        "broker": "redis" if settings.Q_CLUSTER.get("redis") else f"orm, poll {settings.Q_CLUSTER.get('poll')} s",
        "database": connection.vendor,
        "load": " ".join(f"{x:.1f}" for x in load),
        "jobs": jobs,
    }))


if __name__ == "__main__":
    sys.exit(main())
