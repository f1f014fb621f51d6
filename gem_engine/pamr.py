"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP and SCLIP apply it.

Input: an image x [K, H, W] and maps m [C, h, w] (one per prompt, raw values). Steps:

1. The maps are resized to H x W (bilinear, align_corners=True; a no-op when already that size).
2. Neighbours of a pixel: its 8 neighbours at each dilation d (16 for the default (8, 16)), the
   image borders replicated. Affinity of pixel i to neighbour j: softmax over the neighbours j of
   mean over channels k of -|x_ik - x_jk| / (1e-8 + 0.1 sigma_ik), with sigma_ik the standard
   deviation (unbiased) of channel k over the 3 x 3 neighbourhoods of i at every dilation, i itself
   counted once per dilation. A per-channel affine change of the image (e.g. mean/std
   normalization) leaves the affinities unchanged, up to the 1e-8.
3. `iterations` times, every map: m_i <- sum_j a_ij m_j (i itself is not among its neighbours).

Defaults are those of NACLIP's and SCLIP's code (10 iterations, dilations (8, 16)); Araslanov & Roth
used dilations (1, 2, 4, 8, 12, 24). The refinement is linear in the maps, so it commutes with the
softmax's logit scale applied afterwards. Memory stays at two copies of the maps for all iterations:
the neighbours are read as shifted views of one padded tensor, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

DEFAULT_PAMR_ITERATIONS = 10
DEFAULT_PAMR_DILATIONS = (8, 16)
_EPSILON = 1e-8
_STD_WEIGHT = 0.1


def check_pamr(iterations: int, dilations: Sequence[int]) -> tuple[int, ...]:
    """Return the dilations as a tuple, or raise ValueError for a bad iteration count or dilation."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"pamr_iterations must be an integer >= 0, got {iterations!r}")
    if isinstance(dilations, str | int) or len(dilations) == 0:
        raise ValueError(f"pamr_dilations must be a non-empty list of integers >= 1, got {dilations!r}")
    for value in dilations:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"pamr_dilations must be a non-empty list of integers >= 1, got {dilations!r}")
    return tuple(dilations)


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Return the (row, col) offsets of the 8 neighbours at each dilation."""
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return [(dy * d, dx * d) for d in dilations for dy, dx in steps]


def _replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x.unsqueeze(0), [pad] * 4, mode="replicate")[0]


def _replicate_borders(padded: torch.Tensor, pad: int, size: tuple[int, int]) -> None:
    """Fill the border of a padded [..., H + 2 pad, W + 2 pad] tensor from its centre's edge pixels, in place."""
    top, left, bottom, right = pad, pad, pad + size[0], pad + size[1]
    padded[..., :top, left:right] = padded[..., top : top + 1, left:right]
    padded[..., bottom:, left:right] = padded[..., bottom - 1 : bottom, left:right]
    padded[..., :left] = padded[..., left : left + 1]
    padded[..., right:] = padded[..., right - 1 : right]


def _shifted(padded: torch.Tensor, pad: int, offset: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Return the view of a padded [..., H + 2 pad, W + 2 pad] tensor holding each pixel's neighbour at offset."""
    row, col = pad + offset[0], pad + offset[1]
    return padded[..., row : row + size[0], col : col + size[1]]


def affinities(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Return [P, H, W] softmax affinities of every pixel to its P neighbours (neighbour_offsets order)."""
    size = (image.shape[-2], image.shape[-1])
    pad = max(dilations)
    padded = _replicate_pad(image, pad)
    # The 3 x 3 neighbourhood at every dilation, the centre included once per dilation.
    window = [offset for d in dilations for offset in [(0, 0), *neighbour_offsets([d])]]
    mean = sum(_shifted(padded, pad, offset, size) for offset in window) / len(window)
    variance = sum((_shifted(padded, pad, offset, size) - mean).square() for offset in window) / (len(window) - 1)
    scale = _EPSILON + _STD_WEIGHT * variance.sqrt()
    logits = torch.stack([
        -(image - _shifted(padded, pad, offset, size)).abs().div(scale).mean(dim=0)
        for offset in neighbour_offsets(dilations)
    ])
    return torch.softmax(logits, dim=0)


def refine(image: torch.Tensor, maps: torch.Tensor, iterations: int = DEFAULT_PAMR_ITERATIONS,
           dilations: Sequence[int] = DEFAULT_PAMR_DILATIONS) -> torch.Tensor:
    """Return maps [C, H, W] refined by PAMR on an image [K, H, W]; maps [C, h, w] are resized first."""
    dilations = check_pamr(iterations, dilations)
    if image.ndim != 3 or maps.ndim != 3:
        raise ValueError(f"PAMR needs image [K, H, W] and maps [C, h, w], got {tuple(image.shape)} and {tuple(maps.shape)}")
    size = (image.shape[-2], image.shape[-1])
    image = image.float()
    maps = maps.float()
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps.unsqueeze(0), size=size, mode="bilinear", align_corners=True)[0]
    if iterations == 0 or maps.shape[0] == 0:
        return maps
    with one_thread():
        return _iterate(image, maps, iterations, dilations, size)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's CPU ops in this block on one thread, then restore the count.

    PAMR is a few hundred small, memory-bound element-wise ops: with a second thread each op ends in a
    barrier, and where the cores are shared (several workers, any other load) a descheduled thread makes
    every barrier wait. Measured on 2 busy cores, 448 x 448, 2 maps: 0.14 s on one thread, 2.4 s on two.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _iterate(image: torch.Tensor, maps: torch.Tensor, iterations: int, dilations: tuple[int, ...],
             size: tuple[int, int]) -> torch.Tensor:
    # The affinity logits reach tens on sharp edges, where float32 rounding would move the softmax
    # weights by ~1e-6; computed once per image in float64, they cost little next to the iterations.
    weights = affinities(image.double(), dilations).to(maps.dtype)
    offsets = neighbour_offsets(dilations)
    pad = max(dilations)
    # Two buffers serve every iteration: the padded current maps and the refined ones.
    padded = _replicate_pad(maps, pad)
    centre = _shifted(padded, pad, (0, 0), size)
    refined = torch.empty_like(maps)
    for iteration in range(iterations):
        refined.zero_()
        for weight, offset in zip(weights, offsets, strict=True):
            refined.addcmul_(_shifted(padded, pad, offset, size), weight)
        if iteration < iterations - 1:
            centre.copy_(refined)
            _replicate_borders(padded, pad, size)
    return refined


def refine_maps(maps: torch.Tensor, image: torch.Tensor, iterations: int = DEFAULT_PAMR_ITERATIONS,
                dilations: Sequence[int] = DEFAULT_PAMR_DILATIONS) -> torch.Tensor:
    """Return patch-grid maps [C, h, w] upsampled to the image [K, H, W] (bilinear) and refined by PAMR.

    The upsampling is the segmentors' (align_corners=False), before PAMR's own resize becomes a no-op.
    """
    size = (image.shape[-2], image.shape[-1])
    if maps.ndim != 3:
        raise ValueError(f"maps must be [C, h, w], got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) != size and maps.shape[0] > 0:
        maps = F.interpolate(maps.float().unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]
    return refine(image, maps, iterations, dilations)
