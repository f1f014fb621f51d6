"""Brush RLE: byte-identical to the SDK's mask2rle, decodes back, rejects bad input clearly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle
from label_studio_sdk.converter.brush import mask2rle

from gem_engine.rle import decode_rle, decode_rle_values, encode_rle


def _sdk(mask: np.ndarray) -> list[int]:
    return mask2rle(mask.astype(np.uint8) * 255 if mask.dtype == np.bool_ else mask)


def _check(mask: np.ndarray) -> list[int]:
    ours = encode_rle(mask)
    assert ours == _sdk(mask)
    assert all(type(v) is int for v in ours)
    height, width = mask.shape
    assert np.array_equal(decode_rle(ours, height, width), mask.astype(bool))
    return ours


shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, shapes))
def test_random_bool_masks_match_sdk(mask):
    _check(mask)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, shapes, elements=st.sampled_from([0, 1, 7, 128, 255])))
def test_uint8_masks_keep_their_values_like_sdk(mask):
    ours = encode_rle(mask)
    assert ours == mask2rle(mask)
    values = decode_rle_values(ours).reshape(*mask.shape, 4)
    assert np.array_equal(values[..., 3], mask)


@st.composite
def run_masks(draw):
    """Masks built from a few long runs, so that run lengths cross every size class and 65536."""
    width = draw(st.integers(1, 700))
    # 16384 pixels = 65536 values: lengths near its multiples leave tiny last pieces after splitting.
    near_split = st.builds(lambda k, d: max(1, 16384 * k + d), st.integers(1, 3), st.integers(-70, 70))
    runs = draw(st.lists(st.one_of(st.integers(1, 40_000), near_split), min_size=1, max_size=6))
    flat = np.concatenate([np.full(n, i % 2, dtype=bool) for i, n in enumerate(runs)])
    pad = (-flat.size) % width
    flat = np.concatenate([flat, np.zeros(pad, dtype=bool)])
    return flat.reshape(-1, width)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_masks())
def test_long_runs_match_sdk(mask):
    _check(mask)


@st.composite
def line_masks(draw):
    """1xN and Nx1 masks up to 20000 pixels with sparse set pixels (long runs between them)."""
    length = draw(st.integers(1, 20_000))
    hits = draw(st.lists(st.integers(0, length - 1), max_size=8))
    flat = np.zeros(length, dtype=bool)
    flat[hits] = True
    if draw(st.booleans()):
        flat = ~flat
    return flat.reshape(1, -1) if draw(st.booleans()) else flat.reshape(-1, 1)


@settings(max_examples=40, deadline=None)
@given(line_masks())
def test_1xn_and_nx1_masks_match_sdk(mask):
    _check(mask)


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
        np.zeros((37, 53), bool),
        np.ones((37, 53), bool),
        np.eye(1, 300, 150, dtype=bool),  # 1xN single pixel
        np.eye(300, 1, -299, dtype=bool),  # Nx1, last pixel
        np.ones((1, 1000), bool),
        np.ones((1000, 1), bool),
    ],
    ids=["1x1-empty", "1x1-full", "empty", "full", "1xN-pixel", "Nx1-pixel", "1xN-full", "Nx1-full"],
)
def test_edge_shapes_match_sdk(mask):
    _check(mask)


@pytest.mark.parametrize("pixels", [16384, 16385, 40000, 65536, 70001])
def test_runs_longer_than_65536_values_split_like_sdk(pixels):
    # pixels * 4 channels: 65536, 65540, 160000, 262144, 280004 values in a single run.
    full = np.ones((1, pixels), bool)
    ours = _check(full)
    assert ours[:4] == list((pixels * 4).to_bytes(4, "big"))
    one_pixel = full.copy()
    one_pixel[0, pixels // 2] = False
    _check(one_pixel)


def _runs(*runs: tuple[bool, int], width: int = 512) -> np.ndarray:
    """Return a mask of width `width` made of (value, pixels) runs in order, padded with False."""
    flat = np.concatenate([np.full(n, value, dtype=bool) for value, n in runs])
    return np.concatenate([flat, np.zeros((-flat.size) % width, dtype=bool)]).reshape(-1, width)


# Runs of exactly k x 16384 pixels (k x 65536 values) split into whole 65536-long pieces with no
# remainder: the boundary where an off-by-one in the split hides. Both polarities, at the start, in
# the middle and at the end of the mask, because False runs are the common case in real masks.
@pytest.mark.parametrize(
    "mask",
    [
        _runs((True, 512 * 256), (False, 512 * 256)),  # lower half of a 512x512 mask empty: 131072 px
        _runs((False, 512 * 256), (True, 512 * 256)),  # upper half empty
        _runs((False, 16384), (True, 1)),
        _runs((True, 3), (False, 16384), (True, 5)),
        _runs((True, 7), (False, 32768)),
        _runs((True, 1), (False, 16384 * 3), (True, 16384)),
        _runs((False, 16383), (True, 1), (False, 16385)),
        _runs((True, 16384), (False, 16384), (True, 16384), (False, 16384)),
    ],
    ids=["lower-half", "upper-half", "false-16384-first", "false-16384-middle", "false-32768-last",
         "false-49152-then-true-16384", "false-16383-and-16385", "alternating-16384"],
)
def test_runs_of_whole_65536_value_pieces_match_sdk(mask):
    _check(mask)


def test_single_pixel_in_large_mask_matches_sdk():
    mask = np.zeros((300, 400), bool)
    mask[123, 321] = True
    _check(mask)


@st.composite
def any_streams(draw):
    """Arbitrary valid rle-pack streams, as Label Studio's own JS encoder may write them: literal runs of
    several values and any run-size classes, which the SDK's Python encoder never emits."""
    sizes = draw(st.lists(st.integers(1, 16), min_size=4, max_size=4))
    codes = draw(
        st.lists(
            st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 2**16 - 1), st.lists(st.integers(0, 255), min_size=1, max_size=9)),
            min_size=1,
            max_size=30,
        )
    )
    bits, count = [], 0

    def put(value: int, width: int) -> None:
        bits.append(format(value, f"0{width}b"))

    for repeat, size_class, length, values in codes:
        run = length % min(2 ** sizes[size_class], 9 if not repeat else 2**16) + 1
        put(int(repeat), 1)
        put(size_class, 2)
        put(run - 1, sizes[size_class])
        for k in range(1 if repeat else run):
            put(values[k % len(values)], 8)
        count += run
    header = format(count, "032b") + format(7, "05b") + "".join(format(v - 1, "04b") for v in sizes)
    text = header + "".join(bits)
    text += "0" * (8 - len(text) % 8)
    return [int(text[i : i + 8], 2) for i in range(0, len(text), 8)]


@settings(max_examples=100, deadline=None)
@given(any_streams())
def test_decoder_reads_any_stream_like_the_sdk(stream):
    assert np.array_equal(decode_rle_values(stream), sdk_decode_rle(stream))


def test_decoder_agrees_with_sdk_decoder():
    rng = np.random.default_rng(3)
    mask = rng.random((30, 20)) < 0.4
    ours = encode_rle(mask)
    assert np.array_equal(decode_rle_values(ours), sdk_decode_rle(ours))


def test_non_contiguous_input_is_encoded_as_viewed():
    rng = np.random.default_rng(4)
    big = rng.random((40, 60)) < 0.5
    view = big[::2, ::3].T
    assert encode_rle(view) == _sdk(np.ascontiguousarray(view))


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        (np.zeros((2, 2, 2), bool), ValueError),
        (np.zeros(5, bool), ValueError),
        (np.zeros((0, 5), bool), ValueError),
        (np.zeros((3, 3), np.float32), TypeError),
        (np.zeros((3, 3), np.int64), TypeError),
    ],
)
def test_bad_masks_are_rejected(mask, error):
    with pytest.raises(error):
        encode_rle(mask)


def test_decode_rejects_size_mismatch_and_garbage():
    rle = encode_rle(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="needs"):
        decode_rle(rle, 5, 5)
    with pytest.raises(ValueError):
        decode_rle([1, 2, 3], 1, 1)
    with pytest.raises(ValueError):
        decode_rle([0, 0, 0, 4, 300, 0, 0], 1, 1)
    with pytest.raises(ValueError, match="ends"):
        decode_rle(rle[:7], 4, 5)
    with pytest.raises(ValueError, match="positive"):
        decode_rle(rle, 0, 5)
    # A header claiming billions of values is refused before any allocation.
    with pytest.raises(ValueError, match="declares 4294967295"):
        decode_rle([255, 255, 255, 255, 0, 0, 0], 4, 5)


def _stream(count: int, word: int, *codes: str) -> list[int]:
    """Return the bytes of a hand-written stream: header (count, word size, classes 3/4/8/16) and codes as
    bit strings, zero-padded to whole bytes."""
    bits = f"{count:032b}{word - 1:05b}" + "".join(f"{size - 1:04b}" for size in (3, 4, 8, 16)) + "".join(codes)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def test_hand_written_stream_ending_on_its_last_bit_decodes():
    # One repeat code in class 2 (8-bit length): 3 + 8 + 8 bits after the 53-bit header = 72 bits, 9 bytes.
    rle = _stream(4, 8, "1" + "10" + f"{3:08b}" + f"{200:08b}")
    assert len(rle) == 9
    values = decode_rle_values(rle)
    assert values.dtype == np.uint8 and values.tolist() == [200] * 4
    assert decode_rle(rle, 1, 1).tolist() == [[True]]


@pytest.mark.parametrize(("rle", "message"), [
    (_stream(4, 9, "1" + "00" + f"{3:03b}" + f"{1:09b}"), "RLE word size 9 is not supported (only 8-bit values)"),
    (_stream(4, 8, "1" + "00" + f"{7:03b}" + f"{1:08b}"), "RLE run overflows the declared 4 values"),
    (_stream(8, 8, "1" + "00" + f"{3:03b}" + f"{1:08b}"), "RLE ends in the middle of a code"),
    (np.zeros((2, 8), np.int64), "RLE must be a flat sequence of at least 7 bytes"),
    ([0] * 6, "RLE must be a flat sequence of at least 7 bytes"),
    ([0, 0, 0, 4, -1, 0, 0], "RLE must contain integers in 0..255"),
    ([0, 0, 0, 4, 256, 0, 0], "RLE must contain integers in 0..255"),
    ([0.0] * 7, "RLE must contain integers in 0..255"),
])
def test_decoder_refusals_say_why(rle, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        decode_rle_values(rle)


@pytest.mark.parametrize(("mask", "error", "message"), [
    (np.zeros((1, 2, 3), bool), ValueError, r"mask must be 2-D \(height, width\), got shape \(1, 2, 3\)"),
    (np.zeros((0, 3), bool), ValueError, r"mask must have at least one pixel, got shape \(0, 3\)"),
    (np.zeros((3, 3), np.int64), TypeError, "mask must be bool or uint8, got int64"),
])
def test_encoder_refusals_say_why(mask, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        encode_rle(mask)


def test_decode_rle_size_and_alpha_edges():
    rle = encode_rle(np.full((2, 3), 7, np.uint8))
    with pytest.raises(ValueError, match="^height and width must be positive, got 2x0$"):
        decode_rle(rle, 2, 0)
    assert decode_rle(rle, 2, 3, min_alpha=7).all() and not decode_rle(rle, 2, 3, min_alpha=8).any()
