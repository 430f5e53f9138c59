"""Run the whole app on one machine: the web server and a django-q2 worker.

Both run as child processes; if either exits, the other is stopped too, so
a half-running app never goes unnoticed. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Start the web server (gunicorn), the background worker (qcluster) and the step runner together."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--web-workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2")))

    def handle(self, *args, host, port, web_workers, **options):
        python = sys.executable
        web = [
            python, "-m", "gunicorn", "portraitstudio.wsgi:application",
            "--bind", f"{host}:{port}", "--workers", str(web_workers), "--threads", "4",
            "--timeout", "60", "--keep-alive", "5", "--access-logfile", "-", "--log-level", "warning",
        ]
        worker = [python, "manage.py", "qcluster"]
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        env = dict(os.environ)
        # Signed photo links handed to vendors (and to the sandbox's emulators)
        # must point at this server unless the public address was set.
        env.setdefault("STUDIO_PUBLIC_URL", f"http://{shown_host}:{port}")
        # Children get their own session: Ctrl-C in the terminal reaches only
        # this supervisor, which then stops them, so a child that exits from
        # the signal is never mistaken for a crash.
        children = {}
        if settings.STUDIO_SANDBOX and not settings.STUDIO_SANDBOX_URL:
            # One emulator host for the web server and every worker process, so a job
            # resumed by another worker, a chained result and the shared request budget
            # all meet the same emulated vendor (studio/vendors/emulators/host.py).
            emulator_port = _free_port()
            children["emulators"] = subprocess.Popen(
                [python, "manage.py", "runemulators", "--port", str(emulator_port)],
                cwd=settings.BASE_DIR, env=env, start_new_session=True,
            )
            env["STUDIO_SANDBOX_URL"] = f"http://127.0.0.1:{emulator_port}"
            _wait_listening(emulator_port, children["emulators"])
        children["web"] = subprocess.Popen(web, cwd=settings.BASE_DIR, env=env, start_new_session=True)
        children["worker"] = subprocess.Popen(worker, cwd=settings.BASE_DIR, env=env, start_new_session=True)
        # The cluster runs local (CPU-bound) operations; the step runner runs vendor
        # jobs' steps as they fall due, on threads (studio/jobs/steps.py).
        children["step runner"] = subprocess.Popen(
            [python, "manage.py", "runsteps"], cwd=settings.BASE_DIR, env=env, start_new_session=True
        )
        self.stdout.write(self.style.SUCCESS(f"\nPortrait Studio is running at http://{shown_host}:{port}/"))
        self.stdout.write(f"Data (database, photos) is kept in {settings.DATA_DIR}. Press Ctrl-C to stop.\n")

        stopping = False

        def stop(signum=None, frame=None):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        exit_code = 0
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    self.stderr.write(f"The {name} process exited with code {child.returncode}; stopping.")
                    exit_code = child.returncode or 1
                    stopping = True
                    break
            time.sleep(0.5)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                child.kill()
        sys.exit(exit_code)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, child: subprocess.Popen, timeout: float = 30.0) -> None:
    """Start the app only once the emulators answer, so its first sandbox job finds them."""
    deadline = time.time() + timeout
    while time.time() < deadline and child.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
