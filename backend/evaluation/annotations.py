"""Label Studio results to boolean masks per label, at the image's natural size.

Pipeline: a task's annotations -> `pick_annotation` (the one a human finished) -> its ``result`` list (the
same shape as a prediction's) -> `results_to_masks` -> ``{label: [h, w] bool}`` plus the problems found
(labels outside the vocabulary, unknown result types, undecodable RLE), which the report lists instead of
crashing.

Which annotation counts: cancelled (skipped) annotations never do. Among the rest, one marked
``ground_truth`` wins (a reviewer's choice); otherwise the latest by ``updated_at``, then ``created_at``,
then ``id``. Result types: ``brushlabels`` (RLE at ``original_height`` x ``original_width``),
``polygonlabels`` (points in percent of the image), ``rectanglelabels`` (x, y, width, height in percent,
``rotation`` in degrees clockwise about the top-left corner, as Label Studio draws it). A result drawn at
another size than the image's natural size is resized to it (nearest neighbour).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from skimage.draw import polygon as fill_polygon

from gem_engine.rle import decode_rle

LABEL_KEYS = {"brushlabels": "brushlabels", "polygonlabels": "polygonlabels", "rectanglelabels": "rectanglelabels"}


@dataclass
class Decoded:
    """Masks per label (union of the label's regions) and what could not be used."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def pick_annotation(annotations: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Return the annotation that counts for a task (see the module docstring), or None when none does."""
    kept = [a for a in annotations if not a.get("was_cancelled") and not a.get("cancelled")]
    if not kept:
        return None
    truth = [a for a in kept if a.get("ground_truth")]
    pool = truth or kept
    # ISO 8601 timestamps of one server compare correctly as strings.
    return max(pool, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("created_at") or ""),
                                    int(a.get("id") or 0)))


def result_size(results: Sequence[Mapping[str, Any]]) -> tuple[int, int] | None:
    """Return (height, width) the results were drawn on (their original size), or None when none says."""
    for item in results:
        w, h = item.get("original_width"), item.get("original_height")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            return h, w
    return None


def mask_kind(results: Sequence[Mapping[str, Any]]) -> str | None:
    """Return the most precise result type present: brush, else polygon, else rectangle (None if none).

    A pre-label fills every output control of the config (brush, polygons and a box for one region);
    the union would be the box, so a prediction is judged by its most precise kind only.
    """
    present = {item.get("type") for item in results}
    return next((kind for kind in LABEL_KEYS if kind in present), None)


def results_to_masks(results: Sequence[Mapping[str, Any]], shape: tuple[int, int],
                     vocabulary: Sequence[str], *, ignored: Iterable[str] = (), only: str | None = None) -> Decoded:
    """Return the union mask of every label in `vocabulary` at `shape` (height, width), with the problems.

    Labels in `ignored` (the config's background labels) are skipped silently; `only` keeps one result type.
    """
    out = Decoded()
    wanted, skip = set(vocabulary), set(ignored)
    for index, item in enumerate(results):
        kind = item.get("type")
        if only is not None and kind in LABEL_KEYS and kind != only:
            continue
        if kind not in LABEL_KEYS:
            if kind not in {"choices", "textarea", "labels", "keypointlabels", None}:
                out.problems.append(f"result {index}: type {kind!r} is not a mask, box or polygon; ignored")
            continue
        value = item.get("value") or {}
        labels = value.get(LABEL_KEYS[kind]) or []
        unknown = [label for label in labels if label not in wanted and label not in skip]
        if unknown:
            out.problems.append(f"result {index}: label(s) {unknown} not in the vocabulary; ignored")
        labels = [label for label in labels if label in wanted]
        if not labels:
            continue
        try:
            mask = _decode(kind, value, item, shape)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            out.problems.append(f"result {index} ({kind}): cannot decode: {exc}")
            continue
        if not mask.any():
            out.problems.append(f"result {index} ({kind}, {labels[0]!r}): empty mask")
        for label in labels:
            previous = out.masks.get(label)
            out.masks[label] = mask if previous is None else previous | mask
    return out


def _decode(kind: str, value: Mapping[str, Any], item: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise ValueError("brush value has no RLE list")
        drawn_h, drawn_w = item.get("original_height") or height, item.get("original_width") or width
        mask = decode_rle(value["rle"], int(drawn_h), int(drawn_w))
        return _resize(mask, shape)
    if kind == "polygonlabels":
        points = np.asarray(value["points"], dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
            raise ValueError(f"a polygon needs at least 3 [x, y] points, got shape {points.shape}")
        return _fill(points[:, 0] * width / 100.0, points[:, 1] * height / 100.0, shape)
    x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
    w, h = float(value["width"]) * width / 100.0, float(value["height"]) * height / 100.0
    angle = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(angle), math.sin(angle)
    # Corners relative to the top-left corner, rotated clockwise in image coordinates (y down).
    corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    xs = [x + cx * cos - cy * sin for cx, cy in corners]
    ys = [y + cx * sin + cy * cos for cx, cy in corners]
    return _fill(np.asarray(xs), np.asarray(ys), shape)


def _fill(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # Pixel (r, c) covers [r, r+1) x [c, c+1): its centre is at (r + 0.5, c + 0.5), so shift by half a pixel.
    mask = np.zeros(shape, dtype=bool)
    rows, cols = fill_polygon(ys - 0.5, xs - 0.5, shape=shape)
    mask[rows, cols] = True
    return mask


def _resize(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask
    picture = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(picture) > 127
