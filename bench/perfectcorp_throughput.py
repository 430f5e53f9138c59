"""Perfect Corp throughput: many hairstyle jobs through the real adapter and the shared budget.

The vendor allows 100 requests per 5 minutes per IP (and 100 a minute per
token), every status poll included, and loses a task not polled for 10 s
(vendor-apis.md §1.9). With an 8-second engine the best any client can do is
file + run + one poll = 3 counted requests a job (the upload goes to the
storage host and is not counted; the token is fetched once per 2 hours), so
the bound is 100 / 5 min / 3 ≈ 6.7 jobs a minute.

The run measures, against the emulator with those limits:
  - ours: the real PerfectCorpProvider — admission control on the shared
    budget (in Django's cache, shared by every thread as by every process),
    polls timed from the learned engine time, never later than the 10-second
    rule allows;
  - naive: the same adapter and budget, but polling at every
    `polling_interval` (1 s) as the vendor's sample code does.
Both start from a "warm" window: the previous 5 minutes already carried
traffic at the full rate, so the figures are the steady state and not the
burst an idle account allows once.

Time scale: a real run takes ~10 minutes. `--scale 0.2` (the default) shrinks every
duration by the same factor — the rate windows (60 s, 300 s), the engine time
(8 s), polling_interval (1 s), the 10-second rule and the poll floor/ceiling —
so requests per job, jobs per window and their ratios are preserved; only
fixed costs (HTTP, database, image work) grow relatively, which makes the
scaled figures slightly pessimistic.

Run: .venv/bin/python -m bench.perfectcorp_throughput [--jobs 60] [--scale 0.2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

LIMIT_PER_IP, IP_WINDOW_S = 100, 300.0
LIMIT_PER_TOKEN, TOKEN_WINDOW_S = 100, 60.0
ENGINE_S, POLL_INTERVAL_S, LOST_AFTER_S = 8.0, 1.0, 10.0
COUNTED_PER_JOB = 3  # file + run + one poll


def _setup_django(db_path: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portraitstudio.settings")
    os.environ["DATABASE_URL"] = f"sqlite:///{db_path}"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("createcachetable", verbosity=0)


def run_fleet(*, jobs: int, scale: float, naive: bool, workers: int, ceiling_ms: float) -> dict:
    from django.conf import settings
    from django.core.cache import cache
    from django.db import connection

    from studio import imaging
    from studio.operations import OPERATIONS
    from studio.vendors import sandbox
    from studio.vendors.base import JobInput
    from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator
    from studio.vendors.perfectcorp import PerfectCorpProvider
    from tests import images

    settings.PERFECTCORP_RATE_PER_IP = LIMIT_PER_IP
    settings.PERFECTCORP_RATE_PER_TOKEN = LIMIT_PER_TOKEN
    settings.PERFECTCORP_RATE_WINDOW_IP_S = IP_WINDOW_S * scale
    settings.PERFECTCORP_RATE_WINDOW_TOKEN_S = TOKEN_WINDOW_S * scale
    settings.PERFECTCORP_TASK_LOST_AFTER_S = LOST_AFTER_S * scale
    settings.PERFECTCORP_POLL_FLOOR_MS = 1000 * scale
    settings.PERFECTCORP_POLL_CEILING_MS = ceiling_ms * scale
    settings.PERFECTCORP_JOB_DEADLINE_S = 120 * scale
    cache.clear()

    emulator = PerfectCorpEmulator()
    emulator.engine_seconds = ENGINE_S * scale
    emulator.polling_interval_ms = POLL_INTERVAL_S * 1000 * scale
    emulator.lost_after = LOST_AFTER_S * scale
    emulator.rate_per_ip = (LIMIT_PER_IP, IP_WINDOW_S * scale)
    emulator.rate_per_token = (LIMIT_PER_TOKEN, TOKEN_WINDOW_S * scale)

    class NaivePolling(PerfectCorpProvider):
        """Polls at every polling_interval from the run on (what sample clients do)."""

        def _poll_after(self, feature, elapsed, interval_s):
            return max(interval_s or POLL_INTERVAL_S * scale, settings.PERFECTCORP_POLL_FLOOR_MS / 1000)

        def expected_requests(self, feature, job):
            return 2 + math.ceil(self.expected_seconds(feature) / (POLL_INTERVAL_S * scale)) + 1

    provider = (NaivePolling if naive else PerfectCorpProvider)()
    photo = images.to_bytes(images.astronaut(2).resize((768, 768)), "JPEG", quality=90)
    faces = imaging.detect_faces(imaging.load_image(photo))
    hairstyle = OPERATIONS["pc_hairstyle"]
    styles = emulator.style_ids("hair-style")
    # The expected engine time starts unknown (the adapter's default), as on a fresh deployment.
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    finished: list[float] = []
    lock = threading.Lock()

    with sandbox.use("perfectcorp", emulator):
        # Warm window: the previous 5 minutes carried traffic at the full rate.
        budget = provider.budget()
        now = time.time()
        spacing = IP_WINDOW_S * scale / LIMIT_PER_IP
        earlier = [now - IP_WINDOW_S * scale + (i + 0.5) * spacing for i in range(LIMIT_PER_IP)]
        with budget._locked() as state:
            state["log"] = list(earlier)
        emulator._hits["ip"] = __import__("collections").deque(earlier)

        started = time.time()
        deadline = started + 900 * scale * max(1.0, jobs / 60) * (4 if naive else 1)

        def one_job(index: int) -> None:
            group_id, style_id = styles[index % len(styles)]
            job = JobInput(
                job_id=uuid.uuid4().hex,
                operation=hairstyle,
                params={"style_id": str(style_id), "style_group_id": str(group_id)},
                image=photo,
                faces=faces,
                request_id=uuid.uuid4().hex,
                sandbox=True,
                deadline=deadline,
            )
            queued = time.time()
            try:
                submission = provider.submit(job)
                progress = submission.progress
                while progress is None or not progress.finished:
                    if progress is not None:
                        # What the job runner does: honour poll_after, capped at the 10-second rule.
                        time.sleep(max(0.0, min(progress.poll_after, LOST_AFTER_S * scale)))
                    progress = provider.poll(job, submission.task_id)
                outputs = provider.fetch_results(job, progress)
                with lock:
                    outcomes["succeeded" if outputs else "empty"] += 1
                    latencies.append(time.time() - queued)
                    finished.append(time.time())
            except Exception as exc:  # counted and shown; a benchmark must finish
                with lock:
                    outcomes[f"failed: {getattr(exc, 'message', exc)}"] += 1
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one_job, range(jobs)))
        elapsed = time.time() - started

    api_requests = sum(1 for method, path in emulator.log if path.startswith("/s2s/"))
    succeeded = outcomes["succeeded"]
    real_minutes = elapsed / scale / 60
    # Steady state: completions per minute between the first and the last one
    # (leaves out the wait for the warm window's first free slots and the last engine run).
    finished.sort()
    steady_minutes = (finished[-1] - finished[0]) / scale / 60 if len(finished) > 1 else 0.0
    return {
        "client": "naive (polls every polling_interval)" if naive else "ours (budget + learned poll timing)",
        "jobs": jobs,
        "succeeded": succeeded,
        "failures": {k: v for k, v in outcomes.items() if k != "succeeded"},
        "jobs_per_min": succeeded / real_minutes if real_minutes else 0.0,
        "steady_jobs_per_min": (len(finished) - 1) / steady_minutes if steady_minutes else 0.0,
        "requests_per_job": api_requests / max(1, succeeded),
        "auth_calls": emulator.counters["auth"],
        "429s": emulator.counters["429"],
        "lost": emulator.counters["lost"],
        "charges": emulator.counters["charges"],
        "double_charges": emulator.counters["charges"] - succeeded,
        "median_latency_s": sorted(latencies)[len(latencies) // 2] / scale if latencies else 0.0,
        "wall_s": elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--naive-jobs", type=int, default=20, help="the naive client is slow; fewer jobs suffice")
    parser.add_argument("--scale", type=float, default=0.2, help="time scale (1 = real time, ~10 min)")
    parser.add_argument("--workers", type=int, default=0, help="worker threads (default: one per job)")
    parser.add_argument(
        "--ceiling-ms", type=float, default=8500, help="PERFECTCORP_POLL_CEILING_MS (unscaled) for this run"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        _setup_django(os.path.join(tmp, "bench.sqlite3"))
        bound = LIMIT_PER_IP / (IP_WINDOW_S / 60) / COUNTED_PER_JOB
        print(
            f"Perfect Corp throughput: {args.jobs} hairstyle jobs, engine {ENGINE_S:g} s, limits "
            f"{LIMIT_PER_IP}/{IP_WINDOW_S:g} s per IP and {LIMIT_PER_TOKEN}/{TOKEN_WINDOW_S:g} s per token, "
            f"time scale {args.scale:g}, poll ceiling {args.ceiling_ms:g} ms"
        )
        print(f"bound: {LIMIT_PER_IP} requests / {IP_WINDOW_S / 60:g} min / {COUNTED_PER_JOB} = {bound:.2f} jobs/min")
        results = []
        for naive, jobs in ((False, args.jobs), (True, args.naive_jobs)):
            result = run_fleet(
                jobs=jobs, scale=args.scale, naive=naive, workers=args.workers or jobs, ceiling_ms=args.ceiling_ms
            )
            results.append(result)
            print(
                f"{result['client']:<40} {result['succeeded']:>3}/{result['jobs']} ok  "
                f"steady {result['steady_jobs_per_min']:5.2f} jobs/min ({result['steady_jobs_per_min'] / bound:6.1%} "
                f"of bound), whole run {result['jobs_per_min']:5.2f} ({result['jobs_per_min'] / bound:6.1%})  "
                f"{result['requests_per_job']:5.2f} requests/job  429s {result['429s']}  lost {result['lost']}  "
                f"charges {result['charges']} (double {result['double_charges']})  "
                f"median latency {result['median_latency_s']:.0f} s  [{result['wall_s']:.0f} s wall]"
            )
            if result["failures"]:
                print(f"    failures: {result['failures']}")
        ours, naive = results
        steady = ours["steady_jobs_per_min"] / max(naive["steady_jobs_per_min"], 1e-9)
        whole = ours["jobs_per_min"] / max(naive["jobs_per_min"], 1e-9)
        print(f"ours / naive throughput: steady {steady:.2f}x, whole run {whole:.2f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
