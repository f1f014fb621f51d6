"""Half precision against fp32 on what the user receives: raw maps, presence decisions and masks.

The trained tiny CLIP of bench/localization.py runs the product's path (the model cast as load_model
casts it for the precision, HeatmapEngine.analyze, then gem_engine.prelabel at its defaults) on held-out
fixture scenes with the fixed 6-colour vocabulary, once per precision on one device. Against fp32 it reports the max and mean absolute difference of the raw
label maps, the fraction of (image, label) pairs whose "has a region" decision flips, and the mean IoU
of the two masks over the pairs where either has one (1.0 = identical pre-labels).

    .venv/bin/python bench/precision_agreement.py [--device cpu|cuda] [--precisions fp32,bf16,fp16] [--scenes 200]

Prints a line per precision, then the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.localization import HELD_OUT_SEED, load_scenes_model  # noqa: E402
from gem_engine.engine import HeatmapEngine  # noqa: E402
from gem_engine.models import PRECISIONS  # noqa: E402
from gem_engine.precision import cast_to_precision  # noqa: E402
from gem_engine.prelabel import prelabel_regions  # noqa: E402
from gem_engine.presence import PresenceOptions  # noqa: E402
from tests import scenes  # noqa: E402

COLORS = [scenes.mention(color, None) for color in scenes.COLORS]


def prelabels(device: str, precision: str, items: list[scenes.Scene], method: str):
    """Return per scene (raw label maps, {label: mask}) at one precision."""
    loaded = load_scenes_model()
    target = torch.device(device)
    # The product's cast (gem_engine/precision.py): on CPU the vision tower only, text tower fp32.
    model = cast_to_precision(loaded.model.to(target), precision, target)
    loaded = dataclasses.replace(loaded, model=model, device=target, dtype=PRECISIONS[precision])
    engine = HeatmapEngine(loaded, method=method)
    background = PresenceOptions().background_prompts
    out = []
    for start in range(0, len(items), 16):
        chunk = items[start : start + 16]
        for scene, analysis in zip(chunk, engine.analyze([s.image for s in chunk], [[c] for c in COLORS], background),
                                   strict=True):
            regions = prelabel_regions(analysis, COLORS, scene.size)
            out.append((analysis.maps, {r.label: r.mask for r in regions}))
    return out


def compare(reference, other) -> dict[str, float]:
    """Return map differences, decision flips and mask IoU of `other` against `reference`."""
    diffs = [np.abs(a[0] - b[0]) for a, b in zip(reference, other, strict=True)]
    flips, ious, pairs = 0, [], 0
    for (_, ref_masks), (_, masks) in zip(reference, other, strict=True):
        for label in COLORS:
            a, b = ref_masks.get(label), masks.get(label)
            pairs += 1
            flips += (a is None) != (b is None)
            if a is not None or b is not None:
                a = a if a is not None else np.zeros_like(b)
                b = b if b is not None else np.zeros_like(a)
                ious.append(float((a & b).sum() / max(1, (a | b).sum())))
    return {"max_map_diff": float(max(d.max() for d in diffs)), "mean_map_diff": float(np.mean([d.mean() for d in diffs])),
            "presence_flips": flips / pairs, "mask_mean_iou": float(np.mean(ious)) if ious else 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--method", default="gem")
    args = parser.parse_args()
    items = list(scenes.scenes(HELD_OUT_SEED, args.scenes))
    precisions = args.precisions.split(",")
    reference = prelabels(args.device, "fp32", items, args.method)
    figures: dict[str, object] = {"device": args.device, "method": args.method, "scenes": args.scenes}
    for precision in [p for p in precisions if p != "fp32"]:
        result = compare(reference, prelabels(args.device, precision, items, args.method))
        figures[precision] = result
        print(f"{precision} vs fp32 on {args.device}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()), flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
