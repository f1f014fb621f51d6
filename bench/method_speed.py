"""Seconds per image of every engine method relative to GEM, in one process: CPU, fp32, ViT-B-16.

Random ViT-B-16 weights, 8 random 640 x 480 images, 20 labels, batch 1 and 8 (one engine call with
that many images; the engine's own CPU batching). Every method runs on the same square 448 px input
as GEM, except Grad-CAM, which runs at the model's own 224 px. `naclip+pamr` adds PAMR (10
iterations, dilations 8 and 16) at the 448 px input; `preset:<name>` runs a paper's evaluation
protocol (gem_engine/presets.py), windows and PAMR included. Timed from PIL images to raw maps,
text embeddings cached, as a worker runs. The machine is shared: every round times all methods in
turn and the best of the rounds is kept, so the ratios to GEM are the meaningful figures. One
warm-up call per method and batch size first. The JSON line last.

    .venv/bin/python bench/method_speed.py [--rounds 2] [--threads 2] [--methods gem,naclip,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gem_speed import LABELS  # noqa: E402  (the 20 labels of the GEM speed benchmark)

SQUARE_448 = {"input_mode": "square", "image_size": 448}


def sides() -> dict[str, dict]:
    """Return engine options per timed side, GEM first."""
    from gem_engine.presets import PRESETS

    table = {name: {"method": name, **SQUARE_448} for name in ("gem", "naclip", "sclip", "clearclip", "patch", "qk", "vv")}
    table["gradcam"] = {"method": "gradcam"}
    table["naclip+pamr"] = {"method": "naclip", **SQUARE_448, "pamr_iterations": 10}
    table.update({f"preset:{name}": dict(preset.engine) for name, preset in PRESETS.items()})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="", help="comma-separated subset of the sides (gem is always timed)")
    args = parser.parse_args()

    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from gem_engine.engine import HeatmapEngine
    from gem_engine.models import wrap_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = wrap_model(open_clip.create_model("ViT-B-16", pretrained=None).eval(), "ViT-B-16")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(8)]
    labels = [[label] for label in LABELS]
    table = sides()
    if args.methods:
        wanted = ["gem", *[name for name in args.methods.split(",") if name and name != "gem"]]
        unknown = [name for name in wanted if name not in table]
        if unknown:
            raise SystemExit(f"unknown sides {unknown}: use some of {', '.join(table)}")
        table = {name: table[name] for name in wanted}
    engines = {name: HeatmapEngine(loaded, **options) for name, options in table.items()}

    print(f"threads={args.threads}, {args.rounds} rounds (best of), 20 labels, ViT-B-16 random weights", flush=True)
    for batch in (1, 8):
        for engine in engines.values():
            engine.heatmaps(images[:batch], labels)  # warm-up: text cache, position embeddings, allocator
    best: dict[str, float] = {}
    for round_index in range(args.rounds):
        for batch in (1, 8):
            for name, engine in engines.items():
                start = time.perf_counter()
                engine.heatmaps(images[:batch], labels)
                seconds = (time.perf_counter() - start) / batch
                key = f"{name}_s_b{batch}"
                best[key] = min(best.get(key, float("inf")), seconds)
                print(f"round {round_index + 1} batch {batch} {name:>16}: {seconds:.3f} s/image", flush=True)

    figures: dict[str, object] = {"threads": args.threads, "rounds": args.rounds}
    for batch in (1, 8):
        gem = best[f"gem_s_b{batch}"]
        for name in engines:
            seconds = best[f"{name}_s_b{batch}"]
            figures[f"{name}_s_b{batch}"] = round(seconds, 4)
            if name != "gem":
                figures[f"{name}_vs_gem_b{batch}"] = round(seconds / gem, 2)
        if "naclip+pamr" in engines and "naclip" in engines:
            figures[f"pamr_added_s_b{batch}"] = round(best[f"naclip+pamr_s_b{batch}"] - best[f"naclip_s_b{batch}"], 4)
    print("\nseconds per image (ratio to GEM, same run):")
    for name in engines:
        cells = [f"batch {b}: {best[f'{name}_s_b{b}']:.3f} ({best[f'{name}_s_b{b}'] / best[f'gem_s_b{b}']:.2f}x)"
                 for b in (1, 8)]
        print(f"{name:>16}  " + "  ".join(cells))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
