"""Heatmaps to regions: per-label masks at the image's natural size, outer polygons, boxes and scores.

Pipeline (all scikit-image): sanitize raw maps (non-finite values clamped into each label's finite
range, NaN counted as its minimum), min-max normalize per label, upsample bilinearly to a working
resolution (the natural size, capped at ``max_work_side``), threshold, assign (semantic mode),
clean up with morphology, split into instances if asked, then trace polygons at the working
resolution and scale masks to the natural size with nearest-neighbour sampling.

Scores: ``semantic`` regions score the mean softmax probability (``logit_scale``) of their label
over the region's pixels; ``independent`` regions score the mean min-max-normalized heatmap value
of their label over the region's pixels. Both lie in [0, 1]; a prediction scores the mean of its
regions (``mean_score``), 0.0 when it has none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, transform

MODES = ("semantic", "independent")
DEFAULT_BACKGROUND_NAMES = ("background", "bg", "void", "nothing", "unlabeled", "unlabelled")


@dataclass
class Region:
    """One region of one label, ready for the Label Studio builders."""

    label: str
    mask: np.ndarray  # bool [height, width] at the image's natural size
    score: float  # in [0, 1], see the module docstring
    polygons: list[list[tuple[float, float]]]  # outer contours, points (x, y) in percent of width/height
    box: tuple[float, float, float, float]  # x, y, width, height in percent


@dataclass
class RegionOptions:
    """How heatmaps become regions; every field has a default, see README "Regions and output"."""

    mode: str = "semantic"
    threshold: float | str = "otsu"  # "otsu", or a fixed value in [0, 1] on the normalized map
    label_thresholds: Mapping[str, float] = field(default_factory=dict)  # per label, overrides threshold
    logit_scale: float = 100.0  # semantic: softmax inverse temperature on raw map values
    background_threshold: float = 0.0  # semantic: minimum winning softmax probability of a pixel
    background_names: Sequence[str] = DEFAULT_BACKGROUND_NAMES  # labels that are background, not regions
    min_object_fraction: float = 0.0005  # drop connected components smaller than this fraction of the image
    min_hole_fraction: float = 0.0005  # fill holes smaller than this fraction of the image
    opening_radius: int = 0  # binary opening with a disk of this radius (working pixels); 0 = off
    min_area_fraction: float = 0.001  # drop a label whose total area is below this fraction of the image
    instances: bool = False  # one region per connected component instead of one per label
    max_instances: int = 50  # per label, the largest components are kept
    polygon_tolerance: float = 2.0  # approximate_polygon tolerance in natural pixels (>= 1 working pixel); 0 = off
    max_polygon_points: int = 200  # cap per polygon; the tolerance grows until it fits
    max_work_side: int = 1024  # longest side of the working resolution (masks still come at natural size)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.threshold, str):
            if self.threshold != "otsu":
                raise ValueError(f"threshold must be 'otsu' or a number in [0, 1], got {self.threshold!r}")
        else:
            _check_unit("threshold", self.threshold)
        for name, value in dict(self.label_thresholds).items():
            _check_unit(f"label_thresholds[{name!r}]", value)
        if not (math.isfinite(self.logit_scale) and self.logit_scale > 0):
            raise ValueError(f"logit_scale must be a positive finite number, got {self.logit_scale!r}")
        _check_unit("background_threshold", self.background_threshold)
        for name in ("min_object_fraction", "min_hole_fraction", "min_area_fraction"):
            _check_unit(name, getattr(self, name))
        if isinstance(self.background_names, str):
            raise ValueError("background_names must be a sequence of names, not one string")
        for name, low in (("opening_radius", 0), ("max_instances", 1), ("max_work_side", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.max_polygon_points, bool) or not isinstance(self.max_polygon_points, int) or (
            self.max_polygon_points < 3
        ):
            raise ValueError(f"max_polygon_points must be an integer >= 3, got {self.max_polygon_points!r}")
        if not (math.isfinite(self.polygon_tolerance) and self.polygon_tolerance >= 0):
            raise ValueError(f"polygon_tolerance must be a finite number >= 0, got {self.polygon_tolerance!r}")


def _check_unit(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def extract_regions(
    maps: np.ndarray,
    labels: Sequence[str],
    image_size: tuple[int, int],
    options: RegionOptions | None = None,
) -> list[Region]:
    """Return the regions of every label, in label order (instances by decreasing area).

    maps: raw heatmaps [L, h, w] at any resolution; image_size: natural (width, height).
    Zero labels give no regions; a label whose map is constant or has no finite value gives none.
    """
    options = options or RegionOptions()
    maps = np.asarray(maps)
    labels = list(labels)
    width, height = _check_inputs(maps, labels, image_size)
    if not labels:
        return []
    normalized, low, span, usable = _normalize(maps)
    if not usable.any():
        return []
    work_h, work_w = _work_shape(width, height, options.max_work_side)
    up = _upsample(normalized, (work_h, work_w))
    background = {name.strip().casefold() for name in options.background_names}
    is_background = [label.strip().casefold() in background for label in labels]
    thresholds = [
        _threshold(up[i], options.label_thresholds.get(label, options.threshold))
        if usable[i] and not is_background[i]
        else None
        for i, label in enumerate(labels)
    ]
    candidates = [threshold is not None for threshold in thresholds]
    if options.mode == "semantic":
        winner, probability = _semantic_assignment(up, low, span, usable, options.logit_scale)
        keep = probability >= options.background_threshold
        masks = {i: (winner == i) & keep & _above(up[i], thresholds[i]) for i in range(len(labels)) if candidates[i]}
        score_maps = dict.fromkeys(masks, probability)
    else:
        masks = {i: _above(up[i], thresholds[i]) for i in range(len(labels)) if candidates[i]}
        score_maps = {i: up[i] for i in masks}

    masks = _clean(masks, options, exclusive=options.mode == "semantic")
    # Detail finer than one working pixel is staircase noise, and it would only slow the simplification.
    tolerance = max(options.polygon_tolerance * work_w / width, 1.0) if options.polygon_tolerance else 0.0
    regions: list[Region] = []
    for i, mask in masks.items():
        for part in _instances(mask, options):
            region = _region(labels[i], part, score_maps[i], (width, height), tolerance, options)
            if region is not None:
                regions.append(region)
    return regions


def mean_score(regions: Sequence[Region]) -> float:
    """Return the prediction score: the mean of the regions' scores, 0.0 for no regions."""
    if not regions:
        return 0.0
    return _unit(float(np.mean([region.score for region in regions])))


def _check_inputs(maps: np.ndarray, labels: list[str], image_size: tuple[int, int]) -> tuple[int, int]:
    if maps.ndim != 3:
        raise ValueError(f"maps must be [labels, height, width], got shape {maps.shape}")
    if maps.shape[0] != len(labels):
        raise ValueError(f"maps hold {maps.shape[0]} labels but {len(labels)} label names were given")
    if labels and (maps.shape[1] == 0 or maps.shape[2] == 0):
        raise ValueError(f"maps must have a non-empty grid, got shape {maps.shape}")
    if maps.dtype.kind not in "fiub":
        raise ValueError(f"maps must be numeric, got dtype {maps.dtype}")
    if not all(isinstance(label, str) for label in labels):
        raise ValueError("labels must be strings")
    try:
        width, height = (int(v) for v in image_size)
    except (TypeError, ValueError) as error:
        raise ValueError(f"image_size must be (width, height), got {image_size!r}") from error
    if width <= 0 or height <= 0 or (width, height) != tuple(image_size):
        raise ValueError(f"image_size must be two positive integers (width, height), got {image_size!r}")
    return width, height


def _normalize(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (maps min-max normalized to [0, 1], per-label min, per-label span, per-label usable)."""
    raw = maps.astype(np.float64, copy=False)
    finite = np.isfinite(raw)
    flat_finite = finite.reshape(len(raw), -1)
    has_finite = flat_finite.any(axis=1)
    low = np.where(flat_finite, raw.reshape(len(raw), -1), np.inf).min(axis=1)
    high = np.where(flat_finite, raw.reshape(len(raw), -1), -np.inf).max(axis=1)
    low = np.where(has_finite, low, 0.0)
    high = np.where(has_finite, high, 0.0)
    span = high - low
    usable = has_finite & (span > 0) & np.isfinite(span)
    # +inf is the label's strongest finite value, -inf and NaN its weakest.
    clamped = np.where(np.isposinf(raw), high[:, None, None], raw)
    clamped = np.where(np.isfinite(clamped), clamped, low[:, None, None])
    safe_span = np.where(usable, span, 1.0)
    normalized = (clamped - low[:, None, None]) / safe_span[:, None, None]
    normalized[~usable] = 0.0
    return np.clip(normalized, 0.0, 1.0).astype(np.float32), low, np.where(usable, span, 0.0), usable


def _work_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _upsample(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return maps [L, *shape], bilinear with half-pixel centres (like gem_engine.maps.upsample)."""
    if maps.shape[1:] == shape:
        return maps
    out = np.empty((len(maps), *shape), dtype=np.float32)
    for i, label_map in enumerate(maps):
        out[i] = transform.resize(
            label_map, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True
        )
    return out


def _threshold(label_map: np.ndarray, threshold: float | str) -> tuple[np.float64, bool] | None:
    """Return (threshold on the normalized map, strict), or None when Otsu finds no split.

    Otsu is strict (value > t, as scikit-image applies it); a given value is inclusive (value >= t),
    so that 0 keeps every pixel and semantic mode becomes a plain argmax.
    """
    if threshold != "otsu":
        return np.float64(threshold), False
    if float(label_map.max()) - float(label_map.min()) <= 0:
        return None
    return np.float64(filters.threshold_otsu(label_map)), True


def _above(label_map: np.ndarray, threshold: tuple[np.float64, bool]) -> np.ndarray:
    # A float64 scalar keeps the comparison in float64, like scikit-image's own `image > t`.
    value, strict = threshold
    return label_map > value if strict else label_map >= value


def _semantic_assignment(
    up: np.ndarray, low: np.ndarray, span: np.ndarray, usable: np.ndarray, logit_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return (winning label index, its softmax probability) per pixel over the usable labels."""
    # Upsampling is linear, so raw values are the normalized ones mapped back per label.
    raw = [
        up[i] * np.float32(span[i]) + np.float32(low[i]) if usable[i] else None for i in range(len(up))
    ]
    usable_ids = [i for i in range(len(up)) if usable[i]]
    best = np.full(up.shape[1:], -np.inf, dtype=np.float32)
    winner = np.full(up.shape[1:], -1, dtype=np.int64)
    for i in usable_ids:
        better = raw[i] > best
        best = np.where(better, raw[i], best)
        winner[better] = i
    total = np.zeros(up.shape[1:], dtype=np.float64)
    for i in usable_ids:
        total += np.exp(logit_scale * (raw[i].astype(np.float64) - best))
    return winner, (1.0 / total).astype(np.float32)


def _clean(masks: dict[int, np.ndarray], options: RegionOptions, *, exclusive: bool) -> dict[int, np.ndarray]:
    """Return masks after opening, small-object removal, hole filling and the minimum-area rule."""
    if not masks:
        return {}
    shape = next(iter(masks.values())).shape
    area = shape[0] * shape[1]
    min_object = int(options.min_object_fraction * area)
    min_hole = int(options.min_hole_fraction * area)
    footprint = morphology.disk(options.opening_radius) if options.opening_radius else None
    cleaned: dict[int, np.ndarray] = {}
    for i, mask in masks.items():
        if footprint is not None:
            mask = morphology.opening(mask, footprint)
        if min_object > 1:
            mask = morphology.remove_small_objects(mask, max_size=min_object - 1, connectivity=2)
        cleaned[i] = mask
    claimed = np.zeros(shape, dtype=np.int32)
    for mask in cleaned.values():
        claimed += mask
    result: dict[int, np.ndarray] = {}
    for i, mask in cleaned.items():
        if min_hole > 1:
            filled = morphology.remove_small_holes(mask, max_size=min_hole - 1, connectivity=2)
            # In semantic mode a hole may only take pixels no other label holds.
            mask = mask | (filled & (claimed == 0)) if exclusive else filled
        if mask.sum() >= max(1, options.min_area_fraction * area):
            result[i] = mask
    return result


def _instances(mask: np.ndarray, options: RegionOptions) -> list[np.ndarray]:
    if not options.instances:
        return [mask]
    labelled, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")[: options.max_instances]
    return [labelled == k + 1 for k in order]


def _region(
    label: str,
    work_mask: np.ndarray,
    score_map: np.ndarray,
    image_size: tuple[int, int],
    tolerance: float,
    options: RegionOptions,
) -> Region | None:
    width, height = image_size
    if not work_mask.any():
        return None
    mask = _resize_nearest(work_mask, height, width)
    if not mask.any():
        return None
    # Same bbox as regionprops, from row/column projections: a few ms instead of a labelling pass.
    row_hits = np.flatnonzero(mask.any(axis=1))
    col_hits = np.flatnonzero(mask.any(axis=0))
    min_row, max_row = int(row_hits[0]), int(row_hits[-1]) + 1
    min_col, max_col = int(col_hits[0]), int(col_hits[-1]) + 1
    box = (
        _percent(min_col, width),
        _percent(min_row, height),
        _percent(max_col - min_col, width),
        _percent(max_row - min_row, height),
    )
    score = _unit(float(score_map[work_mask].mean(dtype=np.float64)))
    polygons = _polygons(work_mask, tolerance, options.max_polygon_points)
    return Region(label=label, mask=mask, score=score, polygons=polygons, box=box)


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return mask sampled at (height, width) by pixel centres; exact when the shape already fits."""
    if mask.shape == (height, width):
        return mask.copy()
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.intp), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.intp), mask.shape[1] - 1)
    return mask.take(cols, axis=1).take(rows, axis=0)


def _polygons(mask: np.ndarray, tolerance: float, max_points: int) -> list[list[tuple[float, float]]]:
    """Return the outer contour of every 8-connected component, simplified, in percent."""
    work_h, work_w = mask.shape
    labelled, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    polygons: list[list[tuple[float, float]]] = []
    for k, bounds in enumerate(ndi.find_objects(labelled), start=1):
        if bounds is None:
            continue
        rows, cols = bounds
        # Filling holes leaves only the outer boundary; padding closes contours at the image edge.
        component = ndi.binary_fill_holes(labelled[bounds] == k)
        padded = np.pad(component, 1).astype(np.float32)
        for contour in measure.find_contours(padded, 0.5, fully_connected="high"):
            points = _simplify(contour, tolerance, max_points)
            if points is None:
                continue
            # Contour indices are pixel centres; +0.5 - 1 (padding) gives continuous image coordinates.
            ys = (points[:, 0] - 0.5 + rows.start) / work_h * 100.0
            xs = (points[:, 1] - 0.5 + cols.start) / work_w * 100.0
            polygons.append(
                [(_round_percent(x), _round_percent(y)) for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]
            )
    return polygons


def _simplify(contour: np.ndarray, tolerance: float, max_points: int) -> np.ndarray | None:
    """Return the simplified open ring (first point not repeated), or None when it has under 3 points."""
    if len(contour) < 4:
        return None
    contour = _drop_collinear(contour)
    simplified = measure.approximate_polygon(contour, tolerance) if tolerance > 0 else contour
    step = max(tolerance, 0.5)
    while len(simplified) - 1 > max_points:
        step *= 1.5
        # Re-simplifying the previous result is much cheaper than starting from the full contour.
        simplified = measure.approximate_polygon(simplified, step)
    if len(simplified) - 1 < 3:
        simplified = contour
        if len(simplified) - 1 > max_points:
            simplified = contour[np.linspace(0, len(contour) - 1, max_points + 1).astype(np.intp)]
    ring = simplified[:-1] if np.array_equal(simplified[0], simplified[-1]) else simplified
    return ring if len(ring) >= 3 else None


def _drop_collinear(contour: np.ndarray) -> np.ndarray:
    """Return the contour without points lying on a straight continuation of their neighbours."""
    # Lossless, and it shortens pixel contours several-fold: approximate_polygon's cost is per point.
    before = contour[1:-1] - contour[:-2]
    after = contour[2:] - contour[1:-1]
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    dot = (before * after).sum(axis=1)
    keep = np.ones(len(contour), dtype=bool)
    keep[1:-1] = (np.abs(cross) > 1e-9) | (dot <= 0)
    return contour[keep]


def _percent(value: float, size: int) -> float:
    return _round_percent(value / size * 100.0)


def _round_percent(value: float) -> float:
    return round(min(100.0, max(0.0, float(value))), 4)


def _unit(value: float) -> float:
    if not math.isfinite(value):
        return 0.0
    return round(min(1.0, max(0.0, value)), 6)
