"""Label Studio brush RLE: a vectorized encoder byte-identical to the SDK's ``mask2rle``, and a decoder.

The format (thi.ng rle-pack, as used by Label Studio's brush tool) is a bit stream: a 32-bit
value count, a 5-bit word size minus one (7), four 4-bit run-size classes minus one (3, 4, 8,
16), then one code per run. The SDK writes every run as a repeat code (``1``, a 2-bit class,
the run length minus one in that class's width, the 8-bit value), a run of one as a literal
code, splits runs longer than 65536 into 65536-long pieces, and always pads with 1 to 8 zero
bits. The flattened mask is repeated over the 4 RGBA channels, so every run is a multiple of 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_WORD_SIZE = 8
_RLE_SIZES = (3, 4, 8, 16)
_MAX_RUN = 1 << 16
_CHANNELS = 4
# Header after the 32-bit count: 5 bits (word size - 1) then four 4-bit (size - 1) fields.
_HEADER_TAIL = (_WORD_SIZE - 1) << 16 | sum((s - 1) << (4 * (3 - i)) for i, s in enumerate(_RLE_SIZES))
_HEADER_TAIL_BITS = 5 + 4 * len(_RLE_SIZES)


def encode_rle(mask: np.ndarray) -> list[int]:
    """Return the Label Studio brush RLE bytes of a 2-D mask, identical to ``mask2rle`` of the SDK.

    A bool mask is encoded as 0/255 (what Label Studio draws); a uint8 mask is encoded with its
    values as they are, exactly like ``label_studio_sdk.converter.brush.mask2rle(mask)``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    if mask.size == 0:
        raise ValueError(f"mask must have at least one pixel, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        flat, scale = mask.reshape(-1).view(np.uint8), 255
    elif mask.dtype == np.uint8:
        flat, scale = mask.reshape(-1), 1
    else:
        raise TypeError(f"mask must be bool or uint8, got {mask.dtype}")
    count = flat.size * _CHANNELS
    if count >= 1 << 32:
        raise ValueError(f"mask of {flat.size} pixels is too large for the 32-bit RLE count")

    # Runs over pixels; repeating each pixel over 4 channels multiplies every run by 4.
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.append(change, flat.size - 1)
    lengths = np.diff(ends, prepend=-1).astype(np.int64) * _CHANNELS
    values = flat[ends].astype(np.uint64) * np.uint64(scale)

    codes, widths = _run_codes(lengths, values)
    header_codes = np.array([count, _HEADER_TAIL], dtype=np.uint64)
    header_widths = np.array([32, _HEADER_TAIL_BITS], dtype=np.int64)
    return _pack(np.concatenate([header_codes, codes]), np.concatenate([header_widths, widths]))


def _run_codes(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (code, bit width) per emitted code for runs, splitting runs longer than 65536."""
    # The SDK emits floor((n - 1) / 65536) full pieces of 65536, then the remainder (1..65536).
    # Every piece keeps the class of the whole run: a 65540-long run ends with a 16-bit piece of 4.
    size_class = np.searchsorted(np.array([8, 16, 256]), lengths, side="left").astype(np.int64)
    pieces = np.where(lengths > 256, (lengths - 1) // _MAX_RUN + 1, 1)
    if pieces.max() > 1:
        values = np.repeat(values, pieces)
        size_class = np.repeat(size_class, pieces)
        last = np.cumsum(pieces) - 1
        remainder = lengths - (pieces - 1) * _MAX_RUN
        lengths = np.full(values.size, _MAX_RUN, dtype=np.int64)
        lengths[last] = remainder
    length_bits = np.array(_RLE_SIZES, dtype=np.int64)[size_class]
    widths = 3 + length_bits + _WORD_SIZE
    repeat = lengths > 1
    codes = (
        (repeat.astype(np.uint64) << (widths - 1).astype(np.uint64))
        | (np.where(repeat, size_class, 0).astype(np.uint64) << (length_bits + _WORD_SIZE).astype(np.uint64))
        | ((lengths - 1).astype(np.uint64) << np.uint64(_WORD_SIZE))
        | values
    )
    return codes, widths


def _pack(codes: np.ndarray, widths: np.ndarray) -> list[int]:
    """Return the big-endian byte stream of codes (each at most 32 bits) padded like the SDK."""
    ends = np.cumsum(widths)
    total_bits = int(ends[-1])
    starts = ends - widths
    word = starts >> 6
    end_in_word = (starts & 63) + widths
    fits = end_in_word <= 64
    # Shifts stay in [0, 63]; the masked-out branch of each where() is never used.
    left = np.where(fits, 64 - end_in_word, 0).astype(np.uint64)
    right = np.where(fits, 0, end_in_word - 64).astype(np.uint64)
    head = (codes << left) >> right
    n_words = total_bits // 64 + 2
    words = np.zeros(n_words, dtype=np.uint64)
    # Codes are sorted by start, so each word's codes are one contiguous group: OR them together.
    group_starts = np.flatnonzero(np.diff(word, prepend=-1))
    words[word[group_starts]] = np.bitwise_or.reduceat(head, group_starts)
    # A code crossing a word boundary spills its low bits into the next word; at most one per word.
    spill = ~fits
    if spill.any():
        tail_shift = (128 - end_in_word[spill]).astype(np.uint64)
        words[word[spill] + 1] |= codes[spill] << tail_shift
    # The SDK pads to a byte boundary and adds a whole zero byte when already aligned.
    n_bytes = total_bits // 8 + 1
    return np.frombuffer(words.astype(">u8").tobytes(), dtype=np.uint8)[:n_bytes].tolist()


def decode_rle_values(rle: Sequence[int], *, expected_count: int | None = None) -> np.ndarray:
    """Return the flat uint8 values (RGBA interleaved) that a Label Studio brush RLE encodes.

    With expected_count, a stream declaring another count is refused before anything is decoded.
    """
    data = np.asarray(rle)
    if data.ndim != 1 or data.size < 7:
        raise ValueError("RLE must be a flat sequence of at least 7 bytes")
    if data.dtype.kind not in "iu" or data.min() < 0 or data.max() > 255:
        raise ValueError("RLE must contain integers in 0..255")
    data = data.astype(np.uint64)
    n_bits = data.size * 8
    # A 64-bit big-endian window at every byte: any field of up to 56 bits is two shifts away.
    padded = np.concatenate([data, np.zeros(8, dtype=np.uint64)])
    window = np.zeros(data.size, dtype=np.uint64)
    for k in range(8):
        window = (window << np.uint64(8)) | padded[k : k + data.size]
    windows = window.tolist()
    mask64 = (1 << 64) - 1

    def read(pos: int, size: int) -> int:
        if pos + size > n_bits:
            raise ValueError("RLE ends in the middle of a code")
        return ((windows[pos >> 3] << (pos & 7)) & mask64) >> (64 - size)

    count = read(0, 32)
    if expected_count is not None and count != expected_count:
        raise ValueError(f"RLE declares {count} values, but {expected_count} are expected")
    word_size = read(32, 5) + 1
    sizes = [read(37 + 4 * i, 4) + 1 for i in range(4)]
    if word_size > 8:
        raise ValueError(f"RLE word size {word_size} is not supported (only 8-bit values)")
    lengths: list[int] = []
    values: list[int] = []
    pos, i = 53, 0
    while i < count:
        head = read(pos, 3)
        size = sizes[head & 3]
        run = read(pos + 3, size) + 1
        pos += 3 + size
        if i + run > count:
            raise ValueError(f"RLE run overflows the declared {count} values")
        if head >> 2:
            values.append(read(pos, word_size))
            lengths.append(run)
            pos += word_size
        else:
            for _ in range(run):
                values.append(read(pos, word_size))
                lengths.append(1)
                pos += word_size
        i += run
    return np.repeat(np.array(values, dtype=np.uint8), np.array(lengths, dtype=np.int64))


def decode_rle(rle: Sequence[int], height: int, width: int, *, min_alpha: int = 1) -> np.ndarray:
    """Return the bool [height, width] mask of a brush RLE: pixels whose alpha is at least min_alpha."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    expected = height * width * _CHANNELS
    try:
        values = decode_rle_values(rle, expected_count=expected)
    except ValueError as error:
        raise ValueError(f"{error} (a {width}x{height} RGBA mask needs {expected})") from None
    return values.reshape(height, width, _CHANNELS)[:, :, 3] >= min_alpha
