"""Heatmaps to regions: modes, thresholds, cleanup, instances, polygons, boxes, scores, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import draw, filters, transform

from gem_engine.regions import Region, RegionOptions, extract_regions, mean_score

GRID = 16


def blob(cx: float, cy: float, sigma: float = 2.0, grid: int = GRID) -> np.ndarray:
    """A Gaussian bump on a grid, centre in grid cells."""
    yy, xx = np.mgrid[0:grid, 0:grid]
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def disc(width: int, height: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def two_blob_maps() -> np.ndarray:
    """cat peaks left of centre, dog right of centre (grid cells 4 and 11 of 16)."""
    return np.stack([blob(4, 8), blob(11.5, 8)])


def by_label(regions: list[Region]) -> dict[str, Region]:
    assert len({r.label for r in regions}) == len(regions)
    return {r.label: r for r in regions}


def test_semantic_two_labels_are_separate_and_where_the_heat_is():
    regions = by_label(extract_regions(two_blob_maps(), ["cat", "dog"], (320, 240)))
    assert set(regions) == {"cat", "dog"}
    cat, dog = regions["cat"], regions["dog"]
    assert cat.mask.shape == dog.mask.shape == (240, 320)
    assert cat.mask.dtype == np.bool_
    assert not (cat.mask & dog.mask).any()
    # Peaks at grid cells 4 and 11.5 of 16 -> x = 4.5/16 and 12/16 of the width.
    cat_cx = np.nonzero(cat.mask)[1].mean() / 320
    dog_cx = np.nonzero(dog.mask)[1].mean() / 320
    assert cat_cx == pytest.approx(4.5 / 16, abs=0.03)
    assert dog_cx == pytest.approx(12 / 16, abs=0.03)
    # At the grid's own size, by hand: a pixel goes to the higher raw map, kept where that map's normalized
    # value is above its Otsu threshold; the score is the mean over the region of the winner's two-label
    # softmax probability at logit_scale 100, 1 / (1 + exp(-100 |cat - dog|)).
    maps = two_blob_maps()
    small = by_label(extract_regions(maps, ["cat", "dog"], (GRID, GRID)))
    for k, name in enumerate(["cat", "dog"]):
        mine, other = maps[k].astype(np.float64), maps[1 - k].astype(np.float64)
        normalized = (mine - mine.min()) / (mine.max() - mine.min())
        expected = (mine > other) & (normalized > filters.threshold_otsu(normalized))
        np.testing.assert_array_equal(small[name].mask, expected)
        probabilities = [1 / (1 + math.exp(-100 * (m - o))) for m, o in zip(mine[expected], other[expected], strict=True)]
        assert small[name].score == pytest.approx(sum(probabilities) / len(probabilities), abs=1e-5)


def test_independent_mode_allows_overlap_and_matches_otsu():
    maps = np.stack([blob(8, 8), blob(8, 8) * 2 + 1])
    options = RegionOptions(mode="independent", min_object_fraction=0, min_hole_fraction=0, min_area_fraction=0)
    regions = extract_regions(maps, ["a", "b"], (160, 160), options)
    assert [r.label for r in regions] == ["a", "b"]
    a, b = regions
    assert (a.mask & b.mask).sum() == a.mask.sum()  # same normalized map, same mask
    normalized = (maps[0] - maps[0].min()) / (maps[0].max() - maps[0].min())
    up = transform.resize(normalized, (160, 160), order=1, mode="edge", anti_aliasing=False)
    expected = up > filters.threshold_otsu(up)
    assert np.array_equal(a.mask, expected)
    assert a.score == pytest.approx(float(up[expected].mean()), abs=1e-5)


def test_semantic_with_one_label_equals_independent():
    maps = blob(5, 9)[None]
    semantic = extract_regions(maps, ["cat"], (200, 100))
    independent = extract_regions(maps, ["cat"], (200, 100), RegionOptions(mode="independent"))
    assert len(semantic) == len(independent) == 1
    assert np.array_equal(semantic[0].mask, independent[0].mask)
    assert semantic[0].score == 1.0  # the only label wins every pixel with probability 1


def test_fixed_and_per_label_thresholds():
    maps = np.stack([blob(8, 8, sigma=3), blob(8, 8, sigma=3)])
    options = RegionOptions(mode="independent", threshold=0.2, label_thresholds={"b": 0.8})
    a, b = extract_regions(maps, ["a", "b"], (128, 128), options)
    assert a.mask.sum() > 2 * b.mask.sum()
    assert b.mask.sum() > 0
    # At the grid's own size (no upsampling) every pixel and score is computed here by hand: the mask is
    # the normalized map at or above the label's threshold, the score the mean normalized value over it.
    a, b = extract_regions(maps, ["a", "b"], (GRID, GRID), options)
    normalized = (maps[0] - maps[0].min()) / (maps[0].max() - maps[0].min())
    for region, threshold in ((a, 0.2), (b, 0.8)):
        expected = normalized >= threshold
        np.testing.assert_array_equal(region.mask, expected)
        assert region.score == pytest.approx(sum(normalized[expected].tolist()) / expected.sum(), abs=1e-6)
    # exp(-r^2/18) >= t (the corner value 8e-4 shifts t by < 1e-3): r^2 <= 28 for 0.2 (89 grid points),
    # r^2 <= 4 for 0.8 (13 grid points), counted by hand.
    assert (a.mask.sum(), b.mask.sum()) == (89, 13)
    # b: the centre, 4 points at r^2 = 1, 4 at 2, 4 at 4: (1 + 4 (e^-1/18 + e^-2/18 + e^-4/18)) / 13.
    assert b.score == pytest.approx(0.8896, abs=1e-3)


def test_background_label_competes_but_gives_no_region():
    cat = blob(4, 8)
    background = np.full((GRID, GRID), 1.5, dtype=np.float32)
    background[:, :8] = 0.0  # background beats every label on the right half only
    maps = np.stack([cat, background, blob(12, 8)])
    options = RegionOptions(threshold=0.0)
    regions = by_label(extract_regions(maps, ["cat", "Background", "dog"], (160, 160), options))
    assert set(regions) == {"cat"}  # the dog's heat is all on the right half, where background wins
    assert not regions["cat"].mask[:, 80:].any()
    without = by_label(extract_regions(maps[[0, 2]], ["cat", "dog"], (160, 160), options))
    assert set(without) == {"cat", "dog"}
    custom = RegionOptions(threshold=0.0, background_names=("nothing here",))
    named = by_label(extract_regions(maps, ["cat", "Background", "dog"], (160, 160), custom))
    assert set(named) == {"cat", "Background"}
    assert named["Background"].mask[:, 80:].all()


def test_background_probability_threshold_drops_ambiguous_pixels():
    maps = np.stack([blob(8, 8), blob(8, 8) + 0.001])  # nearly tied everywhere
    loose = extract_regions(maps, ["a", "b"], (96, 96), RegionOptions(threshold=0.0, logit_scale=1.0))
    strict = extract_regions(
        maps, ["a", "b"], (96, 96), RegionOptions(threshold=0.0, logit_scale=1.0, background_threshold=0.6)
    )
    assert [r.label for r in loose] == ["b"]
    assert strict == []


def test_cleanup_removes_specks_fills_holes_and_drops_tiny_labels():
    size = 200
    ring = np.zeros((size, size), np.float32)
    ring[disc(size, size, 100, 100, 60)] = 1.0
    ring[disc(size, size, 100, 100, 5)] = 0.0  # a hole of ~78 px
    ring[10:13, 10:13] = 1.0  # a 9 px speck
    speck_only = np.zeros((size, size), np.float32)
    speck_only[150:153, 20:26] = 1.0
    maps = np.stack([ring, speck_only])
    options = RegionOptions(mode="independent", threshold=0.5, min_object_fraction=0.001, min_hole_fraction=0.005)
    regions = extract_regions(maps, ["ring", "speck"], (size, size), options)
    assert [r.label for r in regions] == ["ring"]
    mask = regions[0].mask
    assert not mask[10:13, 10:13].any()
    assert mask[100, 100]  # the hole is filled
    kept = extract_regions(
        maps, ["ring", "speck"], (size, size),
        RegionOptions(mode="independent", threshold=0.5, min_object_fraction=0, min_hole_fraction=0, min_area_fraction=0),
    )
    assert [r.label for r in kept] == ["ring", "speck"]
    assert not kept[0].mask[100, 100] and kept[0].mask[11, 11]


def test_semantic_hole_filling_does_not_steal_another_labels_pixels():
    size = 120
    outer = np.zeros((size, size), np.float32)
    outer[disc(size, size, 60, 60, 40)] = 1.0
    inner = np.zeros((size, size), np.float32)
    inner[disc(size, size, 60, 60, 6)] = 2.0
    options = RegionOptions(threshold=0.4, min_hole_fraction=0.05, logit_scale=10.0)
    regions = by_label(extract_regions(np.stack([outer, inner]), ["outer", "inner"], (size, size), options))
    assert regions["inner"].mask[60, 60]
    assert not regions["outer"].mask[60, 60]
    assert not (regions["outer"].mask & regions["inner"].mask).any()


def test_opening_removes_thin_lines():
    size = 100
    maps = np.zeros((1, size, size), np.float32)
    maps[0, 20:80, 20:80] = 1.0
    maps[0, 50, :] = 1.0  # a one-pixel line across the image
    base = dict(mode="independent", threshold=0.5, min_object_fraction=0, min_hole_fraction=0)
    plain = extract_regions(maps, ["x"], (size, size), RegionOptions(**base))[0]
    opened = extract_regions(maps, ["x"], (size, size), RegionOptions(**base, opening_radius=1))[0]
    assert plain.mask[50, 5] and not opened.mask[50, 5]
    assert opened.mask[30:70, 30:70].all()


def test_instances_split_components_largest_first():
    size = 160
    maps = np.zeros((1, size, size), np.float32)
    maps[0][disc(size, size, 40, 40, 20)] = 1.0
    maps[0][disc(size, size, 120, 110, 30)] = 1.0
    base = dict(mode="independent", threshold=0.5)
    whole = extract_regions(maps, ["obj"], (size, size), RegionOptions(**base))
    assert len(whole) == 1 and len(whole[0].polygons) == 2
    parts = extract_regions(maps, ["obj"], (size, size), RegionOptions(**base, instances=True))
    assert len(parts) == 2
    assert parts[0].mask.sum() > parts[1].mask.sum()
    assert not (parts[0].mask & parts[1].mask).any()
    assert np.array_equal(parts[0].mask | parts[1].mask, whole[0].mask)
    assert all(len(p.polygons) == 1 for p in parts)
    capped = extract_regions(maps, ["obj"], (size, size), RegionOptions(**base, instances=True, max_instances=1))
    assert len(capped) == 1 and np.array_equal(capped[0].mask, parts[0].mask)


def test_polygon_and_box_describe_the_mask_in_percent():
    width, height = 300, 200
    truth = disc(width, height, 120, 90, 50)
    maps = truth.astype(np.float32)[None]
    region = extract_regions(maps, ["disc"], (width, height), RegionOptions(mode="independent", threshold=0.5))[0]
    assert np.array_equal(region.mask, truth)
    rows, cols = np.nonzero(truth)
    x, y, w, h = region.box
    assert x == pytest.approx(cols.min() / width * 100, abs=1e-3)
    assert y == pytest.approx(rows.min() / height * 100, abs=1e-3)
    assert w == pytest.approx((cols.max() + 1 - cols.min()) / width * 100, abs=1e-3)
    assert h == pytest.approx((rows.max() + 1 - rows.min()) / height * 100, abs=1e-3)
    assert len(region.polygons) == 1
    polygon = np.array(region.polygons[0])
    assert 3 <= len(polygon) <= RegionOptions().max_polygon_points
    assert ((polygon >= 0) & (polygon <= 100)).all()
    # Rasterize the polygon back (pixel centres) and compare with the mask.
    rr, cc = draw.polygon(polygon[:, 1] / 100 * height - 0.5, polygon[:, 0] / 100 * width - 0.5, (height, width))
    raster = np.zeros_like(truth)
    raster[rr, cc] = True
    assert iou(raster, truth) > 0.95


def test_polygons_are_outer_contours_only_and_capped():
    size = 200
    ring = disc(size, size, 100, 100, 80) & ~disc(size, size, 100, 100, 40)
    options = RegionOptions(mode="independent", threshold=0.5, min_hole_fraction=0, max_polygon_points=12)
    region = extract_regions(ring.astype(np.float32)[None], ["ring"], (size, size), options)[0]
    assert not region.mask[100, 100]
    assert len(region.polygons) == 1
    polygon = np.array(region.polygons[0])
    assert 3 <= len(polygon) <= 12
    radii = np.hypot(polygon[:, 0] - 50, polygon[:, 1] - 50)  # percent of 200 px: radius 80 px = 40 %
    assert radii.min() > 30


def test_edge_touching_region_gets_a_closed_polygon_within_bounds():
    maps = np.zeros((1, 50, 80), np.float32)
    maps[0, :, :40] = 1.0
    region = extract_regions(maps, ["left"], (80, 50), RegionOptions(mode="independent", threshold=0.5))[0]
    polygon = np.array(region.polygons[0])
    assert polygon[:, 0].min() == 0.0 and polygon[:, 0].max() == pytest.approx(50.0)
    assert polygon[:, 1].min() == 0.0 and polygon[:, 1].max() == 100.0
    assert region.box == (0.0, 0.0, 50.0, 100.0)


def test_large_image_works_at_capped_resolution_and_returns_natural_size():
    regions = extract_regions(two_blob_maps(), ["cat", "dog"], (2400, 1000), RegionOptions(max_work_side=256))
    assert {r.label for r in regions} == {"cat", "dog"}
    for region in regions:
        assert region.mask.shape == (1000, 2400)
        assert region.mask.sum() > 0
    small = extract_regions(two_blob_maps(), ["cat", "dog"], (240, 100))
    big = {r.label: r for r in regions}
    for region in small:
        scaled = transform.resize(region.mask, (1000, 2400), order=0).astype(bool)
        assert iou(scaled, big[region.label].mask) > 0.9


def test_image_smaller_than_grid():
    regions = extract_regions(two_blob_maps(), ["cat", "dog"], (8, 6), RegionOptions(min_area_fraction=0))
    assert regions and all(r.mask.shape == (6, 8) for r in regions)


def test_nan_and_inf_are_clamped_and_never_reach_scores():
    maps = two_blob_maps().astype(np.float64)
    maps[0, 0, 0] = np.nan
    maps[0, 1, 1] = -np.inf
    maps[1, 8, 12] = np.inf  # the dog's hottest cell
    regions = by_label(extract_regions(maps, ["cat", "dog"], (160, 120)))
    assert set(regions) == {"cat", "dog"}
    clean = by_label(extract_regions(two_blob_maps(), ["cat", "dog"], (160, 120)))
    assert iou(regions["cat"].mask, clean["cat"].mask) > 0.95
    for region in regions.values():
        assert math.isfinite(region.score)
        assert all(math.isfinite(v) for v in region.box)
        assert all(math.isfinite(c) for polygon in region.polygons for point in polygon for c in point)


@pytest.mark.parametrize("mode", ["semantic", "independent"])
def test_constant_and_non_finite_maps_give_no_region(mode):
    maps = np.stack(
        [
            np.full((GRID, GRID), 0.3, np.float32),
            np.full((GRID, GRID), np.nan, np.float32),
            np.where(np.eye(GRID, dtype=bool), np.inf, -np.inf).astype(np.float32),
            blob(8, 8),
        ]
    )
    regions = extract_regions(maps, ["flat", "nan", "inf", "real"], (64, 64), RegionOptions(mode=mode))
    assert [r.label for r in regions] == ["real"]
    assert extract_regions(maps[:3], ["flat", "nan", "inf"], (64, 64), RegionOptions(mode=mode)) == []


def test_zero_labels_give_no_regions():
    assert extract_regions(np.zeros((0, 14, 14), np.float32), [], (64, 48)) == []
    assert mean_score([]) == 0.0


def test_mean_score():
    regions = extract_regions(two_blob_maps(), ["cat", "dog"], (64, 64))
    assert mean_score(regions) == pytest.approx(np.mean([r.score for r in regions]), abs=1e-6)


@pytest.mark.parametrize(
    ("maps", "labels", "size", "match"),
    [
        (np.zeros((2, 4, 4)), ["a"], (10, 10), "2 labels"),
        (np.zeros((4, 4)), ["a"], (10, 10), r"\[labels, height, width\]"),
        (np.zeros((1, 0, 4)), ["a"], (10, 10), "non-empty grid"),
        (np.zeros((1, 4, 4)), ["a"], (0, 10), "positive"),
        (np.zeros((1, 4, 4)), ["a"], (10.5, 10), "positive"),
        (np.zeros((1, 4, 4)), ["a"], (10,), "width, height"),
        (np.zeros((1, 4, 4)), ["a"], None, "width, height"),
        (np.array([[["x"]]]), ["a"], (10, 10), "numeric"),
        (np.zeros((1, 4, 4)), [3], (10, 10), "strings"),
    ],
)
def test_bad_input_is_rejected_clearly(maps, labels, size, match):
    with pytest.raises(ValueError, match=match):
        extract_regions(maps, labels, size)


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "panoptic"},
        {"threshold": "triangle"},
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"label_thresholds": {"a": -0.1}},
        {"logit_scale": 0},
        {"logit_scale": float("inf")},
        {"background_threshold": 2},
        {"min_object_fraction": -0.1},
        {"opening_radius": -1},
        {"opening_radius": 1.5},
        {"max_instances": 0},
        {"max_polygon_points": 2},
        {"polygon_tolerance": float("nan")},
        {"max_work_side": 4},
        {"background_names": "background"},
    ],
)
def test_bad_options_are_rejected_clearly(options):
    with pytest.raises(ValueError):
        RegionOptions(**options)


def test_semantic_with_threshold_zero_is_a_plain_argmax_partition():
    maps = np.stack([blob(4, 8), blob(12, 8), blob(8, 2)])
    options = RegionOptions(threshold=0.0, min_object_fraction=0, min_hole_fraction=0, min_area_fraction=0)
    regions = extract_regions(maps, ["a", "b", "c"], (64, 64), options)
    assert [r.label for r in regions] == ["a", "b", "c"]
    total = sum(r.mask.astype(int) for r in regions)
    assert (total == 1).all()  # every pixel belongs to exactly one label
    up = transform.resize(maps, (3, 64, 64), order=1, mode="edge", anti_aliasing=False)
    assert np.array_equal(regions[0].mask, up.argmax(axis=0) == 0)


def test_upsampling_matches_torch_bilinear_half_pixel_convention():
    import torch  # the engine's dependency; regions itself stays torch-free

    rng = np.random.default_rng(1)
    raw = rng.random((1, 7, 9)).astype(np.float32)
    options = RegionOptions(mode="independent", threshold=0.5, min_object_fraction=0, min_hole_fraction=0)
    region = extract_regions(raw, ["x"], (90, 70), options)[0]
    normalized = (raw - raw.min()) / (raw.max() - raw.min())
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(normalized)[None], size=(70, 90), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    # Pixels clearly away from the threshold must agree; a float ulp may flip the rest.
    clear = np.abs(reference - 0.5) > 1e-4
    assert np.array_equal(region.mask[clear], (reference >= 0.5)[clear])


def test_polygons_stay_in_natural_coordinates_when_working_smaller():
    width, height = 2000, 1500
    truth_grid = disc(40, 30, 15, 12, 8).astype(np.float32)[None]  # a disc on a 40x30 grid
    options = RegionOptions(mode="independent", threshold=0.5, max_work_side=400)
    region = extract_regions(truth_grid, ["disc"], (width, height), options)[0]
    assert region.mask.shape == (height, width)
    polygon = np.array(region.polygons[0])
    rr, cc = draw.polygon(polygon[:, 1] / 100 * height - 0.5, polygon[:, 0] / 100 * width - 0.5, (height, width))
    raster = np.zeros((height, width), bool)
    raster[rr, cc] = True
    assert iou(raster, region.mask) > 0.97
    # The disc spans grid x in [7, 23] of 40, i.e. about 17.5 % .. 57.5 % of the width.
    assert region.box[0] == pytest.approx(7 / 40 * 100, abs=1.5)
    assert region.box[0] + region.box[2] == pytest.approx(23 / 40 * 100, abs=1.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "panoptic"}, r"^mode must be one of \('semantic', 'independent'\), got 'panoptic'$"),
        ({"threshold": "triangle"}, r"^threshold must be 'otsu' or a number in \[0, 1\], got 'triangle'$"),
        ({"threshold": 1.5}, r"^threshold must be a number in \[0, 1\], got 1\.5$"),
        ({"threshold": True}, r"^threshold must be a number in \[0, 1\], got True$"),
        ({"label_thresholds": {"a": -0.1}}, r"^label_thresholds\['a'\] must be a number in \[0, 1\], got -0\.1$"),
        ({"label_thresholds": {"a": "0.5"}}, r"^label_thresholds\['a'\] must be a number in \[0, 1\], got '0\.5'$"),
        ({"logit_scale": 0}, r"^logit_scale must be a positive finite number, got 0$"),
        ({"background_threshold": 2}, r"^background_threshold must be a number in \[0, 1\], got 2$"),
        ({"min_object_fraction": -0.1}, r"^min_object_fraction must be a number in \[0, 1\], got -0\.1$"),
        ({"min_hole_fraction": 1.5}, r"^min_hole_fraction must be a number in \[0, 1\], got 1\.5$"),
        ({"min_area_fraction": -1}, r"^min_area_fraction must be a number in \[0, 1\], got -1$"),
        ({"background_names": "background"}, r"^background_names must be a sequence of names, not one string$"),
        ({"opening_radius": -1}, r"^opening_radius must be an integer >= 0, got -1$"),
        ({"max_instances": True}, r"^max_instances must be an integer >= 1, got True$"),
        ({"max_work_side": 15}, r"^max_work_side must be an integer >= 16, got 15$"),
        ({"max_polygon_points": 2}, r"^max_polygon_points must be an integer >= 3, got 2$"),
        ({"max_polygon_points": 3.5}, r"^max_polygon_points must be an integer >= 3, got 3\.5$"),
        ({"polygon_tolerance": float("inf")}, r"^polygon_tolerance must be a finite number >= 0, got inf$"),
        ({"polygon_tolerance": -0.5}, r"^polygon_tolerance must be a finite number >= 0, got -0\.5$"),
    ],
)
def test_bad_options_name_the_option_and_the_value(options, message):
    """Each rejected option says which one and what it got: the whole message, so a wrong name or value shows."""
    with pytest.raises(ValueError, match=message):
        RegionOptions(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"max_work_side": 16},
        {"max_polygon_points": 3},
        {"polygon_tolerance": 0.0},
        {"polygon_tolerance": 0.5},
        {"opening_radius": 0},
        {"max_instances": 1},
        {"threshold": 0},
        {"threshold": 1},
        {"label_thresholds": {"a": 0.0, "b": 1.0}},
        {"background_threshold": 1.0},
        {"min_object_fraction": 0, "min_hole_fraction": 1.0, "min_area_fraction": 1.0},
        {"logit_scale": 1e-6},
    ],
)
def test_options_at_their_lowest_and_highest_allowed_values_are_accepted(options):
    RegionOptions(**options)


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1)])
def test_one_pixel_wide_images_are_valid(size):
    maps = np.stack([blob(4, 8), blob(11.5, 8)])
    regions = extract_regions(maps, ["cat", "dog"], size, RegionOptions(threshold=0.0, **{
        "min_object_fraction": 0, "min_hole_fraction": 0, "min_area_fraction": 0}))
    assert regions and all(r.mask.shape == (size[1], size[0]) for r in regions)


@pytest.mark.parametrize(("size", "match"), [((10, 0), "positive"), ((0, 10), "positive"), ((10, -1), "positive")])
def test_image_sizes_below_one_pixel_are_rejected(size, match):
    with pytest.raises(ValueError, match=match):
        extract_regions(np.zeros((1, 4, 4)), ["a"], size)


def test_non_string_label_message_is_exact():
    with pytest.raises(ValueError, match=r"^labels must be strings$"):
        extract_regions(np.zeros((1, 4, 4)), [3], (10, 10))
