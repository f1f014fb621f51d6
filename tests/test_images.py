"""Image URL resolution and safe decoding, over the committed bad-input corpus (tests/fixtures/bad_inputs)."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from backend.labelstudio import images
from backend.labelstudio.images import (
    FetchPolicy,
    ImageError,
    decode_image,
    load_task_image,
    resolve_image_url,
)
from backend.settings import Settings
from tests.fixtures import make_bad_inputs

CORPUS = Path(__file__).parent / "fixtures" / "bad_inputs"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
LS = "http://ls.test:8080"


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    """A LOCAL_FILES_DOCUMENT_ROOT with one image, a sub-folder and a symlink pointing outside it."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "ok.png").write_bytes((CORPUS / "ok_rgb.png").read_bytes())
    secret = tmp_path / "secret.png"
    secret.write_bytes((CORPUS / "ok_rgb.png").read_bytes())
    os.symlink(secret, root / "outside_link.png")
    return root


@pytest.fixture
def policy(local_root: Path) -> FetchPolicy:
    return FetchPolicy(
        label_studio_url=LS,
        label_studio_api_key="token",
        local_files_root=str(local_root),
        allowed_hosts=("images.example.com", "*.cdn.example.org"),
    )


def test_corpus_on_disk_matches_its_generator():
    """The committed files are exactly what tests/fixtures/make_bad_inputs.py writes (reproducible corpus)."""
    built = make_bad_inputs.build()
    assert set(built) == set(MANIFEST["images"])
    for name, (data, expected) in built.items():
        assert (CORPUS / name).read_bytes() == data, name
        assert MANIFEST["images"][name] == expected
    assert len(built) + len(MANIFEST["urls"]) >= 40


@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
def test_corpus_image_decodes_or_fails_clearly(name: str):
    expected = MANIFEST["images"][name]
    data = (CORPUS / name).read_bytes()
    if "ok" in expected:
        image = decode_image(data)
        assert image.mode == "RGB"
        assert list(image.size) == expected["ok"]
        np.asarray(image)  # pixels are really there
    else:
        with pytest.raises(ImageError) as info:
            decode_image(data)
        assert info.value.reason == expected["error"], info.value.message
        assert info.value.message and not info.value.retryable


def test_exif_rotation_makes_the_image_upright():
    stored = Image.open(CORPUS / "exif_rotated.jpg")
    assert stored.size == (40, 30)
    upright = decode_image((CORPUS / "exif_rotated.jpg").read_bytes())
    assert upright.size == (30, 40)
    # The gradient's left column (red=0) ends up on top after a 90 degree clockwise turn.
    pixels = np.asarray(upright).astype(int)
    assert pixels[0, :, 0].mean() < pixels[-1, :, 0].mean()


def test_sixteen_bit_png_keeps_its_range_instead_of_clipping_to_white():
    rgb = np.asarray(decode_image((CORPUS / "gray16.png").read_bytes()))
    source = np.asarray(Image.open(CORPUS / "gray16.png")).astype(np.float64)
    assert (rgb[..., 0] == rgb[..., 1]).all()
    assert rgb.max() < 255 or source.max() >= 65535  # not clipped
    assert np.corrcoef(rgb[..., 0].ravel(), source.ravel())[0, 1] > 0.99


def test_transparent_pixels_become_white_not_black():
    rgb = np.asarray(decode_image((CORPUS / "palette_transparency.png").read_bytes()))
    palette = Image.open(CORPUS / "palette_transparency.png")
    transparent = np.asarray(palette) == palette.info["transparency"]
    assert transparent.any()
    assert (rgb[transparent] == 255).all()


def test_animated_gif_gives_its_first_frame():
    rgb = np.asarray(decode_image((CORPUS / "animated.gif").read_bytes()))
    assert tuple(rgb[0, 0]) == (255, 0, 0)


def test_cmyk_jpeg_is_converted_to_rgb():
    rgb = np.asarray(decode_image((CORPUS / "cmyk.jpg").read_bytes())).astype(int)
    reference = np.asarray(decode_image((CORPUS / "ok_rgb.jpg").read_bytes())).astype(int)
    assert np.abs(rgb - reference).mean() < 20


def test_pixel_limit_is_configurable():
    data = (CORPUS / "ok_rgb.png").read_bytes()
    assert decode_image(data, max_pixels=40 * 30).size == (40, 30)
    with pytest.raises(ImageError, match="pixel limit") as info:
        decode_image(data, max_pixels=40 * 30 - 1)
    assert info.value.reason == "too_large"


def test_html_error_page_is_named_as_such():
    with pytest.raises(ImageError, match="HTML"):
        decode_image((CORPUS / "html_as_image.png").read_bytes())


def test_pillow_global_bomb_limit_is_left_untouched():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        decode_image((CORPUS / "bomb_header_100000x100000.png").read_bytes())
    assert Image.MAX_IMAGE_PIXELS == before


# ----------------------------------------------------------------------------------------- resolution


# Plain ids (mutmut selects each test by node id; "::", brackets, blanks and control characters break that).
@pytest.mark.parametrize("case", MANIFEST["urls"],
                         ids=lambda case: re.sub(r"[^A-Za-z0-9._/-]", "_", case["url"][:40]) or "empty")
def test_corpus_url_is_refused_with_a_reason(case: dict, policy: FetchPolicy):
    with pytest.raises(ImageError) as info:
        resolved = resolve_image_url(case["url"], policy)
        # Only local files may get past resolution here; an http target would mean a fetch was allowed.
        assert resolved.kind == "file", f"{case['url']!r} resolved to {resolved}"
        images.read_image_bytes(resolved, policy)
    assert info.value.reason == case["error"], info.value.message


def test_non_string_urls_are_refused(policy: FetchPolicy):
    for value in (None, 42, ["a"], {"url": "x"}, b"/data/upload/1/a.png"):
        with pytest.raises(ImageError) as info:
            resolve_image_url(value, policy)
        assert info.value.reason == "invalid_url"


def test_upload_paths_go_to_label_studio_with_a_storage_proxy_fallback(policy: FetchPolicy):
    for url in ("/data/upload/3/a b.png", "data/upload/3/a b.png", "upload/3/a b.png", "/upload/3/a b.png"):
        resolved = resolve_image_url(url, policy)
        assert resolved.kind == "http"
        assert resolved.urls == (
            LS + "/data/upload/3/a b.png",
            LS + "/storage-data/uploaded/?filepath=upload/3/a%20b.png",
        )


def test_absolute_label_studio_urls_are_recognised(policy: FetchPolicy):
    resolved = resolve_image_url(LS + "/data/upload/1/x.jpg", policy)
    assert resolved.urls[0] == LS + "/data/upload/1/x.jpg"
    # An absolute local-files URL on Label Studio is read from disk when the root is shared.
    resolved = resolve_image_url(LS + "/data/local-files/?d=images/ok.png", policy)
    assert resolved.kind == "file"


def test_label_studio_paths_without_label_studio_url_say_what_to_set():
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL") as info:
        resolve_image_url("/data/upload/1/a.png", FetchPolicy())
    assert info.value.reason == "invalid_url"


def test_local_files_are_read_from_the_document_root(policy: FetchPolicy, local_root: Path):
    image = load_task_image(
        "/data/local-files/?d=images%2Fok.png",
        SimpleNamespace(local_files_document_root=str(local_root)),
    )
    assert image.size == (40, 30)
    resolved = resolve_image_url("/data/local-files/?d=images/ok.png", policy)
    assert resolved.path == (local_root / "images" / "ok.png").resolve()


def test_local_files_without_root_are_fetched_through_label_studio():
    resolved = resolve_image_url("/data/local-files/?d=images/ok.png", FetchPolicy(label_studio_url=LS))
    assert resolved.kind == "http" and resolved.urls == (LS + "/data/local-files/?d=images/ok.png",)


def test_local_fifo_or_device_is_refused_without_blocking(local_root: Path):
    os.mkfifo(local_root / "images" / "pipe.png")  # opening it for reading would block forever
    settings = SimpleNamespace(local_files_document_root=str(local_root))
    with pytest.raises(ImageError, match="not a regular file"):
        load_task_image("/data/local-files/?d=images/pipe.png", settings)


def test_local_file_over_the_byte_limit_is_refused_before_reading(local_root: Path):
    settings = SimpleNamespace(local_files_document_root=str(local_root), image_max_bytes=100)
    with pytest.raises(ImageError, match="byte limit") as info:
        load_task_image("/data/local-files/?d=images/ok.png", settings)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("uri", ["s3://bucket/dir/a.jpg", "gs://bucket/a.jpg", "azure-blob://container/a.jpg"])
def test_cloud_uris_go_through_label_studio_presign(uri: str, policy: FetchPolicy):
    resolved = resolve_image_url(uri, policy, task_id=17)
    encoded = base64.urlsafe_b64encode(uri.encode()).decode()
    assert resolved.urls == (f"{LS}/tasks/17/presign/?fileuri={encoded}",)
    assert resolved.trust_label_studio_redirects
    by_project = resolve_image_url(uri, policy, project_id=4)
    assert by_project.urls == (f"{LS}/projects/4/presign/?fileuri={encoded}",)
    with pytest.raises(ImageError, match="task id"):
        resolve_image_url(uri, policy)
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        resolve_image_url(uri, FetchPolicy(), task_id=1)


def test_allowed_hosts_exact_and_wildcard(policy: FetchPolicy):
    assert resolve_image_url("https://images.example.com/a.png", policy).urls == ("https://images.example.com/a.png",)
    assert resolve_image_url("https://a.b.cdn.example.org/x", policy).kind == "http"
    for url in ("https://cdn.example.org.evil.com/x", "https://example.com/x", "https://xcdn.example.org/x"):
        with pytest.raises(ImageError) as info:
            resolve_image_url(url, policy)
        assert info.value.reason == "forbidden"
    anything = FetchPolicy(allowed_hosts=("*",))
    assert resolve_image_url("https://anything.example/x.png", anything).kind == "http"


def test_data_uris_are_decoded_with_the_byte_cap():
    data = (CORPUS / "ok_rgb.png").read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert load_task_image(uri, SimpleNamespace()).size == (40, 30)
    with pytest.raises(ImageError) as info:
        load_task_image(uri, SimpleNamespace(image_max_bytes=len(data) - 1))
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    ("address", "private_ok", "expected"),
    [
        ("8.8.8.8", False, True),
        ("2001:4860:4860::8888", False, True),
        ("127.0.0.1", False, False),
        ("127.0.0.1", True, True),
        ("10.1.2.3", False, False),
        ("192.168.0.1", True, True),
        ("100.64.0.1", False, False),
        ("::1", False, False),
        ("::ffff:127.0.0.1", False, False),
        ("::ffff:8.8.8.8", False, True),
        ("fd00::1", False, False),
        ("169.254.169.254", True, False),
        ("fe80::1", True, False),
        ("0.0.0.0", True, False),
        ("224.0.0.1", True, False),
    ],
)
def test_address_policy(address: str, private_ok: bool, expected: bool):
    assert images.address_allowed(ipaddress.ip_address(address), allow_private=private_ok) is expected


def test_policy_reads_the_real_settings_class(local_root: Path):
    settings = Settings.from_env(
        {
            "LABEL_STUDIO_URL": LS,
            "LABEL_STUDIO_API_KEY": "abc",
            "LOCAL_FILES_DOCUMENT_ROOT": str(local_root),
            "ALLOWED_IMAGE_HOSTS": "images.example.com, Other.Example.org",
            "ALLOW_PRIVATE_ADDRESSES": "true",
            "IMAGE_MAX_BYTES": "1234",
            "IMAGE_MAX_PIXELS": "5678",
            "FETCH_CONNECT_TIMEOUT_S": "1.5",
            "FETCH_READ_TIMEOUT_S": "2.5",
        }
    )
    policy = FetchPolicy.from_settings(settings)
    assert policy.label_studio_origin == ("http", "ls.test", 8080)
    assert policy.allowed_hosts == ("images.example.com", "other.example.org")
    assert policy.allow_private and policy.max_bytes == 1234 and policy.max_pixels == 5678
    assert (policy.connect_timeout_s, policy.read_timeout_s) == (1.5, 2.5)
    assert policy.local_files_root == str(local_root)
    defaults = FetchPolicy.from_settings(Settings.from_env({}))
    assert defaults.label_studio_url is None and not defaults.allow_private and defaults.allowed_hosts == ()


# ----------------------------------------------------------------------------------------- fuzz

URL_PIECES = st.sampled_from(["http://", "https://", "file://", "s3://", "data:", "/data/upload/", "/data/local-files/?d=",
                              "..", "/", "%2e%2e%2f", "%00", "@", ":", "[::1]", "127.0.0.1", "images.example.com",
                              "ls.test:8080", "?", "#", "\\", " ", "é"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=80), st.lists(URL_PIECES, max_size=8).map("".join)))
def test_any_string_resolves_safely_or_raises_image_error(policy: FetchPolicy, text: str):
    try:
        resolved = resolve_image_url(text, policy)
    except ImageError as exc:
        assert exc.reason in ("invalid_url", "forbidden", "not_found", "too_large")
        return
    if resolved.kind == "file":
        assert resolved.path.is_relative_to(Path(policy.local_files_root).resolve())
    elif resolved.kind == "http":
        for url in resolved.urls:
            origin = images._origin(url)
            assert origin == policy.label_studio_origin or images._host_matches(origin[1], policy.allowed_hosts)


OK_FILES = sorted(name for name, expected in MANIFEST["images"].items() if "ok" in expected and "100000" not in name)


@st.composite
def mutated_images(draw) -> bytes:
    """A valid corpus image with a few bytes overwritten and maybe cut short."""
    data = bytearray((CORPUS / draw(st.sampled_from(OK_FILES))).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.binary(max_size=1024), mutated_images()))
def test_any_bytes_decode_or_raise_image_error(data: bytes):
    try:
        image = decode_image(data)
    except ImageError as exc:
        assert exc.reason in ("undecodable", "too_large")
    else:
        assert image.mode == "RGB"


# ----------------------------------------------------------------------------------------- exact conversions
# Every non-RGB mode ends up as RGB with values computed here by hand: 16-bit and 32-bit integers scale from
# 0..65535 (or 0..255 when no value is above 255) to 0..255, truncated; float images stretch min..max to
# 0..255 (NaN as 0); transparency is composited on white.


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _gray(data: bytes) -> list[int]:
    rgb = np.asarray(decode_image(data)).astype(int)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0].ravel().tolist()


def test_sixteen_bit_values_scale_by_65535():
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    # v / 65535 * 255, truncated: 63.75 -> 63, 127.50 -> 127.
    assert _gray(_encoded(image)) == [0, 63, 127, 255]


@pytest.mark.parametrize(("values", "expected"), [([0, 100, 255, 256], [0, 0, 0, 0]), ([0, 100, 200, 255], [0, 100, 200, 255])])
def test_thirty_two_bit_integers_scale_by_255_or_65535(values, expected):
    image = Image.fromarray(np.array([values], dtype=np.int32), mode="I")
    if max(values) > 255:  # 0..65535 range: 100 -> 0.39, 255 -> 0.99, 256 -> 0.996, all truncated to 0
        assert _gray(_encoded(image, "TIFF")) == expected
    else:  # 0..255 range: unchanged
        assert _gray(_encoded(image, "TIFF")) == expected
    big = Image.fromarray(np.array([[0, 1000, 65535, 32768]], dtype=np.int32), mode="I")
    assert _gray(_encoded(big, "TIFF")) == [0, 3, 255, 127]  # 3.89 -> 3, 127.5 -> 127


def test_float_images_stretch_their_own_range():
    image = Image.fromarray(np.array([[2.0, 3.0, 4.0, 6.0]], dtype=np.float32), mode="F")
    assert _gray(_encoded(image, "TIFF")) == [0, 63, 127, 255]  # (v - 2) / 4 * 255: 63.75, 127.5
    flat = Image.fromarray(np.full((1, 3), 5.0, dtype=np.float32), mode="F")
    assert _gray(_encoded(flat, "TIFF")) == [0, 0, 0]
    negative = Image.fromarray(np.array([[-6.0, -4.0, -2.0]], dtype=np.float32), mode="F")
    assert _gray(_encoded(negative, "TIFF")) == [0, 127, 255]
    with_nan = Image.fromarray(np.array([[np.nan, 1.0, 3.0]], dtype=np.float32), mode="F")
    assert _gray(_encoded(with_nan, "TIFF")) == [0, 0, 255]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode):
    if mode == "RGBA":
        pixels = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 0, 100, 255]]], dtype=np.uint8)
        expected = [[10, 20, 30], [255, 255, 255], [200, 0, 100]]
    else:
        pixels = np.array([[[40, 255], [40, 0], [90, 255]]], dtype=np.uint8)
        expected = [[40, 40, 40], [255, 255, 255], [90, 90, 90]]
    image = Image.fromarray(pixels, mode=mode)
    assert np.asarray(decode_image(_encoded(image))).tolist() == [expected]


def test_palette_without_transparency_keeps_its_colours():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    assert "transparency" not in Image.open(__import__("io").BytesIO(_encoded(image))).info
    assert np.asarray(decode_image(_encoded(image))).tolist() == [[[255, 0, 0], [0, 0, 255]]]


# ----------------------------------------------------------------------------------------- exact errors


@pytest.mark.parametrize(
    ("status", "is_ls", "reason", "retryable", "message"),
    [
        (404, True, "not_found", False, "Label Studio answered 404 Not Found for http://ls.test:8080/data/a.png?…"),
        (404, False, "not_found", False, "image host answered 404 Not Found for http://ls.test:8080/data/a.png?…"),
        (401, True, "auth", False,
         "Label Studio refused access (401) to http://ls.test:8080/data/a.png?… (check LABEL_STUDIO_API_KEY)"),
        (403, False, "auth", False, "image host refused access (403) to http://ls.test:8080/data/a.png?…"),
        (408, False, "unreachable", True, "image host answered 408 for http://ls.test:8080/data/a.png?…"),
        (429, True, "unreachable", True, "Label Studio answered 429 for http://ls.test:8080/data/a.png?…"),
        (500, True, "unreachable", True, "Label Studio answered 500 for http://ls.test:8080/data/a.png?…"),
        (499, False, "unreachable", False, "image host answered 499 for http://ls.test:8080/data/a.png?…"),
        (409, False, "unreachable", False, "image host answered 409 for http://ls.test:8080/data/a.png?…"),
        (430, False, "unreachable", False, "image host answered 430 for http://ls.test:8080/data/a.png?…"),
    ],
)
def test_http_statuses_become_errors_with_exact_messages(status, is_ls, reason, retryable, message):
    error = images._describe_status(status, LS + "/data/a.png?X-Amz-Signature=secret", is_ls)
    assert (error.reason, error.retryable, error.status, error.message) == (reason, retryable, status, message)


def test_redacted_urls_keep_no_query_and_mark_only_a_real_one():
    assert images._redact("https://b.example/k/a.png?sig=1") == "https://b.example/k/a.png?…"
    assert images._redact("https://b.example/k/a.png") == "https://b.example/k/a.png"


def test_local_file_errors_say_what_and_why(local_root: Path):
    with pytest.raises(ImageError) as info:
        images._read_file(local_root / "images" / "missing.png", 1000)
    assert (info.value.reason, info.value.message) == ("not_found", "local file not found: missing.png")
    with pytest.raises(ImageError) as info:
        images._read_file(local_root / "images", 1000)
    assert info.value.reason == "not_found" and info.value.message in (
        "local path is a directory: images", "local path is not a regular file: images")
    os.mkfifo(local_root / "images" / "pipe.png")
    with pytest.raises(ImageError) as info:
        images._read_file(local_root / "images" / "pipe.png", 1000)
    assert (info.value.reason, info.value.message) == ("not_found", "local path is not a regular file: pipe.png")


def test_local_file_byte_limit_is_inclusive(local_root: Path):
    path = local_root / "images" / "ok.png"
    size = path.stat().st_size
    assert images._read_file(path, size) == path.read_bytes()
    with pytest.raises(ImageError) as info:
        images._read_file(path, size - 1)
    assert (info.value.reason, info.value.message) == (
        "too_large", f"local file is {size} bytes, over the {size - 1} byte limit")


def test_data_uri_limits_and_encodings():
    data = (CORPUS / "ok_rgb.png").read_bytes()
    encoded = base64.b64encode(data).decode()
    # Percent-encoded (no ";base64"), every byte as "%XX": three characters per byte, still within the cap.
    quoted = "".join(f"%{b:02X}" for b in data)
    assert images._decode_data_uri("data:image/png," + quoted, len(data)) == data
    assert images._decode_data_uri("data:image/png;BASE64," + encoded, len(data)) == data
    with pytest.raises(ImageError) as info:
        images._decode_data_uri("data:image/png," + quoted, len(data) - 1)
    assert info.value.reason == "too_large"
    # Exactly at the byte cap: accepted (the text check allows len * 4 / 3 plus padding).
    assert images._decode_data_uri("data:image/png;base64," + encoded, len(data)) == data
    # Text longer than the cap allows is refused before decoding, even when it is not base64 at all.
    limit = len(data) * 4 // 3 + 4
    for length in (limit + 1, limit * 2):
        with pytest.raises(ImageError) as info:
            images._decode_data_uri("data:image/png;base64," + "!" * length, len(data))
        assert (info.value.reason, info.value.message) == ("too_large", f"inline image is over the {len(data)} byte limit")
    with pytest.raises(ImageError) as info:
        images._decode_data_uri("data:image/png;base64," + "!" * limit, len(data))
    assert info.value.reason == "invalid_url" and info.value.message.startswith("data: URI is not valid base64: ")
    # Characters outside the base64 alphabet are an error, not silently skipped.
    with pytest.raises(ImageError) as info:
        images._decode_data_uri("data:image/png;base64," + encoded[:8] + "*" + encoded[8:], len(data))
    assert info.value.reason == "invalid_url"
    # Without ";base64" the payload is percent-encoded bytes; commas after the first belong to the payload.
    from urllib.parse import quote_from_bytes

    assert images._decode_data_uri("data:image/png," + quote_from_bytes(data), 3 * len(data)) == data
    assert images._decode_data_uri("data:text/plain,a,b", 10) == b"a,b"
    with pytest.raises(ImageError) as info:
        images._decode_data_uri("data:image/png;base64", 10)
    assert (info.value.reason, info.value.message) == ("invalid_url", "data: URI without a comma")
    with pytest.raises(ImageError) as info:
        images._decode_data_uri("data:image/png;base64," + encoded, len(data) - 1)
    assert (info.value.reason, info.value.message) == ("too_large", f"inline image is over the {len(data) - 1} byte limit")


SUPPORTED = "not a supported image (JPEG, PNG, GIF, WEBP, BMP, TIFF)"


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX", "TGA", "SGI", "IM"])
def test_formats_pillow_could_read_but_we_do_not_accept_are_refused(fmt):
    """Only the six raster formats are opened; Pillow would read these (and EPS, PDF, PSD...) if asked."""
    from io import BytesIO

    buffer = BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format=fmt)
    with pytest.raises(ImageError) as info:
        decode_image(buffer.getvalue())
    assert (info.value.reason, info.value.message) == ("undecodable", SUPPORTED)


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"<html><body>Login</body></html>", True),
        (b" \r\n\t<!DOCTYPE html><html></html>", True),
        (b'{"detail": "Not found."}', True),
        (b"\n  [1, 2, 3]", False),
        (b"GIF-ish but not an image at all", False),
    ],
)
def test_unsupported_bytes_hint_at_html_or_json_only_when_they_look_like_it(data: bytes, hint: bool):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    expected = SUPPORTED + (" (looks like HTML/text, not an image)" if hint else "")
    assert (info.value.reason, info.value.message) == ("undecodable", expected)


def test_decode_error_messages_are_exact():
    with pytest.raises(ImageError) as info:
        decode_image(b"")
    assert (info.value.reason, info.value.message) == ("undecodable", "image is empty (0 bytes)")
    with pytest.raises(ImageError) as info:
        decode_image((CORPUS / "truncated.png").read_bytes())
    assert info.value.message == "corrupt or truncated image: OSError: image file is truncated"
    with pytest.raises(ImageError) as info:
        decode_image((CORPUS / "ok_rgb.png").read_bytes(), max_pixels=40 * 30 - 1)
    assert info.value.message == "image is 40x30 = 1200 pixels, over the 1199 pixel limit"


def test_local_files_url_errors_are_exact(policy: FetchPolicy):
    cases = [
        ("/data/local-files/?d=", "invalid_url", "local-files URL has no ?d= path"),
        ("/data/local-files/", "invalid_url", "local-files URL has no ?d= path"),
        ("/data/local-files/?d=images/a%00.png", "forbidden", "local-files path contains a NUL byte"),
        ("/data/local-files/?d=../secret.png", "forbidden",
         "local-files path '../secret.png' escapes LOCAL_FILES_DOCUMENT_ROOT"),
    ]
    for url, reason, message in cases:
        with pytest.raises(ImageError) as info:
            resolve_image_url(url, policy)
        assert (info.value.reason, info.value.message) == (reason, message), url


def test_cloud_uri_without_label_studio_is_an_invalid_url():
    with pytest.raises(ImageError) as info:
        resolve_image_url("s3://bucket/a.png", FetchPolicy(), task_id=1)
    assert info.value.reason == "invalid_url"


def test_a_host_name_with_its_trailing_dot_is_the_same_host(policy: FetchPolicy):
    assert resolve_image_url("https://images.example.com./a.png", policy).kind == "http"
    assert resolve_image_url("https://x.cdn.example.org./a.png", policy).kind == "http"


def test_policy_reads_each_setting_alone():
    defaults = FetchPolicy()
    cases = {
        "label_studio_url": ("http://ls.test", "label_studio_url", "http://ls.test"),
        "label_studio_api_key": ("k", "label_studio_api_key", "k"),
        "local_files_document_root": ("/srv", "local_files_root", "/srv"),
        "allow_private_addresses": (True, "allow_private", True),
        "image_max_bytes": (7, "max_bytes", 7),
        "image_max_pixels": (8, "max_pixels", 8),
        "fetch_connect_timeout_s": (1.25, "connect_timeout_s", 1.25),
        "fetch_read_timeout_s": (2.25, "read_timeout_s", 2.25),
        "fetch_total_timeout_s": (3.25, "total_timeout_s", 3.25),
        "fetch_max_redirects": (2, "max_redirects", 2),
    }
    for setting, (value, field_name, expected) in cases.items():
        policy = FetchPolicy.from_settings(SimpleNamespace(**{setting: value}))
        assert getattr(policy, field_name) == expected, setting
        assert getattr(FetchPolicy.from_settings(SimpleNamespace(**{setting: ""})), field_name) == getattr(
            defaults, field_name), setting
        others = {name: getattr(policy, name) for name in FetchPolicy.__dataclass_fields__ if name != field_name}
        assert others == {name: getattr(defaults, name) for name in others}, setting


def test_allowed_hosts_from_a_comma_separated_string():
    policy = FetchPolicy.from_settings(SimpleNamespace(allowed_image_hosts=" Images.Example.com, ,*.cdn.example.org,,"))
    assert policy.allowed_hosts == ("images.example.com", "*.cdn.example.org")
    assert FetchPolicy.from_settings(SimpleNamespace(allowed_image_hosts="a.example")).allowed_hosts == ("a.example",)


def test_invalid_port_is_named():
    with pytest.raises(ImageError) as info:
        resolve_image_url("http://ls.test:99999/data/upload/1/a.png", FetchPolicy(label_studio_url=LS))
    assert (info.value.reason, info.value.message) == (
        "invalid_url", "invalid port in URL 'http://ls.test:99999/data/upload/1/a.png'")


@pytest.mark.parametrize(
    ("url", "reason", "message"),
    [
        ("", "invalid_url", "image URL must be a non-empty string, got ''"),
        ("/data/upload/1/a\n.png", "invalid_url", "image URL contains control characters"),
        ("file:///etc/passwd", "forbidden", "file:// URLs are never read; use Label Studio local-files storage"),
        ("ftp://images.example.com/a.png", "forbidden", "unsupported URL scheme 'ftp'"),
        ("//images.example.com/a.png", "invalid_url", "scheme-relative URLs are not fetched: '//images.example.com/a.png'"),
        ("a.png", "invalid_url", "not a URL or Label Studio path: 'a.png'"),
        ("http:///a.png", "invalid_url", "URL has no host: 'http:///a.png'"),
        ("https://user@images.example.com/a.png", "forbidden", "URLs with embedded credentials are not fetched"),
        ("https://:pw@images.example.com/a.png", "forbidden", "URLs with embedded credentials are not fetched"),
        ("https://evil.example.net/a.png", "forbidden",
         "host 'evil.example.net' is neither Label Studio nor in ALLOWED_IMAGE_HOSTS"),
    ],
)
def test_refused_urls_say_why(url: str, reason: str, message: str, policy: FetchPolicy):
    with pytest.raises(ImageError) as info:
        resolve_image_url(url, policy)
    assert (info.value.reason, info.value.message) == (reason, message)


@pytest.mark.parametrize(
    ("url", "what"),
    [("/data/local-files/?d=a.png", "local-files URL"), ("/data/upload/1/a.png", "path"),
     ("/storage-data/uploaded/?filepath=a.png", "path")],
)
def test_label_studio_paths_without_its_url_name_what_they_are(url: str, what: str):
    with pytest.raises(ImageError) as info:
        resolve_image_url(url, FetchPolicy())
    assert info.value.message == (
        f"{what} {url!r} is served by Label Studio; set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)")


def test_label_studio_paths_resolve_to_http_urls(policy: FetchPolicy):
    for url in ("storage-data/uploaded/?filepath=a.png", "/storage-data/uploaded/?filepath=a.png"):
        resolved = resolve_image_url(url, policy)
        assert (resolved.kind, resolved.urls) == ("http", (LS + "/storage-data/uploaded/?filepath=a.png",))
    assert resolve_image_url("s3://bucket/a.png", policy, task_id=1).kind == "http"


@pytest.mark.parametrize(
    ("label_studio", "url"),
    [("https://ls.test", "https://ls.test:443/data/upload/1/a.png"),
     ("http://ls.test", "http://ls.test:80/data/upload/1/a.png"),
     ("https://ls.test:443", "HTTPS://LS.test/data/upload/1/a.png")],
)
def test_label_studio_is_recognised_by_origin_with_default_ports(label_studio: str, url: str):
    resolved = resolve_image_url(url, FetchPolicy(label_studio_url=label_studio))
    assert len(resolved.urls) == 2  # the upload path and its storage-proxy fallback: treated as Label Studio


@pytest.mark.parametrize(("label_studio", "url"), [("https://ls.test", "http://ls.test:443/data/upload/1/a.png"),
                                                  ("http://ls.test", "https://ls.test:80/data/upload/1/a.png"),
                                                  ("https://ls.test", "https://ls.test:80/data/upload/1/a.png")])
def test_same_host_on_another_port_or_scheme_is_not_label_studio(label_studio: str, url: str):
    with pytest.raises(ImageError) as info:
        resolve_image_url(url, FetchPolicy(label_studio_url=label_studio))
    assert info.value.reason == "forbidden"


def test_sixteen_bit_images_scale_by_65535_even_when_every_value_is_small():
    image = Image.fromarray(np.array([[0, 200, 255]], dtype=np.uint16))
    assert image.mode.startswith("I;16")
    assert _gray(_encoded(image)) == [0, 0, 0]  # 255 / 65535 * 255 = 0.99: dark, not white


def test_thirty_two_bit_values_outside_the_sixteen_bit_range_are_clipped():
    image = Image.fromarray(np.array([[-5000, 0, 65535, 200000]], dtype=np.int32), mode="I")
    assert _gray(_encoded(image, "TIFF")) == [0, 0, 255, 255]
