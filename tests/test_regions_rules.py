"""The exact rules of gem_engine.regions at their edges: which side of a threshold a pixel falls on,
and which size rule drops what. Each expectation is computed here by hand, independently of the code.

Maps are given at the image's own size, so no upsampling blurs the values the rules are checked on.
"""

from __future__ import annotations

import math

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


# ------------------------------------------------------------------------------------------ normalization
# Each label is min-max normalized on its own: an affine change of one label's values (scale > 0, any offset)
# changes nothing in independent mode; +inf counts as the label's maximum, -inf and NaN as its minimum.


def test_independent_mode_is_blind_to_each_labels_own_offset_and_scale():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 64, (12, 18)).astype(np.float32) / 64  # exact in float32, like the affine maps of it
    maps = np.stack([base, base * 4 + 7, base * 0.25 - 5])
    regions = extract_regions(maps, ["a", "b", "c"], (18, 12), RegionOptions(mode="independent", threshold=0.5,
                                                                              **NO_CLEANUP))
    normalized = (base - base.min()) / (base.max() - base.min())
    assert [r.label for r in regions] == ["a", "b", "c"]
    for region in regions:
        np.testing.assert_array_equal(region.mask, normalized >= 0.5)
        assert region.score == pytest.approx(float(normalized[normalized >= 0.5].mean()), abs=1e-5)


def test_positive_infinity_is_the_labels_maximum_and_negative_infinity_its_minimum():
    maps = _ramp().astype(np.float64)
    maps[0, 3, 3] = np.inf
    maps[0, 0, 0] = -np.inf  # below every value: the minimum, so threshold 0 still keeps it
    top = _mask(maps, mode="independent", threshold=1.0, **NO_CLEANUP)
    assert np.argwhere(top).tolist() == [[3, 3], [7, 11]]
    assert _mask(maps, mode="independent", threshold=0.0, **NO_CLEANUP).all()


# ------------------------------------------------------------------------------------------ working resolution
# The working grid is the natural size scaled by max_work_side / longest side (each side at least 1 pixel);
# masks come back at the natural size by nearest-neighbour sampling at pixel centres: every working pixel
# becomes an exact block of natural pixels.


@pytest.mark.parametrize(("natural", "work"), [((48, 96), (16, 8)), ((96, 48), (8, 16))])
def test_working_mask_comes_back_as_exact_blocks_at_the_natural_size(natural, work):
    rng = np.random.default_rng(5)
    grid = rng.random((1, *work)).astype(np.float32)  # already at the working size: no resampling
    regions = extract_regions(grid, ["x"], natural, RegionOptions(mode="independent", threshold=0.5,
                                                                  max_work_side=16, **NO_CLEANUP))
    normalized = (grid[0] - grid.min()) / (grid.max() - grid.min())
    expected = np.kron(normalized >= 0.5, np.ones((6, 6), dtype=bool)).astype(bool)  # 96 / 16 = 48 / 8 = 6
    np.testing.assert_array_equal(regions[0].mask, expected)


@pytest.mark.parametrize("transpose", [False, True])
def test_a_side_that_scales_below_one_pixel_keeps_one(transpose):
    # 1600 x 10 with max_work_side 16: the working grid is 16 x 1 (10 * 0.01 rounds to 0, kept at 1), so the
    # two rows of the map are sampled once, at their middle: 0.5 on the left half, 0 on the right.
    grid = np.zeros((2, 16), dtype=np.float32)
    grid[0, :8] = 1.0
    size = (1600, 10)
    if transpose:
        grid, size = grid.T.copy(), (10, 1600)
    regions = extract_regions(grid[None], ["x"], size, RegionOptions(mode="independent", threshold=0.5,
                                                                     max_work_side=16, **NO_CLEANUP))
    expected = np.zeros((10, 1600), dtype=bool)
    expected[:, :800] = True
    np.testing.assert_array_equal(regions[0].mask, expected.T if transpose else expected)


def test_a_grid_larger_than_the_image_is_sampled_bilinearly_without_smoothing():
    # 32 -> 16: a half-pixel-centred bilinear sample lands between four grid cells, i.e. their mean;
    # no anti-aliasing blur on top (that would mix in the neighbours).
    rng = np.random.default_rng(7)
    grid = rng.random((32, 32)).astype(np.float32)
    normalized = (grid - grid.min()) / (grid.max() - grid.min())
    means = normalized.reshape(16, 2, 16, 2).mean(axis=(1, 3))
    region = extract_regions(grid[None], ["x"], (16, 16), RegionOptions(mode="independent", threshold=0.5,
                                                                        **NO_CLEANUP))[0]
    clear = np.abs(means - 0.5) > 1e-4
    assert clear.sum() > 200
    np.testing.assert_array_equal(region.mask[clear], (means >= 0.5)[clear])
    assert region.score == pytest.approx(float(means[region.mask].mean()), abs=1e-5)


# ------------------------------------------------------------------------------------------ cleanup edges
# Fractions count pixels of the whole (working) image, width x height. A component (8-connected) is dropped
# when it has fewer than int(min_object_fraction * area) pixels; a hole (8-connected background enclosed by
# the mask) is filled when it has fewer than int(min_hole_fraction * area) pixels.


def _independent(mask: np.ndarray, **options) -> np.ndarray:
    settings = {**NO_CLEANUP, **options}
    return _mask(mask.astype(np.float32)[None], mode="independent", threshold=0.5, **settings)


def test_fractions_count_width_times_height_on_a_wide_image():
    mask = np.zeros((20, 100), dtype=bool)  # area 2000: 1 % is 20 pixels
    mask[5:10, 10:20] = True  # 50 pixels
    assert _independent(mask, min_object_fraction=0.01).sum() == 50
    assert not _independent(mask, min_object_fraction=0.026).any()  # 52 pixels needed
    assert _independent(mask, min_area_fraction=0.025).sum() == 50
    assert not _independent(mask, min_area_fraction=0.0251).any()


@pytest.mark.parametrize("minimum", [2, 10])
def test_object_minimum_is_exact(minimum):
    mask = np.zeros((100, 100), dtype=bool)  # area 10 000
    mask[10, 10 : 10 + minimum] = True  # exactly the minimum: kept
    mask[50, 10 : 10 + minimum - 1] = True  # one pixel short: dropped
    kept = _independent(mask, min_object_fraction=minimum / 10_000 + 1e-9)
    assert kept[10].sum() == minimum and not kept[50].any()


def test_object_minimum_counts_diagonal_neighbours_as_one_object():
    mask = np.zeros((100, 100), dtype=bool)
    for k in range(10):
        mask[20 + k, 20 + k] = True  # ten pixels touching only at corners
    assert _independent(mask, min_object_fraction=0.001).sum() == 10


@pytest.mark.parametrize("minimum", [2, 10])
def test_hole_minimum_is_exact(minimum):
    mask = np.zeros((100, 100), dtype=bool)
    mask[5:30, 5:30] = True
    mask[10, 10 : 10 + minimum - 1] = False  # one pixel short of the minimum: filled
    mask[20, 10 : 10 + minimum] = False  # exactly the minimum: stays a hole
    kept = _independent(mask, min_hole_fraction=minimum / 10_000 + 1e-9)
    assert kept[10, 10 : 10 + minimum - 1].all()
    assert not kept[20, 10 : 10 + minimum].any()


def test_a_hole_of_diagonal_neighbours_is_one_hole():
    mask = np.zeros((100, 100), dtype=bool)
    mask[5:30, 5:30] = True
    mask[10, 10] = mask[11, 11] = False  # one 2-pixel hole (8-connected), not two 1-pixel holes
    mask[20, 20] = False  # a 1-pixel hole
    kept = _independent(mask, min_hole_fraction=2 / 10_000 + 1e-9)
    assert not kept[10, 10] and not kept[11, 11] and kept[20, 20]


def _ring_with_core(size: int = 60) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size]
    ring = (np.abs(yy - 20) <= 10) & (np.abs(xx - 20) <= 10) & ~((np.abs(yy - 20) <= 2) & (np.abs(xx - 20) <= 2))
    core = (np.abs(yy - 20) <= 2) & (np.abs(xx - 20) <= 2)
    return ring, core


def test_semantic_hole_filling_respects_every_other_label_not_only_the_last():
    ring, core = _ring_with_core()
    far = np.zeros_like(ring)
    far[45:55, 45:55] = True  # a third label, listed last, nowhere near the hole
    maps = np.stack([ring, core, far]).astype(np.float32)
    regions = extract_regions(maps, ["ring", "core", "far"], (60, 60),
                              RegionOptions(threshold=0.5, min_object_fraction=0, min_area_fraction=0,
                                            min_hole_fraction=0.01))
    masks = {r.label: r.mask for r in regions}
    np.testing.assert_array_equal(masks["ring"], ring)  # the 25-pixel hole is the core's
    np.testing.assert_array_equal(masks["core"], core)


def test_independent_hole_filling_ignores_other_labels():
    ring, core = _ring_with_core()
    maps = np.stack([ring, core]).astype(np.float32)
    regions = extract_regions(maps, ["ring", "core"], (60, 60),
                              RegionOptions(mode="independent", threshold=0.5, min_object_fraction=0,
                                            min_area_fraction=0, min_hole_fraction=0.01))
    masks = {r.label: r.mask for r in regions}
    np.testing.assert_array_equal(masks["ring"], ring | core)  # labels overlap freely in this mode
    np.testing.assert_array_equal(masks["core"], core)


def test_opening_radius_is_the_disk_radius():
    mask = np.zeros((60, 60), dtype=bool)
    mask[10:50, 10:50] = True
    mask[29:32, :] = True  # a 3-pixel-wide line: survives a radius-1 disk (3 wide), not a radius-2 one (5 wide)
    assert _independent(mask, opening_radius=1)[30, 3]
    opened = _independent(mask, opening_radius=2)
    assert not opened[30, 3] and opened[20:40, 20:40].all()


# ------------------------------------------------------------------------------------------ instances


def test_one_component_is_one_instance():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:15, 5:15] = True
    regions = extract_regions(mask.astype(np.float32)[None], ["x"], (40, 40),
                              RegionOptions(mode="independent", threshold=0.5, instances=True, **NO_CLEANUP))
    assert len(regions) == 1
    np.testing.assert_array_equal(regions[0].mask, mask)


def test_squares_touching_at_a_corner_are_one_instance_with_one_polygon():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:10, 5:10] = True
    mask[10:15, 10:15] = True  # touches the first only diagonally
    for instances in (False, True):
        regions = extract_regions(mask.astype(np.float32)[None], ["x"], (40, 40),
                                  RegionOptions(mode="independent", threshold=0.5, instances=instances, **NO_CLEANUP))
        assert len(regions) == 1 and len(regions[0].polygons) == 1
        np.testing.assert_array_equal(regions[0].mask, mask)


def test_equal_sized_instances_keep_reading_order():
    mask = np.zeros((120, 120), dtype=bool)
    corners = [(2 + i * 20, 2 + j * 20) for i in range(6) for j in range(6)]
    for row, col in corners:
        mask[row : row + 5, col : col + 5] = True
    regions = extract_regions(mask.astype(np.float32)[None], ["x"], (120, 120),
                              RegionOptions(mode="independent", threshold=0.5, instances=True, **NO_CLEANUP))
    assert [tuple(np.argwhere(r.mask)[0]) for r in regions] == corners


# ------------------------------------------------------------------------------------------ polygons
# Polygons trace pixel edges: find_contours at 0.5 passes through the midpoints between an inside and an
# outside pixel centre, so a rectangle of pixels [r0, r1) x [c0, c1) has its corners cut by half a pixel.
# Points are (x, y) in percent of the width and height, rounded to 4 decimals, no point repeated.


def _rect_polygon(c0: int, c1: int, r0: int, r1: int, width: int, height: int) -> set[tuple[float, float]]:
    corners = [(c0 + 0.5, r0), (c1 - 0.5, r0), (c1, r0 + 0.5), (c1, r1 - 0.5),
               (c1 - 0.5, r1), (c0 + 0.5, r1), (c0, r1 - 0.5), (c0, r0 + 0.5)]
    return {(round(x / width * 100, 4), round(y / height * 100, 4)) for x, y in corners}


def _polygons(mask: np.ndarray, **options) -> list[list[tuple[float, float]]]:
    regions = extract_regions(mask.astype(np.float32)[None], ["x"], (mask.shape[1], mask.shape[0]),
                              RegionOptions(mode="independent", threshold=0.5, **{**NO_CLEANUP, **options}))
    return regions[0].polygons


def test_rectangle_polygon_without_simplification_is_its_eight_cut_corners():
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:12, 10:25] = True
    (polygon,) = _polygons(mask, polygon_tolerance=0)
    assert len(polygon) == 8 and set(polygon) == _rect_polygon(10, 25, 5, 12, 30, 20)


def test_a_single_pixel_is_a_diamond_whatever_the_tolerance():
    mask = np.zeros((20, 30), dtype=bool)
    mask[7, 11] = True
    expected = {(round(x / 30 * 100, 4), round(y / 20 * 100, 4)) for x, y in
                [(11.5, 7), (12, 7.5), (11.5, 8), (11, 7.5)]}
    for tolerance in (0, 1, 2, 50):
        (polygon,) = _polygons(mask, polygon_tolerance=tolerance)
        assert len(polygon) == 4 and set(polygon) == expected


def test_a_triangle_simplifies_to_three_points():
    mask = np.tril(np.ones((40, 40), dtype=bool))  # corners at (x, y) = (0, 0), (0, 40), (40, 40) pixels
    (polygon,) = _polygons(mask)
    assert len(polygon) == 3
    for corner in ((0, 0), (0, 100), (100, 100)):
        assert min(math.dist(corner, point) for point in polygon) < 3.0  # within 1.2 pixels


def _disc_mask(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx + 0.5 - size / 2) ** 2 + (yy + 0.5 - size / 2) ** 2 <= radius**2


def test_larger_tolerance_gives_fewer_points_and_is_measured_in_natural_pixels():
    mask = _disc_mask(200, 80)
    counts = [len(_polygons(mask, polygon_tolerance=t)[0]) for t in (0, 1, 2)]
    assert counts == sorted(set(counts), reverse=True), counts  # strictly fewer at each step
    # The same disc traced on a 200-pixel working grid of a 400-pixel image: a tolerance of 4 natural
    # pixels is 2 working pixels, so the polygon equals the 200-pixel image's at tolerance 2 (in percent).
    small = mask.astype(np.float32)[None]
    options = {"mode": "independent", "threshold": 0.5, **NO_CLEANUP}
    at_work = extract_regions(small, ["x"], (400, 400), RegionOptions(max_work_side=200, polygon_tolerance=4,
                                                                      **options))[0]
    direct = extract_regions(small, ["x"], (200, 200), RegionOptions(polygon_tolerance=2, **options))[0]
    assert at_work.polygons == direct.polygons
    assert len(direct.polygons[0]) == counts[2]


def test_point_cap_is_exact():
    mask = _disc_mask(40, 8)
    (whole,) = _polygons(mask, polygon_tolerance=0, max_polygon_points=500)
    n = len(whole)
    assert len(set(whole)) == n
    assert _polygons(mask, polygon_tolerance=0, max_polygon_points=n)[0] == whole
    capped = _polygons(mask, polygon_tolerance=0, max_polygon_points=n - 1)[0]
    assert 3 <= len(capped) <= n - 1


def test_point_cap_on_a_shape_the_tolerance_swallows_samples_the_outline_evenly():
    # A disc 16 pixels wide under a 100-pixel tolerance simplifies to nothing, so the unsimplified outline
    # is kept; over the cap it is sampled at evenly spaced points (gaps of n // cap or one more).
    mask = _disc_mask(40, 8)
    (whole,) = _polygons(mask, polygon_tolerance=100, max_polygon_points=500)
    n = len(whole)
    assert n > 20 and len(set(whole)) == n
    for cap in (n, n + 1):
        assert _polygons(mask, polygon_tolerance=100, max_polygon_points=cap)[0] == whole
    for cap in (n - 1, 10):
        (capped,) = _polygons(mask, polygon_tolerance=100, max_polygon_points=cap)
        assert len(capped) == cap and len(set(capped)) == cap
        indices = [whole.index(point) for point in capped]
        assert indices[0] == 0 and indices == sorted(indices)
        gaps = np.diff([*indices, n])
        assert set(gaps.tolist()) <= {n // cap, -(-n // cap)}, gaps


def test_scores_and_coordinates_are_rounded():
    yy, xx = np.mgrid[0:16, 0:16]
    maps = np.exp(-((xx - 8) ** 2 + (yy - 8) ** 2) / 18)[None].astype(np.float32)
    region = extract_regions(maps, ["a"], (30, 20), RegionOptions(mode="independent", threshold=0.2))[0]
    assert region.score == round(region.score, 6) and region.score != round(region.score, 5)
    assert all(v == round(v, 4) for polygon in region.polygons for point in polygon for v in point)


def test_triangle_polygon_without_simplification_keeps_only_its_turns():
    # Lower-left triangle of a 40-pixel square: the left and bottom edges with cut corners, and the staircase
    # hypotenuse, whose edge midpoints all lie on one 45-degree line from (0.5, 0) to (40, 39.5) pixels.
    (polygon,) = _polygons(np.tril(np.ones((40, 40), dtype=bool)), polygon_tolerance=0)
    corners = [(39.5, 40), (0.5, 40), (0, 39.5), (0, 0.5), (0.5, 0), (40, 39.5)]
    assert set(polygon) == {(round(x / 40 * 100, 4), round(y / 40 * 100, 4)) for x, y in corners}
    assert len(polygon) == 6
