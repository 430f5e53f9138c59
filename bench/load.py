"""Load: simulated users against gunicorn and a qcluster worker on 127.0.0.1.

The app runs as `manage.py runstudio` runs it (gunicorn with gthread workers
and one `qcluster`), on the embedded defaults (SQLite, the ORM broker, media
on disk) in a fresh data directory, in sandbox mode (STUDIO_SANDBOX=1: vendor
jobs run against the local emulators). The abuse limits (uploads and jobs per
hour, concurrent jobs) are raised through the environment for the run: 50
users behind one address would otherwise be refused by design.

Each user, until the time is up, does what a person does in the browser:
opens the home page, uploads a photo (the astronaut portrait from
scikit-image, one of three variants), submits a local job and a sandbox
vendor job, polls each job's status the way htmx does (every second, with the
URL the card carries; 204 = unchanged, 200 = new card, 286 = finished) until
it is finished, then opens the gallery and a result image. Iterations started
before the end run to completion (up to --grace seconds).

An error is an answer other than 2xx/3xx, a request that failed, or a job
that ended "failed" (or was not finished within the grace period).

Run: .venv/bin/python -m bench.load [--users 50 --duration 120 --web-workers 2 --q-workers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from PIL import Image

from bench.site import Site

HTMX = {"HX-Request": "true"}
LOCAL_OPERATIONS = ("studio_retouch", "headshot_crop", "background_blur")
# Perfect Corp is left out: its documented limit (100 requests per 5 minutes per
# address, emulated in sandbox mode) caps it near 7 jobs a minute whatever our
# capacity; bench/perfectcorp_throughput.py measures it on its own.
VENDOR_OPERATIONS = ("ai_headshot", "ws_portrait", "vtrix_spark_portrait")
VENDOR_VALUES = {  # on top of the catalogue's defaults; moderate sizes keep the emulators' image work small
    "ai_headshot": {"prompt": "corporate headshot, grey backdrop", "size": "custom", "width": "512", "height": "512"},
    "ws_portrait": {},
    "vtrix_spark_portrait": {"width": "768", "height": "768"},
}
CARD_TAG = re.compile(r'<article id="job-([0-9a-f-]{36})"[^>]*>', re.S)


def job_cards(html: str) -> list[tuple[str, str]]:
    """(job id, the URL the card polls, or "") for each job card in an answer."""
    cards = []
    for match in CARD_TAG.finditer(html):
        poll = re.search(r'hx-get="([^"]+)"', match.group(0))
        cards.append((match.group(1), poll.group(1).replace("&amp;", "&") if poll else ""))
    return cards


@dataclass
class Recorder:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    jobs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    job_seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    retries: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def error(self, endpoint: str, message: str) -> None:
        self.errors[endpoint] += 1
        self.messages[f"{endpoint}: {message[:160]}"] += 1


class User:
    def __init__(self, base_url: str, photos: list[bytes], recorder: Recorder, rng: random.Random):
        # Idle connections are dropped after 1.5 s, before gunicorn drops them (its keep-alive
        # is 2 s), as a proxy in front of gunicorn is set up; otherwise a request can go out on a
        # connection the server is closing at that moment.
        self.http = httpx.AsyncClient(base_url=base_url, timeout=60, follow_redirects=False,
                                      limits=httpx.Limits(keepalive_expiry=1.5))
        self.photos = photos
        self.rec = recorder
        self.rng = rng

    async def request(self, endpoint: str, method: str, url: str, **kwargs) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            try:
                response = await self.http.request(method, url, **kwargs)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # The server closed a kept-alive connection just as it was reused.
                # Browsers send the request again on a fresh connection; this user
                # does so for GETs, and the report counts it.
                if method != "GET":
                    raise
                self.rec.retries[endpoint] += 1
                response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.rec.latencies[endpoint].append(time.perf_counter() - started)
            self.rec.error(endpoint, f"{type(exc).__name__}: {exc}")
            return None
        self.rec.latencies[endpoint].append(time.perf_counter() - started)
        if not 200 <= response.status_code < 400:
            self.rec.error(endpoint, f"HTTP {response.status_code}")
            return None
        return response

    def csrf(self) -> dict[str, str]:
        return {**HTMX, "X-CSRFToken": self.http.cookies.get("csrftoken", "")}

    async def think(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))

    async def iteration(self, operations: dict, grace_until: float) -> None:
        if await self.request("home", "GET", "/") is None:
            return
        await self.think()
        photo = self.rng.choice(self.photos)
        uploaded = await self.request("upload", "POST", "/photos/", headers=self.csrf(),
                                      files={"photo": ("selfie.jpg", photo, "image/jpeg")})
        if uploaded is None:
            return
        match = re.search(r'<input type="hidden" name="photo" value="([0-9a-f-]{36})">', uploaded.text)
        if not match:
            self.rec.error("upload", "no photo in the answer: " + _said(uploaded.text))
            return
        photo_id = match.group(1)
        await self.think()
        cards = []
        for endpoint, names in (("submit local", LOCAL_OPERATIONS), ("submit vendor", VENDOR_OPERATIONS)):
            op = operations[self.rng.choice(names)]
            form = {**op["defaults"], "photo": photo_id, "operation": op["key"]}
            submitted = await self.request(endpoint, "POST", "/jobs/", headers=self.csrf(), data=form)
            if submitted is None:
                continue
            found = job_cards(submitted.text)
            if not found:
                self.rec.error(endpoint, "no job card: " + _said(submitted.text))
                continue
            cards.append((op["key"], *found[0], time.monotonic()))
        finished = await asyncio.gather(*(self.poll(*card, grace_until=grace_until) for card in cards))
        await self.think()
        if await self.request("gallery", "GET", "/gallery/") is None:
            return
        results = [url for body in finished if body for url in re.findall(r'src="(/results/[0-9a-f-]{36}/image)', body)]
        if results:
            await self.request("result image", "GET", self.rng.choice(results))

    async def poll(self, operation: str, job_id: str, url: str, submitted: float, *, grace_until: float):
        """Poll like htmx: every second, with the URL of the card on the page; the finished card's HTML."""
        kind = "local" if operation in LOCAL_OPERATIONS else "vendor"
        while time.monotonic() < grace_until:
            await asyncio.sleep(1.0)
            response = await self.request("status poll", "GET", url, headers=HTMX)
            if response is None or response.status_code == 204:
                continue
            body = response.text
            if response.status_code == 286:
                status = re.search(r'data-status="(\w+)"', body).group(1)
                self.rec.jobs[f"{kind} {status}"] += 1
                self.rec.job_seconds[kind].append(time.monotonic() - submitted)
                if status != "succeeded":
                    error = re.search(r'data-testid="job-error">([^<]*)<', body)
                    self.rec.error(f"job ({kind})", f"{operation}: {error.group(1) if error else status}")
                    return None
                return body
            found = job_cards(body)
            if found and found[0][1]:
                url = found[0][1]
        self.rec.jobs[f"{kind} unfinished"] += 1
        self.rec.error(f"job ({kind})", f"{operation}: not finished within the grace period")
        return None

    async def run(self, operations: dict, stop_at: float, grace_until: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, 5))  # users arrive over the first seconds
        while time.monotonic() < stop_at:
            await self.iteration(operations, grace_until)
        await self.http.aclose()


def _said(html: str) -> str:
    """The message an answer shows (form or upload error), for the report."""
    match = re.search(r'role="alert"[^>]*>([^<]+)<', html)
    return match.group(1).strip() if match else html[:120]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(rec: Recorder, wall: float) -> None:
    print("\n| endpoint | requests | errors | p50 | p95 | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    order = ["home", "upload", "submit local", "submit vendor", "status poll", "gallery", "result image"]
    for name in order + sorted(set(rec.latencies) - set(order)):
        values = rec.latencies.get(name, [])
        if not values:
            continue
        print(f"| {name} | {len(values)} | {rec.errors.get(name, 0)} | {percentile(values, .5) * 1000:.0f} ms "
              f"| {percentile(values, .95) * 1000:.0f} ms | {max(values) * 1000:.0f} ms |")
    total = sum(len(v) for v in rec.latencies.values())
    print(f"\n{total} requests in {wall:.0f} s ({total / wall:.0f}/s)")
    for kind in ("local", "vendor"):
        seconds = rec.job_seconds.get(kind, [])
        counts = ", ".join(f"{k.split(' ', 1)[1]} {v}" for k, v in sorted(rec.jobs.items()) if k.startswith(kind))
        if seconds:
            print(f"{kind} jobs: {counts}; submit → finished seen: p50 {statistics.median(seconds):.1f} s, "
                  f"p95 {percentile(seconds, .95):.1f} s")
    if rec.retries:
        shown = ", ".join(f"{name} {count}" for name, count in sorted(rec.retries.items()))
        print(f"GETs sent again after the server closed an idle kept-alive connection (as browsers do): {shown}")
    errors = sum(rec.errors.values())
    print(f"errors: {errors}")
    for message, count in sorted(rec.messages.items(), key=lambda item: -item[1])[:15]:
        print(f"  {count} × {message}")


async def drive(site: Site, args, operations: dict, photos: list[bytes]) -> tuple[Recorder, float]:
    rec = Recorder()
    started = time.monotonic()
    stop_at = started + args.duration
    grace_until = stop_at + args.grace
    rng = random.Random(args.seed)
    users = [User(site.base_url, photos, rec, random.Random(rng.random())) for _ in range(args.users)]
    await asyncio.gather(*(user.run(operations, stop_at, grace_until) for user in users))
    return rec, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=float, default=120, help="seconds during which users start iterations")
    parser.add_argument("--grace", type=float, default=300, help="seconds more for started iterations to finish")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn workers (runstudio's default: 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (runstudio's: 4)")
    parser.add_argument("--q-workers", type=int, default=4, help="qcluster worker processes (default 4)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the data directory (database, logs)")
    args = parser.parse_args()

    limits = {name: "1000000" for name in (
        "STUDIO_UPLOADS_PER_HOUR", "STUDIO_UPLOADS_PER_HOUR_PER_IP", "STUDIO_JOBS_PER_HOUR",
        "STUDIO_JOBS_PER_HOUR_PER_IP", "STUDIO_MAX_CONCURRENT_JOBS")}
    site = Site(env={"STUDIO_SANDBOX": "1", **limits}, keep=args.keep)
    try:
        site.prepare()
        site.start_emulators()  # sandbox vendors in one host process, as runstudio runs them
        site.setup_django()
        from studio.operations import OPERATIONS
        from tests import images

        operations = {
            key: {"key": key, "defaults": {
                **{name: "" if value is None else str(value) for name, value in OPERATIONS[key].defaults().items()},
                **VENDOR_VALUES.get(key, {})}}
            for key in LOCAL_OPERATIONS + VENDOR_OPERATIONS
        }
        portrait = images.astronaut(scale=2)
        photos = [
            images.to_bytes(portrait, "JPEG", quality=90),
            images.to_bytes(portrait.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=88),
            images.to_bytes(portrait.crop((64, 0, 1024, 1024)), "JPEG", quality=92),
        ]
        site.start_web(workers=args.web_workers, threads=args.threads)
        site.start_worker(workers=args.q_workers)
        print(f"{args.users} users for {args.duration:.0f} s (+ up to {args.grace:.0f} s to finish started "
              f"iterations); gunicorn {args.web_workers} workers × {args.threads} threads, qcluster "
              f"{args.q_workers} workers; SQLite, ORM broker, local media, sandbox vendors; abuse limits raised "
              f"to 1,000,000/h for the run", flush=True)
        rec, wall = asyncio.run(drive(site, args, operations, photos))
        site.check_alive()
    finally:
        site.stop()
        if args.keep:
            print(f"data directory kept: {site.data_dir}")
    report(rec, wall)


if __name__ == "__main__":
    main()
