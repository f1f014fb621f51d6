"""Fetching task images over real HTTP servers on loopback: auth, redirects, SSRF guard, caps, timeouts."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import jwt
import numpy as np
import pytest

from backend.labelstudio.images import ImageError, load_task_image
from tests.loopback_http import QuietHandler, start_server

CORPUS = Path(__file__).parent / "fixtures" / "bad_inputs"
PNG = (CORPUS / "ok_rgb.png").read_bytes()

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A real HTTP server on 127.0.0.1 whose routes are plain functions; it records every request."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
def serve() -> Iterator[Callable[[], Server]]:
    started: list[ThreadingHTTPServer] = []

    def start() -> Server:
        state = Server()

        class Handler(QuietHandler):
            def do_GET(self, prefix: str = "") -> None:  # noqa: N802 - http.server's naming
                state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = state.routes.get(prefix + self.path) or state.routes.get(prefix + self.path.split("?")[0])
                if route is None:
                    reply(self, 404, b"not found", "text/plain")
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up on purpose (byte cap, timeout)

            def do_POST(self) -> None:  # noqa: N802
                self.do_GET(prefix="POST ")

        httpd = start_server(Handler, poll_interval=0.02)
        state.port = httpd.server_address[1]
        started.append(httpd)
        return state

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def reply(handler: QuietHandler, status: int, body: bytes = b"", ctype: str = "image/png",
          headers: dict[str, str] | None = None) -> None:
    handler.reply(status, body, ctype, headers)


def image(handler: BaseHTTPRequestHandler) -> None:
    reply(handler, 200, PNG)


def redirect_to(location: str, status: int = 302) -> Route:
    return lambda handler: reply(handler, status, b"", "text/plain", {"Location": location})


def settings_for(ls: Server | None = None, **extra) -> SimpleNamespace:
    values = {"label_studio_url": ls.url if ls else "", "label_studio_api_key": "legacy-token",
              "fetch_connect_timeout_s": 2.0, "fetch_read_timeout_s": 2.0}
    values.update(extra)
    return SimpleNamespace(**values)


# ------------------------------------------------------------------------------------------ Label Studio


def test_upload_is_fetched_from_label_studio_with_the_legacy_token(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = image
    picture = load_task_image("/data/upload/1/a.png", settings_for(ls))
    assert picture.size == (40, 30) and picture.mode == "RGB"
    assert ls.requests[0][1]["authorization"] == "Token legacy-token"
    # Label Studio 1.23 answers 406 Not Acceptable to "Accept: image/*" (found against the real server).
    assert ls.requests[0][1].get("accept", "*/*") == "*/*"


def test_upload_falls_back_to_the_storage_proxy(serve):
    ls = serve()
    ls.routes["/storage-data/uploaded/"] = image
    assert load_task_image("/data/upload/1/a.png", settings_for(ls)).size == (40, 30)
    assert ls.paths() == ["/data/upload/1/a.png", "/storage-data/uploaded/?filepath=upload/1/a.png"]


def test_missing_upload_is_not_found_even_when_label_studio_answers_500(serve):
    ls = serve()
    # Label Studio 1.23 answers 500 for a missing /data/upload/ file; its storage proxy then says 404.
    ls.routes["/data/upload/1/missing.png"] = lambda h: reply(h, 500, b"Server Error", "text/html")
    with pytest.raises(ImageError) as info:
        load_task_image("/data/upload/1/missing.png", settings_for(ls))
    assert (info.value.reason, info.value.retryable) == ("not_found", False)
    assert "no such file" in info.value.message and "500, then 404" in info.value.message
    assert ls.paths() == ["/data/upload/1/missing.png", "/storage-data/uploaded/?filepath=upload/1/missing.png"]
    # ... and 403 from the storage proxy (what 1.23 really answers for a file it does not know) reads the same.
    ls.routes["/storage-data/uploaded/"] = lambda h: reply(h, 403, b"{}", "application/json")
    with pytest.raises(ImageError, match="no such file") as info:
        load_task_image("/data/upload/1/missing.png", settings_for(ls))
    assert info.value.reason == "not_found"


def test_label_studio_down_on_both_upload_paths_stays_retryable(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = lambda h: reply(h, 500, b"Server Error", "text/html")
    ls.routes["/storage-data/uploaded/"] = lambda h: reply(h, 502, b"Bad Gateway", "text/html")
    with pytest.raises(ImageError) as info:
        load_task_image("/data/upload/1/a.png", settings_for(ls))
    assert info.value.retryable and info.value.status == 502


def test_personal_access_token_is_exchanged_once_and_sent_as_bearer(serve):
    ls = serve()
    now = int(time.time())
    refresh = jwt.encode({"token_type": "refresh", "exp": now + 3600, "user_id": 1}, "test-signing-key-of-32-bytes-long", algorithm="HS256")
    access = jwt.encode({"token_type": "access", "exp": now + 300}, "test-signing-key-of-32-bytes-long", algorithm="HS256")
    exchanges: list[str] = []

    def exchange(handler):
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length", 0))))
        exchanges.append(body["refresh"])
        reply(handler, 200, json.dumps({"access": access}).encode(), "application/json")

    def upload(handler):
        if handler.headers.get("Authorization") == f"Bearer {access}":
            image(handler)
        else:
            reply(handler, 401, b"{}", "application/json")

    ls.routes["POST /api/token/refresh/"] = exchange
    ls.routes["/data/upload/1/a.png"] = upload
    settings = settings_for(ls, label_studio_api_key=refresh)
    for _ in range(3):
        assert load_task_image("/data/upload/1/a.png", settings).size == (40, 30)
    assert exchanges == [refresh]
    uploads = [headers for path, headers in ls.requests if path.startswith("/data/upload/")]
    assert len(uploads) == 3 and all(h["authorization"] == f"Bearer {access}" for h in uploads)


def test_wrong_token_says_to_check_the_api_key(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = lambda h: reply(h, 401, b'{"detail": "Invalid token."}', "application/json")
    with pytest.raises(ImageError, match="LABEL_STUDIO_API_KEY") as info:
        load_task_image("/data/upload/1/a.png", settings_for(ls))
    assert info.value.reason == "auth" and not info.value.retryable


def test_cloud_uri_is_presigned_and_the_redirect_drops_the_token(serve):
    ls, bucket = serve(), serve()
    bucket.routes["/bucket/a.png"] = image
    uri = "s3://bucket/a.png"
    encoded = base64.urlsafe_b64encode(uri.encode()).decode()
    signed = f"http://localhost:{bucket.port}/bucket/a.png?X-Amz-Signature=secret"
    ls.routes["/tasks/9/presign/"] = redirect_to(signed, 303)
    # localhost is loopback: refused by default, even though Label Studio issued the redirect ...
    with pytest.raises(ImageError) as info:
        load_task_image(uri, settings_for(ls), task_id=9)
    assert info.value.reason == "forbidden" and "secret" not in info.value.message
    assert bucket.requests == []
    # ... and fetched once private addresses are allowed (e.g. MinIO next to Label Studio).
    picture = load_task_image(uri, settings_for(ls, allow_private_addresses=True), task_id=9)
    assert picture.size == (40, 30)
    assert ls.requests[-1][0] == f"/tasks/9/presign/?fileuri={encoded}"
    assert "authorization" not in bucket.requests[-1][1]


def test_label_studio_trust_covers_one_hop_only(serve):
    """Label Studio -> bucket -> other host: Label Studio's presign redirect may name any host (the bucket), but
    the bucket is not Label Studio, so where the bucket redirects must pass ALLOWED_IMAGE_HOSTS again."""
    ls, bucket, other = serve(), serve(), serve()
    other.routes["/stolen.png"] = image
    # Three loopback stand-ins told apart by name and port: Label Studio 127.0.0.1:a, bucket localhost:b,
    # other host 127.0.0.1:c (same address as Label Studio, another origin, not in ALLOWED_IMAGE_HOSTS).
    bucket.routes["/bucket/a.png"] = redirect_to(f"http://127.0.0.1:{other.port}/stolen.png")
    ls.routes["/tasks/9/presign/"] = redirect_to(f"http://localhost:{bucket.port}/bucket/a.png?X-Amz-Signature=s", 303)
    settings = settings_for(ls, allow_private_addresses=True, allowed_image_hosts=("images.example.com",))
    with pytest.raises(ImageError, match="ALLOWED_IMAGE_HOSTS") as info:
        load_task_image("s3://bucket/a.png", settings, task_id=9)
    assert info.value.reason == "forbidden"
    assert len(ls.requests) == 1 and bucket.paths() == ["/bucket/a.png?X-Amz-Signature=s"]
    assert other.requests == []
    # Control: the same chain is followed to its end once the other host is allowed by name.
    settings.allowed_image_hosts = ("127.0.0.1",)
    assert load_task_image("s3://bucket/a.png", settings, task_id=9).size == (40, 30)
    assert other.paths() == ["/stolen.png"] and "authorization" not in other.requests[0][1]


def test_presign_proxy_mode_streams_the_file_from_label_studio(serve):
    ls = serve()
    ls.routes["/projects/2/presign/"] = image
    assert load_task_image("gs://b/a.png", settings_for(ls), project_id=2).size == (40, 30)


# ------------------------------------------------------------------------------------------ SSRF


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "http://10.0.0.1/x",
        "http://192.168.1.1/x",
        "http://0.0.0.0:{port}/x",
        "http://127.0.0.1:{port}/x",
        "http://localhost:{port}/x",
        "http://[::ffff:127.0.0.1]:{port}/x",
        "http://[0:0:0:0:0:ffff:7f00:1]:{port}/x",
        "http://2130706433:{port}/x",
        "http://0x7f000001:{port}/x",
        "http://127.1:{port}/x",
        "http://[::]:{port}/x",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
    ],
)
def test_redirects_from_label_studio_to_internal_addresses_are_refused(serve, target: str):
    ls, internal = serve(), serve()
    internal.routes["/x"] = image
    ls.routes["/data/upload/1/a.png"] = redirect_to(target.format(port=internal.port))
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        # Every host is allowed by name: only the address check can stop these.
        load_task_image("/data/upload/1/a.png", settings_for(ls, allowed_image_hosts=("*",)))
    assert info.value.reason == "forbidden", info.value.message
    assert internal.requests == []
    assert time.monotonic() - started < 2  # refused before any connection attempt, not timed out


def test_allowed_host_name_that_resolves_to_loopback_is_refused(serve):
    other = serve()
    other.routes["/data/a.png"] = image
    settings = SimpleNamespace(allowed_image_hosts=("localhost",))
    with pytest.raises(ImageError, match="non-public address") as info:
        load_task_image(f"http://localhost:{other.port}/data/a.png", settings)
    assert info.value.reason == "forbidden" and other.requests == []
    settings.allow_private_addresses = True
    assert load_task_image(f"http://localhost:{other.port}/data/a.png", settings).size == (40, 30)
    assert "authorization" not in other.requests[0][1]


def test_redirect_to_a_host_not_allowed_is_refused(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = redirect_to("https://evil.example.net/a.png")
    with pytest.raises(ImageError, match="ALLOWED_IMAGE_HOSTS") as info:
        load_task_image("/data/upload/1/a.png", settings_for(ls, allowed_image_hosts=("images.example.com",)))
    assert info.value.reason == "forbidden"


def test_label_studio_on_another_port_is_not_label_studio(serve):
    ls, other = serve(), serve()
    other.routes["/data/a.png"] = image
    ls.routes["/data/upload/1/a.png"] = redirect_to(f"http://127.0.0.1:{other.port}/data/a.png")
    with pytest.raises(ImageError) as info:
        load_task_image("/data/upload/1/a.png", settings_for(ls, allowed_image_hosts=("127.0.0.1",)))
    assert info.value.reason == "forbidden" and other.requests == []


@pytest.mark.parametrize("location", ["/api/projects/1/export?exportType=JSON", "/api/current-user/token",
                                      "/data/upload/../../api/projects/", "{ls}/api/token/refresh/"])
def test_redirect_to_a_label_studio_api_path_never_carries_the_key(serve, location: str):
    """A redirect back to Label Studio passes the same media-path check as the task's URL did, before the key."""
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = redirect_to(location.format(ls=ls.url))
    ls.routes["/api/projects/1/export"] = image  # would "work" if the key went there
    with pytest.raises(ImageError, match="not a media path") as info:
        load_task_image("/data/upload/1/a.png", settings_for(ls))
    assert info.value.reason == "forbidden"
    assert [path for path, _ in ls.requests if not path.startswith("/data/upload/")] == [], ls.requests


def test_redirect_loop_stops(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = redirect_to("/data/upload/1/b.png")
    ls.routes["/data/upload/1/b.png"] = redirect_to("/data/upload/1/a.png")
    with pytest.raises(ImageError, match="redirects"):
        load_task_image("/data/upload/1/a.png", settings_for(ls))
    assert len(ls.requests) <= 2 * 6  # bounded, primary + fallback


# ------------------------------------------------------------------------------------------ caps, timeouts


def test_declared_oversize_body_is_refused_without_reading_it(serve):
    ls = serve()
    ls.routes["/data/big.png"] = lambda h: reply(h, 200, PNG + b"\0" * 5000)
    with pytest.raises(ImageError, match="byte limit") as info:
        load_task_image("/data/big.png", settings_for(ls, image_max_bytes=1000))
    assert info.value.reason == "too_large"


def test_endless_body_without_length_is_cut_at_the_cap(serve):
    ls = serve()
    sent = []

    def endless(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()  # HTTP/1.0, no Content-Length: the body runs until the server closes
        for _ in range(10_000):
            handler.wfile.write(b"\0" * 65536)
            sent.append(65536)

    ls.routes["/data/endless.png"] = endless
    with pytest.raises(ImageError, match="byte limit"):
        load_task_image("/data/endless.png", settings_for(ls, image_max_bytes=1_000_000))
    time.sleep(0.2)
    assert sum(sent) < 100 * 1_000_000  # the client hung up long before the 655 MB the server offered


def test_html_served_as_image_is_refused(serve):
    ls = serve()
    ls.routes["/data/a.png"] = lambda h: reply(h, 200, b"<html><body>Login</body></html>", "image/png")
    with pytest.raises(ImageError, match="HTML") as info:
        load_task_image("/data/a.png", settings_for(ls))
    assert info.value.reason == "undecodable"


def test_empty_body_is_refused(serve):
    ls = serve()
    ls.routes["/data/a.png"] = lambda h: reply(h, 200, b"")
    with pytest.raises(ImageError, match="empty"):
        load_task_image("/data/a.png", settings_for(ls))


def test_silent_server_hits_the_read_timeout(serve):
    ls = serve()
    ls.routes["/data/slow.png"] = lambda h: (time.sleep(1.5), image(h))
    started = time.monotonic()
    with pytest.raises(ImageError, match="timed out") as info:
        load_task_image("/data/slow.png", settings_for(ls, fetch_read_timeout_s=0.3))
    assert time.monotonic() - started < 1.2
    assert info.value.reason == "unreachable" and info.value.retryable


def trickling(chunks: int):
    """Return a route that promises 100000 bytes and sends `chunks` single bytes, one every 50 ms."""

    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(chunks):
            handler.wfile.write(b"\0")
            handler.wfile.flush()
            time.sleep(0.05)

    return trickle


def test_trickling_server_hits_the_total_timeout(serve):
    ls = serve()
    ls.routes["/data/trickle.png"] = trickling(100)
    started = time.monotonic()
    with pytest.raises(ImageError, match="took over") as info:
        load_task_image("/data/trickle.png", settings_for(ls, fetch_read_timeout_s=1.0, fetch_total_timeout_s=0.5))
    assert time.monotonic() - started < 2.5 and info.value.retryable


def test_refused_connection_is_retryable():
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        settings = SimpleNamespace(label_studio_url=f"http://127.0.0.1:{bound.getsockname()[1]}",
                                   label_studio_api_key="t")
        with pytest.raises(ImageError) as info:
            load_task_image("/data/upload/1/a.png", settings)
    assert info.value.reason == "unreachable" and info.value.retryable


@pytest.mark.parametrize(("status", "reason", "retryable"), [(404, "not_found", False), (500, "unreachable", True),
                                                             (503, "unreachable", True), (418, "unreachable", False)])
def test_error_statuses(serve, status: int, reason: str, retryable: bool):
    ls = serve()
    ls.routes["/data/a.png"] = lambda h: reply(h, status, b"nope", "text/plain")
    with pytest.raises(ImageError) as info:
        load_task_image("/data/a.png", settings_for(ls))
    assert (info.value.reason, info.value.retryable) == (reason, retryable)


# ------------------------------------------------------------------------------------------ exact caps and errors


def _unsized(body: bytes) -> Route:
    """Reply 200 without Content-Length (HTTP/1.0: the body ends when the server closes)."""

    def send(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()
        handler.wfile.write(body)

    return send


@pytest.mark.parametrize("declared", [True, False])
def test_byte_cap_is_inclusive_with_or_without_content_length(serve, declared: bool):
    ls = serve()
    ls.routes["/data/a.png"] = image if declared else _unsized(PNG)
    assert load_task_image("/data/a.png", settings_for(ls, image_max_bytes=len(PNG))).size == (40, 30)
    with pytest.raises(ImageError) as info:
        load_task_image("/data/a.png", settings_for(ls, image_max_bytes=len(PNG) - 1))
    expected = f"image is {len(PNG)} bytes, over the {len(PNG) - 1} byte limit" if declared else (
        f"image is over the {len(PNG) - 1} byte limit")
    assert (info.value.reason, info.value.message, info.value.retryable) == ("too_large", expected, False)


def test_declared_oversize_is_refused_before_any_body_is_read(serve):
    ls = serve()

    def lying(handler):  # declares more than the cap, then sends a small body and closes
        handler.send_response(200)
        handler.send_header("Content-Length", "5000")
        handler.end_headers()
        handler.wfile.write(PNG[:100])

    ls.routes["/data/a.png"] = lying
    with pytest.raises(ImageError) as info:
        load_task_image("/data/a.png", settings_for(ls, image_max_bytes=1000))
    assert (info.value.reason, info.value.message) == ("too_large", "image is 5000 bytes, over the 1000 byte limit")


def test_a_body_of_many_chunks_arrives_byte_for_byte(serve):
    from io import BytesIO

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    big = buffer.getvalue()
    assert len(big) > 300_000  # many network reads
    ls = serve()
    ls.routes["/data/big.png"] = _unsized(big)
    assert np.array_equal(np.asarray(load_task_image("/data/big.png", settings_for(ls))), pixels)


@pytest.mark.parametrize(("ctype", "shown"), [("image/png", "image/png"), (None, "none")])
def test_empty_body_error_names_the_content_type(serve, ctype, shown):
    ls = serve()
    ls.routes["/data/a.png"] = lambda h: h.reply(200, b"", ctype)
    with pytest.raises(ImageError) as info:
        load_task_image("/data/a.png", settings_for(ls))
    assert (info.value.reason, info.value.message) == ("undecodable", f"empty response body (content-type {shown})")


def test_total_timeout_error_is_unreachable_and_says_the_limit(serve):
    ls = serve()
    ls.routes["/data/trickle.png"] = trickling(40)
    with pytest.raises(ImageError) as info:
        load_task_image("/data/trickle.png", settings_for(ls, fetch_read_timeout_s=1.0, fetch_total_timeout_s=0.5))
    assert (info.value.reason, info.value.message, info.value.retryable) == (
        "unreachable", "image download took over 0.5 s", True)


def test_error_from_an_image_host_never_shows_the_signed_query(serve):
    ls = serve()
    with pytest.raises(ImageError) as info:
        load_task_image(f"{ls.url}/x/a.png?X-Amz-Signature=secret",
                        SimpleNamespace(allowed_image_hosts=("127.0.0.1",), allow_private_addresses=True))
    assert info.value.message == f"image host answered 404 Not Found for {ls.url}/x/a.png?…"


# ------------------------------------------------------------------------------------------ connecting


def test_label_studio_named_by_host_name_is_trusted_on_loopback(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = image
    settings = settings_for(ls, label_studio_url=f"http://LocalHost:{ls.port}")
    assert load_task_image("/data/upload/1/a.png", settings).size == (40, 30)


def test_private_address_refusal_says_which_setting_opens_it(serve):
    other = serve()
    with pytest.raises(ImageError) as info:
        load_task_image(f"http://localhost:{other.port}/a.png", SimpleNamespace(allowed_image_hosts=("localhost",)))
    assert info.value.message == (
        "host 'localhost' resolves to 127.0.0.1, a non-public address; refused "
        "(set ALLOW_PRIVATE_ADDRESSES=true to allow loopback/private networks)"
    )


def test_unresolvable_host_is_retryable_and_named():
    with pytest.raises(ImageError) as info:
        load_task_image("http://no-such-host.invalid/a.png", SimpleNamespace(allowed_image_hosts=("*",)))
    assert (info.value.reason, info.value.retryable) == ("unreachable", True)
    assert info.value.message.startswith("cannot resolve host 'no-such-host.invalid': ")


def test_refused_connection_to_an_image_host_is_retryable():
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        settings = SimpleNamespace(allowed_image_hosts=("localhost",), allow_private_addresses=True)
        with pytest.raises(ImageError) as info:
            load_task_image(f"http://localhost:{bound.getsockname()[1]}/a.png", settings)
    assert (info.value.reason, info.value.retryable) == ("unreachable", True)
    assert "ConnectError" in info.value.message


# ------------------------------------------------------------------------------------------ redirect rules


@pytest.mark.parametrize(("hops", "ok"), [(5, True), (6, False)])
def test_at_most_max_redirects_are_followed(serve, hops: int, ok: bool):
    ls = serve()
    for k in range(hops):
        ls.routes[f"/data/r{k}.png"] = redirect_to(f"/data/r{k + 1}.png")
    ls.routes[f"/data/r{hops}.png"] = image
    if ok:
        assert load_task_image("/data/r0.png", settings_for(ls)).size == (40, 30)
        assert len(ls.requests) == hops + 1
    else:
        with pytest.raises(ImageError) as info:
            load_task_image("/data/r0.png", settings_for(ls))
        assert (info.value.reason, info.value.message) == ("unreachable", "more than 5 redirects")
        assert len(ls.requests) == 6


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("http://user@{host}/a.png", "URLs with embedded credentials are not fetched"),
        ("http://:secret@{host}/a.png", "URLs with embedded credentials are not fetched"),
        ("ftp://{host}/a.png", "redirect to a 'ftp' URL refused"),
        ("https:///a.png", "redirect to a URL without a host refused"),
        ("http://evil.example.net:8443/a.png",
         "redirect to host 'evil.example.net' refused: neither Label Studio nor in ALLOWED_IMAGE_HOSTS"),
    ],
)
def test_refused_redirects_say_why(serve, location: str, message: str):
    ls, other = serve(), serve()
    other.routes["/a.png"] = image
    ls.routes["/data/upload/1/a.png"] = redirect_to(location.format(host=f"127.0.0.1:{other.port}"))
    with pytest.raises(ImageError) as info:
        load_task_image("/data/upload/1/a.png", settings_for(ls, allowed_image_hosts=("127.0.0.1",),
                                                             allow_private_addresses=True))
    assert (info.value.reason, info.value.message) == ("forbidden", message)
    assert other.requests == []


def test_redirect_without_location_is_an_error(serve):
    ls = serve()
    ls.routes["/data/a.png"] = lambda h: reply(h, 302, b"", "text/plain")
    with pytest.raises(ImageError) as info:
        load_task_image("/data/a.png?sig=1", settings_for(ls))
    assert (info.value.reason, info.value.retryable, info.value.message) == (
        "unreachable", False, f"redirect without Location from {ls.url}/data/a.png?…")


def test_read_timeout_message_names_the_url_and_the_timeout(serve):
    ls = serve()
    ls.routes["/data/slow.png"] = lambda h: (time.sleep(1.0), image(h))
    with pytest.raises(ImageError) as info:
        load_task_image("/data/slow.png", settings_for(ls, fetch_read_timeout_s=0.2))
    assert info.value.message == f"timed out fetching {ls.url}/data/slow.png (ReadTimeout)"


def test_connection_error_message_names_the_url_and_the_error():
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        settings = SimpleNamespace(allowed_image_hosts=("localhost",), allow_private_addresses=True)
        with pytest.raises(ImageError) as info:
            load_task_image(f"http://localhost:{port}/a.png?sig=1", settings)
    assert info.value.message.startswith(f"cannot fetch http://localhost:{port}/a.png?…: ConnectError: ")


def test_proxy_variables_in_the_environment_are_ignored(serve, monkeypatch):
    """A proxy would connect for us, past the address guard; the fetch goes direct whatever the environment says."""
    ls = serve()
    ls.routes["/data/a.png"] = image
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert load_task_image("/data/a.png", settings_for(ls)).size == (40, 30)


def test_pixel_limit_from_settings_reaches_the_decoder(serve):
    ls = serve()
    ls.routes["/data/a.png"] = image
    with pytest.raises(ImageError) as info:
        load_task_image("/data/a.png", settings_for(ls, image_max_pixels=40 * 30 - 1))
    assert info.value.reason == "too_large"


def test_a_given_label_studio_client_is_the_one_that_signs_requests(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = image

    class Client:
        def auth_headers(self):
            return {"Authorization": "Token from-the-caller"}

    assert load_task_image("/data/upload/1/a.png", settings_for(ls), ls_client=Client()).size == (40, 30)
    assert ls.requests[0][1]["authorization"] == "Token from-the-caller"


@pytest.mark.parametrize("retryable", [True, False])
def test_label_studio_authentication_failure_is_an_auth_error(serve, retryable: bool):
    from backend.labelstudio.client import LabelStudioError

    ls = serve()
    ls.routes["/data/upload/1/a.png"] = image

    class Failing:
        def auth_headers(self):
            raise LabelStudioError("token refresh answered 401", status=401, retryable=retryable)

    with pytest.raises(ImageError) as info:
        load_task_image("/data/upload/1/a.png", settings_for(ls), ls_client=Failing())
    assert (info.value.reason, info.value.retryable, info.value.message) == (
        "auth", retryable, "Label Studio authentication failed: token refresh answered 401")
    assert ls.requests == []


def test_missing_upload_message_names_the_upload_and_both_answers(serve):
    ls = serve()
    ls.routes["/data/upload/1/missing.png"] = lambda h: reply(h, 500, b"Server Error", "text/html")
    with pytest.raises(ImageError) as info:
        load_task_image("/data/upload/1/missing.png", settings_for(ls))
    assert info.value.message == f"Label Studio has no such file: {ls.url}/data/upload/1/missing.png (it answered 500, then 404)"


def test_an_api_key_without_label_studio_url_signs_nothing(serve):
    other = serve()
    other.routes["/a.png"] = image
    settings = SimpleNamespace(label_studio_api_key="orphan-key", allowed_image_hosts=("127.0.0.1",),
                               allow_private_addresses=True)
    assert load_task_image(f"{other.url}/a.png", settings).size == (40, 30)
    assert "authorization" not in other.requests[0][1]


def test_label_studio_url_with_a_trailing_slash_joins_cleanly(serve):
    ls = serve()
    ls.routes["/data/upload/1/a.png"] = image
    assert load_task_image("/data/upload/1/a.png", settings_for(ls, label_studio_url=ls.url + "/")).size == (40, 30)
    assert ls.paths() == ["/data/upload/1/a.png"]
