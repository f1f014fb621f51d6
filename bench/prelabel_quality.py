"""Pre-label quality on a fixed vocabulary where most labels are absent: what a user of the product receives.

On the project's own fixture (tests/scenes.py, the trained tiny CLIP of bench/localization.py), each
scene holds one to three coloured shapes; the vocabulary is fixed: the 6 colour labels ("red object",
...) or the 36 colour+shape labels ("red circle", ...), so most labels are absent from each image.
Every row runs the product's own path from maps to regions (gem_engine.prelabel, at the product's
defaults unless the row says otherwise: 448 px, square input, semantic mode, Otsu) on held-out scenes:

- all-background: predict nothing (the baseline a pre-labeler must beat);
- old default: every label gets its regions (no presence step, no background class), as before;
- new default: presence decision + background class + scores, the defaults of gem_engine.presence;
- oracle presence: told which labels are present, then the new default's masks: what is left is
  mask-shape error.

Figures per row: label precision and recall (a label is predicted when it has a region), absent-label
area (pixels given to labels not in the image, as a fraction of the whole image, mean over images),
mIoU with background (per class over all pixels of all images, classes present in truth or prediction),
IoU of present labels (mean over present (image, label) pairs, a missed label counts 0), mask-to-object
area ratio (median over predicted present labels), label score AUC (ROC AUC of each (image, label)'s
best region score, 0 without a region, present against absent: do scores separate what is there from
what is not), region score AUC and ECE (10 bins) of region scores against "the label is present and the
region's IoU with it is at least 0.5" (what a score claims to estimate), seconds per image of the
engine's analysis. `--tune` sweeps the presence
threshold and evidence on separate tuning scenes (another seed) and prints the best, which is how the
defaults were chosen.

    .venv/bin/python bench/prelabel_quality.py [--scenes 300] [--methods gem,gradcam] [--tune] [--pamr 10]

`--pamr` is the product's `pamr_iterations`: `auto` (default) resolves per region mode as the product does
(backend.options.AUTO_PAMR_ITERATIONS), so the rows without the flag are the product's defaults; rows are
named method+pamrN where PAMR ran.

Prints a table for people, then the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.options import OPTIONS, ProjectOptions  # noqa: E402
from bench.localization import HELD_OUT_SEED, load_scenes_model  # noqa: E402
from gem_engine.engine import HeatmapEngine, ImageAnalysis  # noqa: E402
from gem_engine.prelabel import prelabel_regions  # noqa: E402
from gem_engine.presence import EVIDENCE, PresenceOptions  # noqa: E402
from gem_engine.regions import Region, RegionOptions, extract_regions  # noqa: E402
from tests import scenes  # noqa: E402

TUNING_SEED = 4242  # thresholds are chosen on these scenes, figures reported on HELD_OUT_SEED's
VOCABULARIES: dict[str, tuple[list[str], Callable[[scenes.SceneObject], str]]] = {
    "colors-6": ([scenes.mention(c, None) for c in scenes.COLORS], lambda o: scenes.mention(o.color, None)),
    "full-36": ([scenes.mention(c, s) for c in scenes.COLORS for s in scenes.SHAPES], lambda o: o.name),
}
TARGETS = {"absent_area": 0.10, "miou_ratio": 1.6, "precision": 0.8, "recall": 0.6, "score_auc": 0.85}


@dataclass
class Case:
    """One held-out scene under one vocabulary: its analysis and the truth."""

    analysis: ImageAnalysis
    truth: dict[str, np.ndarray]  # present label -> visible mask
    size: tuple[int, int]


Predictor = Callable[[Case, list[str]], list[Region]]


def analyze(method: str, vocabulary_name: str, seed: int, count: int, background: Sequence[str],
            pamr_iterations: int = 0) -> tuple[list[Case], float]:
    """Return the cases of `count` scenes of `seed` under a named vocabulary and the engine's seconds per image."""
    vocabulary, name_of = VOCABULARIES[vocabulary_name]
    engine = HeatmapEngine(load_scenes_model(), method=method, pamr_iterations=pamr_iterations)
    items = list(scenes.scenes(seed, count))
    engine.analyze([items[0].image], [[v] for v in vocabulary], background)  # warm-up: text cache, allocator
    started = time.perf_counter()
    analyses = engine.analyze([s.image for s in items], [[v] for v in vocabulary], background)
    seconds = (time.perf_counter() - started) / count
    cases = [Case(a, {name_of(o): o.mask for o in s.objects}, s.size) for a, s in zip(analyses, items, strict=True)]
    return cases, seconds


def old_default(regions: RegionOptions) -> Predictor:
    """Return what the product gave before the presence step: every label's regions, no background class."""
    return lambda case, labels: extract_regions(case.analysis.maps, labels, case.size, regions)


def new_default(presence: PresenceOptions, regions: RegionOptions) -> Predictor:
    """Return the product's path with these options."""
    return lambda case, labels: prelabel_regions(case.analysis, labels, case.size, regions, presence)


def oracle(regions: RegionOptions) -> Predictor:
    """Return the product's masks for exactly the labels that are present (presence told, not decided)."""

    def predict(case: Case, labels: list[str]) -> list[Region]:
        keep = [i for i, label in enumerate(labels) if label in case.truth]
        if not keep:
            return []
        analysis = replace(case.analysis, maps=case.analysis.maps[keep],
                           label_scores=np.full(len(keep), 1.0, dtype=np.float32))
        told = PresenceOptions(evidence="none", background_prompts=())
        return prelabel_regions(analysis, [labels[i] for i in keep], case.size, regions, told)

    return predict


def nothing(case: Case, labels: list[str]) -> list[Region]:
    """Return no regions: the all-background baseline."""
    return []


def _auc(scores: list[float], hits: list[bool]) -> float | None:
    scores_a, hits_a = np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool)
    positives, negatives = scores_a[hits_a], scores_a[~hits_a]
    if not len(positives) or not len(negatives):
        return None
    # Probability that a positive outscores a negative, ties counting half (Mann-Whitney).
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + 0.5 * ties)


def _ece(scores: list[float], hits: list[bool], bins: int = 10) -> float | None:
    if not scores:
        return None
    scores_a, hits_a = np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=np.float64)
    which = np.minimum((scores_a * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += chosen.mean() * abs(scores_a[chosen].mean() - hits_a[chosen].mean())
    return float(total)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def evaluate(cases: list[Case], labels: list[str], predict: Predictor) -> dict[str, float | None]:
    """Return the row's figures (see the module docstring)."""
    classes = len(labels) + 1  # last: background
    intersection, union = np.zeros(classes), np.zeros(classes)
    predicted_labels = correct_labels = true_labels = 0
    absent_area, present_iou, ratios = [], [], []
    region_scores, region_hits, presence_scores, presence_hits = [], [], [], []
    for case in cases:
        regions = predict(case, labels)
        height, width = case.size[1], case.size[0]
        truth_map = np.full((height, width), classes - 1)
        for label, mask in case.truth.items():
            truth_map[mask] = labels.index(label)
        predicted_map = np.full((height, width), classes - 1)
        best = np.full((height, width), -np.inf)
        masks: dict[str, np.ndarray] = {}
        for region in regions:
            masks[region.label] = masks.get(region.label, np.zeros((height, width), bool)) | region.mask
            better = region.mask & (region.score > best)
            predicted_map[better], best[better] = labels.index(region.label), region.score
            truth = case.truth.get(region.label)
            region_scores.append(region.score)
            region_hits.append(truth is not None and _iou(region.mask, truth) >= 0.5)
        for c in range(classes):
            t, p = truth_map == c, predicted_map == c
            intersection[c] += np.logical_and(t, p).sum()
            union[c] += np.logical_or(t, p).sum()
        predicted_labels += len(masks)
        correct_labels += sum(label in case.truth for label in masks)
        true_labels += len(case.truth)
        absent = np.zeros((height, width), bool)
        for label, mask in masks.items():
            if label not in case.truth:
                absent |= mask
        absent_area.append(absent.mean())
        for label, truth in case.truth.items():
            mask = masks.get(label, np.zeros_like(truth))
            present_iou.append(_iou(mask, truth))
            if mask.any():
                ratios.append(mask.sum() / truth.sum())
        best_score = {label: max((r.score for r in regions if r.label == label), default=0.0) for label in labels}
        presence_scores.extend(best_score[label] for label in labels)
        presence_hits.extend(label in case.truth for label in labels)
    seen = union > 0
    return {
        "precision": correct_labels / predicted_labels if predicted_labels else None,
        "recall": correct_labels / true_labels,
        "absent_area": float(np.mean(absent_area)),
        "miou": float(np.mean(intersection[seen] / union[seen])),
        "present_iou": float(np.mean(present_iou)),
        "area_ratio": float(np.median(ratios)) if ratios else None,
        "score_auc": _auc(region_scores, region_hits),
        "score_ece": _ece(region_scores, region_hits),
        "label_score_auc": _auc(presence_scores, presence_hits),
    }


def tune(method: str, count: int, modes: list[str], background: Sequence[str]) -> dict:
    """Return the presence evidence and threshold with the best mean label F1 over vocabularies and modes."""
    cases = {name: analyze(method, name, TUNING_SEED, count, background)[0] for name in VOCABULARIES}
    results = []
    for evidence in [e for e in EVIDENCE if e != "none"]:
        for threshold in np.round(np.arange(0.1, 1.0, 0.1), 2):
            presence = PresenceOptions(evidence=evidence, threshold=float(threshold), background_prompts=background)
            f1s = []
            for mode in modes:
                for name, found in cases.items():
                    row = evaluate(found, VOCABULARIES[name][0], new_default(presence, RegionOptions(mode=mode)))
                    p, r = row["precision"] or 0.0, row["recall"]
                    f1s.append(2 * p * r / (p + r) if p + r else 0.0)
            results.append((float(np.mean(f1s)), evidence, float(threshold)))
            print(f"tune {method} {evidence:>9} threshold {threshold:.1f}: label F1 per mode and vocabulary "
                  f"{[round(f, 3) for f in f1s]}, mean {np.mean(f1s):.3f}", flush=True)
    best = max(results)
    return {"evidence": best[1], "threshold": best[2], "mean_f1": round(best[0], 3)}


def pamr_for(pamr: str, mode: str) -> int:
    """Return the PAMR iterations the product runs with `pamr_iterations`=`pamr` in region mode `mode`."""
    option = next(o for o in OPTIONS if o.name == "pamr_iterations")
    given = option.read(pamr, "--pamr")
    return ProjectOptions(region_mode=mode, pamr_iterations=given).resolved("pamr_iterations")


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300, help="held-out scenes per vocabulary (default 300)")
    parser.add_argument("--methods", default="gem,gradcam", help="comma list of engine methods (default gem,gradcam)")
    parser.add_argument("--modes", default="semantic,independent")
    parser.add_argument("--tune", action="store_true", help="first sweep presence settings on tuning scenes")
    parser.add_argument("--tune-scenes", type=int, default=150)
    parser.add_argument("--pamr", default="auto",
                        help="PAMR iterations after the maps, or auto: the product's choice per region mode (default)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defaults = PresenceOptions()
    background = tuple(defaults.background_prompts)
    figures: dict[str, object] = {"scenes": args.scenes, "presence_defaults": {
        "evidence": defaults.evidence, "threshold": defaults.threshold, "background_prompts": list(background)}}
    header = ("| method | mode | vocabulary | row | precision | recall | absent area | mIoU (x all-bg) | present IoU "
              "| area ratio | label score AUC | region score AUC | region score ECE | s/image |")
    lines = [header, "|" + " --- |" * 14]
    for method in args.methods.split(","):
        if args.tune:
            figures[f"{method}_tuned"] = tune(method, args.tune_scenes, args.modes.split(","), background)
            print(f"tuned {method}: {figures[f'{method}_tuned']}", flush=True)
        for vocabulary_name, (labels, _) in VOCABULARIES.items():
            analyzed: dict[int, tuple[list[Case], float]] = {}  # by PAMR iterations
            for mode in args.modes.split(","):
                pamr = pamr_for(args.pamr, mode)
                if pamr not in analyzed:
                    analyzed[pamr] = analyze(method, vocabulary_name, HELD_OUT_SEED, args.scenes, background, pamr)
                cases, seconds = analyzed[pamr]
                baseline = evaluate(cases, labels, nothing)
                regions = RegionOptions(mode=mode)
                rows = {"all-background": nothing, "old default": old_default(regions),
                        "new default": new_default(defaults, regions), "oracle presence": oracle(regions)}
                for row_name, predict in rows.items():
                    row = baseline if predict is nothing else evaluate(cases, labels, predict)
                    row["miou_ratio"] = row["miou"] / baseline["miou"]
                    row["seconds_per_image"] = seconds
                    shown = f"{method}+pamr{pamr}" if pamr else method
                    key = f"{shown}/{mode}/{vocabulary_name}/{row_name}"
                    figures[key] = {k: None if v is None else round(float(v), 4) for k, v in row.items()}
                    lines.append(
                        f"| {shown} | {mode} | {vocabulary_name} | {row_name} | {_cell(row['precision'])} | "
                        f"{_cell(row['recall'])} | {_cell(row['absent_area'])} | {row['miou']:.3f} "
                        f"({row['miou_ratio']:.2f}x) | {_cell(row['present_iou'])} | {_cell(row['area_ratio'], 2)} | "
                        f"{_cell(row['label_score_auc'])} | {_cell(row['score_auc'])} | {_cell(row['score_ece'])} | "
                        f"{seconds:.3f} |")
                    print(lines[-1], flush=True)
    print("\n".join(lines))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
