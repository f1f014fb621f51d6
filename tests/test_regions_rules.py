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


# ------------------------------------------------------------------------------------------ semantic assignment
# A pixel goes to the label whose raw map value is highest there, unless that label's softmax probability
# (inverse temperature `logit_scale`, default 100, on the raw values) is below `background_threshold`: then
# to no label (background). Only which pixels go where is checked here, never the regions' score.

CLIP_LIKE = np.array(  # raw similarities of three labels on a 3 x 4 grid, close together as CLIP's are
    [
        [[0.250, 0.240, 0.230, 0.220], [0.300, 0.210, 0.260, 0.200], [0.205, 0.231, 0.244, 0.201]],
        [[0.245, 0.250, 0.200, 0.228], [0.270, 0.232, 0.255, 0.215], [0.200, 0.230, 0.260, 0.290]],
        [[0.200, 0.238, 0.260, 0.221], [0.210, 0.240, 0.100, 0.190], [0.290, 0.250, 0.243, 0.202]],
    ],
    dtype=np.float32,
)


def _hand_softmax_assignment(raw: np.ndarray, background_threshold: float, scale: float = 100.0) -> np.ndarray:
    """Return the label index of every pixel, -1 for background: a plain loop with math.exp."""
    import math

    labels, height, width = raw.shape
    owner = np.full((height, width), -1)
    for y in range(height):
        for x in range(width):
            values = [float(raw[k, y, x]) for k in range(labels)]
            best = max(range(labels), key=lambda k: (values[k], -k))  # highest value, first label on a tie
            probability = 1.0 / sum(math.exp(scale * (v - values[best])) for v in values)
            if probability >= background_threshold:
                owner[y, x] = best
    return owner


def _owners(raw: np.ndarray, names: list[str], **options) -> np.ndarray:
    """Return the label index that holds each pixel (-1: none), checking no pixel is held twice."""
    regions = extract_regions(raw, names, (raw.shape[2], raw.shape[1]),
                              RegionOptions(mode="semantic", threshold=0.0, **NO_CLEANUP, **options))
    owner = np.full(raw.shape[1:], -1)
    for region in regions:
        assert not (owner[region.mask] >= 0).any(), "a pixel went to two labels"
        owner[region.mask] = names.index(region.label)
    return owner


def test_hand_softmax_fixture_puts_pixels_on_both_sides_of_the_thresholds():
    """The grid is only a good test if the default scale matters: at scale 1 every winner is near 1/3."""
    for threshold in (0.6, 0.9):
        at_100 = _hand_softmax_assignment(CLIP_LIKE, threshold)
        assert 0 < (at_100 >= 0).sum() < at_100.size
        assert (_hand_softmax_assignment(CLIP_LIKE, threshold, scale=1.0) == -1).all()


@pytest.mark.parametrize("background_threshold", [0.0, 0.4, 0.6, 0.75, 0.9, 0.99])
def test_semantic_pixels_follow_a_hand_computed_softmax_at_the_default_scale(background_threshold):
    owner = _owners(CLIP_LIKE, ["a", "b", "c"], background_threshold=background_threshold)
    assert RegionOptions().logit_scale == 100.0
    np.testing.assert_array_equal(owner, _hand_softmax_assignment(CLIP_LIKE, background_threshold))


def test_logit_scale_changes_which_pixels_are_background():
    owner = _owners(CLIP_LIKE, ["a", "b", "c"], background_threshold=0.6, logit_scale=20.0)
    expected = _hand_softmax_assignment(CLIP_LIKE, 0.6, scale=20.0)
    np.testing.assert_array_equal(owner, expected)
    assert (expected != _hand_softmax_assignment(CLIP_LIKE, 0.6)).any()


def _tied() -> np.ndarray:
    """Labels 0 and 1 share one map (the same prompt twice); label 2 is lower everywhere but one pixel."""
    shared = np.array([[0.30, 0.25, 0.20], [0.28, 0.22, 0.26]], dtype=np.float32)
    third = shared - 0.5
    third[1, 2] = 0.40  # the third label wins this pixel outright
    return np.stack([shared, shared.copy(), third])


def test_tied_labels_first_in_order_takes_every_tied_pixel():
    """Rule: on an exact tie the label that comes first in the label list wins the pixel; the other gets none."""
    raw = _tied()
    expected = np.where(np.arange(6).reshape(2, 3) == 5, 2, 0)
    np.testing.assert_array_equal(_owners(raw, ["cat", "kitty", "dog"]), expected)
    # The order decides, not the name: swapped, the other tied label wins the same pixels.
    np.testing.assert_array_equal(_owners(raw[[1, 0, 2]], ["kitty", "cat", "dog"]), expected)
    regions = extract_regions(raw, ["cat", "kitty", "dog"], (3, 2), RegionOptions(threshold=0.0, **NO_CLEANUP))
    assert [r.label for r in regions] == ["cat", "dog"]


def test_a_tie_splits_the_probability_and_background_threshold_half_is_inclusive():
    """Two labels tied (the third far below) each have probability 1/2: kept at background_threshold 0.5
    (the rule is probability >= threshold), background just above it."""
    raw = _tied()
    tied = np.arange(6).reshape(2, 3) != 5
    assert (_owners(raw, ["cat", "kitty", "dog"], background_threshold=0.5)[tied] == 0).all()
    assert (_owners(raw, ["cat", "kitty", "dog"], background_threshold=0.5001)[tied] == -1).all()
    np.testing.assert_array_equal(_owners(raw, ["cat", "kitty", "dog"], background_threshold=0.5001),
                                  _hand_softmax_assignment(raw, 0.5001))
