"""Parity of our GEM with the reference (gem-torch 1.0.1 on open_clip 2.23.0), fp32 on CPU.

Builds the reference in its own virtual environment (bench/.venv-gemref, git-ignored), makes one
random ViT-B-16 and a set of images here, and runs the reference on the same weights, images and
input tensors in a subprocess. Prints the max absolute difference of the raw cosine maps (patch
grid), of the reference's own upsampled output, and of the preprocessed pixels; the JSON line last.

    .venv/bin/python bench/gem_parity.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REF_VENV = ROOT / "bench" / ".venv-gemref"
REF_PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "gem-torch==1.0.1", "open_clip_torch==2.23.0"]
PROMPTS = ["cat", "remote control", "traffic light", "sky"]
SEED = 7

# Runs inside the reference venv: open_clip 2.23.0 + gem-torch 1.0.1, nothing from this repository.
REFERENCE_SCRIPT = r"""
import sys, torch, open_clip
import torch.nn.functional as F
from PIL import Image
from gem import get_gem_img_transform
from gem.gem_wrapper import GEMWrapper

work = sys.argv[1]
job = torch.load(f"{work}/job.pt", weights_only=False)
torch.set_num_threads(job["threads"])
# What create_gem_model does, with our weights loaded before GEM copies them into its blocks.
clip = open_clip.create_model("ViT-B-16", pretrained=None)
clip.load_state_dict(torch.load(f"{work}/weights.pt"), strict=True)
gem_model = GEMWrapper(clip.eval(), open_clip.get_tokenizer("ViT-B-16"), depth=job["gem_depth"]).eval()
transform = get_gem_img_transform()
out = {"pixels": [], "raw": [], "full": []}
with torch.no_grad():
    for path in job["images"]:
        # The reference's documented use: Image.open(...).convert("RGB"), then its transform.
        out["pixels"].append(transform(Image.open(path).convert("RGB")).unsqueeze(0))
    for pixels in job["inputs"]:
        feat_gem, _ = gem_model.model.visual(pixels)
        feat = F.normalize(feat_gem, dim=-1)
        text = gem_model.encode_text(job["prompts"])
        grid = (pixels.shape[-2] // 16, pixels.shape[-1] // 16)
        raw = (feat[:, 1:] @ text.transpose(-1, -2)).transpose(1, 2).reshape(1, -1, *grid)
        out["raw"].append(raw[0])
        out["full"].append(gem_model(pixels, job["prompts"], normalize=False)[0])
torch.save(out, f"{work}/reference.pt")
"""


def ensure_reference_venv() -> Path:
    """Return the reference venv's python, creating the venv (torch from the local wheels) if missing."""
    python = REF_VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import gem, open_clip"], capture_output=True)
        if probe.returncode == 0:
            return python
    print(f"building the reference venv in {REF_VENV} ...", flush=True)
    subprocess.run(["python3.11", "-m", "venv", str(REF_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *REF_PACKAGES], check=True)
    return python


def make_images(folder: Path) -> list[Path]:
    """Write the test images: a square and a wide colour image, and a grayscale one."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(SEED)
    paths = []
    specs = [("square", (500, 500), "RGB"), ("wide", (640, 360), "RGB"), ("gray", (300, 420), "L")]
    for name, size, mode in specs:
        noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(noise // 3 + 60)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse([x, y, x + size[0] // 4, y + size[1] // 4], fill=colour)
        path = folder / f"{name}.png"
        image.convert(mode).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(ROOT / "bench" / "out" / "gem_parity"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from gem_engine import text as text_module
    from gem_engine.engine import HeatmapEngine
    from gem_engine.maps import upsample
    from gem_engine.models import wrap_model
    from gem_engine.preprocess import prepare

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ref_python = ensure_reference_venv()

    torch.manual_seed(SEED)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    torch.save(model.state_dict(), work / "weights.pt")
    loaded = wrap_model(model, "ViT-B-16")
    paths = make_images(work)
    images = [Image.open(path) for path in paths]
    labels = [[p] for p in PROMPTS]

    # Reference-style square inputs from our preprocessing, plus one non-square tensor (28 x 42 grid).
    inputs = [prepare(image, mode="square", size=448, patch=(16, 16), mean=loaded.mean, std=loaded.std)
              .windows[0].pixels.unsqueeze(0) for image in images]
    inputs.append(prepare(images[1], mode="aspect", size=672, patch=(16, 16), mean=loaded.mean, std=loaded.std)
                  .windows[0].pixels.unsqueeze(0))
    torch.save({"images": [str(p) for p in paths], "inputs": inputs, "prompts": PROMPTS, "gem_depth": 7,
                "threads": args.threads}, work / "job.pt")

    start = time.perf_counter()
    subprocess.run([str(ref_python), "-c", REFERENCE_SCRIPT, str(work)], check=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    ref_seconds = time.perf_counter() - start
    reference = torch.load(work / "reference.pt", weights_only=False)

    from gem_engine.gem import GemOptions, cosine_maps, patch_features, run_streams

    text = text_module.text_embeddings(loaded, labels)
    pixel_diff = max(float((ours - ref).abs().max()) for ours, ref in zip(inputs, reference["pixels"], strict=False))
    raw_diffs, full_diffs = [], []
    with torch.inference_mode():
        for pixels, ref_raw, ref_full in zip(inputs, reference["raw"], reference["full"], strict=True):
            streams = run_streams(model.visual, pixels, GemOptions(blocks=6))
            ours = cosine_maps(patch_features(streams.gem), text, streams.grid)[0]
            raw_diffs.append(float((ours - ref_raw).abs().max()))
            full = upsample(ours.numpy(), (pixels.shape[-1], pixels.shape[-2]))
            full_diffs.append(float(np.abs(full - ref_full.numpy()).max()))
    # The whole product path (PIL in, engine out) on the three images, against the reference's raw maps.
    engine = HeatmapEngine(loaded, method="gem")
    engine_maps = engine.heatmaps(images, labels)
    engine_diff = max(float(np.abs(m - r.numpy()).max()) for m, r in zip(engine_maps, reference["raw"], strict=False))

    names = [p.stem for p in paths] + ["wide-aspect-28x42"]
    for name, raw, full in zip(names, raw_diffs, full_diffs, strict=True):
        print(f"{name:>18}: max |ours - reference| raw grid {raw:.2e}, upsampled {full:.2e}")
    spread = torch.cat([r.flatten() for r in reference["raw"]])
    print(f"reference raw maps span [{float(spread.min()):.3f}, {float(spread.max()):.3f}], std {float(spread.std()):.3f}"
          " (the differences above are relative to this)")
    print(f"preprocessed pixels (our square mode vs the reference transform): max diff {pixel_diff:.2e}")
    print(f"engine (PIL in -> maps) vs reference raw maps: max diff {engine_diff:.2e}")
    print(f"reference subprocess took {ref_seconds:.1f}s; target: max diff <= 1e-4")
    max_diff = max(raw_diffs + full_diffs + [engine_diff])
    print(json.dumps({
        "max_abs_diff": max_diff,
        "max_abs_diff_raw": max(raw_diffs),
        "max_abs_diff_upsampled": max(full_diffs),
        "max_abs_diff_engine": engine_diff,
        "max_abs_diff_pixels": pixel_diff,
        "reference_map_std": round(float(spread.std()), 4),
        "target": 1e-4,
        "pass": max_diff <= 1e-4,
    }))


if __name__ == "__main__":
    main()
