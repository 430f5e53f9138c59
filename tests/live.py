"""A live app with a REAL django-q2 worker: fixtures for end-to-end tests.

`qcluster` starts `manage.py qcluster` as a child process on the test
database (a file, see settings.DATABASES["default"]["TEST"]) and a media
directory shared with the test process, so a job created by the test client
or the live server is picked up and run exactly as in production.

Use with `@pytest.mark.django_db(transaction=True)` or `live_server` (rows
must be committed for another process to see them). tests/conftest.py makes
both fixtures available to every test module.

`cluster` gives a stopped cluster to start later (to see jobs wait in the
queue); `qcluster` gives one already running; `clusters` makes more of them
on the same database and media (several machines' workers). All are stopped
after the test and their logs shown when the test failed. `Cluster.kill()`
ends one with SIGKILL, as when its machine dies, and `pid_for_port` tells
which of its processes holds a connection (to kill the one at a given step).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import contextlib

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = BASE_DIR / ".venv" / "bin" / "python"
READY_LINE = "running."  # django-q2: "Q Cluster <name> running."
STEPS_READY = "Step runner ready"  # studio.jobs.steps.READY


class Cluster:
    """One `manage.py qcluster` process (and its worker children)."""

    def __init__(
        self,
        *,
        database_url: str,
        data_dir: Path,
        secret_key: str,
        workers: int = 2,
        name: str = "",
        env: dict[str, str] | None = None,
    ):
        self.database_url = database_url
        # django-q2 signs queued tasks with SECRET_KEY: the worker needs the web side's.
        self.secret_file = data_dir / "secret_key.shared"
        self.secret_file.write_text(secret_key)
        self.secret_file.chmod(0o600)
        self.data_dir = data_dir
        self.workers = workers
        self.name = name
        self.extra_env = dict(env or {})  # e.g. short recovery thresholds
        self.log_path = data_dir / (f"qcluster-{name}.log" if name else "qcluster.log")
        self.proc: subprocess.Popen | None = None  # the cluster (local operations), leader of its process group
        self.steps_proc: subprocess.Popen | None = None  # the step runner (vendor jobs' steps)
        self._log = None
        self._log_from = 0  # where this start's lines begin (a restarted cluster appends)

    @property
    def env(self) -> dict[str, str]:
        from django.conf import settings as django_settings

        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "SECRET_KEY"}
        env.update(
            SECRET_KEY_FILE=str(self.secret_file),
            DATABASE_URL=self.database_url,
            STUDIO_DATA_DIR=str(self.data_dir),
            Q_CPU_WORKERS=str(self.workers),
            STUDIO_STEP_PROCESSES="1",  # one step runner process per machine: lighter; runstudio's test runs the default
            Q_SYNC="0",
            DJANGO_SETTINGS_MODULE="portraitstudio.settings",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            # The worker runs vendor jobs against the emulators when the test is in sandbox mode.
            STUDIO_SANDBOX="1" if django_settings.STUDIO_SANDBOX else "0",
            # Where vendors (and in sandbox mode their emulators) fetch signed photo links from.
            STUDIO_PUBLIC_URL=django_settings.STUDIO_PUBLIC_URL,
            # Emulators shared with the test process (studio/vendors/emulators/host.py), if it serves them.
            STUDIO_SANDBOX_URL=getattr(django_settings, "STUDIO_SANDBOX_URL", ""),
            # The test's backstop (tests/conftest.py), so a lost webhook costs a worker no more.
            STUDIO_WEBHOOK_BACKSTOP_SECONDS=str(django_settings.STUDIO_WEBHOOK_BACKSTOP_SECONDS),
        )
        # E-mail goes where the test's goes (tests/smtp.py: a real SMTP server on 127.0.0.1).
        if django_settings.EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend":
            env["EMAIL_URL"] = f"smtp://{django_settings.EMAIL_HOST}:{django_settings.EMAIL_PORT}"
            env["DEFAULT_FROM_EMAIL"] = django_settings.DEFAULT_FROM_EMAIL
        # REDIS_URL, the queue name and AWS_* come with os.environ; on S3 the
        # media "directory" is the test's own key prefix (tests/conftest.py).
        media = django_settings.STORAGES["default"]
        if "location" in media.get("OPTIONS", {}):
            env["AWS_LOCATION"] = media["OPTIONS"]["location"]
        env.update(self.extra_env)
        return env

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> Cluster:
        """Start the machine's cluster (local operations) and step runner (vendor jobs), as runstudio does."""
        assert self.proc is None, "cluster already started"
        self._log_from = len(self.log())
        self._log = open(self.log_path, "ab")
        env = self.env
        common = dict(cwd=BASE_DIR, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        # Each its own process group: workers are stopped (or killed, as a dead machine) with it.
        self.proc = subprocess.Popen([str(PYTHON), "manage.py", "qcluster"], env=env, start_new_session=True, **common)
        # And the machine's step runner: vendor jobs' submits, polls and downloads (studio/jobs/steps.py).
        self.steps_proc = subprocess.Popen(
            [str(PYTHON), "manage.py", "runsteps"], env=env, start_new_session=True, **common
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in (self.proc, self.steps_proc):
                if proc.poll() is not None:
                    raise AssertionError(f"qcluster exited with code {proc.returncode}\n{self.log()}")
            started = self.log()[self._log_from :]
            if READY_LINE in started and STEPS_READY in started:
                return
            time.sleep(0.1)
        raise AssertionError(f"qcluster not running after {timeout:.0f} s\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        procs = [self.proc, self.steps_proc]
        self.proc = self.steps_proc = None
        for each in procs:
            if each is not None and each.poll() is None:
                each.send_signal(signal.SIGTERM)  # graceful: the sentinel stops its workers
        for each in procs:
            if each is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    each.wait(timeout)
        for each in procs:
            if each is None:
                continue
            # Whatever is left of this cluster's own process groups (only ours).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(each.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                each.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL every process of this cluster at once, as when its machine dies: no hook, no cleanup."""
        procs = [self.proc, self.steps_proc]
        self.proc = self.steps_proc = None
        assert procs[0] is not None, "cluster not running"
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait(10)
        self._log.close()
        self._log = None

    def pids(self) -> list[int]:
        """Every live process of this machine (cluster and step runner process groups): sentinel, workers, pusher, monitor, step runner."""
        if self.proc is None:
            return []
        groups = {proc.pid for proc in (self.proc, self.steps_proc) if proc is not None}
        return [pid for pid, pgid in _process_groups().items() if pgid in groups]

    def pid_for_port(self, port: int) -> int | None:
        """The process of this cluster that owns the TCP connection with local `port`, if any."""
        inodes = _socket_inodes(port)
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("socket:[") and link[8:-1] in inodes:
                            return pid
        return None

    def wait_for_jobs(self, job_ids, *, timeout: float = 60.0, statuses=("succeeded", "failed")):
        """Wait until every job is in one of `statuses`; return the Job rows."""
        from studio.models import Job

        ids = [str(job_id) for job_id in job_ids]
        deadline = time.monotonic() + timeout
        while True:
            jobs = {str(job.pk): job for job in Job.objects.filter(pk__in=ids)}
            if len(jobs) == len(ids) and all(job.status in statuses for job in jobs.values()):
                return [jobs[job_id] for job_id in ids]
            for proc in (self.proc, self.steps_proc):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"qcluster died (code {proc.returncode})\n{self.log()}")
            if time.monotonic() > deadline:
                state = {job_id: (job.status, job.stage) for job_id, job in jobs.items()}
                raise AssertionError(f"jobs not finished after {timeout:.0f} s: {state}\n{self.log()}")
            time.sleep(0.2)


@pytest.fixture
def cluster(request, transactional_db, settings, monkeypatch, tmp_path_factory, _isolated_media, _sync_jobs):
    """A real django-q2 cluster on the test database, not started yet (call .start())."""
    from django.db import connection
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)  # conftest runs tasks inline; not here
    data_dir = tmp_path_factory.mktemp("studio-data")
    (data_dir / "media").mkdir()
    # After conftest's _isolated_media, so the web side and worker share files.
    settings.MEDIA_ROOT = data_dir / "media"
    c = Cluster(database_url=_database_url(connection.settings_dict), data_dir=data_dir,
                secret_key=settings.SECRET_KEY)
    failed_before = request.session.testsfailed
    try:
        yield c
    finally:
        c.stop()
        if request.session.testsfailed > failed_before:
            _show(request, f"qcluster log ({c.log_path})", c.log())


@pytest.fixture
def clusters(request, cluster):
    """Make more clusters like `cluster` (same database, media and key), each with its own log."""
    made: list[Cluster] = []

    def make(*, name: str, workers: int = 2, env: dict[str, str] | None = None) -> Cluster:
        c = Cluster(database_url=cluster.database_url, data_dir=cluster.data_dir,
                    secret_key=cluster.secret_file.read_text(), workers=workers, name=name, env=env)
        made.append(c)
        return c

    failed_before = request.session.testsfailed
    try:
        yield make
    finally:
        for c in made:
            c.stop()
        if request.session.testsfailed > failed_before:
            for c in made:
                _show(request, f"qcluster {c.name} log ({c.log_path})", c.log())


@pytest.fixture
def qcluster(cluster):
    """A running real django-q2 cluster (2 workers) sharing DB and media with the test."""
    return cluster.start()


def _database_url(db: dict) -> str:
    """DATABASE_URL for the database the test process uses now (the test database)."""
    name = str(db["NAME"])
    if db["ENGINE"] == "portraitstudio.sqlite":  # Django's SQLite backend, ours (portraitstudio/sqlite)
        assert name and name != ":memory:" and "mode=memory" not in name, (
            "a real cluster needs a file-based SQLite test database (settings TEST NAME)"
        )
        return f"sqlite:///{name}"
    scheme = {"django.db.backends.postgresql": "postgres", "django.db.backends.mysql": "mysql"}[db["ENGINE"]]
    auth = quote(db.get("USER") or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    host = db.get("HOST") or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{scheme}://{auth}{'@' if auth else ''}{host}{port}/{quote(name, safe='')}"


def _process_groups() -> dict[int, int]:
    """pid → process group id of every process (Linux /proc)."""
    groups = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                # Fields after the command name (which may hold spaces): state, ppid, pgrp, ...
                groups[int(entry)] = int(stat.rsplit(")", 1)[1].split()[2])
    return groups


def _socket_inodes(local_port: int) -> set[str]:
    """Inodes of the TCP sockets whose local port is `local_port` (Linux /proc/net)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(fields[9])
    return inodes


def _show(request, title: str, text: str) -> None:
    """Print text past pytest's capture (teardown output is otherwise hidden)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print(f"--- {title} ---\n{text}", file=sys.stderr)
        return
    reporter.ensure_newline()
    reporter.write_sep("-", title)
    reporter.write_line(text.rstrip()[-20000:] or "(empty)")
