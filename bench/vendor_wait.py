"""Vendor jobs in flight: this runner (steps on the step runner's threads) against a worker per wait.

Both runners get the same load in one invocation, each on a fresh data
directory (embedded defaults: SQLite, the ORM broker, media on disk) and
fresh emulators served by this process (studio/vendors/emulators/host.py):
Perfect Corp with an 8 s engine, WaveSpeed with 3 s (two stages of 1.5 s),
and no vendor rate limit. Half the jobs are Perfect Corp colorize, half
WaveSpeed portrait, all created at once; a local retouch is submitted once
the vendor jobs are in flight, and its submit → stored time is compared with
its own processing time (started → finished).

- new: this tree; the cluster (Q_CPU_WORKERS) for local work and the step
  runner (STUDIO_STEPS_AT_ONCE threads) for vendor jobs' submits, polls and
  downloads, as runstudio starts them.
- baseline: `git archive <rev>` of the previous runner (default aed4f61, the
  last commit before the step runner) in a temporary directory, with its one
  cluster of Q_WORKERS workers, each holding a vendor job for its whole run.

Reported per runner: jobs finished (of those sent) within the time cap, jobs
finished per minute (first submit → last stored), p50/p95 submit → stored,
the overhead of p50 above the vendor's own time, the most jobs in flight at
once (submitted at the vendor and not yet stored), peak RSS and PSS summed over
every process of the clusters (PSS counts memory shared by forked processes
once), and the retouch's times.

Run: .venv/bin/python -m bench.vendor_wait [--jobs 500] [--workers 4] [--cpu-workers 2] [--cap 300]
         [--baseline-rev aed4f61] [--webhooks] [--scaled]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PC_ENGINE_S, WS_STAGE_S = 8.0, 1.5  # WaveSpeed: created → processing → completed, 1.5 s each
VENDOR_SECONDS = {"pc_colorize": PC_ENGINE_S, "ws_portrait": 2 * WS_STAGE_S}

CREATE = """
import sys, json
try:
    from studio.jobs.create import job_create
    from studio.photos import photo_create
except ImportError:  # the baseline's tree, before services.py was split
    from studio.services import job_create, photo_create
from studio.operations import get_operation
from studio.ownership import Owner
from tests import images
owner = Owner(visitor_id="bench-vendor-wait")
photo = photo_create(owner=owner, data=images.to_bytes(images.astronaut(), "JPEG", quality=90))
import time
kinds, rate = sys.argv[-1].split(","), RATE
began = time.time()
ids = []
for n, kind in enumerate(kinds):
    if rate:  # a steady stream of jobs instead of all at once
        time.sleep(max(0.0, began + n / rate - time.time()))
    op = get_operation(kind)
    params, errors = op.clean_params({})
    assert not errors, errors
    ids.append(str(job_create(owner=owner, photo=photo, operation=op, params=params).pk))
print("IDS " + json.dumps(ids))
"""


def _cheap_pictures() -> None:
    """Every job sends the same photo: the emulators make each picture once and reuse it.

    The emulators make real pictures (colorize, portrait edit) in this process,
    under their own lock; for 500 jobs that work, not the runner, would set the
    pace. The vendor's time is `engine_seconds`, as in the issue's benchmark.
    """
    import functools
    import types

    from studio.vendors.emulators import perfectcorp as pc_emulator
    from studio.vendors.emulators import wavespeed as ws_emulator

    def by_identity(make):
        """`make(image, *rest)` once per image object (the cached decoders hand out one) and rest."""
        made: dict = {}

        def once(image, *rest):
            key = (id(image), *rest)
            if key not in made:
                made[key] = make(image, *rest)
            return made[key]

        return once

    pc_emulator._decode = functools.lru_cache(maxsize=8)(pc_emulator._decode)
    pc_pictures = types.SimpleNamespace(**vars(pc_emulator.pictures))
    pc_pictures.colorize = by_identity(pc_emulator.pictures.colorize)
    pc_pictures.encode = by_identity(pc_emulator.pictures.encode)  # the same picture, encoded once
    pc_emulator.pictures = pc_pictures
    ws_pictures = types.SimpleNamespace(**vars(ws_emulator.pictures))
    # WaveSpeed's emulator PNG-encodes each result: a profile of this benchmark found that,
    # done per job in this process, took more of the machine than the runner under test.
    ws_pictures.encode = by_identity(ws_emulator.pictures.encode)
    original_edit = ws_emulator.pictures.portrait_edit
    edit = by_identity(lambda image, prompt: original_edit(image, prompt=prompt, seed=1))
    ws_pictures.portrait_edit = lambda image, *, prompt, seed: edit(image, prompt)
    ws_emulator.pictures = ws_pictures
    load = functools.lru_cache(maxsize=8)(ws_emulator.imaging.load_image)
    ws_emulator.imaging = types.SimpleNamespace(**{**vars(ws_emulator.imaging), "load_image": load})


class _Accepted(dict):
    """An emulator's task table that remembers when the vendor accepted each task (by its id),
    even after the emulator forgets the task: the vendor's side of each job's timeline."""

    def __init__(self, accepted: dict):
        super().__init__()
        self.accepted = accepted

    def __setitem__(self, task_id, task):
        self.accepted.setdefault(task_id, time.time())
        super().__setitem__(task_id, task)


def _record_finish(emulator, finished: dict) -> None:
    """Note when the emulator has made a task's results (the end of the vendor's own work)."""
    finish = emulator._finish

    def recorded(task, *args, **kwargs):
        try:
            return finish(task, *args, **kwargs)
        finally:
            finished.setdefault(task.id, time.time())

    emulator._finish = recorded


def _emulators(accepted: dict, finished: dict, webhook_base: str = ""):
    from studio.vendors.emulators.host import EmulatorHost
    from studio.vendors.emulators.perfectcorp import PerfectCorpEmulator
    from studio.vendors.emulators.wavespeed import WaveSpeedEmulator

    pc = PerfectCorpEmulator()
    pc.engine_seconds = PC_ENGINE_S
    pc.rate_per_token = pc.rate_per_ip = (10_000_000, 60.0)
    if hasattr(pc, "rate_v2"):
        pc.rate_v2 = (10_000_000, 300.0)
    if webhook_base:  # v2 tasks' ends are POSTed to the site (WaveSpeed takes its URL from each submit)
        pc.webhook_url = f"{webhook_base}/webhooks/perfectcorp/"
    ws = WaveSpeedEmulator(rate_per_minute=10_000_000, concurrency=100_000, stage_seconds=WS_STAGE_S)
    pc.tasks, ws.tasks = _Accepted(accepted), _Accepted(accepted)
    if webhook_base:
        # With webhooks the emulators finish tasks on their own threads, when the engine time
        # is up; without, a task finishes when a poll finds its time up (that wait is ours).
        _record_finish(pc, finished)
        _record_finish(ws, finished)
    return EmulatorHost({"perfectcorp": pc, "wavespeed": ws})


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Runner:
    """One runner's site: its tree, data directory and clusters."""

    def __init__(self, label: str, tree: Path, *, workers: int, step_runner: bool, sandbox_url: str, scaled: bool,
                 web_port: int = 0):
        self.label, self.tree, self.step_runner, self.scaled = label, tree, step_runner, scaled
        self.web_port = web_port
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"studio-bench-{label}-"))
        (self.data_dir / "secret").write_text(secrets.token_urlsafe(50))
        inherited = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DJANGO_SETTINGS_MODULE")}
        for key in ("DATABASE_URL", "REDIS_URL", "AWS_STORAGE_BUCKET_NAME"):
            inherited.pop(key, None)  # the embedded defaults, for both
        self.env = {
            **inherited,
            "DJANGO_SETTINGS_MODULE": "portraitstudio.settings",
            "STUDIO_DATA_DIR": str(self.data_dir),
            "SECRET_KEY_FILE": str(self.data_dir / "secret"),
            "STUDIO_PUBLIC_URL": "http://127.0.0.1:9",
            "STUDIO_SANDBOX": "1",
            "STUDIO_SANDBOX_URL": sandbox_url,
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "Q_WORKERS": str(workers),
            "Q_CPU_WORKERS": str(workers),
            "PERFECTCORP_RATE_PER_TOKEN": "10000000",
            "PERFECTCORP_RATE_PER_IP": "10000000",
            "PERFECTCORP_V2_RATE_LIMIT": "10000000",
            "STUDIO_JOB_DEADLINE_SECONDS": "3600",
            # Without a web server to receive webhooks every job polls; with one (--webhooks),
            # WaveSpeed and Perfect Corp v2 (its webhooks are v2's) call back when a task ends.
            "WAVESPEED_WEBHOOKS": "1" if web_port else "0",
            "PERFECTCORP_WEBHOOKS": "1" if web_port else "0",
            "STUDIO_MAX_CONCURRENT_JOBS": "100000",
            "STUDIO_JOBS_PER_HOUR": "100000",
        }
        if web_port:
            self.env.update(STUDIO_PUBLIC_URL=f"http://127.0.0.1:{web_port}", PERFECTCORP_API_VERSION="v2")
        if scaled:
            # The scaled configuration on this machine: PostgreSQL (a database of this run's own)
            # and Redis (broker and cache, under a prefix of this run's own); media stays on disk.
            run = f"vw{os.getpid()}{label}"
            self.pg_name = run
            _postgres(f'CREATE DATABASE "{run}"')
            self.env.update(DATABASE_URL=f"{PG_URL}/{run}", REDIS_URL=REDIS_URL, CACHE_KEY_PREFIX=run,
                            STUDIO_QUEUE_NAME=run)
        self.procs: list[subprocess.Popen] = []  # the workers (their memory is measured)
        self.web: subprocess.Popen | None = None
        self.logs: list = []

    def manage(self, *args: str, capture=False) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=self.tree, env=self.env, check=True,
                              capture_output=True, text=True)
        return done.stdout if capture else ""

    def start(self) -> None:
        self.manage("migrate", "--noinput")
        names = [("", {})]
        for suffix, extra in names:
            log = open(self.data_dir / f"qcluster{suffix}.log", "ab")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"], cwd=self.tree,
                env={**self.env, **extra, "LOG_LEVEL": "INFO"},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            ))
        if self.web_port:  # the web server the vendors' webhooks reach, as runstudio starts it
            log = open(self.data_dir / "web.log", "ab")
            self.logs.append(log)
            self.web = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "portraitstudio.wsgi:application", "--bind",
                 f"127.0.0.1:{self.web_port}", "--workers", "2", "--threads", "4", "--log-level", "warning"],
                cwd=self.tree, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if self.step_runner:  # and the step runner: vendor jobs' steps
            log = open(self.data_dir / "qcluster-steps.log", "ab")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "manage.py", "runsteps"], cwd=self.tree, env={**self.env, "LOG_LEVEL": "INFO"},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            ))
        deadline = time.monotonic() + 60
        while self.log().count("running.") < len(names) or (self.step_runner and "Step runner ready" not in self.log()):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{self.label}: clusters did not start\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.data_dir.glob("qcluster*.log"))

    def create(self, kinds: list[str], rate: float = 0.0) -> list[str]:
        """Create the jobs (at `rate` a second, or all at once) and return their ids."""
        return self.create_in_background(kinds, rate)()

    def create_in_background(self, kinds: list[str], rate: float = 0.0):
        """Start creating the jobs; the returned function waits for their ids."""
        script = CREATE.replace("sys.argv[-1]", repr(",".join(kinds))).replace("RATE", repr(float(rate)))
        creator = subprocess.Popen([sys.executable, "manage.py", "shell", "-c", script], cwd=self.tree, env=self.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def ids() -> list[str]:
            out, err = creator.communicate()
            if creator.returncode:
                raise RuntimeError(f"creating jobs failed:\n{err}")
            return json.loads(out.split("IDS ", 1)[1].strip())

        ids.done = lambda: creator.poll() is not None
        return ids

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, PSS) summed over every process of the clusters (and the step runner with its steps).

        RSS counts memory that forked processes share once per process; PSS splits
        it between them, so it is the memory the machine really spends.
        """
        rss = pss = 0
        for proc in self.procs:
            out = subprocess.run(["ps", "-o", "pid=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
            for pid in out.split():
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Rss:"):
                            rss += int(line.split()[1])
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1])
        return rss / 1024, pss / 1024

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) spent so far by the step runner, the cluster and the web server."""
        ticks = os.sysconf("SC_CLK_TCK")
        spent: dict[str, float] = {}
        for name, proc in [*(("step runner" if "runsteps" in " ".join(p.args) else "cluster", p) for p in self.procs),
                           *([("web", self.web)] if self.web else [])]:
            out = subprocess.run(["ps", "-o", "pid=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
            for pid in out.split():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    spent[name] = spent.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        return spent

    def rows(self, ids: list[str] | None = None) -> dict[str, tuple]:
        """The jobs of `ids`, or (None) every vendor job of the load."""
        columns = "id, status, operation, created_at, started_at, finished_at, vendor_task_id, error_message"
        kinds = list(VENDOR_SECONDS)
        if self.scaled:
            import psycopg

            with psycopg.connect(f"{PG_URL}/{self.pg_name}") as db:
                if ids is None:
                    found = db.execute(f"SELECT {columns} FROM studio_job WHERE operation = ANY(%s)", [kinds])
                else:
                    found = db.execute(f"SELECT {columns} FROM studio_job WHERE id = ANY(%s::uuid[])", [ids])
                return {str(row[0]).replace("-", ""): row[1:] for row in found.fetchall()}
        db = sqlite3.connect(self.data_dir / "studio.sqlite3", timeout=30)
        try:
            if ids is None:
                marks = ",".join("?" * len(kinds))
                found = db.execute(f"SELECT {columns} FROM studio_job WHERE operation IN ({marks})", kinds).fetchall()
            else:
                marks = ",".join("?" * len(ids))
                found = db.execute(
                    f"SELECT {columns} FROM studio_job WHERE id IN ({marks})", [i.replace("-", "") for i in ids]
                ).fetchall()
        finally:
            db.close()
        return {row[0]: row[1:] for row in found}

    def stop(self) -> None:
        for proc in self.procs + ([self.web] if self.web else []):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs + ([self.web] if self.web else []):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for log in self.logs:
            log.close()
        if os.environ.get("BENCH_KEEP_LOGS"):
            print(f"logs kept in {self.data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.scaled:
            _postgres(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for pattern in (f"{self.pg_name}:*", f"django_q:{self.pg_name}:*"):
                keys = list(client.scan_iter(pattern))
                if keys:
                    client.unlink(*keys)


PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def _postgres(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_URL}/postgres", autocommit=True) as db:
        db.execute(sql)


def _when(value) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(value).timestamp() if value else None


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 2 else values[0]


def measure(runner: Runner, jobs: int, cap: float, accepted: dict, finished_at: dict, rate: float = 0.0) -> dict:
    kinds = ["pc_colorize" if i % 2 == 0 else "ws_portrait" for i in range(jobs)]
    runner.start()
    peak = [runner.memory_mb()]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            with contextlib.suppress(Exception):
                peak.append(runner.memory_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.time()
    cpu_before, own_before = runner.cpu_seconds(), os.times()
    created = runner.create_in_background(kinds, rate)
    in_flight_peak, retouch_id = 0, None
    while time.time() - began < cap:
        rows = runner.rows()
        done = sum(1 for r in rows.values() if r[0] in ("succeeded", "failed"))
        in_flight = sum(1 for r in rows.values() if r[0] == "running" and r[5])
        in_flight_peak = max(in_flight_peak, in_flight)
        if retouch_id is None and (in_flight >= jobs // 2 or time.time() - began > 10):
            (retouch_id,) = runner.create(["studio_retouch"])
        if done == jobs and retouch_id and runner.rows([retouch_id]).get(retouch_id.replace("-", ""), ("",))[0] in (
            "succeeded", "failed"
        ):
            break
        time.sleep(0.25)
    ids = created()
    stop.set()
    sampler.join()
    # Where the machine's CPU went during the run (the emulators answer in this process).
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in runner.cpu_seconds().items()}
    own = os.times()
    cpu["emulators (this process)"] = own.user + own.system - own_before.user - own_before.system
    rows = runner.rows(ids)
    retouch = runner.rows([retouch_id]).get(retouch_id.replace("-", "")) if retouch_id else None
    runner.stop()

    finished = [r for r in rows.values() if r[0] == "succeeded"]
    failed = sum(1 for r in rows.values() if r[0] == "failed")
    spans = sorted(_when(r[4]) - _when(r[2]) for r in finished)
    overhead = sorted(_when(r[4]) - _when(r[2]) - VENDOR_SECONDS[r[1]] for r in finished)
    first = min((_when(r[2]) for r in rows.values()), default=began)
    last = max((_when(r[4]) for r in finished), default=first)
    q = statistics.quantiles(spans, n=20) if len(spans) >= 2 else [float("nan")] * 19
    # The vendor's side (its own record of when it accepted each task): how long a job waited
    # to be sent, and how long after the vendor's work ended its results were stored.
    timed = [r for r in finished if r[5] in accepted]
    to_vendor = sorted(accepted[r[5]] - _when(r[2]) for r in timed)
    # The vendor is done when its engine time is up, or (webhooks) when it has made the
    # pictures, if that took longer: making them is the vendor's work, not the runner's.
    vendor_done = {r[5]: max(accepted[r[5]] + VENDOR_SECONDS[r[1]], finished_at.get(r[5], 0.0)) for r in timed}
    after_vendor = sorted(_when(r[4]) - vendor_done[r[5]] for r in timed)
    result = {
        "runner": runner.label,
        "sent": len(ids),
        "finished": len(finished),
        "failed": failed,
        "per_minute": round(len(finished) / max(last - first, 1e-9) * 60, 1) if finished else 0.0,
        "p50_s": round(statistics.median(spans), 2) if spans else None,
        "p95_s": round(q[18], 2) if spans else None,
        "overhead_p50_ms": round(statistics.median(overhead) * 1000) if overhead else None,
        **{
            f"p50_{kind}_s": round(statistics.median(spans_of), 2)
            for kind in VENDOR_SECONDS
            if (spans_of := [_when(r[4]) - _when(r[2]) for r in finished if r[1] == kind])
        },
        # Where the time goes: waiting for a worker to submit, then submit → stored.
        "queued_p50_s": round(statistics.median(_when(r[3]) - _when(r[2]) for r in finished), 2) if finished else None,
        "claimed_to_stored_p50_s": round(statistics.median(_when(r[4]) - _when(r[3]) for r in finished), 2)
        if finished else None,
        # How long the creating process took to create them all (a burst is "at once" only as
        # fast as job_create runs), and when the vendor had accepted the last one.
        "created_over_s": round(max(_when(r[2]) for r in rows.values()) - first, 2) if rows else None,
        "last_accepted_s": round(max(accepted[r[5]] for r in timed) - first, 2) if timed else None,
        "vendor_timed": len(timed),
        "created_to_vendor_p50_s": round(statistics.median(to_vendor), 2) if to_vendor else None,
        "after_vendor_p50_ms": round(statistics.median(after_vendor) * 1000) if after_vendor else None,
        "after_vendor_p95_ms": round(_p95(after_vendor) * 1000) if after_vendor else None,
        "in_flight_peak": in_flight_peak,
        "peak_rss_mb": round(max(r for r, _ in peak)),
        "peak_pss_mb": round(max(p for _, p in peak)),
        "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        "wall_s": round(last - first, 1),
        "errors": dict(Counter(r[6][:80] for r in rows.values() if r[0] == "failed")),
    }
    if retouch and retouch[0] == "succeeded":
        result["retouch_total_s"] = round(_when(retouch[4]) - _when(retouch[2]), 2)
        result["retouch_processing_s"] = round(_when(retouch[4]) - _when(retouch[3]), 2)
    else:
        result["retouch"] = retouch[0] if retouch else "not sent"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4, help="the baseline's Q_WORKERS (its one cluster)")
    parser.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 1,
                        help="the new cluster's Q_CPU_WORKERS (local operations only)")
    parser.add_argument("--cap", type=float, default=300.0, help="seconds each runner gets at most")
    parser.add_argument("--baseline-rev", default="aed4f61")
    parser.add_argument("--only", choices=("new", "baseline"), default=None)
    parser.add_argument("--vendor-seconds", type=float, nargs=2, metavar=("PC", "WS"), default=None,
                        help="the vendors' engine times instead of the issue's 8 s and 3 s")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="create the jobs at this many a second (default: all at once)")
    parser.add_argument("--webhooks", action="store_true",
                        help="run each site's web server so the vendors call back (Perfect Corp on v2), not polling")
    parser.add_argument("--scaled", action="store_true",
                        help="PostgreSQL and Redis on 127.0.0.1 instead of SQLite and the ORM broker")
    args = parser.parse_args()

    if args.vendor_seconds:
        global PC_ENGINE_S, WS_STAGE_S
        PC_ENGINE_S, WS_STAGE_S = args.vendor_seconds[0], args.vendor_seconds[1] / 2
        VENDOR_SECONDS.update(pc_colorize=PC_ENGINE_S, ws_portrait=2 * WS_STAGE_S)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portraitstudio.settings")
    os.environ.setdefault("STUDIO_DATA_DIR", tempfile.mkdtemp(prefix="studio-bench-host-"))
    import django

    django.setup()
    _cheap_pictures()
    baseline_tree = Path(tempfile.mkdtemp(prefix="studio-baseline-"))
    subprocess.run(f"git archive {args.baseline_rev} | tar -x -C {baseline_tree}", shell=True, cwd=BASE_DIR, check=True)
    results = []
    try:
        for label, tree, two in (("new", BASE_DIR, True), ("baseline", baseline_tree, False)):
            if args.only and args.only != label:
                continue
            accepted: dict = {}  # vendor task id → when the vendor accepted it
            vendor_finished: dict = {}  # vendor task id → when the emulator had made its results
            web_port = _free_port() if args.webhooks else 0
            host = _emulators(accepted, vendor_finished, f"http://127.0.0.1:{web_port}" if web_port else "")
            with host.serve() as url:
                workers = args.cpu_workers if label == "new" else args.workers
                runner = Runner(label, tree, workers=workers, step_runner=two, sandbox_url=url, scaled=args.scaled,
                                web_port=web_port)
                try:
                    results.append(measure(runner, args.jobs, args.cap, accepted, vendor_finished, args.rate))
                    results[-1]["webhooks_delivered"] = sum(
                        e.counters.get("webhooks_delivered", 0) for e in host.emulators.values()
                    )
                finally:
                    with contextlib.suppress(Exception):
                        runner.stop()
            print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(baseline_tree, ignore_errors=True)
    backend = "PostgreSQL + Redis" if args.scaled else "SQLite + ORM broker"
    arrival = f"{args.rate:g} a second" if args.rate else "all at once"
    print(f"\n{args.jobs} vendor jobs (half Perfect Corp {PC_ENGINE_S:g} s, half WaveSpeed {2 * WS_STAGE_S:g} s) "
          f"created {arrival}, "
          f"Q_CPU_WORKERS new={args.cpu_workers}, Q_WORKERS baseline={args.workers}, "
          f"cap {args.cap:.0f} s, {os.cpu_count()} cores, {backend}, "
          f"{'webhooks (Perfect Corp v2)' if args.webhooks else 'polling, no webhooks (Perfect Corp v1.0)'}")
    columns = list(results[0]) if results else []
    for row in results:
        print("  ".join(f"{k}={row.get(k)}" for k in columns))


if __name__ == "__main__":
    main()
