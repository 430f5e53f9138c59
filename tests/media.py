"""What a browser ends up with when it asks for a stored image.

On local disk the view streams the file; on S3 (./scripts/test-scaled, or a
test that switches to a moto server) it answers 302 to a signed URL on the
bucket, which the browser then follows. `fetch` does the same, so one
assertion holds on both: the status, bytes and headers finally received.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest

S3_BACKEND = "storages.backends.s3.S3Storage"


@dataclass
class Served:
    status: int
    body: bytes
    headers: dict[str, str]  # lower-case names: the storage's when it was redirected there
    redirected: bool


def fetch(response) -> Served:
    """Follow a redirect to signed storage (an absolute URL) as a browser would; else read the response."""
    location = response.get("Location", "") if response.status_code == 302 else ""
    if location.startswith(("http://", "https://")):
        # The test client stops at our app; the bucket is a real server on 127.0.0.1.
        with httpx.Client(trust_env=False, timeout=10) as client:
            answer = client.get(location)
        headers = {name.lower(): value for name, value in answer.headers.items()}
        return Served(answer.status_code, answer.content, headers, redirected=True)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Served(response.status_code, body, headers, redirected=False)


def settings_from_env(monkeypatch, tmp_path, **env: str) -> dict:
    """portraitstudio/settings.py evaluated afresh under these environment variables (its globals)."""
    import runpy
    from pathlib import Path

    for name in ("DATABASE_URL", "REDIS_URL", "CACHE_KEY_PREFIX", "STUDIO_QUEUE_NAME", "STUDIO_TEST_DB",
                 "AWS_STORAGE_BUCKET_NAME", "AWS_S3_ENDPOINT_URL", "AWS_LOCATION", "AWS_S3_ADDRESSING_STYLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(Path(__file__).resolve().parent.parent / "portraitstudio" / "settings.py"))


@pytest.fixture(scope="session")
def moto_endpoint():
    """An S3 stand-in on 127.0.0.1 in this process (./scripts/test-scaled brings its own)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_media(request, settings, monkeypatch, tmp_path):
    """Media on S3 for this test: the run's bucket when the run is on S3, else a moto server here.

    The storage options are the ones settings.py builds from AWS_* variables,
    so these tests check the configuration that production uses.
    """
    media = settings.STORAGES["default"]
    if media["BACKEND"] != S3_BACKEND:
        endpoint = request.getfixturevalue("moto_endpoint")
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        s3.create_bucket(Bucket="studio-media-test")  # idempotent in us-east-1
        configured = settings_from_env(
            monkeypatch, tmp_path / "settings",
            AWS_STORAGE_BUCKET_NAME="studio-media-test", AWS_S3_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_S3_REGION_NAME="us-east-1",
            AWS_S3_ADDRESSING_STYLE="path", AWS_LOCATION=f"tests/{uuid.uuid4().hex}",
        )
        media = configured["STORAGES"]["default"]
        settings.STORAGES = {**settings.STORAGES, "default": media}
    return media["OPTIONS"]
