"""PIL images to normalized model input: RGB conversion, square/aspect resize, sliding-window layout."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

INPUT_MODES = ("square", "aspect", "sliding")
# A downscale factor above this first shrinks with PIL's fast reducer, so that decoding a 10000 px
# photo does not cost seconds of bicubic filtering; parity-sized inputs never reach it.
_REDUCING_GAP = 8.0


@dataclass(frozen=True)
class Window:
    """One model input cut from a resized image, at patch-grid offsets (row, col)."""

    pixels: torch.Tensor  # [3, h, w]
    row: int
    col: int


@dataclass(frozen=True)
class Prepared:
    """An image laid out for the model: one or more windows covering a grid of (rows, cols) patches."""

    windows: list[Window]
    grid: tuple[int, int]
    pixels: torch.Tensor | None = None  # [3, H, W] the whole resized image the windows were cut from


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB version of any PIL image (grayscale, RGBA, palette, 16-bit, float, CMYK)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth: stretch the values actually used to 0..255, since PIL's own conversion clips
        # everything above 255 to white.
        array = np.asarray(image, dtype=np.float64)
        low, high = np.nanmin(array), np.nanmax(array)
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8), mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels often hold arbitrary colour; put the image on white as viewers do.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if (image.width, image.height) == (width, height):
        return image
    factor = max(image.width / width, image.height / height)
    gap = _REDUCING_GAP if factor > _REDUCING_GAP else None
    return image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=gap)


def to_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Return [3, H, W] float32 pixels of an RGB image, scaled to [0, 1] and normalized."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def _snap(length: float, patch: int) -> int:
    return max(patch, int(round(length / patch)) * patch)


def aspect_size(width: int, height: int, long_side: int, patch: tuple[int, int]) -> tuple[int, int]:
    """Return (width, height) with the long side at `long_side`, aspect kept, both multiples of the patch."""
    scale = long_side / max(width, height)
    return _snap(width * scale, patch[1]), _snap(height * scale, patch[0])


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Return evenly spread window offsets covering [0, length), steps at most `stride`, last flush with the end."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


def prepare(
    image: Image.Image,
    *,
    mode: str,
    size: int,
    patch: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    stride: float = 2 / 3,
    max_side: int = 1344,
    window: int | None = None,
) -> Prepared:
    """Return an image as model windows: one square/aspect input, or overlapping size x size windows.

    square: the reference's resize to size x size (PIL bicubic, aspect not kept).
    aspect: long side to `size`, aspect kept, sides snapped to the patch size.
    sliding: short side to `size` (long side capped at `max_side`), windows of `window` x `window`
    pixels (default: `size`) moved by `stride` x window, so that memory stays bounded for any input
    resolution; a window larger than the image is the whole image.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"unknown input mode {mode!r}: use one of {', '.join(INPUT_MODES)}")
    if size < max(patch):
        raise ValueError(f"input size {size} is smaller than one patch {patch}")
    rgb = to_rgb(image)
    if mode == "square":
        width = height = size
    elif mode == "aspect":
        width, height = aspect_size(rgb.width, rgb.height, size, patch)
    else:
        scale = size / min(rgb.width, rgb.height)
        scale = min(scale, max_side / max(rgb.width, rgb.height))
        width, height = _snap(rgb.width * scale, patch[1]), _snap(rgb.height * scale, patch[0])
    pixels = to_tensor(_resize(rgb, width, height), mean, std)
    grid = (height // patch[0], width // patch[1])
    if mode != "sliding":
        return Prepared(windows=[Window(pixels=pixels, row=0, col=0)], grid=grid, pixels=pixels)

    window = size if window is None else window
    if window < max(patch):
        raise ValueError(f"window size {window} is smaller than one patch {patch}")
    window_rows = min(window // patch[0], grid[0])
    window_cols = min(window // patch[1], grid[1])
    step_rows = max(1, math.floor(window_rows * stride))
    step_cols = max(1, math.floor(window_cols * stride))
    windows = []
    for row in window_starts(grid[0], window_rows, step_rows):
        for col in window_starts(grid[1], window_cols, step_cols):
            crop = pixels[
                :,
                row * patch[0] : (row + window_rows) * patch[0],
                col * patch[1] : (col + window_cols) * patch[1],
            ]
            windows.append(Window(pixels=crop.contiguous(), row=row, col=col))
    return Prepared(windows=windows, grid=grid, pixels=pixels)
