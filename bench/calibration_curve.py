"""Calibration from K annotated images: held-out quality against the uncalibrated default, K = 10, 25, 50.

On the project's own fixture (tests/scenes.py scenes, the trained tiny CLIP of bench/localization.py),
a simulated project with the fixed 36-label vocabulary (colour + shape names, most absent from each
scene) or the 6 colour labels: K scenes of a training seed are "annotated" with their ground truth,
`backend.calibration.fit.fit` calibrates the product's defaults on them (cross-validated adoption), and
the params it returns (the defaults when not adopted, as the product would keep them) pre-label held-out
scenes of another seed. Each K is repeated with `--repeats` disjoint draws of annotated scenes.

Rows per vocabulary: all-background (predict nothing), default (uncalibrated), calibrated (mean over
repeats, with the worst repeat), fitted params adopted or not (what each fit found, used even where the
adoption rule refused it: what the rule guards against), tuned on held-out (the same search run on the held-out scenes
themselves: the most these knobs can give), oracle presence (told which labels are present; the default's
masks).
Figures: mIoU with background over all pixels (the fit's own objective), image-level presence F1,
region score ECE (10 bins; a region counts as right when its IoU with its label is at least 0.5), and on
the 36 names how often the right shape scores highest among its colour's names (what per-label thresholds
could learn about shapes; chance is 1 in 6). The maps are the product's default ones (PAMR in semantic
mode), kept at the scene's size as the calibration job keeps them at its fit size.

    .venv/bin/python bench/calibration_curve.py [--held-out 200] [--ks 10,25,50] [--repeats 3]

Prints a table, writes the curve as a PNG when --plot is given, and prints the figures last as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backend.calibration.fit import Example, Quality, fit, presence_matrix, quality, search  # noqa: E402
from backend.calibration.job import at_fit_size  # noqa: E402
from backend.options import ProjectOptions  # noqa: E402
from bench.localization import HELD_OUT_SEED  # noqa: E402
from bench.prelabel_quality import VOCABULARIES, analyze  # noqa: E402
from tests import scenes  # noqa: E402

TRAINING_SEED = 777  # annotated scenes are drawn from this seed; figures come from HELD_OUT_SEED's scenes


def examples(vocabulary: str, seed: int, count: int, background: tuple[str, ...],
             pamr_iterations: int = 0) -> list[Example]:
    """Return `count` scenes of `seed` as examples, their maps at the scene's size as the calibration job keeps
    them (PAMR's come at the model's input size: 12 times the pixels of a 128 px scene, for the same regions)."""
    cases, _ = analyze("gem", vocabulary, seed, count, background, pamr_iterations)
    return [Example(f"scene {i}", at_fit_size(c.analysis, (c.size[1], c.size[0])), c.truth, (c.size[1], c.size[0]))
            for i, c in enumerate(cases)]


def shape_hits(held_out: list[Example], labels: list[str], options: ProjectOptions) -> float | None:
    """Return how often, for an object whose colour names several labels, the right one has the highest
    presence probability of them (None when the vocabulary names colours only): how much a threshold per
    label could learn about shapes."""
    _, probability, present = presence_matrix(held_out, labels, options, ())
    colours = np.array([label.split()[0] for label in labels])
    hits = []
    for row, truth in zip(probability, present, strict=True):
        for colour in set(colours[truth]):
            same = colours == colour
            if same.sum() > 1:
                hits.append(bool(truth[same][np.argmax(row[same])]))
    return float(np.mean(hits)) if hits else None


def oracle_quality(held_out: list[Example], labels: list[str], options: ProjectOptions) -> Quality:
    """Return the default's quality when presence is told: absent labels' scores forced far below background."""
    told = []
    for e in held_out:
        scores = np.where([label in e.truth for label in labels], 1.0, -1.0).astype(np.float32)
        told.append(replace(e, analysis=replace(e.analysis, label_scores=scores,
                                                maps=e.analysis.maps)))
    return quality(told, labels, options.with_params({"presence": "image"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", type=int, default=200, help="held-out scenes (default 200)")
    parser.add_argument("--ks", default="10,25,50", help="annotated images per fit (default 10,25,50)")
    parser.add_argument("--repeats", type=int, default=3, help="disjoint draws of annotated scenes per K")
    parser.add_argument("--vocabularies", default="full-36,colors-6")
    parser.add_argument("--plot", type=Path, help="write the curve to this PNG")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replot", type=Path, help="only draw --plot from the figures (last JSON line) of a saved run")
    args = parser.parse_args()
    if args.replot:
        _plot(json.loads(args.replot.read_text().strip().splitlines()[-1]), args.plot or Path("calibration_curve.png"))
        return
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    ks = [int(k) for k in args.ks.split(",")]
    base = ProjectOptions()
    background = tuple(base.background_prompts)
    pamr = base.resolved("pamr_iterations")  # the maps the product's default computes (PAMR in semantic mode)
    figures: dict[str, object] = {"held_out": args.held_out, "ks": ks, "repeats": args.repeats}
    lines = ["| vocabulary | row | K | mIoU (x default) | worst repeat mIoU | presence F1 | score ECE | adopted |",
             "|" + " --- |" * 8]
    for vocabulary in args.vocabularies.split(","):
        labels = VOCABULARIES[vocabulary][0]
        # The maps as the product's defaults make them (PAMR refinement included when it is on by default).
        held_out = examples(vocabulary, HELD_OUT_SEED, args.held_out, background, pamr)
        pool = examples(vocabulary, TRAINING_SEED, max(ks) * args.repeats, background, pamr)
        default = quality(held_out, labels, base)
        nothing = quality(held_out, labels, base.with_params({"presence_threshold": 1.0, "presence": "image"}))
        told = oracle_quality(held_out, labels, base)
        # The most any calibration of these knobs could reach: the search run on the held-out scenes themselves.
        bound = quality(held_out, labels, base.with_params(search(held_out, labels, base, {})))
        rows = {"all-background": nothing, "default": default, "tuned on held-out (bound)": bound,
                "oracle presence": told}
        for name, q in rows.items():
            lines.append(f"| {vocabulary} | {name} | - | {q.miou:.3f} ({q.miou / default.miou:.2f}x) | - | "
                         f"{q.presence_f1:.3f} | {_cell(q.score_ece)} | - |")
        figures[vocabulary] = {name: q.to_dict() for name, q in rows.items()}
        hits = shape_hits(held_out, labels, base)
        if hits is not None:
            figures[vocabulary]["right_shape_first"] = hits
            print(f"{vocabulary}: the right shape scores highest of its colour's names in {hits:.1%} of objects "
                  f"(chance {1 / len(scenes.SHAPES):.1%})", flush=True)
        curve = []
        for k in ks:
            runs, unguarded = [], []
            for r in range(args.repeats):
                started = time.perf_counter()
                annotated = pool[r * k:(r + 1) * k]
                result = fit(annotated, labels, base, {})
                params = result.params if result.adopted else {}
                got = quality(held_out, labels, base.with_params(params))
                runs.append((got, result.adopted, time.perf_counter() - started))
                # What the adoption rule guards against: the fitted params used whether adopted or not.
                unguarded.append(got if result.adopted else quality(held_out, labels, base.with_params(result.params)))
                print(f"{vocabulary} K={k} repeat {r}: {result.reason}; held-out mIoU {got.miou:.3f} "
                      f"(default {default.miou:.3f}, fitted params adopted or not {unguarded[-1].miou:.3f} "
                      f"F1 {unguarded[-1].presence_f1:.3f}); params {result.params}", flush=True)
            adopted = sum(a for _, a, _ in runs)
            point = {"k": k, **_summary([q for q, *_ in runs], default), "adopted": adopted,
                     "fit_seconds": float(np.mean([s for *_, s in runs])),
                     "unguarded": _summary(unguarded, default)}
            for name, row, count in (("calibrated", point, f"{adopted}/{args.repeats}"),
                                     ("fitted params, adopted or not", point["unguarded"], "-")):
                lines.append(f"| {vocabulary} | {name} | {k} | {row['miou']:.3f} ({row['ratio']:.2f}x) | "
                             f"{row['worst_miou']:.3f} ({row['worst_ratio']:.2f}x) | {row['presence_f1']:.3f} | "
                             f"{_cell(row['score_ece'])} | {count} |")
            curve.append(point)
        figures[vocabulary]["curve"] = curve
    print("\n".join(lines))
    if args.plot:
        _plot(figures, args.plot)
        print(f"wrote {args.plot}")
    figures["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(figures, separators=(",", ":")))


def _summary(runs: list[Quality], default: Quality) -> dict[str, float | None]:
    """Return the mean and worst held-out mIoU of some draws (also as multiples of the default's), their mean
    presence F1 and mean score ECE."""
    mean, worst = float(np.mean([q.miou for q in runs])), float(min(q.miou for q in runs))
    eces = [q.score_ece for q in runs if q.score_ece is not None]
    return {"miou": mean, "worst_miou": worst, "ratio": mean / default.miou, "worst_ratio": worst / default.miou,
            "presence_f1": float(np.mean([q.presence_f1 for q in runs])),
            "score_ece": float(np.mean(eces)) if eces else None}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _plot(figures: dict, path: Path) -> None:
    """Draw each vocabulary's curve as multiples of its default's held-out mIoU (the figures' JSON suffices)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vocabularies = [name for name, value in figures.items() if isinstance(value, dict) and "curve" in value]
    fig, axes = plt.subplots(1, len(vocabularies), figsize=(5 * len(vocabularies), 3.8), squeeze=False)
    for ax, vocabulary in zip(axes[0], vocabularies, strict=True):
        rows, curve = figures[vocabulary], figures[vocabulary]["curve"]
        default = rows["default"]["miou"]
        ks = [c["k"] for c in curve]
        ax.plot(ks, [c["ratio"] for c in curve], "o-", label="calibrated (mean of draws)")
        ax.plot(ks, [c["worst_ratio"] for c in curve], "v:", label="calibrated (worst draw)")
        ax.plot(ks, [c["unguarded"]["ratio"] for c in curve], "s--", label="fitted params, adopted or not (mean)")
        ax.axhline(1.25, linestyle=(0, (1, 3)), color="green", label="1.25x (issue 18's target)")
        ax.axhline(1.0, linestyle="--", color="grey", label="default (uncalibrated)")
        bound = rows["tuned on held-out (bound)"]["miou"] / default
        ax.axhline(bound, linestyle="-.", color="grey", label=f"tuned on the held-out scenes ({bound:.2f}x)")
        oracle, nothing = rows["oracle presence"]["miou"] / default, rows["all-background"]["miou"] / default
        ax.set(title=f"{vocabulary}: oracle presence {oracle:.2f}x, all-background {nothing:.2f}x",
               xlabel="annotated images K", ylabel="held-out mIoU, x the default's",
               ylim=(0.9, max(1.35, bound + 0.05)))
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
