"""Annotated examples to calibrated per-project parameters, adopted only when held-out quality improves.

Pipeline: examples (an image's ImageAnalysis and its human masks per label) -> `quality` runs the product's
own path (presence -> regions, `gem_engine.prelabel`) with a set of extra params and scores it (mIoU with
background over all pixels, image-level presence F1, ECE of region scores) -> `search` improves the
params on training examples: a coordinate search over the global knobs (presence evidence and threshold,
background threshold, logit scale), then per-label presence thresholds from each label's absent images
(`negative_thresholds`: every annotated image is a negative example of each label it lacks, so 25 images give a
label about 24 examples even when it is present in one; its threshold is a common number `z` of standard
deviations above the mean logit of its presence probability on those images, z chosen by the search and
judged leave-one-out), then presence thresholds by F1 for labels with at least `min_examples` annotated
images of them -> `fit` cross-validates that search (FOLDS interleaved folds: fit on the rest, judge on the
fold), fits a sigmoid on the scores' logits (`platt`: `score_slope`, `score_offset`) to whether each region
is right (IoU with its label at least 0.5) on the folds' held-out regions pooled with the final params' own,
so scores say how often regions are right, and adopts the params fitted on all examples only when the
held-out mIoU rises and presence F1 does not fall.

The parameters are extra_params keys of the product's own options, so a calibration changes nothing but
option values: they enter the model version like any extra param, and a rollback is a change back.
The maps are computed once per image; every candidate only reruns presence and regions on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize

from backend.evaluation.metrics import class_map, miou_from_confusion
from backend.labeling.pipeline import presence_options, region_options
from backend.options import ProjectOptions
from gem_engine.engine import ImageAnalysis
from gem_engine.prelabel import prelabel_regions, recalibrate
from gem_engine.presence import decide_presence

# The global knobs and the values tried for each, in search order.
GRID: dict[str, tuple[Any, ...]] = {
    "presence": ("image", "map", "image+map"),
    "presence_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "background_threshold": (0.0, 0.3, 0.6),
    "logit_scale": (50.0, 100.0, 200.0),
}
LABEL_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)
# `negative_thresholds`: how many standard deviations above its absent images' mean logit a label must score.
NEGATIVE_Z = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
DEFAULT_MIN_EXAMPLES = 5
FOLDS = 3
ECE_BINS = 10
MIN_SCORED_REGIONS = 20  # fewer regions than this: scores are left as they are


@dataclass
class Example:
    """One annotated image: the engine's analysis of it and the human masks per label (at `shape`)."""

    name: str
    analysis: ImageAnalysis
    truth: dict[str, np.ndarray]  # label -> bool [h, w]; a label not here is absent from the image
    shape: tuple[int, int]  # (height, width) of the image and the masks


@dataclass
class Quality:
    """How good the product's pre-labels are on some examples with some params."""

    miou: float  # mIoU with background over all pixels of all examples
    presence_f1: float  # image-level: a label is predicted when it gets a region
    score_ece: float | None  # region scores against "this region's IoU with its label is at least 0.5"
    examples: int

    def beats(self, other: Quality) -> bool:
        """Return whether this is better: mIoU higher, presence F1 not lower."""
        return self.miou > other.miou + 1e-9 and self.presence_f1 >= other.presence_f1 - 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {"miou": self.miou, "presence_f1": self.presence_f1, "score_ece": self.score_ece,
                "examples": self.examples}


@dataclass
class Fit:
    """The outcome of one calibration: what was fitted, whether it is adopted, and the evidence."""

    params: dict[str, Any]  # extra_params fitted on all examples (adopted or not)
    adopted: bool
    reason: str
    current: Quality | None = None  # held-out, with the params in force before
    fitted: Quality | None = None  # held-out, with the params each fold fitted
    label_examples: dict[str, int] = field(default_factory=dict)  # annotated images per label
    # Labels the fitted params give no threshold of their own (too few images with or without them):
    # they keep the global threshold.
    default_labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "adopted": self.adopted, "reason": self.reason,
                "held_out": {"current": self.current and self.current.to_dict(),
                             "fitted": self.fitted and self.fitted.to_dict()},
                "label_examples": self.label_examples, "default_labels": self.default_labels}


def predicted_masks(example: Example, labels: Sequence[str], options: ProjectOptions,
                    background_labels: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], list[tuple[str, float, np.ndarray]]]:
    """Return the product's masks per label for one example, and its regions as (label, score, mask)."""
    height, width = example.shape
    regions = prelabel_regions(example.analysis, list(labels), (width, height),
                               region_options(options, tuple(background_labels)), presence_options(options))
    masks: dict[str, np.ndarray] = {}
    for region in regions:
        masks[region.label] = masks.get(region.label, np.zeros(example.shape, dtype=bool)) | region.mask
    slope, offset = options.score_slope, options.score_offset
    return masks, [(r.label, recalibrate(r.score, slope, offset), r.mask) for r in regions]


def quality(examples: Sequence[Example], labels: Sequence[str], options: ProjectOptions,
            background_labels: Sequence[str] = ()) -> Quality:
    """Return the quality of the product's pre-labels with `options` on `examples`."""
    return _tally(examples, labels, options, background_labels).quality()


@dataclass
class _Tally:
    """Counts summed over examples, so that several folds pool into one figure."""

    confusion: np.ndarray
    tp: int = 0
    fp: int = 0
    fn: int = 0
    examples: int = 0
    scores: list[float] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)

    def __add__(self, other: _Tally) -> _Tally:
        return _Tally(self.confusion + other.confusion, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                      self.examples + other.examples, self.scores + other.scores, self.hits + other.hits)

    def quality(self) -> Quality:
        miou, _ = miou_from_confusion(self.confusion)
        wrong = self.fp + self.fn
        f1 = 2 * self.tp / (2 * self.tp + wrong) if self.tp + wrong else 1.0
        return Quality(miou=float(miou or 0.0), presence_f1=float(f1),
                       score_ece=expected_calibration_error(self.scores, self.hits), examples=self.examples)


def _tally(examples: Sequence[Example], labels: Sequence[str], options: ProjectOptions,
           background_labels: Sequence[str]) -> _Tally:
    foreground = [label for label in labels if label not in background_labels]
    n = len(foreground) + 1
    tally = _Tally(np.zeros((n, n), dtype=np.int64), examples=len(examples))
    for example in examples:
        masks, regions = predicted_masks(example, labels, options, background_labels)
        truth = class_map(example.truth, foreground, example.shape).ravel()
        guess = class_map(masks, foreground, example.shape).ravel()
        tally.confusion += np.bincount(truth * n + guess, minlength=n * n).reshape(n, n)
        for label in foreground:
            has_truth = label in example.truth and bool(example.truth[label].any())
            has_guess = label in masks
            tally.tp += has_truth and has_guess
            tally.fp += has_guess and not has_truth
            tally.fn += has_truth and not has_guess
        for label, score, mask in regions:
            gt = example.truth.get(label)
            overlap = int((mask & gt).sum()) if gt is not None else 0
            union = int((mask | gt).sum()) if gt is not None else int(mask.sum())
            tally.scores.append(score)
            tally.hits.append(union > 0 and overlap / union >= 0.5)
    return tally


def expected_calibration_error(scores: Sequence[float], hits: Sequence[bool], bins: int = ECE_BINS) -> float | None:
    """Return the ECE of scores in [0, 1] against outcomes (equal-width bins, weighted by count); None if empty."""
    if not len(scores):
        return None
    s, h = np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=np.float64)
    which = np.minimum((s * bins).astype(int), bins - 1)
    gaps = [abs(s[which == b].mean() - h[which == b].mean()) * (which == b).sum() for b in range(bins) if (which == b).any()]
    return float(sum(gaps) / len(s))


def label_examples(examples: Sequence[Example], labels: Sequence[str]) -> dict[str, int]:
    """Return per label how many examples have a non-empty human mask of it."""
    return {label: sum(1 for e in examples if label in e.truth and bool(e.truth[label].any())) for label in labels}


def search(examples: Sequence[Example], labels: Sequence[str], base: ProjectOptions, start: Mapping[str, Any],
           *, background_labels: Sequence[str] = (), min_examples: int = DEFAULT_MIN_EXAMPLES,
           scores: bool = True, negatives: bool = True) -> dict[str, Any]:
    """Return the extra params that maximise quality on `examples`, starting from `start` (applied on `base`);
    `scores`: also fit the score sigmoid on these examples' regions (Platt scaling); `negatives`: also try
    per-label thresholds from each label's absent images."""
    params, best = _global_search(examples, labels, base, start, background_labels)
    params = _per_label_search(examples, labels, base, params, best, background_labels, min_examples, negatives)
    if not scores:
        return params
    return {**params, **_score_mapping(examples, labels, base.with_params(params), background_labels)}


def _global_search(examples: Sequence[Example], labels: Sequence[str], base: ProjectOptions,
                   start: Mapping[str, Any], background_labels: Sequence[str]) -> tuple[dict[str, Any], Quality]:
    """Return the params after the coordinate search over GRID's global knobs, and their quality."""
    params = dict(start)
    best = quality(examples, labels, base.with_params(params), background_labels)
    for key, values in GRID.items():  # one knob at a time, the others held at their best so far
        for value in values:
            trial = {**params, key: value}
            got = quality(examples, labels, base.with_params(trial), background_labels)
            # The adoption rule's test: a move that buys mIoU with presence F1 (dropping labels that are
            # there) overfits the few annotated images and would not be adopted anyway.
            if got.beats(best):
                params, best = trial, got
    return params, best


def _per_label_search(examples: Sequence[Example], labels: Sequence[str], base: ProjectOptions,
                      params: dict[str, Any], best: Quality, background_labels: Sequence[str], min_examples: int,
                      negatives: bool) -> dict[str, Any]:
    """Return the params with per-label presence thresholds added where they help: from absent images
    (`negatives`), then by F1 for labels with enough annotated images of them."""
    if negatives:  # normalised per evidence, so each evidence is tried again
        params, best = _search_negative_thresholds(examples, labels, base, params, best, background_labels,
                                                   min_examples)
    per_label = _label_thresholds(examples, labels, base.with_params(params), background_labels, min_examples)
    if per_label:
        merged = {**dict(params.get("label_presence_thresholds") or {}), **per_label}
        trial = {**params, "label_presence_thresholds": merged}
        got = quality(examples, labels, base.with_params(trial), background_labels)
        if got.miou >= best.miou - 1e-9:
            params = trial
    return params


def _search_negative_thresholds(examples: Sequence[Example], labels: Sequence[str], base: ProjectOptions,
                                params: dict[str, Any], best: Quality, background_labels: Sequence[str],
                                min_examples: int) -> tuple[dict[str, Any], Quality]:
    """Return the params and quality after trying `negative_thresholds` at each z of NEGATIVE_Z, under each
    presence evidence (a label's absent images are normalised per evidence), kept only when they beat `best`.

    Each trial is judged leave-one-out: an image is decided with thresholds from the other images' statistics,
    since an image among its own negatives widens its label's spread and so hides its own false positive (in
    sample, high z looked safe on 25 images and then dropped most true labels on new ones)."""
    for evidence in GRID["presence"]:
        evidence_params = {**params, "presence": evidence}
        foreground, probability, present = presence_matrix(examples, labels, base.with_params(evidence_params),
                                                            background_labels)
        for z in NEGATIVE_Z:
            thresholds = negative_thresholds(probability, present, foreground, z, min_examples)
            if not thresholds:
                continue
            parts = []
            for index, example in enumerate(examples):
                others = np.arange(len(examples)) != index
                own = negative_thresholds(probability[others], present[others], foreground, z, min_examples)
                parts.append(([example], {**evidence_params, "label_presence_thresholds": own}))
            got = _pooled(parts, labels, base, background_labels)
            if got.beats(best):
                params, best = {**evidence_params, "label_presence_thresholds": thresholds}, got
    return params, best


def negative_thresholds(probability: np.ndarray, present: np.ndarray, labels: Sequence[str], z: float,
                        min_negatives: int) -> dict[str, float]:
    """Return per label the presence threshold sigmoid(mean + z * sd) of the logits of its presence probability
    [N, L] over the images where it is absent (`present` [N, L] false), for labels with at least `min_negatives`.

    The mean and variance are shrunk towards those pooled over all labels' absent images, with the weight of
    `min_negatives` images, so a label seen absent in few images leans on the others (empirical Bayes)."""
    logit = _logit(probability)
    absent = ~np.asarray(present, dtype=bool)
    if not absent.any():
        return {}
    pooled_mean = float(logit[absent].mean())
    pooled_var = float(logit[absent].var())
    chosen: dict[str, float] = {}
    for index, label in enumerate(labels):
        values = logit[absent[:, index], index]
        if len(values) < max(1, min_negatives):
            continue
        weight = len(values) / (len(values) + min_negatives)
        mean = weight * values.mean() + (1 - weight) * pooled_mean
        var = weight * values.var() + (1 - weight) * pooled_var
        chosen[label] = float(np.clip(1.0 / (1.0 + np.exp(-(mean + z * np.sqrt(var)))), 0.0, 1.0))
    return chosen


def _score_mapping(examples: Sequence[Example], labels: Sequence[str], options: ProjectOptions,
                   background_labels: Sequence[str]) -> dict[str, float]:
    """Return `platt` fitted on the regions these options give on `examples` (their scores unmapped)."""
    tally = _tally(examples, labels, _unmapped(options), background_labels)
    return platt(tally.scores, tally.hits)


SCORE_KEYS = ("score_slope", "score_offset")
UNMAPPED = {"score_slope": 1.0, "score_offset": 0.0}  # the score sigmoid that leaves scores as they are


def _unmapped(options: ProjectOptions) -> ProjectOptions:
    return options.with_params(UNMAPPED)


def platt(scores: Sequence[float], hits: Sequence[bool]) -> dict[str, float]:
    """Return score_slope and score_offset fitted by logistic regression (Platt scaling) of whether each
    region is right on its score's logit, or {} when the regions do not hold both outcomes often enough."""
    hits = np.asarray(hits, dtype=np.float64)
    if len(hits) < MIN_SCORED_REGIONS or hits.sum() < 2 or (1 - hits).sum() < 2:
        return {}
    logit = _logit(scores)

    def loss(log_slope_offset: np.ndarray) -> float:
        # The slope is exp(u): scores keep their order. A pull towards slope 1 keeps a few regions from
        # making scores all-or-nothing (slopes of 18 came out of 10 annotated images without it).
        z = np.exp(log_slope_offset[0]) * logit + log_slope_offset[1]
        return float(np.mean(np.logaddexp(0.0, z) - hits * z) + 0.01 * log_slope_offset[0] ** 2)

    log_slope, offset = minimize(loss, np.array([0.0, 0.0]), method="Nelder-Mead").x
    if log_slope > 0:
        # A few dozen regions may soften the scores, never sharpen them: a slope above 1 fitted on them made
        # held-out scores surer than their regions were right (ECE up); the offset is refitted at slope 1.
        log_slope = 0.0
        offset = minimize(lambda b: loss(np.array([0.0, b[0]])), np.array([0.0]), method="Nelder-Mead").x[0]
    return {"score_slope": float(np.clip(np.exp(log_slope), 1e-3, 1.0)),
            "score_offset": float(np.clip(offset, -100.0, 100.0))}


def _logit(probability: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return log(p / (1 - p)) of probabilities clipped to [1e-6, 1 - 1e-6]."""
    clipped = np.clip(np.asarray(probability, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(clipped / (1 - clipped))


def _label_thresholds(examples: Sequence[Example], labels: Sequence[str], options: ProjectOptions,
                      background_labels: Sequence[str], min_examples: int) -> dict[str, float]:
    """Return presence thresholds, for each label with enough annotated images, that maximise its presence F1."""
    counts = label_examples(examples, labels)
    eligible = [label for label in labels if label not in background_labels and counts[label] >= min_examples]
    if not eligible:
        return {}
    presence = presence_options(options)
    foreground, probability, present_matrix = presence_matrix(examples, labels, options, background_labels)
    chosen: dict[str, float] = {}
    for label in eligible:
        column = probability[:, foreground.index(label)]
        present = present_matrix[:, foreground.index(label)]
        f1 = np.array([_f1(column >= t, present) for t in LABEL_THRESHOLDS])
        # Of the thresholds with the best F1, the one nearest the global threshold: no move without evidence.
        best = LABEL_THRESHOLDS[f1 >= f1.max() - 1e-9]
        chosen[label] = float(best[np.argmin(np.abs(best - presence.threshold))])
    return {label: value for label, value in chosen.items() if value != presence.threshold}


def presence_matrix(examples: Sequence[Example], labels: Sequence[str], options: ProjectOptions,
                     background_labels: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return the foreground labels, their presence probability [N, L] under `options` and whether each is
    annotated [N, L]."""
    wanted = [i for i, label in enumerate(labels) if label not in background_labels]
    foreground = [labels[i] for i in wanted]
    presence = presence_options(options)
    probability = np.array([decide_presence(_subset(e.analysis, wanted), foreground, presence)[1] for e in examples])
    present = np.array([[label in e.truth and bool(e.truth[label].any()) for label in foreground] for e in examples],
                       dtype=bool)
    return foreground, probability.reshape(len(examples), len(foreground)), present.reshape(len(examples), -1)


def _subset(analysis: ImageAnalysis, keep: list[int]) -> ImageAnalysis:
    return replace(analysis, maps=analysis.maps[keep], label_scores=analysis.label_scores[keep])


def _f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    tp = int((predicted & actual).sum())
    wrong = int((predicted ^ actual).sum())
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 1.0


def folds(count: int, k: int = FOLDS) -> list[np.ndarray]:
    """Return k held-out index sets covering range(count) (interleaved, so no fold is one batch of uploads)."""
    k = max(2, min(k, count))
    return [np.arange(start, count, k) for start in range(k)]


def fit(examples: Sequence[Example], labels: Sequence[str], base: ProjectOptions, current: Mapping[str, Any],
        *, background_labels: Sequence[str] = (), min_examples: int = DEFAULT_MIN_EXAMPLES) -> Fit:
    """Return the calibration of `base` (the project's options without calibration) on `examples`.

    `current`: the calibrated params in force now ({} when none), the ones a fit must beat on held-out
    examples. Raises nothing on poor data: a fit that cannot be judged is simply not adopted, with the reason.
    """
    counts = label_examples(examples, labels)
    foreground = [label for label in labels if label not in background_labels]
    if len(examples) < min_examples:
        return Fit(params=dict(current), adopted=False, label_examples=counts,
                   default_labels=_global_labels(current, foreground),
                   reason=f"{len(examples)} usable annotated image(s); calibration needs at least {min_examples}")
    # Two searches are cross-validated, with and without thresholds from absent images: on 25 images the first
    # often buys held-out mIoU with presence F1, which the adoption rule refuses, while the second's smaller
    # moves keep it. The one adopted is the one whose held-out quality beats the params in force, with the
    # higher held-out mIoU when both do.
    held_current: list[tuple[list[Example], dict[str, Any]]] = []
    held_fitted: dict[bool, list[tuple[list[Example], dict[str, Any]]]] = {True: [], False: []}
    start = {key: value for key, value in current.items() if key not in SCORE_KEYS}
    for held in folds(len(examples)):
        out = set(held.tolist())
        train = [e for i, e in enumerate(examples) if i not in out]
        test = [examples[i] for i in held]
        fold_global, fold_best = _global_search(train, labels, base, start, background_labels)
        held_current.append((test, dict(current)))
        for negatives, parts in held_fitted.items():
            fold_params = _per_label_search(train, labels, base, fold_global, fold_best, background_labels,
                                            min_examples, negatives)
            parts.append((test, {**fold_params, **UNMAPPED}))
    current_q = _pooled(held_current, labels, base, background_labels)
    judged = {negatives: _pooled_tally(parts, labels, base, background_labels)
              for negatives, parts in held_fitted.items()}
    passing = [n for n, tally in judged.items() if tally.quality().beats(current_q)]
    negatives = max(passing or list(judged), key=lambda n: (judged[n].quality().miou, n))
    # The score sigmoid is fitted on two sets of regions, pooled: the folds' held-out regions (images the params
    # were not fitted on, judged with params fitted on fewer images: right less often than a new task's
    # regions will be) and the regions of the params fitted on all images, on those images (right more often
    # than a new task's). The one errs low, the other high; together they balance (Efron's .632 idea).
    params = search(examples, labels, base, start, background_labels=background_labels, min_examples=min_examples,
                    scores=False, negatives=negatives)
    held_out = judged[negatives]
    in_sample = _tally(examples, labels, _unmapped(base.with_params(params)), background_labels)
    mapping = platt(held_out.scores + in_sample.scores, held_out.hits + in_sample.hits)
    fitted_q = _pooled([(test, {**fold_params, **mapping}) for test, fold_params in held_fitted[negatives]],
                       labels, base, background_labels)
    params = {**params, **mapping}
    how = "with" if negatives else "without"
    if passing:
        reason = (f"held-out mIoU {current_q.miou:.3f} -> {fitted_q.miou:.3f}, presence F1 "
                  f"{current_q.presence_f1:.3f} -> {fitted_q.presence_f1:.3f} ({len(examples)} images, "
                  f"{len(folds(len(examples)))}-fold; {how} thresholds from absent images)")
        return Fit(params, True, reason, current_q, fitted_q, counts, _global_labels(params, foreground))
    reason = (f"not adopted: held-out mIoU {current_q.miou:.3f} -> {fitted_q.miou:.3f}, presence F1 "
              f"{current_q.presence_f1:.3f} -> {fitted_q.presence_f1:.3f}; the parameters in force stay")
    return Fit(params, False, reason, current_q, fitted_q, counts, _global_labels(params, foreground))


def _global_labels(params: Mapping[str, Any], foreground: Sequence[str]) -> list[str]:
    own = dict(params.get("label_presence_thresholds") or {})
    return [label for label in foreground if label not in own]


def _pooled(parts: list[tuple[list[Example], dict[str, Any]]], labels: Sequence[str], base: ProjectOptions,
            background_labels: Sequence[str]) -> Quality:
    """Return one quality over all held-out folds, each predicted with its own params, pixels pooled."""
    return _pooled_tally(parts, labels, base, background_labels).quality()


def _pooled_tally(parts: list[tuple[list[Example], dict[str, Any]]], labels: Sequence[str], base: ProjectOptions,
                  background_labels: Sequence[str]) -> _Tally:
    tallies = [_tally(test, labels, base.with_params(params), background_labels) for test, params in parts]
    total = tallies[0]
    for tally in tallies[1:]:
        total = total + tally
    return total
