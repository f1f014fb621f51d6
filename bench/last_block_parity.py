"""Parity of a last-block method (naclip, sclip, clearclip) with an independent derivation, fp32 on CPU.

Shared by bench/naclip_parity.py, bench/sclip_parity.py and bench/clearclip_parity.py. One random
ViT-B-16 (seed 7, as bench/gem_parity.py), a square, a wide and a grayscale image, 4 prompts. The
product's maps (gem_engine/last_block.py through run_streams, and the whole engine from PIL images)
are compared with tests/independent_methods.py, which computes the method per image and per head
with explicit matrices, on the same input tensors and text embeddings: square 448 px (28 x 28 grid,
position embeddings interpolated), the wide image at 448 x 672 (28 x 42) and every image at 224 px
(the native 14 x 14 grid). A negative control changes one setting of the derivation (the method's
script says which); it must fail the tolerance. The JSON line last.
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

PROMPTS = ["cat", "remote control", "traffic light", "sky"]
SEED = 7
TARGET = 1e-4


def main(method: str, negative: dict, negative_text: str) -> None:
    """Print the max abs differences of `method` against the derivation, then the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(ROOT / "bench" / "out" / f"{method}_parity"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import open_clip
    import torch
    from gem_parity import make_images
    from PIL import Image

    from gem_engine import text as text_module
    from gem_engine.engine import HeatmapEngine
    from gem_engine.gem import cosine_maps, patch_features, run_streams
    from gem_engine.last_block import LastBlockOptions, last_block_tokens
    from gem_engine.models import wrap_model
    from gem_engine.preprocess import prepare
    from tests import independent_methods as independent

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    loaded = wrap_model(model, "ViT-B-16")
    paths = make_images(work)
    images = [Image.open(path) for path in paths]
    labels = [[prompt] for prompt in PROMPTS]
    embeddings = text_module.text_embeddings(loaded, labels)

    def pixels(image, mode, size):
        return prepare(image, mode=mode, size=size, patch=(16, 16), mean=loaded.mean, std=loaded.std).windows[0].pixels[None]

    inputs = {f"{path.stem}-448": pixels(image, "square", 448) for path, image in zip(paths, images, strict=True)}
    inputs["wide-aspect-28x42"] = pixels(images[1], "aspect", 672)
    inputs.update({f"{path.stem}-224": pixels(image, "square", 224) for path, image in zip(paths, images, strict=True)})

    options = LastBlockOptions(method)
    diffs, expected_maps, ours_seconds, theirs_seconds = {}, {}, 0.0, 0.0
    for name, tensor in inputs.items():
        start = time.perf_counter()
        with torch.inference_mode():
            streams = run_streams(model.visual, tensor, None, want_last_qkv=True, want_last_input=True,
                                  interpolation="dino")
            ours = cosine_maps(patch_features(last_block_tokens(model.visual, streams, options)), embeddings,
                               streams.grid)
        ours_seconds += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            expected = independent.last_block_maps(model, tensor, embeddings, method)
        theirs_seconds += time.perf_counter() - start
        expected_maps[name] = expected[0]
        diffs[name] = float((ours - expected).abs().max())

    engine = HeatmapEngine(loaded, method=method, input_mode="square", image_size=448)
    engine_maps = engine.heatmaps(images, labels)
    engine_diff = max(float(np.abs(maps - expected_maps[f"{path.stem}-448"].numpy()).max())
                      for path, maps in zip(paths, engine_maps, strict=True))

    first = next(iter(inputs))
    with torch.no_grad():
        changed = independent.last_block_maps(model, inputs[first], embeddings, method, **negative)
    negative_diff = float((changed[0] - expected_maps[first]).abs().max())
    negative_fails = negative_diff > TARGET

    for name, diff in diffs.items():
        print(f"{name:>18}: max |ours - independent| {diff:.2e}")
    spread = torch.cat([m.flatten() for m in expected_maps.values()])
    print(f"maps span [{float(spread.min()):.3f}, {float(spread.max()):.3f}], std {float(spread.std()):.3f}")
    print(f"engine (PIL in, square 448) vs independent: max diff {engine_diff:.2e}")
    print(f"time: ours {ours_seconds:.1f} s, independent {theirs_seconds:.1f} s for {len(inputs)} inputs")
    verdict = "FAILS the tolerance, as it must" if negative_fails else "PASSES the tolerance: the check is blind to it"
    print(f"negative control ({negative_text}) on {first}: max diff {negative_diff:.2e} -> {verdict}")
    max_diff = max([*diffs.values(), engine_diff])
    print(f"target: max diff <= {TARGET:g}")
    print(json.dumps({
        "method": method,
        "max_abs_diff": max_diff,
        "max_abs_diff_engine": engine_diff,
        "map_std": round(float(spread.std()), 4),
        "negative_control": negative_text,
        "negative_control_diff": negative_diff,
        "negative_control_fails": negative_fails,
        "target": TARGET,
        "pass": max_diff <= TARGET and negative_fails,
    }))
