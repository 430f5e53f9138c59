"""Everything fetched from a vendor is untrusted (VendorHttp.download).

http(s) only; every resolved address must be public, also after redirects and
also when an IPv4 address hides in an IPv6 one; the connection goes to the
vetted address (no DNS rebinding); size, time and content type are capped;
and what is stored is decoded as an image first.

Name resolution is faked with a table, requests go to in-process transports
or to a real server on 127.0.0.1: nothing leaves the machine.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from studio.vendors import http as vendor_http
from studio.vendors.base import VendorError
from studio.vendors.http import VendorHttp
from tests import images

JPEG = images.to_bytes(images.astronaut(), "JPEG")
PUBLIC = "93.184.216.34"  # documentation-era public address; never contacted (in-process transport)


@pytest.fixture
def dns(monkeypatch):
    """A fake resolver: host name → list of addresses; IP literals resolve to themselves."""
    table: dict[str, list[str]] = {"cdn.vendor.example": [PUBLIC]}
    lookups: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        addresses = table.get(host, [host] if _is_ip(host) else None)
        if addresses is None:
            raise socket.gaierror("unknown host")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    monkeypatch.setattr(vendor_http.socket, "getaddrinfo", getaddrinfo)
    table["_lookups"] = lookups  # type: ignore[assignment]
    return table


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class Recorder:
    """An in-process vendor CDN: answers from a route table and records every request."""

    def __init__(self, routes):
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.headers.get("Host", request.url.host), request.url.path)
        handler = self.routes.get(key) or self.routes.get(request.url.path)
        if handler is None:
            return httpx.Response(404)
        return handler(request) if callable(handler) else handler


def client_for(routes) -> tuple[VendorHttp, Recorder]:
    recorder = Recorder(routes)
    return VendorHttp(
        vendor="Acme", base_url="https://api.vendor.example", transport=httpx.MockTransport(recorder), retries=0
    ), recorder


def image_response(data=JPEG, content_type="image/jpeg", **headers):
    return httpx.Response(200, content=data, headers={"Content-Type": content_type, **headers})


# --- Schemes and addresses ----------------------------------------------------------


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "url",
    [
        "ftp://cdn.vendor.example/a.jpg",
        "file:///etc/passwd",
        "data:image/jpeg;base64,AAAA",
        "javascript:alert(1)",
        "gopher://cdn.vendor.example/",
        "//cdn.vendor.example/a.jpg",
        "https:///a.jpg",
        "http://[::1/a.jpg",
        "https://cdn.vendor.example:99999/a.jpg",
    ],
)
def test_only_http_and_https(dns, url):
    http, recorder = client_for({"/a.jpg": image_response()})
    with pytest.raises(VendorError, match="invalid result link"):
        http.download(url)
    assert recorder.requests == []


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
    ],
)
def test_private_and_special_addresses_are_refused(dns, address):
    dns["cdn.vendor.example"] = [address]
    http, recorder = client_for({"/a.jpg": image_response()})
    with pytest.raises(VendorError, match="link we don't follow"):
        http.download("https://cdn.vendor.example/a.jpg")
    assert recorder.requests == []


@pytest.mark.backend_free
def test_a_name_with_one_private_address_among_public_ones_is_refused(dns):
    dns["cdn.vendor.example"] = [PUBLIC, "10.0.0.5"]
    http, recorder = client_for({"/a.jpg": image_response()})
    with pytest.raises(VendorError, match="link we don't follow"):
        http.download("https://cdn.vendor.example/a.jpg")
    assert recorder.requests == []


@pytest.mark.backend_free
def test_unknown_host_is_a_connection_message(dns):
    http, _ = client_for({})
    with pytest.raises(VendorError, match="couldn't reach Acme") as info:
        http.download("https://nowhere.vendor.example/a.jpg")
    assert not info.value.permanent


@pytest.mark.backend_free
def test_the_connection_goes_to_the_vetted_address(dns):
    """DNS rebinding: the name is resolved once, checked, and that address is used."""
    http, recorder = client_for({"/a.jpg": image_response()})
    data, content_type = http.download("https://cdn.vendor.example/a.jpg?sig=abc")
    assert data == JPEG and content_type == "image/jpeg"
    (request,) = recorder.requests
    assert request.url.host == PUBLIC and request.url.query == b"sig=abc"
    assert request.headers["Host"] == "cdn.vendor.example"
    assert request.extensions["sni_hostname"] == "cdn.vendor.example"  # TLS name and certificate check
    assert dns["_lookups"] == ["cdn.vendor.example"]


@pytest.mark.backend_free
def test_ipv6_vendor_address_is_pinned_with_brackets(dns):
    dns["cdn.vendor.example"] = ["2606:2800:220:1:248:1893:25c8:1946"]
    http, recorder = client_for({"/a.jpg": image_response()})
    http.download("https://cdn.vendor.example:8443/a.jpg")
    (request,) = recorder.requests
    assert str(request.url).startswith("https://[2606:2800:220:1:248:1893:25c8:1946]:8443/a.jpg")
    assert request.headers["Host"] == "cdn.vendor.example:8443"


# --- Redirects -------------------------------------------------------------------------


@pytest.mark.backend_free
def test_redirect_to_a_private_address_is_refused(dns):
    dns["metadata.internal"] = ["169.254.169.254"]
    http, recorder = client_for(
        {
            "/a.jpg": httpx.Response(302, headers={"Location": "http://metadata.internal/latest/meta-data/"}),
            "/latest/meta-data/": image_response(),
        }
    )
    with pytest.raises(VendorError, match="link we don't follow"):
        http.download("https://cdn.vendor.example/a.jpg")
    assert [r.url.path for r in recorder.requests] == ["/a.jpg"]  # the private one was never asked


@pytest.mark.backend_free
def test_redirect_to_another_scheme_is_refused(dns):
    http, recorder = client_for({"/a.jpg": httpx.Response(301, headers={"Location": "file:///etc/passwd"})})
    with pytest.raises(VendorError, match="invalid result link"):
        http.download("https://cdn.vendor.example/a.jpg")
    assert len(recorder.requests) == 1


@pytest.mark.backend_free
def test_public_redirects_are_followed_a_few_times_only(dns):
    dns["files.vendor.example"] = [PUBLIC]
    http, recorder = client_for(
        {
            "/a.jpg": httpx.Response(302, headers={"Location": "https://files.vendor.example/b.jpg"}),
            "/b.jpg": httpx.Response(307, headers={"Location": "/c.jpg"}),
            "/c.jpg": image_response(),
            "/loop": httpx.Response(302, headers={"Location": "/loop"}),
        }
    )
    data, _ = http.download("https://cdn.vendor.example/a.jpg")
    assert data == JPEG
    assert [r.headers["Host"] for r in recorder.requests] == [
        "cdn.vendor.example",
        "files.vendor.example",
        "files.vendor.example",
    ]
    recorder.requests.clear()
    with pytest.raises(VendorError, match="redirected too many times"):
        http.download("https://cdn.vendor.example/loop", max_redirects=3)
    assert len(recorder.requests) == 4


# --- Size, type and time ---------------------------------------------------------------


@pytest.mark.backend_free
def test_declared_size_over_the_cap_is_refused_before_reading(dns):
    read = []

    def stream():
        read.append(1)
        yield JPEG

    http, _ = client_for(
        {
            "/a.jpg": lambda r: httpx.Response(
                200, headers={"Content-Type": "image/jpeg", "Content-Length": str(10**9)}, content=stream()
            )
        }
    )
    with pytest.raises(VendorError, match="too large"):
        http.download("https://cdn.vendor.example/a.jpg", max_bytes=1024 * 1024)
    assert read == []


@pytest.mark.backend_free
def test_undeclared_size_is_capped_while_streaming(dns):
    sent = []

    def endless():
        for _ in range(1000):
            sent.append(1)
            yield b"\0" * 65536

    http, _ = client_for(
        {"/a.jpg": lambda r: httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=endless())}
    )
    with pytest.raises(VendorError, match="too large"):
        http.download("https://cdn.vendor.example/a.jpg", max_bytes=1024 * 1024)
    assert len(sent) < 40  # stopped soon after 1 MB, not after 64 MB


@pytest.mark.backend_free
def test_gzip_bomb_is_capped_on_decoded_bytes(dns):
    import gzip

    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    assert len(bomb) < 100_000
    http, _ = client_for({"/a.jpg": image_response(bomb, **{"Content-Encoding": "gzip"})})
    with pytest.raises(VendorError, match="too large"):
        http.download("https://cdn.vendor.example/a.jpg", max_bytes=1024 * 1024)


@pytest.mark.backend_free
@pytest.mark.parametrize(
    "content_type", ["text/html", "image/svg+xml", "application/octet-stream", "", "application/zip", "image/gif"]
)
def test_content_type_must_be_an_accepted_image(dns, content_type):
    http, _ = client_for({"/a.jpg": image_response(content_type=content_type)})
    with pytest.raises(VendorError, match="not an image"):
        http.download("https://cdn.vendor.example/a.jpg")


@pytest.mark.backend_free
def test_content_type_parameters_are_ignored(dns):
    http, _ = client_for({"/a.jpg": image_response(content_type="Image/JPEG; charset=binary")})
    assert http.download("https://cdn.vendor.example/a.jpg")[1] == "image/jpeg"


@pytest.mark.backend_free
def test_total_time_is_capped(dns, monkeypatch):
    """A server that trickles bytes forever: the clock, not the server, ends it."""
    now = [1000.0]
    monkeypatch.setattr(vendor_http.time, "monotonic", lambda: now[0])

    def trickle():
        for _ in range(100):
            now[0] += 5  # each chunk "takes" five seconds
            yield b"\0" * 10

    http, _ = client_for(
        {"/a.jpg": lambda r: httpx.Response(200, headers={"Content-Type": "image/jpeg"}, content=trickle())}
    )
    with pytest.raises(VendorError, match="took too long") as info:
        http.download("https://cdn.vendor.example/a.jpg", max_seconds=20)
    assert not info.value.permanent


@pytest.mark.backend_free
@pytest.mark.parametrize("status, message", [(404, "expired"), (410, "expired"), (500, "couldn't hand over")])
def test_error_statuses(dns, status, message):
    http, _ = client_for({"/a.jpg": httpx.Response(status)})
    with pytest.raises(VendorError, match=message):
        http.download("https://cdn.vendor.example/a.jpg")


# --- A real socket on 127.0.0.1 ------------------------------------------------------------


class _Slow(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        if self.path == "/slow":
            for _ in range(20):
                self.wfile.write(b"\0" * 10)
                self.wfile.flush()
                time.sleep(0.5)
        else:
            self.wfile.write(JPEG)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.backend_free
def test_real_loopback_server_is_refused_unless_it_is_the_emulator(local_server):
    http = VendorHttp(vendor="Acme", base_url=local_server, retries=0)
    with pytest.raises(VendorError, match="link we don't follow"):
        http.download(f"{local_server}/a.jpg")
    data, _ = http.download(f"{local_server}/a.jpg", allow_private=True)  # sandbox/tests only
    assert data == JPEG


@pytest.mark.backend_free
def test_real_slow_server_is_cut_off(local_server):
    http = VendorHttp(vendor="Acme", base_url=local_server, retries=0)
    with pytest.raises(VendorError, match="took too long"):
        http.download(f"{local_server}/slow", allow_private=True, max_seconds=1.0)


# --- Decoded as an image before it is stored ------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "payload",
    [
        b"<html><script>alert(1)</script></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        JPEG[: len(JPEG) // 3],
        b"",
    ],
)
def test_a_vendor_file_that_is_not_an_image_is_never_stored(owner_client, portrait_jpeg, monkeypatch, payload):
    from django.core.files.storage import default_storage

    from studio.jobs.run import job_run
    from studio.models import Job, Photo, Result
    from studio.vendors.base import Output, Progress, Submission
    from studio.vendors.local import LocalProvider
    from tests.conftest import upload

    monkeypatch.setattr(
        LocalProvider,
        "submit",
        lambda self, job: Submission(
            task_id="t", progress=Progress(finished=True, outputs=(Output(data=payload, content_type="image/jpeg"),))
        ),
    )
    upload(owner_client, portrait_jpeg)
    photo = Photo.objects.get()
    owner_client.post("/jobs/", {"photo": str(photo.pk), "operation": "studio_retouch"}, headers={"HX-Request": "true"})
    job = Job.objects.get()
    if job.status != Job.Status.FAILED:  # a transient error may be retried once by django-q
        job_run(job.pk)
        job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "damaged image" in job.error_message or "no image" in job.error_message
    assert not Result.objects.exists()
    assert not default_storage.exists(f"results/{job.pk}") or default_storage.listdir(f"results/{job.pk}") == ([], [])


# --- Kept-alive connections: shared for API calls, never for a pinned download ---------------


class _KeepAlive(BaseHTTPRequestHandler):
    """HTTP/1.1 with Content-Length: a client may send many requests on one connection."""

    protocol_version = "HTTP/1.1"
    ports: list[int] = []

    def do_GET(self):  # noqa: N802
        type(self).ports.append(self.client_address[1])
        body = JPEG if self.path.endswith(".jpg") else b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg" if self.path.endswith(".jpg") else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def keep_alive_server():
    _KeepAlive.ports = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _KeepAlive.ports
    server.shutdown()
    server.server_close()


def _status_in_child(base_url: str, pipe) -> None:
    try:
        VendorHttp(vendor="Acme", base_url=base_url, retries=0).request("GET", "/status")
        pipe.send("ok")
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, which fails the test)
        pipe.send(repr(exc))


@pytest.mark.backend_free
def test_api_calls_of_one_process_share_a_kept_alive_connection_and_a_fork_opens_its_own(keep_alive_server):
    import multiprocessing

    base_url, ports = keep_alive_server
    for _ in range(3):  # adapters build a VendorHttp per call
        http = VendorHttp(vendor="Acme", base_url=base_url, retries=0)
        assert http.request("GET", "/status").json() == {"ok": True}
        http.close()  # leaves the process's client (and its connection) open
    assert len(ports) == 3 and len(set(ports)) == 1, ports

    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=_status_in_child, args=(base_url, child_end))
    child.start()
    child.join(10)
    assert parent_end.recv() == "ok"
    assert len(ports) == 4 and ports[3] != ports[0], "the child sent on its parent's socket"


@pytest.mark.backend_free
def test_a_download_pinned_to_an_address_gets_a_connection_of_its_own(keep_alive_server, dns, monkeypatch):
    """Two host names on one address (a CDN): a kept connection, verified for the first, must not
    carry the second's download. Loopback stands in for the public address here."""
    base_url, ports = keep_alive_server
    port = base_url.rsplit(":", 1)[1]
    dns["a.cdn.example"] = dns["b.cdn.example"] = ["127.0.0.1"]
    monkeypatch.setattr(vendor_http, "is_public_address", lambda address: True)
    http = VendorHttp(vendor="Acme", base_url=base_url, retries=0)
    for host in ("a.cdn.example", "b.cdn.example", "a.cdn.example"):
        data, _ = http.download(f"http://{host}:{port}/result.jpg")
        assert data == JPEG
    assert len(ports) == 3 and len(set(ports)) == 3, ports
