"""Label Studio-shaped annotation JSON to masks: brush RLE, polygons, rotated rectangles, which annotation counts."""

from __future__ import annotations

import numpy as np

from backend.evaluation.annotations import pick_annotation, result_size, results_to_masks
from gem_engine.rle import encode_rle

W, H = 20, 10


def _item(kind: str, value: dict, w: int = W, h: int = H) -> dict:
    # The shape Label Studio stores and exports (from_name / to_name / ids as in a real export).
    return {"id": "r1", "from_name": "tag", "to_name": "image", "type": kind, "origin": "manual",
            "original_width": w, "original_height": h, "image_rotation": 0, "value": value}


def test_brush_rle_round_trip_and_resize():
    mask = np.zeros((H, W), bool)
    mask[2:5, 3:9] = True
    item = _item("brushlabels", {"format": "rle", "rle": encode_rle(mask), "brushlabels": ["cat"]})
    decoded = results_to_masks([item], (H, W), ["cat"])
    assert decoded.problems == []
    assert np.array_equal(decoded.masks["cat"], mask)
    # drawn at 20x10, evaluated at 40x20: every pixel doubles
    big = results_to_masks([item], (2 * H, 2 * W), ["cat"]).masks["cat"]
    assert big.sum() == 4 * mask.sum()
    assert big[4:10, 6:18].all()


def test_polygon_in_percent():
    # a square from x 25%..75% (5..15 px) and y 20%..80% (2..8 px): pixel centres 5.5..14.5, 2.5..7.5
    item = _item("polygonlabels", {"points": [[25, 20], [75, 20], [75, 80], [25, 80]], "closed": True,
                                   "polygonlabels": ["dog"]})
    mask = results_to_masks([item], (H, W), ["dog"]).masks["dog"]
    expected = np.zeros((H, W), bool)
    expected[2:8, 5:15] = True
    assert np.array_equal(mask, expected)


def test_rectangle_plain_and_rotated():
    rect = {"x": 10, "y": 20, "width": 50, "height": 40, "rotation": 0, "rectanglelabels": ["box"]}
    mask = results_to_masks([_item("rectanglelabels", rect)], (H, W), ["box"]).masks["box"]
    expected = np.zeros((H, W), bool)
    expected[2:6, 2:12] = True  # x 2..12 px, y 2..6 px
    assert np.array_equal(mask, expected)
    # 90 degrees clockwise about the top-left corner (x=10 px on a 100x100 image): the box now extends
    # down from (10, 10) by its width and to the left by its height.
    rotated = {"x": 10, "y": 10, "width": 30, "height": 20, "rotation": 90, "rectanglelabels": ["box"]}
    m = results_to_masks([_item("rectanglelabels", rotated, 100, 100)], (100, 100), ["box"]).masks["box"]
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 39, 0, 9)  # cols 10 - 20 .. 9, clipped at 0


def test_unknown_labels_and_empty_masks_are_reported_not_fatal():
    items = [
        _item("polygonlabels", {"points": [[0, 0], [50, 0], [50, 50]], "polygonlabels": ["unicorn"]}),
        _item("brushlabels", {"format": "rle", "rle": encode_rle(np.zeros((H, W), bool)), "brushlabels": ["cat"]}),
        _item("brushlabels", {"format": "rle", "rle": [1, 2, 3], "brushlabels": ["cat"]}),
        _item("choices", {"choices": ["x"]}),
    ]
    decoded = results_to_masks(items, (H, W), ["cat"])
    text = " | ".join(decoded.problems)
    assert "unicorn" in text and "not in the vocabulary" in text
    assert "empty mask" in text
    assert "cannot decode" in text
    assert len(decoded.problems) == 3
    assert not decoded.masks["cat"].any()


def test_pick_annotation_skips_cancelled_prefers_ground_truth_then_latest():
    old = {"id": 1, "was_cancelled": False, "ground_truth": False, "updated_at": "2026-01-01T00:00:00Z"}
    new = {"id": 2, "was_cancelled": False, "ground_truth": False, "updated_at": "2026-02-01T00:00:00Z"}
    skipped = {"id": 3, "was_cancelled": True, "ground_truth": False, "updated_at": "2026-03-01T00:00:00Z"}
    assert pick_annotation([old, new, skipped])["id"] == 2
    truth = {**old, "id": 4, "ground_truth": True}
    assert pick_annotation([new, truth])["id"] == 4
    assert pick_annotation([skipped]) is None
    assert pick_annotation([]) is None


def test_result_size():
    assert result_size([_item("choices", {"choices": []}) | {"original_width": None}]) is None
    assert result_size([_item("brushlabels", {}, 7, 3)]) == (3, 7)
