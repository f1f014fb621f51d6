"""Overlay PNGs for quick review: heatmaps in a colormap, mask outlines and label names over the image.

PIL and numpy only; the colormaps are small built-in tables so that rendering needs no plotting library.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchor colours (position, r, g, b); the 256-entry tables are interpolated from them.
_COLORMAP_STOPS: dict[str, tuple[tuple[float, int, int, int], ...]] = {
    # Classic CAM-style rainbow: dark blue, blue, cyan, yellow, red, dark red.
    "jet": (
        (0.0, 0, 0, 128),
        (0.11, 0, 0, 255),
        (0.125, 0, 0, 255),
        (0.34, 0, 220, 255),
        (0.375, 0, 255, 255),
        (0.64, 255, 255, 0),
        (0.89, 255, 0, 0),
        (1.0, 128, 0, 0),
    ),
    # Perceptually ordered dark violet to yellow, readable in grayscale prints.
    "viridis": (
        (0.0, 68, 1, 84),
        (0.125, 72, 36, 117),
        (0.25, 59, 82, 139),
        (0.375, 44, 114, 142),
        (0.5, 33, 145, 140),
        (0.625, 40, 174, 128),
        (0.75, 94, 201, 98),
        (0.875, 170, 220, 50),
        (1.0, 253, 231, 37),
    ),
}
COLORMAPS = tuple(_COLORMAP_STOPS)

# Distinct outline colours, one per label, cycled when a vocabulary is longer.
LABEL_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (255, 64, 160),
    (64, 255, 96),
    (255, 200, 0),
    (0, 200, 255),
    (200, 120, 255),
    (255, 128, 64),
    (160, 255, 255),
    (255, 255, 128),
    (128, 160, 255),
)


class RegionLike(Protocol):
    """What the renderer reads from a region (gem_engine.regions.Region satisfies it)."""

    label: str
    mask: np.ndarray
    box: tuple[float, float, float, float]


@cache
def colormap_table(name: str) -> np.ndarray:
    """Return the uint8 [256, 3] lookup table of a built-in colormap."""
    try:
        stops = np.asarray(_COLORMAP_STOPS[name], dtype=np.float64)
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}") from None
    grid = np.linspace(0.0, 1.0, 256)
    table = np.stack([np.interp(grid, stops[:, 0], stops[:, c]) for c in (1, 2, 3)], axis=1)
    table = np.round(table).astype(np.uint8)
    table.flags.writeable = False
    return table


def colorize(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Return uint8 [h, w, 3] colours for a [h, w] map in [0, 1]; NaN and out-of-range values are clipped."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"colorize expects a 2-D map, got shape {values.shape}")
    index = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    index = np.clip(np.rint(index * 255.0), 0, 255).astype(np.uint8)
    return colormap_table(colormap)[index]


def label_color(index: int) -> tuple[int, int, int]:
    """Return the outline colour of the label at a vocabulary position."""
    return LABEL_PALETTE[index % len(LABEL_PALETTE)]


def blend_heatmap(
    image: Image.Image, heat: np.ndarray, *, alpha: float = 0.5, colormap: str = "jet"
) -> Image.Image:
    """Return an RGB image: the picture blended with a [height, width] map in [0, 1] in a colormap."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    heat = np.asarray(heat)
    if heat.shape != (base.height, base.width):
        raise ValueError(
            f"heatmap shape {heat.shape} does not match the image size (height, width) "
            f"{(base.height, base.width)}"
        )
    colours = Image.fromarray(colorize(heat, colormap), mode="RGB")
    return Image.blend(base, colours, alpha)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Return a bool mask of the inner boundary of a mask, ``width`` pixels thick."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    interior = mask.copy()
    for _ in range(max(1, width)):
        # 4-neighbour erosion by shifted views; pixels on the image border count as boundary.
        eroded = interior.copy()
        eroded[1:, :] &= interior[:-1, :]
        eroded[:-1, :] &= interior[1:, :]
        eroded[:, 1:] &= interior[:, :-1]
        eroded[:, :-1] &= interior[:, 1:]
        eroded[0, :] = eroded[-1, :] = False
        eroded[:, 0] = eroded[:, -1] = False
        interior = eroded
    return mask & ~interior


def _font(image_size: tuple[int, int]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(11, min(image_size) // 28)
    return ImageFont.load_default(size=size)


def _caption(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour, font) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    pad = 2
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text(xy, text, fill=colour, font=font)


def _outline_width(size: tuple[int, int]) -> int:
    return max(1, min(size) // 250)


def render_label_overlay(
    image: Image.Image,
    heat: np.ndarray,
    label: str,
    *,
    masks: Sequence[np.ndarray] = (),
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Image.Image:
    """Return one label's overlay at the image's size: its map in a colormap, outlines of its masks, its name."""
    canvas = blend_heatmap(image, heat, alpha=alpha, colormap=colormap)
    pixels = np.asarray(canvas).copy()
    width = _outline_width(canvas.size)
    for mask in masks:
        _check_mask(mask, canvas.size)
        pixels[mask_outline(mask, width)] = (255, 255, 255)
    canvas = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(canvas)
    _caption(draw, (4, 4), label, (255, 255, 255), _font(canvas.size))
    return canvas


def render_overview(
    image: Image.Image,
    heat: np.ndarray,
    labels: Sequence[str],
    regions: Sequence[RegionLike],
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Image.Image:
    """Return a whole-image overlay: a combined map in a colormap, each region outlined and named in its label's colour."""
    canvas = blend_heatmap(image, heat, alpha=alpha, colormap=colormap)
    pixels = np.asarray(canvas).copy()
    width = _outline_width(canvas.size)
    position = {label: i for i, label in enumerate(labels)}
    for region in regions:
        _check_mask(region.mask, canvas.size)
        pixels[mask_outline(region.mask, width)] = label_color(position.get(region.label, len(labels)))
    canvas = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(canvas)
    font = _font(canvas.size)
    for region in regions:
        x, y, _, _ = region.box
        xy = (x / 100.0 * canvas.width + 2, y / 100.0 * canvas.height + 2)
        _caption(draw, xy, region.label, label_color(position.get(region.label, len(labels))), font)
    return canvas


def _check_mask(mask: np.ndarray, size: tuple[int, int]) -> None:
    width, height = size
    if np.shape(mask) != (height, width):
        raise ValueError(f"mask shape {np.shape(mask)} does not match the image size (height, width) {(height, width)}")
