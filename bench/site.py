"""The app as it runs in production, on 127.0.0.1, for benchmarks.

`Site` owns a fresh data directory (embedded defaults: SQLite, ORM broker,
media on disk unless the caller's environment says otherwise), migrates it,
collects static files, and starts gunicorn the way `manage.py runstudio`
does, plus `manage.py qcluster` workers when a run needs jobs to finish.
Every child runs in its own process group and is stopped with it.

The web processes load `bench.site_settings`: the real settings with one
extra URL, a trivial view, so a benchmark can compare an endpoint with the
cheapest request Django can answer on the same server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SETTINGS_MODULE = "bench.site_settings"
TRIVIAL_PATH = "/bench/trivial"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Site:
    def __init__(self, *, env: dict[str, str] | None = None, keep: bool = False):
        self.data_dir = Path(tempfile.mkdtemp(prefix="studio-bench-"))
        self.keep = keep
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        secret_file = self.data_dir / "secret_key.bench"
        secret_file.write_text(secrets.token_urlsafe(50))
        inherited = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DJANGO_SETTINGS_MODULE")}
        self.env = {
            **inherited,
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "STUDIO_DATA_DIR": str(self.data_dir),
            "SECRET_KEY_FILE": str(secret_file),
            "STATIC_ROOT": str(self.data_dir / "static"),
            "STUDIO_PUBLIC_URL": self.base_url,
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    # --- set-up ---------------------------------------------------------------

    def manage(self, *args: str) -> None:
        subprocess.run([PYTHON, "manage.py", *args], cwd=BASE_DIR, env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def prepare(self) -> Site:
        self.manage("migrate", "--noinput")
        self.manage("collectstatic", "--noinput", "--verbosity", "0")
        return self

    def setup_django(self) -> None:
        """Configure Django in this process on the same database and media (to make fixtures)."""
        os.environ.update({k: self.env[k] for k in ("DJANGO_SETTINGS_MODULE", "STUDIO_DATA_DIR",
                                                    "SECRET_KEY_FILE", "STATIC_ROOT", "STUDIO_PUBLIC_URL")})
        for key in ("DATABASE_URL", "REDIS_URL", "STUDIO_SANDBOX", "STUDIO_SANDBOX_URL", "AWS_STORAGE_BUCKET_NAME"):
            if key in self.env:
                os.environ[key] = self.env[key]
        os.environ.pop("SECRET_KEY", None)
        import django

        django.setup()

    # --- processes ------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        log = open(self.data_dir / f"{name}.log", "ab")
        self._logs.append(log)
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs[name] = proc
        return proc

    def start_emulators(self) -> None:
        """One emulator host for every process, as runstudio starts in sandbox mode (call before the others)."""
        port = free_port()
        self._spawn("emulators", [PYTHON, "manage.py", "runemulators", "--port", str(port)])
        self.env["STUDIO_SANDBOX_URL"] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while "Emulators of" not in self.log("emulators"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the emulator host did not start within 60 s\n{self.log('emulators')}")
            time.sleep(0.1)

    def start_web(self, *, workers: int = 2, threads: int = 4) -> None:
        """gunicorn with runstudio's options (gthread workers, access log), on this site's port."""
        self._spawn("web", [
            PYTHON, "-m", "gunicorn", "portraitstudio.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers), "--threads", str(threads),
            "--timeout", "60", "--access-logfile", "-", "--log-level", "warning", "--backlog", "2048",
        ])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + TRIVIAL_PATH, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer within 60 s\n{self.log('web')}")

    def start_worker(self, *, workers: int = 4) -> None:
        # INFO: django-q2 says "running." at that level.
        self._spawn("worker", [PYTHON, "manage.py", "qcluster"], Q_WORKERS=str(workers), LOG_LEVEL="INFO")
        deadline = time.monotonic() + 60
        while "running." not in self.log("worker"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"qcluster not running after 60 s\n{self.log('worker')}")
            time.sleep(0.2)

    def check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}\n{self.log(name)}")

    def log(self, name: str) -> str:
        try:
            return (self.data_dir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pids(self, name: str) -> list[int]:
        """The process and its children (gunicorn workers, qcluster workers)."""
        proc = self._procs[name]
        out = subprocess.run(["ps", "-o", "pid=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def stop_process(self, name: str) -> None:
        """Stop one child (and its own process group): SIGTERM, then SIGKILL after 15 s."""
        proc = self._procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # only this child's own group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # all at once, so they wind down together
        for name in list(self._procs):
            self.stop_process(name)
        for log in self._logs:
            log.close()
        self._logs.clear()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
