"""The README's run command: one process tree serving the app with a worker."""

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _runstudio(tmp_path, **extra_env):
    """`manage.py runstudio` on a fresh data directory; yields (port, log path).

    On leaving, it is stopped with SIGTERM and must exit cleanly.
    """
    port = _free_port()
    env = {
        **os.environ,
        "STUDIO_DATA_DIR": str(tmp_path / "data"),
        "STATIC_ROOT": str(tmp_path / "static"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'db.sqlite3'}",
        **extra_env,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("STUDIO_SANDBOX_URL", None)
    for command in (["migrate", "--noinput", "-v0"], ["collectstatic", "--noinput", "-v0"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, timeout=120)
    log_path = tmp_path / "run.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runstudio", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield port, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert proc.returncode == 0, log_path.read_text()


def _get_home(port: int, deadline: float):
    while time.time() < deadline:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
        except httpx.TransportError:
            time.sleep(0.3)
    return None


@pytest.mark.qcluster
def test_runstudio_serves_pages_and_starts_a_worker(tmp_path):
    with _runstudio(tmp_path) as (port, log_path):
        deadline = time.time() + 60
        home = _get_home(port, deadline)
        assert home is not None and home.status_code == 200
        assert "Turn a selfie into a studio portrait" in home.text
        css = httpx.get(f"http://127.0.0.1:{port}/static/studio/app.css", timeout=5)
        assert css.status_code == 200 and "--accent" in css.text
        # The worker is up when the log shows the cluster running.
        while time.time() < deadline and "running" not in log_path.read_text().lower():
            time.sleep(0.3)
        output = log_path.read_text()
        assert f"http://127.0.0.1:{port}/" in output
        assert "Q Cluster" in output and "running" in output.lower()


@pytest.mark.qcluster
def test_runstudio_in_sandbox_mode_shares_one_emulator_host_and_stops_it(tmp_path):
    """With STUDIO_SANDBOX=1 the web server and the worker must meet the same
    emulated vendors: runstudio starts one emulator host and points both at it."""
    with _runstudio(tmp_path, STUDIO_SANDBOX="1") as (port, log_path):
        deadline = time.time() + 60
        while time.time() < deadline and "STUDIO_SANDBOX_URL=" not in log_path.read_text():
            time.sleep(0.2)
        sandbox_url = log_path.read_text().split("STUDIO_SANDBOX_URL=")[1].split()[0]
        assert sandbox_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{sandbox_url}/_host/perfectcorp", timeout=5).status_code == 200
        home = _get_home(port, deadline)
        assert home is not None and home.status_code == 200
        assert "Sandbox" in home.text
    # Stopping the app stopped its emulator host too.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{sandbox_url}/_host/perfectcorp", timeout=2)
