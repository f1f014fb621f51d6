"""Evaluation metrics against small cases computed by hand (comments show the arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.evaluation.metrics import Accumulator, boundary, boundary_matches, class_map, miou_from_confusion


def box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_boundary_of_a_square_is_its_ring():
    m = box((6, 6), 1, 5, 1, 5)  # 4x4 square: 16 pixels, 2x2 interior
    b = boundary(m)
    assert b.sum() == 12
    assert not b[2:4, 2:4].any()


def test_boundary_at_the_image_edge_counts():
    m = np.ones((3, 3), dtype=bool)  # all pixels: only the centre has 4 neighbours inside
    assert boundary(m).sum() == 8


def test_iou_presence_area_and_edits_one_image():
    shape = (10, 10)
    gt = {"cat": box(shape, 0, 4, 0, 4)}  # 16 px
    pred = {"cat": box(shape, 0, 4, 0, 6), "dog": box(shape, 8, 10, 8, 10)}  # 24 px; dog 4 px false
    acc = Accumulator(["cat", "dog"])
    acc.add(pred, gt, shape)
    s = acc.summary()
    cat, dog = s["labels"]["cat"], s["labels"]["dog"]
    assert cat["iou"] == pytest.approx(16 / 24)
    assert cat["area_ratio"] == pytest.approx(24 / 16)
    assert cat["presence_precision"] == 1.0 and cat["presence_recall"] == 1.0
    assert cat["edits_from_prelabel"] == 8  # remove 8 extra, add none
    assert cat["pixels_saved"] == 16 - 8
    assert dog["iou"] == 0.0
    assert dog["presence_precision"] == 0.0
    assert dog["presence_recall"] is None  # never annotated
    assert dog["area_ratio"] is None
    assert dog["pixels_saved"] == -4  # removing a false mask costs 4 pixels
    overall = s["overall"]
    assert overall["edits_from_prelabel"] == 12 and overall["edits_from_nothing"] == 16
    assert overall["pixels_saved"] == 4


def test_iou_sums_intersections_and_unions_over_images():
    shape = (4, 4)
    acc = Accumulator(["a"])
    acc.add({"a": box(shape, 0, 4, 0, 4)}, {"a": box(shape, 0, 4, 0, 4)}, shape)  # I=16 U=16
    acc.add({"a": box(shape, 0, 1, 0, 1)}, {"a": box(shape, 0, 4, 0, 1)}, shape)  # I=1 U=4
    # summed: 17/20 = 0.85, not the mean of per-image IoUs (1 + 0.25) / 2 = 0.625
    assert acc.summary()["labels"]["a"]["iou"] == pytest.approx(17 / 20)


def test_presence_counts_images():
    shape = (2, 2)
    one = box(shape, 0, 1, 0, 1)
    acc = Accumulator(["a"])
    acc.add({"a": one}, {"a": one}, shape)  # TP
    acc.add({"a": one}, {}, shape)  # FP
    acc.add({}, {"a": one}, shape)  # FN
    acc.add({}, {"a": one}, shape)  # FN
    acc.add({}, {}, shape)  # TN
    a = acc.summary()["labels"]["a"]
    assert a["presence_precision"] == pytest.approx(1 / 2)
    assert a["presence_recall"] == pytest.approx(1 / 3)
    assert a["images_annotated"] == 3 and a["images_predicted"] == 2


def test_boundary_tolerance():
    shape = (12, 12)
    gt = box(shape, 2, 8, 2, 8)  # 6x6: ring of 20 px
    shifted = box(shape, 2, 8, 4, 10)  # same square 2 px to the right
    # tolerance 2: every predicted boundary pixel lies within 2 px of the annotated ring, and the reverse
    assert boundary_matches(shifted, gt, tolerance=2) == (20, 20, 20, 20)
    # tolerance 1: the predicted right column (col 9) is 3 px from col 6... count by hand:
    # predicted ring cols 4..9, rows 2..7. Annotated ring: rows 2 and 7 (cols 2..7) and cols 2, 7.
    # Predicted top/bottom rows cols 4..7 touch the annotated rows (d=0): 4 px each = 8; cols 8 within 1 of
    # col 7 (d=1): 2 more; col 9 (d=2 from col 7) no. Predicted left column col 4, rows 3..6: distance to
    # col 2 or col 7 or rows 2/7 is >= 1... rows 3 and 6 are 1 from rows 2 and 7: 2 px. Right column col 9
    # rows 3..6: none. Total 8 + 2 + 2 = 12.
    pm, pn, _, _ = boundary_matches(shifted, gt, tolerance=1)
    assert (pm, pn) == (12, 20)


def test_boundary_f_score_and_empty_prediction():
    shape = (12, 12)
    gt = box(shape, 2, 8, 2, 8)
    acc = Accumulator(["a"], tolerance=1)
    acc.add({"a": box(shape, 2, 8, 4, 10)}, {"a": gt}, shape)
    f = acc.summary()["labels"]["a"]["boundary_f"]
    assert f == pytest.approx(12 / 20)  # symmetric case: P = R = 12/20
    acc2 = Accumulator(["a"])
    acc2.add({}, {"a": gt}, shape)
    assert acc2.summary()["labels"]["a"]["boundary_f"] == 0.0


def test_class_map_first_label_wins_overlap():
    shape = (1, 3)
    masks = {"a": np.array([[1, 1, 0]], bool), "b": np.array([[0, 1, 1]], bool)}
    assert class_map(masks, ["a", "b"], shape).tolist() == [[1, 1, 2]]


def test_miou_with_background_and_baseline():
    shape = (2, 5)  # 10 pixels
    gt = {"a": box(shape, 0, 2, 0, 2)}  # 4 px of a, 6 background
    pred = {"a": box(shape, 0, 2, 0, 3)}  # 6 px predicted a
    acc = Accumulator(["a"])
    acc.add(pred, gt, shape)
    s = acc.summary()["overall"]
    # background: I = 4 (cols 3..4), U = 6 -> 2/3; a: I = 4, U = 6 -> 2/3; mean 2/3
    assert s["miou_with_background"] == pytest.approx(2 / 3)
    # predict nothing: background I = 6, U = 10 -> 0.6; a: I = 0, U = 4 -> 0; mean 0.3
    assert s["baseline_miou_all_background"] == pytest.approx(0.3)
    assert acc.summary()["confusion"]["rows_annotated_cols_predicted"] == [[4, 2], [0, 4]]


def test_miou_skips_classes_that_never_occur():
    # class 2 is predicted once but never annotated (IoU 0, counted); class 3 never occurs (skipped)
    confusion = np.array([[5, 0, 0, 0], [0, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    miou, ious = miou_from_confusion(confusion)
    assert ious[3] is None
    assert ious[2] == 0.0
    assert ious[1] == pytest.approx(3 / 4)
    assert miou == pytest.approx((1 + 3 / 4 + 0) / 3)


def test_shape_mismatch_is_refused():
    acc = Accumulator(["a"])
    with pytest.raises(ValueError, match="differ"):
        acc.add({"a": np.zeros((2, 2), bool)}, {}, (3, 3))


def test_evaluator_warns_when_model_versions_are_mixed():
    from backend.evaluation.evaluator import evaluate
    from backend.evaluation.samples import Sample

    shape = (2, 2)
    samples = [Sample("t1", shape=shape, model_version="v1"), Sample("t2", shape=shape, model_version="v2"),
               Sample("t3", skipped="no submitted annotation")]
    report = evaluate(samples, ["a"])
    assert report["images"] == 2
    assert report["model_versions"] == {"v1": 1, "v2": 1}
    assert any("2 model versions" in m for m in report["messages"])
    assert report["skipped"] == {"t3": "no submitted annotation"}


def _banded(shape=(14, 14)):
    """A 10x10 truth square (rows/cols 2..11, 100 px) inside a 1-px ignore band (the 12x12 ring: 44 px)."""
    square = box(shape, 2, 12, 2, 12)
    band = box(shape, 1, 13, 1, 13) & ~square
    return square, band


def test_ignore_band_is_not_charged():
    shape = (14, 14)  # 196 px
    square, band = _banded(shape)
    pred = {"a": square | band}  # covers the object up to and through the band: 144 px
    acc = Accumulator(["a"], tolerance=0)  # tolerance 0: only exact boundary pixels match
    acc.add(pred, {"a": square}, shape, ignore=band)
    s = acc.summary()
    a, overall = s["labels"]["a"], s["overall"]
    # Without the ignore mask: IoU 100/144, 44 edits, area 144/100, the predicted ring 1 px off (BF 0).
    assert a["iou"] == 1.0
    assert a["edits_from_prelabel"] == 0 and a["pixels_saved"] == 100
    assert a["area_ratio"] == 1.0
    assert a["boundary_f"] == 1.0
    assert overall["ignored_pixels"] == 44
    # Confusion over the 196 - 44 = 152 counted pixels: 52 background, 100 a, all right.
    assert s["confusion"]["rows_annotated_cols_predicted"] == [[52, 0], [0, 100]]
    assert overall["miou_with_background"] == 1.0
    # Baseline: background I = 52, U = 152; a: 0 -> mean 26/152.
    assert overall["baseline_miou_all_background"] == pytest.approx(26 / 152)


def test_ignored_pixels_do_not_make_a_label_present():
    shape = (14, 14)
    square, band = _banded(shape)
    acc = Accumulator(["a", "b"])
    # a: predicted only inside the band (no false positive); b: annotated only inside the band (no miss).
    acc.add({"a": band & box(shape, 0, 14, 0, 7)}, {"b": band}, shape, ignore=band)
    s = acc.summary()["labels"]
    assert s["a"]["images_predicted"] == 0 and s["a"]["presence_precision"] is None
    assert s["b"]["images_annotated"] == 0 and s["b"]["presence_recall"] is None
    assert s["a"]["pixels_saved"] == 0 and s["b"]["annotated_pixels"] == 0
    assert s["a"]["iou"] is None and s["b"]["boundary_f"] is None


def test_ignore_mask_of_the_wrong_shape_is_refused():
    acc = Accumulator(["a"])
    with pytest.raises(ValueError, match="ignore mask"):
        acc.add({}, {}, (3, 3), ignore=np.zeros((2, 2), bool))


def test_evaluator_passes_the_sample_ignore_mask():
    from backend.evaluation.evaluator import evaluate
    from backend.evaluation.samples import Sample

    shape = (14, 14)
    square, band = _banded(shape)
    samples = [Sample("banded", shape=shape, predicted={"a": square | band}, annotated={"a": square}, ignore=band),
               Sample("plain", shape=(2, 2))]  # no ignore mask: nothing ignored
    report = evaluate(samples, ["a"])
    assert report["images"] == 2
    assert report["labels"]["a"]["iou"] == 1.0
    assert report["overall"]["ignored_pixels"] == 44
