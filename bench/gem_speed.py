"""Speed of our GEM against the reference (gem-torch 1.0.1 on open_clip 2.23.0): CPU, fp32, ViT-B-16.

Random ViT-B-16 weights shared by both, 448 px, 20 labels, batch 1 and batch 8. Each side runs in its
own process (the reference needs its own venv, see bench/gem_parity.py) with the same thread count,
and the two are timed in alternation, best of the rounds, so that load from elsewhere hits both.
Each is timed from PIL images to per-label maps upsampled to 448 px and min-max normalized, which is
what the reference's forward returns. The reference is called as its
README shows (forward for one image, batched_forward for a batch), so it encodes the prompts on
every call; ours keeps them cached, as a worker does. Peak memory is each process's max RSS
(model included). The JSON line last.

    .venv/bin/python bench/gem_speed.py [--rounds 2] [--threads 2] [--standard-ops] [--gpu]
    python bench/gem_speed.py --gpu-only      # on a machine with CUDA: fp32/fp16/bf16 images/s, batch 8 and 32

--standard-ops adds a third side: ours with gem_engine.onednn switched off (PyTorch's BLAS for the
linear layers), to show what the oneDNN route is worth on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

LABELS = [
    "cat", "dog", "person", "car", "bicycle", "tree", "sky", "road", "building", "grass",
    "traffic light", "remote control", "chair", "table", "bottle", "cup", "window", "door", "bird", "boat",
]

# Command loop shared by both sides; `run(images)` is the side's full call on a list of PIL images.
# The parent sends "1" or "8" (time one call of that batch size, after one warm-up call per size)
# or "peak", one per line, so that the two sides can be timed in alternation.
SERVER = r"""
import json, resource, sys, time
warm = set()
for line in sys.stdin:
    command = line.strip()
    if command == "peak":
        print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20), flush=True)
        continue
    batch = int(command)
    if batch not in warm:
        run(images[:batch])  # allocator, position embeddings, text cache (ours)
        warm.add(batch)
    start = time.perf_counter()
    run(images[:batch])
    print(json.dumps((time.perf_counter() - start) / batch), flush=True)
"""

REFERENCE_SIDE = r"""
import json, sys, torch, open_clip
from PIL import Image
from gem import get_gem_img_transform
from gem.gem_wrapper import GEMWrapper
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
clip = open_clip.create_model("ViT-B-16", pretrained=None)
clip.load_state_dict(torch.load(args["weights"]), strict=True)
gem_model = GEMWrapper(clip.eval(), open_clip.get_tokenizer("ViT-B-16"), depth=7).eval()
transform = get_gem_img_transform()
images = [Image.open(p).convert("RGB") for p in args["images"]]
labels = args["labels"]
def run(batch):
    with torch.no_grad():
        pixels = torch.stack([transform(image) for image in batch])
        if len(batch) == 1:
            return gem_model(pixels, labels)
        return gem_model.batched_forward(pixels, [labels] * len(batch))
""" + SERVER

OURS_SIDE = r"""
import json, sys, torch, open_clip
from PIL import Image
sys.path.insert(0, sys.argv[2])
from gem_engine.engine import HeatmapEngine
from gem_engine.maps import normalize, upsample
from gem_engine.models import wrap_model
from gem_engine import onednn
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
onednn.enabled = args.get("onednn", True)
model = open_clip.create_model("ViT-B-16", pretrained=None)
model.load_state_dict(torch.load(args["weights"]), strict=True)
engine = HeatmapEngine(wrap_model(model, "ViT-B-16"), method="gem")  # its own CPU batching
images = [Image.open(p) for p in args["images"]]
labels = [[label] for label in args["labels"]]
def run(batch):
    return [normalize(upsample(maps, (448, 448))) for maps in engine.heatmaps(batch, labels)]
""" + SERVER


class Side:
    """One side (ours or the reference) in its own process, timing calls on request."""

    def __init__(self, python: str, script: str, args: dict):
        self.process = subprocess.Popen(
            [python, "-c", script, json.dumps(args), str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    def ask(self, command: str) -> float:
        """Return the figure the side answers to one command."""
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark side exited with {self.process.wait()}")
        return float(json.loads(line))

    def close(self) -> None:
        """Stop the side process."""
        self.process.stdin.close()
        self.process.wait(timeout=60)


GPU_BATCHES = (8, 32)


def gpu_figures(weights: Path, image_paths: list[str], repeats: int) -> dict:
    """Return images/s of ours on CUDA in fp32/fp16/bf16 at batch 8 and 32 (PIL images to raw maps, the
    engine's own preprocessing included), and each half precision's max and mean map difference from fp32."""
    import time

    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    from gem_engine.engine import HeatmapEngine
    from gem_engine.models import wrap_model

    pool = [Image.open(p) for p in image_paths]
    labels = [[label] for label in LABELS]
    figures: dict = {"gpu": torch.cuda.get_device_name()}
    baseline = None
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        model = open_clip.create_model("ViT-B-16", pretrained=None)
        model.load_state_dict(torch.load(weights), strict=True)
        loaded = wrap_model(model.to("cuda", dtype), "ViT-B-16")
        for batch in GPU_BATCHES:
            images = [pool[i % len(pool)] for i in range(batch)]
            engine = HeatmapEngine(loaded, batch_size=batch)
            maps = engine.heatmaps(images, labels)  # warm-up: allocator, kernels, text cache
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                maps = engine.heatmaps(images, labels)
            torch.cuda.synchronize()
            rate = repeats * batch / (time.perf_counter() - start)
            figures[f"gpu_{precision}_b{batch}_images_per_s"] = round(rate, 1)
            print(f"gpu {precision} batch {batch}: {rate:.1f} images/s", flush=True)
            if batch != GPU_BATCHES[0]:
                continue
            if baseline is None:
                baseline = maps
            else:
                diffs = [np.abs(a - b) for a, b in zip(maps, baseline, strict=True)]
                figures[f"gpu_{precision}_max_diff_vs_fp32"] = float(max(d.max() for d in diffs))
                figures[f"gpu_{precision}_mean_diff_vs_fp32"] = float(np.mean([d.mean() for d in diffs]))
        del model, loaded
        torch.cuda.empty_cache()
    return figures


def make_inputs(work: Path) -> list[str]:
    """Write the shared random ViT-B-16 weights and eight random 640x480 JPEG images; return the image paths."""
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-16", pretrained=None).state_dict(), work / "weights.pt")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(8):
        path = work / f"image{index}.jpg"
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="also time ours on CUDA in fp32/fp16/bf16")
    parser.add_argument("--standard-ops", action="store_true", help="also time ours without the oneDNN route")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the GPU figures (no CPU sides, no reference venv): for a machine with CUDA")
    parser.add_argument("--gpu-repeats", type=int, default=10)
    parser.add_argument("--work", default=str(ROOT / "bench" / "out" / "gem_speed"))
    args = parser.parse_args()

    import torch

    work = Path(args.work)
    paths = make_inputs(work)
    if args.gpu_only:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu-only asked but CUDA is not available")
        print(json.dumps(gpu_figures(work / "weights.pt", paths, args.gpu_repeats)))
        return
    from gem_parity import ensure_reference_venv

    ref_python = str(ensure_reference_venv())
    side_args = {"weights": str(work / "weights.pt"), "images": paths, "labels": LABELS, "threads": args.threads}

    print(f"threads={args.threads}, {args.rounds} alternating rounds (best of), 20 labels, 448 px, "
          "ViT-B-16 random weights", flush=True)
    sides = {"ours": Side(sys.executable, OURS_SIDE, side_args), "ref": Side(ref_python, REFERENCE_SIDE, side_args)}
    if args.standard_ops:
        sides["std"] = Side(sys.executable, OURS_SIDE, {**side_args, "onednn": False})
    best: dict[str, float] = {}
    try:
        for round_index in range(args.rounds):
            for batch in (1, 8):
                for name, side in sides.items():
                    seconds = side.ask(str(batch))
                    key = f"{name}_b{batch}"
                    best[key] = min(best.get(key, float("inf")), seconds)
                    print(f"round {round_index + 1} {name:>4} batch {batch}: {seconds:.3f} s/image", flush=True)
        peaks = {name: side.ask("peak") for name, side in sides.items()}
    finally:
        for side in sides.values():
            side.close()
    figures = {
        "ours_s_per_image_b1": round(best["ours_b1"], 4),
        "ref_s_per_image_b1": round(best["ref_b1"], 4),
        "speedup_b1": round(best["ref_b1"] / best["ours_b1"], 2),
        "ours_s_per_image_b8": round(best["ours_b8"], 4),
        "ref_s_per_image_b8": round(best["ref_b8"], 4),
        "speedup_b8": round(best["ref_b8"] / best["ours_b8"], 2),
        "ours_peak_gib": round(peaks["ours"], 2),
        "ref_peak_gib": round(peaks["ref"], 2),
        "threads": args.threads,
    }
    if args.standard_ops:
        for batch in (1, 8):
            figures[f"ours_standard_ops_s_per_image_b{batch}"] = round(best[f"std_b{batch}"], 4)
            figures[f"onednn_speedup_b{batch}"] = round(best[f"std_b{batch}"] / best[f"ours_b{batch}"], 2)
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu asked but CUDA is not available")
        gpu = gpu_figures(work / "weights.pt", paths, args.gpu_repeats)
        print(f"gpu: {gpu}")
        figures.update(gpu)
    print(f"speedup: batch 1 {figures['speedup_b1']}x, batch 8 {figures['speedup_b8']}x (target >= 2x); "
          f"peak RSS ours {figures['ours_peak_gib']} GiB vs reference {figures['ref_peak_gib']} GiB (target < 4)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
