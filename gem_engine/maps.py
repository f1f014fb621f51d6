"""Post-processing of raw heatmaps: bilinear upsampling to image size and NaN-safe min-max scaling."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return float32 [L, height, width] maps bilinearly resized from [L, h, w] to size=(width, height)."""
    array = np.asarray(maps)
    if array.ndim != 3:
        raise ValueError(f"maps must be [labels, h, w], got shape {array.shape}")
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive (width, height), got {size}")
    if array.shape[0] == 0:
        return np.zeros((0, height, width), dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).unsqueeze(0)
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].numpy()


def normalize(maps: np.ndarray) -> np.ndarray:
    """Return float32 maps min-max scaled to [0, 1] per label; NaNs become 0, constant maps become 0."""
    array = np.asarray(maps, dtype=np.float32)
    if array.ndim < 1:
        raise ValueError("maps must have a leading label axis")
    out = np.zeros_like(array)
    for index in range(array.shape[0]):
        label = array[index]
        finite = np.isfinite(label)
        if not finite.any():
            continue
        low, high = label[finite].min(), label[finite].max()
        if high > low:
            out[index] = np.where(finite, (label - low) / (high - low), 0.0)
    return out
