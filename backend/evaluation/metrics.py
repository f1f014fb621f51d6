"""Quality figures of pre-label masks against human masks: arrays in, numbers out.

Pipeline: per image, predicted and annotated boolean masks per label (`{label: [h, w] bool}`, a missing
label meaning an empty mask) -> `Accumulator.add` adds the image's counts -> `Accumulator.summary` turns
the summed counts into figures.

How figures aggregate over images (counts are summed first, ratios taken once at the end, so large
objects weigh more than small ones, the usual dataset-level convention):
- presence precision / recall, per label, image level: an image "predicts" a label when its predicted
  mask is non-empty and "has" it when its annotated mask is non-empty; TP/FP/FN are image counts.
- mask IoU, per label: sum of intersections / sum of unions over all images (images where both masks
  are empty add nothing).
- boundary F-score, per label: boundary pixels are the mask pixels with a 4-neighbour outside the mask;
  a predicted boundary pixel counts as matched when an annotated boundary pixel lies within
  ``tolerance`` pixels (Euclidean, default 2), and the other way round for recall. Matched and total
  boundary pixels are summed over images; F = 2PR / (P + R).
- area ratio, per label: sum of predicted mask areas / sum of annotated areas, over the images where the
  label is annotated (1 is right-sized, > 1 too large; predictions on images without the label are
  false positives, counted by presence precision instead).
- mIoU with background: every pixel gets one class, background when no mask covers it, otherwise the
  first label in vocabulary order whose mask covers it; per class IoU from summed intersections and
  unions; mIoU is the mean over classes that occur (annotated or predicted) at least once. The
  all-background baseline (predict nothing) goes through the same code with empty predictions.
- pixel edits, per label and total: an annotator starting from the pre-label adds the annotated pixels
  it misses and removes the predicted pixels outside the annotation (|pred XOR gt|); starting from
  nothing they add every annotated pixel (|gt|). saved = |gt| - |pred XOR gt|: negative when the
  pre-label costs more work than it saves.
- ignored pixels: `Accumulator.add` takes an optional ignore mask ([h, w] bool, None = nothing ignored:
  a "void" region of the human mask). Both the predicted and the annotated masks lose those pixels before
  anything is counted, so no figure above sees them: a label is present only through pixels outside the
  region, a prediction that spills into it costs no edit and no IoU, and the confusion matrix (hence the
  mIoU and the baseline) has no row or column entry for them. ``overall.ignored_pixels`` sums the region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

BACKGROUND = "(background)"
DEFAULT_TOLERANCE = 2.0


def boundary(mask: np.ndarray) -> np.ndarray:
    """Return the mask's boundary pixels: mask pixels with at least one 4-neighbour outside it (or the edge)."""
    mask = np.asarray(mask, dtype=bool)
    # border_value=0: a mask touching the image edge has a boundary there, as an annotator would draw it.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def boundary_matches(pred: np.ndarray, gt: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> tuple[int, int, int, int]:
    """Return (matched predicted, all predicted, matched annotated, all annotated) boundary pixel counts."""
    pb, gb = boundary(pred), boundary(gt)
    n_pred, n_gt = int(pb.sum()), int(gb.sum())
    if n_pred == 0 or n_gt == 0:
        return 0, n_pred, 0, n_gt
    # Distance from every pixel to the nearest boundary pixel of the other mask.
    to_gt = ndimage.distance_transform_edt(~gb)
    to_pred = ndimage.distance_transform_edt(~pb)
    return int((pb & (to_gt <= tolerance)).sum()), n_pred, int((gb & (to_pred <= tolerance)).sum()), n_gt


def class_map(masks: Mapping[str, np.ndarray], labels: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Return [h, w] class indices: 0 background, i + 1 the first label (vocabulary order) covering the pixel."""
    out = np.zeros(shape, dtype=np.int64)
    for index in range(len(labels) - 1, -1, -1):  # reverse, so the first label in order is written last
        mask = masks.get(labels[index])
        if mask is not None:
            out[np.asarray(mask, dtype=bool)] = index + 1
    return out


@dataclass
class LabelCounts:
    """Summed per-label counts over images (see the module docstring for what each becomes)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    intersection: int = 0
    union: int = 0
    pred_area_where_annotated: int = 0
    gt_area: int = 0
    boundary_pred_matched: int = 0
    boundary_pred: int = 0
    boundary_gt_matched: int = 0
    boundary_gt: int = 0
    edits: int = 0  # |pred XOR gt|: pixels added plus removed starting from the pre-label


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _f_score(precision: float | None, recall: float | None) -> float | None:
    # One side without boundary pixels (nothing predicted, or nothing annotated) scores 0, not undefined.
    if precision is None and recall is None:
        return None
    p, r = precision or 0.0, recall or 0.0
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


@dataclass
class Accumulator:
    """Sums counts image by image; `summary()` gives the figures. None means "undefined" (a zero denominator)."""

    labels: Sequence[str]
    tolerance: float = DEFAULT_TOLERANCE
    images: int = 0
    ignored: int = 0  # pixels of the ignore masks, summed over images
    counts: dict[str, LabelCounts] = field(default_factory=dict)
    confusion: np.ndarray | None = None  # [classes, classes], rows annotated, columns predicted
    baseline_confusion: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.labels) + 1
        self.counts = {label: LabelCounts() for label in self.labels}
        self.confusion = np.zeros((n, n), dtype=np.int64)
        self.baseline_confusion = np.zeros((n, n), dtype=np.int64)

    def add(self, pred: Mapping[str, np.ndarray], gt: Mapping[str, np.ndarray], shape: tuple[int, int],
            ignore: np.ndarray | None = None) -> None:
        """Add one image: predicted and annotated masks per label, all of `shape` (missing = empty).

        `ignore` ([h, w] bool) marks pixels no figure counts: every mask loses them first.
        """
        empty = np.zeros(shape, dtype=bool)
        keep = np.ones(shape, dtype=bool)
        if ignore is not None:
            ignore = np.asarray(ignore, dtype=bool)
            if ignore.shape != tuple(shape):
                raise ValueError(f"ignore mask shape {ignore.shape} differs from {shape}")
            keep = ~ignore
        kept_pred: dict[str, np.ndarray] = {}
        kept_gt: dict[str, np.ndarray] = {}
        for label in self.labels:
            p = np.asarray(pred.get(label, empty), dtype=bool)
            g = np.asarray(gt.get(label, empty), dtype=bool)
            if p.shape != tuple(shape) or g.shape != tuple(shape):
                raise ValueError(f"label {label!r}: mask shapes {p.shape} and {g.shape} differ from {shape}")
            p = kept_pred[label] = p & keep
            g = kept_gt[label] = g & keep
            c = self.counts[label]
            has_p, has_g = bool(p.any()), bool(g.any())
            c.tp += has_p and has_g
            c.fp += has_p and not has_g
            c.fn += has_g and not has_p
            c.tn += not has_p and not has_g
            c.intersection += int((p & g).sum())
            c.union += int((p | g).sum())
            c.edits += int((p ^ g).sum())
            if has_g:
                c.gt_area += int(g.sum())
                c.pred_area_where_annotated += int(p.sum())
            pm, pn, gm, gn = boundary_matches(p, g, self.tolerance)
            c.boundary_pred_matched += pm
            c.boundary_pred += pn
            c.boundary_gt_matched += gm
            c.boundary_gt += gn
        n = len(self.labels) + 1
        truth = class_map(kept_gt, self.labels, shape)[keep]
        guess = class_map(kept_pred, self.labels, shape)[keep]
        self.ignored += int(keep.size - keep.sum())
        self.confusion += np.bincount(truth * n + guess, minlength=n * n).reshape(n, n)
        self.baseline_confusion += np.bincount(truth * n, minlength=n * n).reshape(n, n)
        self.images += 1

    def summary(self) -> dict:
        """Return per-label and overall figures as plain JSON-able values."""
        per_label = {}
        for label, c in self.counts.items():
            bp = _ratio(c.boundary_pred_matched, c.boundary_pred)
            br = _ratio(c.boundary_gt_matched, c.boundary_gt)
            per_label[label] = {
                "images_annotated": c.tp + c.fn,
                "images_predicted": c.tp + c.fp,
                "presence_precision": _ratio(c.tp, c.tp + c.fp),
                "presence_recall": _ratio(c.tp, c.tp + c.fn),
                "iou": _ratio(c.intersection, c.union),
                "boundary_f": _f_score(bp, br),
                "area_ratio": _ratio(c.pred_area_where_annotated, c.gt_area),
                "annotated_pixels": c.gt_area,
                "edits_from_prelabel": c.edits,
                "pixels_saved": c.gt_area - c.edits,
            }
        annotated = sum(c.gt_area for c in self.counts.values())
        edits = sum(c.edits for c in self.counts.values())
        miou, ious = miou_from_confusion(self.confusion)
        base, _ = miou_from_confusion(self.baseline_confusion)
        return {
            "images": self.images,
            "tolerance_px": self.tolerance,
            "labels": per_label,
            "overall": {
                "miou_with_background": miou,
                "baseline_miou_all_background": base,
                "class_iou": dict(zip([BACKGROUND, *self.labels], ious, strict=True)),
                "annotated_pixels": annotated,
                "edits_from_prelabel": edits,
                "edits_from_nothing": annotated,
                "pixels_saved": annotated - edits,
                "ignored_pixels": self.ignored,
            },
            "confusion": {"classes": [BACKGROUND, *self.labels], "rows_annotated_cols_predicted":
                          self.confusion.tolist()},
        }


def miou_from_confusion(confusion: np.ndarray) -> tuple[float | None, list[float | None]]:
    """Return (mean IoU over classes that occur, per-class IoU or None) from a pixel confusion matrix."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
    ious = [float(i / u) if u else None for i, u in zip(inter, union, strict=True)]
    present = [v for v in ious if v is not None]
    return (float(np.mean(present)) if present else None), ious
