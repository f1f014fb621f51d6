"""The exact rules of gem_engine.regions at their edges: which side of a threshold a pixel falls on,
and which size rule drops what. Each expectation is computed here by hand, independently of the code.

Maps are given at the image's own size, so no upsampling blurs the values the rules are checked on.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage import filters

from gem_engine.regions import RegionOptions, extract_regions

NO_CLEANUP = {"min_object_fraction": 0.0, "min_hole_fraction": 0.0, "min_area_fraction": 0.0}


def _ramp(height: int = 20, width: int = 30) -> np.ndarray:
    """Return one label's map [1, h, w] of distinct values with its single maximum at (7, 11)."""
    values = np.arange(height * width, dtype=np.float32).reshape(height, width) / (height * width)
    values[7, 11] = 2.0
    return values[None]


def _mask(maps: np.ndarray, **options) -> np.ndarray:
    """Return the one region's mask (all False when there is none)."""
    regions = extract_regions(maps, ["thing"], (maps.shape[2], maps.shape[1]), RegionOptions(**options))
    assert len(regions) <= 1
    return regions[0].mask if regions else np.zeros(maps.shape[1:], dtype=bool)


def test_fixed_threshold_zero_keeps_every_pixel():
    mask = _mask(_ramp(), mode="independent", threshold=0.0, **NO_CLEANUP)
    assert mask.all()


def test_fixed_threshold_one_keeps_exactly_the_peak():
    mask = _mask(_ramp(), mode="independent", threshold=1.0, **NO_CLEANUP)
    assert np.argwhere(mask).tolist() == [[7, 11]]


def test_fixed_threshold_is_inclusive():
    # Normalized values are (v - min) / (max - min); a pixel exactly at the threshold is kept.
    maps = np.zeros((1, 4, 5), dtype=np.float32)
    maps[0, 0, :] = [0.25, 0.5, 0.75, 1.0, 0.5]
    mask = _mask(maps, mode="independent", threshold=0.5, **NO_CLEANUP)
    expected = np.zeros((4, 5), dtype=bool)
    expected[0, 1:] = True
    assert np.array_equal(mask, expected)


def test_otsu_is_strict_at_its_own_threshold():
    # Two clusters plus ten pixels placed exactly on the Otsu threshold (a bin centre, exact in float32):
    # scikit-image's convention is foreground = value > t, so those ten pixels are background.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 500)]).clip(0, 1)
    values[0], values[1] = 0.0, 1.0
    t = filters.threshold_otsu(values)
    values[2:12] = t
    assert filters.threshold_otsu(values) == t
    maps = values.astype(np.float32).reshape(1, 25, 40)
    mask = _mask(maps, mode="independent", threshold="otsu", **NO_CLEANUP).reshape(-1)
    assert not mask[2:12].any()
    assert np.array_equal(mask, values > t)


def _square_and_speck() -> np.ndarray:
    """Return a map [1, 100, 100] with a hot 10x10 square (1% of the image) and nothing else."""
    maps = np.zeros((1, 100, 100), dtype=np.float32)
    maps[0, 40:50, 40:50] = 1.0
    return maps


@pytest.mark.parametrize(
    ("min_object", "min_area", "kept"),
    [
        (0.005, 0.0, True),  # the 1% square is above a 0.5% object minimum
        (0.02, 0.0, False),  # ... and below a 2% object minimum
        (0.0, 0.005, True),  # the same fractions as a label-area minimum
        (0.0, 0.02, False),
    ],
)
def test_object_and_area_minimums_each_act_alone(min_object, min_area, kept):
    mask = _mask(_square_and_speck(), mode="independent", threshold=0.5, min_hole_fraction=0.0,
                 min_object_fraction=min_object, min_area_fraction=min_area)
    assert mask.any() == kept


def test_label_area_rule_counts_all_parts_where_the_object_rule_counts_each():
    # Two 1% squares: each part is below a 1.5% object minimum, together they are above a 1.5% area minimum.
    maps = np.zeros((1, 100, 100), dtype=np.float32)
    maps[0, 10:20, 10:20] = 1.0
    maps[0, 60:70, 60:70] = 1.0
    by_area = _mask(maps, mode="independent", threshold=0.5, min_hole_fraction=0.0, min_object_fraction=0.0,
                    min_area_fraction=0.015)
    by_object = _mask(maps, mode="independent", threshold=0.5, min_hole_fraction=0.0, min_object_fraction=0.015,
                      min_area_fraction=0.0)
    assert by_area.sum() == 200
    assert not by_object.any()
