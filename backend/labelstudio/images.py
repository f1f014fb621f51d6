"""Resolve a task's image URL, fetch it without SSRF, and decode it safely into an RGB PIL image.

Data flows one way: ``resolve_image_url`` (pure) -> ``read_image_bytes`` (disk or guarded HTTP) ->
``decode_image`` (pure). ``load_task_image`` chains the three. Every failure a task can cause is an
``ImageError`` with a ``reason`` and a ``retryable`` flag, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import logging
import os
import re
import socket
import ssl
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, unquote_to_bytes, urljoin, urlsplit

import httpcore
import httpx
from PIL import Image, ImageOps

from backend.labelstudio.client import LabelStudioClient, LabelStudioError

log = logging.getLogger(__name__)

# Raster formats only: Pillow can also open EPS (runs Ghostscript), PDF, PSD and others we never want.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
LABEL_STUDIO_MEDIA_PATHS = r"/data/.+|/storage-data/.+|/(tasks|projects)/\d+/(presign|resolve)/?"

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_TOTAL_TIMEOUT_S = 120.0
DEFAULT_MAX_REDIRECTS = 5

Reason = Literal["invalid_url", "forbidden", "not_found", "unreachable", "too_large", "undecodable", "auth"]


class ImageError(Exception):
    """A task's image could not be used: bad URL, forbidden target, unreachable, too large or undecodable."""

    def __init__(
        self, message: str, *, reason: Reason = "undecodable", retryable: bool = False, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status  # the HTTP status that caused it, when there was one
        # retryable: a later attempt may succeed (timeouts, refused connections, 5xx), so RQ may retry.
        self.retryable = retryable


@dataclass(frozen=True)
class FetchPolicy:
    """Everything that decides where an image may come from and how much of it we accept."""

    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    local_files_root: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    total_timeout_s: float = DEFAULT_TOTAL_TIMEOUT_S
    max_redirects: int = DEFAULT_MAX_REDIRECTS

    @classmethod
    def from_settings(cls, settings: Any) -> FetchPolicy:
        """Return the policy read from a settings object (any object with the image-related attributes)."""

        def get(name: str, default: Any) -> Any:
            value = getattr(settings, name, None)
            return default if value is None or value == "" else value

        hosts = get("allowed_image_hosts", ())
        if isinstance(hosts, str):
            hosts = [h for h in hosts.split(",")]
        return cls(
            label_studio_url=(get("label_studio_url", None) or None),
            label_studio_api_key=(get("label_studio_api_key", None) or None),
            local_files_root=(get("local_files_document_root", None) or None),
            allowed_hosts=tuple(h.strip().lower() for h in hosts if h and h.strip()),
            allow_private=bool(get("allow_private_addresses", False)),
            max_bytes=int(get("image_max_bytes", DEFAULT_MAX_BYTES)),
            max_pixels=int(get("image_max_pixels", DEFAULT_MAX_PIXELS)),
            connect_timeout_s=float(get("fetch_connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S)),
            read_timeout_s=float(get("fetch_read_timeout_s", DEFAULT_READ_TIMEOUT_S)),
            total_timeout_s=float(get("fetch_total_timeout_s", DEFAULT_TOTAL_TIMEOUT_S)),
            max_redirects=int(get("fetch_max_redirects", DEFAULT_MAX_REDIRECTS)),
        )

    @property
    def label_studio_origin(self) -> tuple[str, str, int] | None:
        """Return (scheme, host, port) of Label Studio, or None when it is not configured."""
        return _origin(self.label_studio_url) if self.label_studio_url else None


@dataclass(frozen=True)
class ResolvedImage:
    """Where a task's image actually lives: a file under the local-files root, inline bytes, or URLs."""

    kind: Literal["file", "inline", "http"]
    path: Path | None = None
    data: bytes | None = None
    # Tried in order, the next one only when the previous answered 404 (Label Studio upload fallbacks).
    urls: tuple[str, ...] = ()
    # A presign endpoint redirects to the cloud provider, whose host is not in ALLOWED_IMAGE_HOSTS.
    trust_label_studio_redirects: bool = False


# --------------------------------------------------------------------------------------------------
# Resolution (pure)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise ImageError(f"invalid port in URL {url!r}", reason="invalid_url") from exc
    host = (parts.hostname or "").lower()
    return scheme, host, port or (443 if scheme == "https" else 80)


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _join_label_studio(policy: FetchPolicy, path_and_query: str, what: str) -> str:
    if not policy.label_studio_url:
        raise ImageError(
            f"{what} {path_and_query!r} is served by Label Studio; set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)",
            reason="invalid_url",
        )
    return policy.label_studio_url.rstrip("/") + "/" + path_and_query.lstrip("/")


def _local_file_path(root: str, query: str) -> Path:
    values = parse_qs(query, keep_blank_values=True).get("d")
    if not values or not values[0]:
        raise ImageError("local-files URL has no ?d= path", reason="invalid_url")
    relative = values[0]
    if "\x00" in relative:
        raise ImageError("local-files path contains a NUL byte", reason="forbidden")
    base = Path(root).resolve()
    # resolve() follows symlinks too, so a link pointing outside the root is caught like "../".
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        raise ImageError(f"local-files path {relative!r} escapes LOCAL_FILES_DOCUMENT_ROOT", reason="forbidden")
    return target


def _decode_data_uri(url: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("data: URI without a comma", reason="invalid_url")
    is_base64 = header.lower().endswith(";base64")
    # Checking the text first keeps a huge URI from being decoded at all: base64 inflates bytes by 4/3,
    # percent-encoding by up to 3 ("%XX" per byte).
    if len(payload) > (max_bytes * 4 // 3 + 4 if is_base64 else max_bytes * 3):
        raise ImageError(f"inline image is over the {max_bytes} byte limit", reason="too_large")
    if not is_base64:
        data = unquote_to_bytes(payload)
    else:
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"data: URI is not valid base64: {exc}", reason="invalid_url") from exc
    if len(data) > max_bytes:
        raise ImageError(f"inline image is over the {max_bytes} byte limit", reason="too_large")
    return data


def resolve_image_url(
    url: object, policy: FetchPolicy, *, task_id: int | None = None, project_id: int | None = None
) -> ResolvedImage:
    """Return where the image behind a task's URL lives, or raise ImageError for URLs we must not follow."""
    if not isinstance(url, str) or not url.strip():
        raise ImageError(f"image URL must be a non-empty string, got {url!r:.80}", reason="invalid_url")
    url = url.strip()
    if any(ch in url for ch in "\x00\r\n\t"):
        raise ImageError("image URL contains control characters", reason="invalid_url")
    lowered = url.lower()

    if lowered.startswith("data:"):
        return ResolvedImage(kind="inline", data=_decode_data_uri(url, policy.max_bytes))

    if any(lowered.startswith(scheme + ":") for scheme in CLOUD_SCHEMES):
        return ResolvedImage(
            kind="http",
            urls=(presign_url(url, policy, task_id=task_id, project_id=project_id),),
            trust_label_studio_redirects=True,
        )

    # Label Studio exports sometimes spell uploads without "/data" or without the leading slash.
    if lowered.startswith(("upload/", "/upload/")):
        url = "/data/" + url.lstrip("/")
    elif lowered.startswith(("data/upload/", "storage-data/")):
        url = "/" + url

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    ls_origin = policy.label_studio_origin
    if scheme in ("", "http", "https") and (parts.netloc or url.startswith("/")):
        is_ls = not parts.netloc or (ls_origin is not None and _origin(url) == ls_origin)
    else:
        is_ls = False

    if scheme == "file":
        raise ImageError("file:// URLs are never read; use Label Studio local-files storage", reason="forbidden")
    if scheme not in ("", "http", "https"):
        raise ImageError(f"unsupported URL scheme {scheme!r}", reason="forbidden")
    if not scheme and parts.netloc:
        raise ImageError(f"scheme-relative URLs are not fetched: {url!r:.120}", reason="invalid_url")
    if not scheme and not url.startswith("/"):
        raise ImageError(f"not a URL or Label Studio path: {url!r:.120}", reason="invalid_url")
    if scheme and not parts.hostname:
        raise ImageError(f"URL has no host: {url!r:.120}", reason="invalid_url")
    if parts.username or parts.password:
        raise ImageError("URLs with embedded credentials are not fetched", reason="forbidden")

    if is_ls:
        path = parts.path
        query = ("?" + parts.query) if parts.query else ""
        require_media_path(path)
        if path.rstrip("/") == "/data/local-files":
            if policy.local_files_root:
                return ResolvedImage(kind="file", path=_local_file_path(policy.local_files_root, parts.query))
            return ResolvedImage(kind="http", urls=(_join_label_studio(policy, path + query, "local-files URL"),))
        primary = _join_label_studio(policy, path + query, "path")
        if path.startswith("/data/upload/"):
            # Label Studio with a cloud default storage serves uploads only through its storage proxy.
            filepath = unquote(path[len("/data/") :])
            fallback = _join_label_studio(policy, "/storage-data/uploaded/?filepath=" + quote(filepath), "path")
            return ResolvedImage(kind="http", urls=(primary, fallback))
        return ResolvedImage(kind="http", urls=(primary,))

    host = parts.hostname or ""
    if not _host_matches(host, policy.allowed_hosts):
        raise ImageError(
            f"host {host!r} is neither Label Studio nor in ALLOWED_IMAGE_HOSTS", reason="forbidden"
        )
    return ResolvedImage(kind="http", urls=(url,))


def require_media_path(path: str) -> None:
    """Raise ImageError unless a Label Studio path is a media path (the only kind our requests may ask for).

    Requests to Label Studio carry its API key: only media paths, never its API (a task, or a redirect,
    could name an expensive export or a token endpoint as its "image").
    """
    segments = unquote(path).split("/")
    if not re.fullmatch(LABEL_STUDIO_MEDIA_PATHS, path) or ".." in segments:
        raise ImageError(f"Label Studio path {path!r:.120} is not a media path", reason="forbidden")


def presign_url(url: str, policy: FetchPolicy, *, task_id: int | None, project_id: int | None) -> str:
    """Return the Label Studio endpoint that redirects to (or proxies) a signed URL for a cloud object."""
    if not policy.label_studio_url:
        raise ImageError(
            f"cloud URL {url!r:.120} needs LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) to be presigned",
            reason="invalid_url",
        )
    if task_id is None and project_id is None:
        raise ImageError(f"cloud URL {url!r:.120} needs a task id or project id to be presigned", reason="invalid_url")
    return LabelStudioClient.presign_endpoint(policy.label_studio_url, url, task_id=task_id, project_id=project_id)


# --------------------------------------------------------------------------------------------------
# Network guard: the address check happens where the socket is opened, so it covers every redirect hop
# and DNS answers that change between a name check and the connection (rebinding).


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> bool:
    """Return whether an image may be fetched from this IP address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Link-local holds cloud metadata endpoints (169.254.169.254); no setting opens it.
    if ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    if ip.is_global:
        return True
    return allow_private


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, policy: FetchPolicy) -> None:
        self._inner = httpcore.SyncBackend()
        self._policy = policy
        origin = policy.label_studio_origin
        self._trusted = {(origin[1], origin[2])} if origin else set()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        host = host.decode() if isinstance(host, bytes) else host
        if (host.lower().strip("[]"), port) in self._trusted:
            # The operator pointed us at Label Studio; it may live on loopback or a private network.
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ImageError(f"cannot resolve host {host!r}: {exc}", reason="unreachable", retryable=True) from exc
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not address_allowed(ip, allow_private=self._policy.allow_private):
                raise ImageError(
                    f"host {host!r} resolves to {ip}, a non-public address; refused "
                    "(set ALLOW_PRIVATE_ADDRESSES=true to allow loopback/private networks)",
                    reason="forbidden",
                )
        last: Exception | None = None
        for address in addresses:
            try:
                # Connect to the address we checked, not the name, so DNS cannot change under us.
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~80 ms; one shared (thread-safe) context serves every fetch.
    return httpx.create_ssl_context()


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__(verify=_ssl_context(), trust_env=False, retries=0)
        # httpx 0.28 has no network_backend argument; its pool is replaced by one that uses our guard.
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=10,
            keepalive_expiry=5.0,
            network_backend=_GuardedBackend(policy),
        )


def guarded_client(policy: FetchPolicy) -> httpx.Client:
    """Return an httpx client that refuses non-public addresses at connect time and never follows redirects."""
    timeout = httpx.Timeout(
        connect=policy.connect_timeout_s,
        read=policy.read_timeout_s,
        write=policy.read_timeout_s,
        pool=policy.connect_timeout_s,
    )
    return httpx.Client(
        transport=_GuardedTransport(policy), timeout=timeout, follow_redirects=False, trust_env=False
    )


# --------------------------------------------------------------------------------------------------
# Reading bytes


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO placed under the root must not hang the worker; checked just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise ImageError(f"local path is not a regular file: {path.name}", reason="not_found")
            size = status.st_size
            if size > max_bytes:
                raise ImageError(f"local file is {size} bytes, over the {max_bytes} byte limit", reason="too_large")
            data = handle.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise ImageError(f"local file not found: {path.name}", reason="not_found") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"local path is a directory: {path.name}", reason="not_found") from exc
    except PermissionError as exc:
        raise ImageError(f"local file not readable: {path.name}", reason="forbidden") from exc
    if len(data) > max_bytes:
        raise ImageError(f"local file is over the {max_bytes} byte limit", reason="too_large")
    return data


def _check_hop(url: str, policy: FetchPolicy, *, trust_any_public_host: bool) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageError(f"redirect to a {scheme or 'relative'!r} URL refused", reason="forbidden")
    if not parts.hostname:
        raise ImageError("redirect to a URL without a host refused", reason="forbidden")
    if parts.username or parts.password:
        raise ImageError("URLs with embedded credentials are not fetched", reason="forbidden")
    origin = _origin(url)
    if origin == policy.label_studio_origin or trust_any_public_host:
        return origin
    if not _host_matches(origin[1], policy.allowed_hosts):
        raise ImageError(
            f"redirect to host {origin[1]!r} refused: neither Label Studio nor in ALLOWED_IMAGE_HOSTS",
            reason="forbidden",
        )
    return origin


def _describe_status(status: int, url: str, is_ls: bool) -> ImageError:
    where = "Label Studio" if is_ls else "image host"
    if status == 404:
        return ImageError(f"{where} answered 404 Not Found for {_redact(url)}", reason="not_found", status=404)
    if status in (401, 403):
        hint = " (check LABEL_STUDIO_API_KEY)" if is_ls else ""
        return ImageError(f"{where} refused access ({status}) to {_redact(url)}{hint}", reason="auth", status=status)
    if status >= 500 or status in (408, 429):
        return ImageError(
            f"{where} answered {status} for {_redact(url)}", reason="unreachable", retryable=True, status=status
        )
    return ImageError(f"{where} answered {status} for {_redact(url)}", reason="unreachable", status=status)


def _redact(url: str) -> str:
    # Presigned URLs carry credentials in their query string; never put those in errors or logs.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?…" if parts.query else "")


def _fetch_one(
    client: httpx.Client,
    url: str,
    policy: FetchPolicy,
    auth_headers: Callable[[], Mapping[str, str]] | None,
    *,
    trust_label_studio_redirects: bool,
    deadline: float,
) -> bytes:
    redirected_by_ls = False
    for _hop in range(policy.max_redirects + 1):
        origin = _check_hop(url, policy, trust_any_public_host=redirected_by_ls)
        is_ls = origin == policy.label_studio_origin
        if is_ls:  # every hop, redirects included, before the API key goes with it
            require_media_path(urlsplit(url).path)
        # No narrow Accept header: Label Studio's REST views answer 406 to "Accept: image/*".
        headers: dict[str, str] = {}
        if is_ls and auth_headers is not None:
            headers.update(auth_headers())
        try:
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise ImageError(f"redirect without Location from {_redact(url)}", reason="unreachable")
                    redirected_by_ls = is_ls and trust_label_studio_redirects
                    url = urljoin(url, location)
                    continue
                if response.status_code != 200:
                    raise _describe_status(response.status_code, url, is_ls)
                return _read_body(response, policy, deadline)
        except httpx.TimeoutException as exc:
            raise ImageError(
                f"timed out fetching {_redact(url)} ({type(exc).__name__})", reason="unreachable", retryable=True
            ) from exc
        except httpx.TransportError as exc:
            raise ImageError(
                f"cannot fetch {_redact(url)}: {type(exc).__name__}: {exc}", reason="unreachable", retryable=True
            ) from exc
    raise ImageError(f"more than {policy.max_redirects} redirects", reason="unreachable")


def _read_body(response: httpx.Response, policy: FetchPolicy, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise ImageError(
            f"image is {int(declared)} bytes, over the {policy.max_bytes} byte limit", reason="too_large"
        )
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_raw():
        total += len(chunk)
        if total > policy.max_bytes:
            raise ImageError(f"image is over the {policy.max_bytes} byte limit", reason="too_large")
        # A server that trickles one byte per read timeout would otherwise hold a worker forever.
        if time.monotonic() > deadline:
            raise ImageError(
                f"image download took over {policy.total_timeout_s:g} s", reason="unreachable", retryable=True
            )
        chunks.append(chunk)
    data = b"".join(chunks)
    content_type = response.headers.get("content-type", "")
    if not data:
        raise ImageError(f"empty response body (content-type {content_type or 'none'})", reason="undecodable")
    return data


@functools.lru_cache(maxsize=8)
def _cached_client(url: str, api_key: str) -> LabelStudioClient:
    # One client per credentials so a personal access token is exchanged once, not per image.
    return LabelStudioClient(url, api_key)


def read_image_bytes(
    resolved: ResolvedImage, policy: FetchPolicy, *, ls_client: LabelStudioClient | None = None
) -> bytes:
    """Return the raw bytes of a resolved image, enforcing the byte cap, timeouts and address policy."""
    if resolved.kind == "inline":
        assert resolved.data is not None
        return resolved.data
    if resolved.kind == "file":
        assert resolved.path is not None
        return _read_file(resolved.path, policy.max_bytes)

    if ls_client is None and policy.label_studio_url and policy.label_studio_api_key:
        ls_client = _cached_client(policy.label_studio_url, policy.label_studio_api_key)

    def auth_headers() -> Mapping[str, str]:
        if ls_client is None:
            return {}
        try:
            return ls_client.auth_headers()
        except LabelStudioError as exc:
            raise ImageError(f"Label Studio authentication failed: {exc}", reason="auth",
                             retryable=exc.retryable) from exc

    deadline = time.monotonic() + policy.total_timeout_s
    errors: list[ImageError] = []
    with guarded_client(policy) as client:
        for url in resolved.urls:
            try:
                return _fetch_one(
                    client,
                    url,
                    policy,
                    auth_headers,
                    trust_label_studio_redirects=resolved.trust_label_studio_redirects,
                    deadline=deadline,
                )
            except ImageError as exc:
                # Label Studio 1.23 answers 500 (not 404) for a missing file under /data/upload/.
                if (errors and exc.status not in (403, 404)) or (not errors and exc.status not in (404, 500)):
                    raise
                errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    # Both the upload path and the storage proxy said no (1.23: 500, then 403 for a file it does not know).
    answers = ", then ".join(str(error.status) for error in errors)
    raise ImageError(
        f"Label Studio has no such file: {_redact(resolved.urls[0])} (it answered {answers})", reason="not_found"
    )


# --------------------------------------------------------------------------------------------------
# Decoding (pure)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        # convert("L") clips 16-bit values at 255 (an almost white image); rescale to the full range instead.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        if mode == "F":
            low, high = float(np.nanmin(array)), float(np.nanmax(array))
            array = (array - low) / (high - low or 1.0) * 255.0
        else:
            array = array / top * 255.0
        gray = Image.fromarray(np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if (mode == "P" and "transparency" in image.info) or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels carry arbitrary colours; show them on white as Label Studio's canvas does.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return the image in ``data`` as an EXIF-upright RGB PIL image (first frame), or raise ImageError."""
    if not data:
        raise ImageError("image is empty (0 bytes)", reason="undecodable")
    try:
        # Silenced: Pillow warns about damaged files (and about its own global bomb limit, which the
        # configured check below replaces); the failures that matter are raised, not warned.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageError(f"image has no pixels ({width}x{height})", reason="undecodable")
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width}x{height} = {width * height} pixels, over the {max_pixels} pixel limit",
                    reason="too_large",
                )
            image.seek(0)
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb refused: {exc}", reason="too_large") from exc
    except Image.UnidentifiedImageError as exc:
        head = data[:64].lstrip().lower()
        hint = " (looks like HTML/text, not an image)" if head.startswith((b"<", b"{")) else ""
        raise ImageError(
            f"not a supported image ({', '.join(ALLOWED_FORMATS)}){hint}", reason="undecodable"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, struct.error...)
        raise ImageError(f"corrupt or truncated image: {type(exc).__name__}: {exc}", reason="undecodable") from exc

    try:
        with warnings.catch_warnings(record=True) as caught:
            upright = ImageOps.exif_transpose(image)
        for warning in caught:  # Pillow warns (not raises) about corrupt EXIF; a log line is enough
            log.warning("image EXIF: %s", warning.message)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block should not cost the whole image
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
        upright = image
    try:
        return _to_rgb(upright if upright is not None else image)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"cannot convert {image.mode} image to RGB: {exc}", reason="undecodable") from exc


# --------------------------------------------------------------------------------------------------


def load_task_image(
    url: str,
    settings: Any,
    *,
    task_id: int | None = None,
    project_id: int | None = None,
    ls_client: LabelStudioClient | None = None,
) -> Image.Image:
    """Return a task's image as an RGB, EXIF-upright PIL image, or raise ImageError saying why not."""
    policy = FetchPolicy.from_settings(settings)
    resolved = resolve_image_url(url, policy, task_id=task_id, project_id=project_id)
    data = read_image_bytes(resolved, policy, ls_client=ls_client)
    return decode_image(data, max_pixels=policy.max_pixels)
