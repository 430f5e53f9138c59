"""The HTMX job-status endpoint against a trivial Django view, on the same gunicorn.

Starts gunicorn on 127.0.0.1 (embedded defaults, runstudio's worker options)
with bench.site_settings, which adds /bench/trivial beside the real app.
Creates, as one visitor, a finished job with four results (AI headshot in
sandbox mode) and a running job, then measures requests/s of:

  trivial      GET /bench/trivial (no session, no query, no template)
  poll         GET /jobs/<running job>/status as the visitor (what htmx sends every second)
  poll, done   GET /jobs/<finished job>/status (the last poll, answered 286)
  poll, user   GET /jobs/<running job>/status as a signed-in user

Rounds alternate the URLs so machine load that comes and goes hits all of
them alike; the figure is the median over rounds. The load generator is wrk
(Debian package `wrk`, installed with apt-get if missing and possible), else
a Python generator with keep-alive connections; the output says which.

Run: .venv/bin/python -m bench.status_endpoint [--seconds 5 --rounds 3 --connections 8]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.site import TRIVIAL_PATH, Site

HTMX = {"HX-Request": "true"}


def ensure_wrk() -> str | None:
    if shutil.which("wrk"):
        return shutil.which("wrk")
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return shutil.which("wrk")


def wrk_rate(wrk: str, url: str, headers: dict[str, str], *, seconds: float, connections: int) -> tuple[float, int]:
    """(requests/s, responses that were not 2xx/3xx or failed) from one wrk run."""
    argv = [wrk, "-t", "1", "-c", str(connections), "-d", f"{seconds:.0f}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        bad += sum(int(n) for n in errors.groups())
    return rate, bad


def python_rate(url: str, headers: dict[str, str], *, seconds: float, connections: int) -> tuple[float, int]:
    """The fallback generator: one keep-alive connection per thread, as fast as answers come."""
    parts = urlsplit(url)
    counts = [0] * connections
    bad = [0] * connections
    stop_at = time.monotonic() + seconds

    def run(slot: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.monotonic() < stop_at:
            try:
                conn.request("GET", parts.path, headers=headers)
                response = conn.getresponse()
                response.read()
                counts[slot] += 1
                if not 200 <= response.status < 400:
                    bad[slot] += 1
            except (OSError, http.client.HTTPException):
                bad[slot] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started), sum(bad)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def make_jobs(site: Site, portrait: bytes) -> dict[str, tuple[str, dict[str, str]]]:
    """The URLs to measure, each with the headers its client sends."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from studio.models import Job, Photo
    from studio.ownership import VISITOR_SESSION_KEY

    visitor = httpx.Client(base_url=site.base_url, timeout=60)
    visitor.get("/")
    csrf = {"X-CSRFToken": visitor.cookies["csrftoken"], **HTMX}
    upload = visitor.post("/photos/", files={"photo": ("me.jpg", portrait, "image/jpeg")}, headers=csrf)
    upload.raise_for_status()
    photo = Photo.objects.latest("created_at")
    # A real worker runs it; it is stopped before the measurements.
    site.start_worker(workers=1)
    submitted = visitor.post("/jobs/", headers=csrf, data={
        "photo": str(photo.pk), "operation": "ai_headshot", "prompt": "corporate headshot, grey backdrop",
        "seed": "", "num_images": "4", "identity_scale": "0.8", "size": "custom", "width": "512", "height": "512",
    })
    submitted.raise_for_status()
    done = Job.objects.latest("created_at")
    deadline = time.monotonic() + 120
    while not done.is_terminal and time.monotonic() < deadline:
        time.sleep(0.2)
        done.refresh_from_db()
    site.stop_process("worker")
    if done.status != Job.Status.SUCCEEDED or done.results.count() != 4:
        raise RuntimeError(f"the headshot job did not finish with 4 results: {done.status} {done.error_message}")
    # Running jobs whose worker is alive (a fresh heartbeat); no worker runs during the measurements.
    running = Job.objects.create(
        owner_visitor=photo.owner_visitor, photo=photo, operation="studio_retouch", provider="local",
        params={"strength": 0.5}, status=Job.Status.RUNNING, stage="Retouching", progress=0.4,
        started_at=timezone.now(), heartbeat_at=timezone.now(),
    )
    assert photo.owner_visitor and photo.owner_visitor == visitor_session(visitor)[VISITOR_SESSION_KEY]

    user = get_user_model().objects.create_user("bench", password="bench-password-0451")
    member = httpx.Client(base_url=site.base_url, timeout=60)
    member.get("/accounts/login/")
    login = member.post("/accounts/login/", data={"username": "bench", "password": "bench-password-0451"},
                        headers={"X-CSRFToken": member.cookies["csrftoken"]})
    assert login.status_code == 302, login.status_code
    user_job = Job.objects.create(
        owner_user=user, operation="studio_retouch", provider="local", params={"strength": 0.5},
        status=Job.Status.RUNNING, stage="Retouching", progress=0.4, started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )

    def cookie(client):
        return {"Cookie": f"sessionid={client.cookies['sessionid']}", **HTMX}

    def card_poll_url(client, job) -> str:
        """What htmx requests: the hx-get of the card the job page shows."""
        page = client.get(f"/jobs/{job.pk}/").text
        return site.base_url + re.search(r'hx-get="([^"]+/status[^"]*)"', page).group(1).replace("&amp;", "&")

    urls = {
        "trivial": (site.base_url + TRIVIAL_PATH, {}),
        # Unchanged since the card was rendered: what nearly every poll finds (204).
        "poll": (card_poll_url(visitor, running), cookie(visitor)),
        "poll, user": (card_poll_url(member, user_job), cookie(member)),
        # The card is rendered again: the job moved on (here: a card that never saw this state).
        "poll, changed": (f"{site.base_url}/jobs/{running.pk}/status?v=stale", cookie(visitor)),
        "poll, done": (f"{site.base_url}/jobs/{done.pk}/status?v=stale", cookie(visitor)),
    }
    expected = {"trivial": 200, "poll": 204, "poll, user": 204, "poll, changed": 200, "poll, done": 286}
    for name, (url, headers) in urls.items():  # each answers what a browser would get
        response = httpx.get(url, headers=headers)
        assert response.status_code == expected[name], (name, response.status_code)
        if expected[name] != 204 and name != "trivial":
            assert 'data-testid="job-card"' in response.text, name
    return urls


def visitor_session(client: httpx.Client) -> dict:
    from importlib import import_module

    from django.conf import settings

    return import_module(settings.SESSION_ENGINE).SessionStore(client.cookies["sessionid"]).load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5, help="length of one measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per URL (default 3)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, as runstudio)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4, as runstudio)")
    parser.add_argument("--python-client", action="store_true", help="use the Python generator even if wrk exists")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (database, logs) afterwards")
    args = parser.parse_args()

    wrk = None if args.python_client else ensure_wrk()
    generator = f"wrk ({wrk}), 1 thread" if wrk else "Python generator (keep-alive http.client threads)"
    site = Site(env={"STUDIO_SANDBOX": "1"}, keep=args.keep)
    try:
        site.prepare()
        site.start_emulators()  # sandbox vendors in one host process, as runstudio runs them
        site.setup_django()
        site.start_web(workers=args.workers, threads=args.threads)
        from tests.images import astronaut, to_bytes

        urls = make_jobs(site, to_bytes(astronaut(scale=2), "JPEG", quality=92))
        print(f"gunicorn: {args.workers} workers × {args.threads} threads (gthread), 127.0.0.1, "
              f"SQLite (embedded defaults); load: {generator}, {args.connections} connections, "
              f"{args.seconds:.0f} s × {args.rounds} rounds per URL")
        rates: dict[str, list[float]] = {name: [] for name in urls}
        per_cpu: dict[str, list[float]] = {name: [] for name in urls}
        bad: dict[str, int] = dict.fromkeys(urls, 0)
        web_pids = site.pids("web")
        for _ in range(args.rounds):
            for name, (url, headers) in urls.items():
                cpu_before = cpu_seconds(web_pids)
                if wrk:
                    rate, failed = wrk_rate(wrk, url, headers, seconds=args.seconds, connections=args.connections)
                else:
                    rate, failed = python_rate(url, headers, seconds=args.seconds, connections=args.connections)
                cpu = cpu_seconds(web_pids) - cpu_before
                rates[name].append(rate)
                per_cpu[name].append(rate * args.seconds / cpu if cpu else float("nan"))
                bad[name] += failed
        site.check_alive()
    finally:
        site.stop()
        if args.keep:
            print(f"data directory kept: {site.data_dir}")

    base = statistics.median(rates["trivial"])
    base_cpu = statistics.median(per_cpu["trivial"])
    print("\n| endpoint | requests/s (median) | rounds | vs trivial | requests per gunicorn CPU-second | vs trivial "
          "| errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, values in rates.items():
        median, median_cpu = statistics.median(values), statistics.median(per_cpu[name])
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {name} | {median:.0f} | {shown} | {median / base:.0%} | {median_cpu:.0f} | "
              f"{median_cpu / base_cpu:.0%} | {bad[name]} |")
    ratio = statistics.median(rates["poll"]) / base
    ratio_cpu = statistics.median(per_cpu["poll"]) / base_cpu
    print(f"\nstatus poll / trivial view: {ratio:.2f} in requests/s, {ratio_cpu:.2f} in requests per CPU-second "
          f"of the gunicorn processes (goal ≥ 0.80; the second holds steadier while other work shares the cores)")


if __name__ == "__main__":
    main()
