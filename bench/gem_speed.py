"""Speed of our GEM against the reference (gem-torch 1.0.1 on open_clip 2.23.0): CPU, ViT-B-16, ours in fp32 and bf16.

Random ViT-B-16 weights shared by both, 448 px, 20 labels, batch 1 and batch 8. Each side runs in its
own process (the reference needs its own venv, see bench/gem_parity.py) with the same thread count,
and the two are timed in alternation, best of the rounds, so that load from elsewhere hits both.
Each is timed from PIL images to per-label maps upsampled to 448 px and min-max normalized, which is
what the reference's forward returns. The reference is called as its
README shows (forward for one image, batched_forward for a batch), so it encodes the prompts on
every call; ours keeps them cached, as a worker does. Peak memory is each process's max RSS
(model included). The JSON line last.

    .venv/bin/python bench/gem_speed.py [--rounds 2] [--threads 2] [--batches 1,8] [--standard-ops] [--autocast]
    python bench/gem_speed.py --gpu-only      # on a machine with CUDA: fp32/fp16/bf16 images/s, batch 8 and 32

Sides: `ours` (fp32, the oneDNN route), `bf16` (ours with the vision tower cast to bf16 as PRECISION=bf16
does on CPU, gem_engine/precision.py) and `ref`. --standard-ops adds ours with gem_engine.onednn switched
off (PyTorch's BLAS for the linear layers), to show what the oneDNN route is worth on this CPU.
--autocast adds ours in fp32 weights under torch.autocast("cpu", bfloat16), the alternative to bf16
weights (oneDNN's fused ops are not autocast-aware, so that side runs the standard ops, with the residual
sums out of place, which autocast needs).

Roofline (batch 1, in the fp32 side's process, same thread count): the model's FLOPs per image counted
with torch.utils.flop_counter.FlopCounterMode on ours (products, convolutions and attention, counted on
the op each runs: oneDNN's linear and CPU flash attention get the standard formulas, which PyTorch's
counter lacks for them; norms, softmax and elementwise work are not counted), the achieved GFLOP/s of
ours in fp32 and bf16 (counted FLOPs / best s per image), and the machine's measured rate for the same
linear-layer shapes (each shape as many times per image as the model runs it; best of both routes in
fp32) and for the same attention shapes, in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    if command == "roofline":
        from bench.gem_speed import roofline
        print(json.dumps(roofline(engine, images[0], labels, args["threads"])), flush=True)
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
from gem_engine.precision import cast_to_precision
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
onednn.enabled = args.get("onednn", True)
model = open_clip.create_model("ViT-B-16", pretrained=None)
model.load_state_dict(torch.load(args["weights"]), strict=True)
cast_to_precision(model, args.get("precision", "fp32"), torch.device("cpu"))
engine = HeatmapEngine(wrap_model(model, "ViT-B-16"), method="gem")  # its own CPU batching
images = [Image.open(p) for p in args["images"]]
labels = [[label] for label in args["labels"]]
def heatmaps(batch):
    return [normalize(upsample(maps, (448, 448))) for maps in engine.heatmaps(batch, labels)]
if args.get("autocast"):
    import torch.nn.functional as F
    # Autocast does not reach oneDNN's op, and cannot cast the in-place addmm_ of the residual sums.
    onednn.enabled = False
    onednn.linear_add = lambda x, weight, bias, residual: residual + F.linear(x, weight, bias)
    def run(batch):
        with torch.autocast("cpu", torch.bfloat16):
            return heatmaps(batch)
else:
    run = heatmaps
""" + SERVER


class Side:
    """One side (ours or the reference) in its own process, timing calls on request."""

    def __init__(self, python: str, script: str, args: dict):
        self.process = subprocess.Popen(
            [python, "-c", script, json.dumps(args), str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    def ask(self, command: str):
        """Return the figure (a number, or the roofline's dict) the side answers to one command."""
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark side exited with {self.process.wait()}")
        return json.loads(line)

    def close(self) -> None:
        """Stop the side process."""
        self.process.stdin.close()
        self.process.wait(timeout=60)


def best_seconds(run, repeats: int = 3) -> float:
    """Return the fastest of `repeats` timed calls of `run`, after one untimed call (oneDNN builds its kernel)."""
    import time

    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def roofline(engine, image, labels, threads: int) -> dict:
    """Return the counted FLOPs of one image through `engine` and the machine's rates for the same shapes."""
    from collections import Counter

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from gem_engine import onednn

    linear_shapes: Counter = Counter()  # (rows, in, out) -> calls per image
    attention_shapes: Counter = Counter()  # (q shape, k shape) -> calls per image

    def linear_flop(x_shape, *rest, out_shape=None, **kwargs) -> int:
        rows = 1
        for size in x_shape[:-1]:
            rows *= size
        linear_shapes[(rows, x_shape[-1], out_shape[-1])] += 1
        return 2 * rows * x_shape[-1] * out_shape[-1]

    def attention_flop(q_shape, k_shape, v_shape, *rest, out_shape=None, **kwargs) -> int:
        attention_shapes[(tuple(q_shape), tuple(k_shape))] += 1
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    mapping = {torch.ops.mkldnn._linear_pointwise: linear_flop,
               torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flop}
    engine.heatmaps([image], labels)  # text cache and position embeddings, as in the timed calls
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        engine.heatmaps([image], labels)
    by_op = {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
    total = counter.get_total_flops()
    attention = sum(flops for op, flops in by_op.items() if "scaled_dot_product" in op)

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    rates = {}
    with torch.inference_mode():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            flops = seconds = 0.0
            for (rows, width, out), calls in linear_shapes.items():
                x = torch.randn(rows, width, generator=generator).to(dtype)
                weight = (torch.randn(out, width, generator=generator) * width**-0.5).to(dtype)
                bias = torch.zeros(out, dtype=dtype)
                operands = (x, weight, bias)
                routes = [lambda operands=operands: onednn.linear(*operands)]
                if dtype == torch.float32:  # and BLAS: whichever is faster is the peak
                    routes.append(lambda operands=operands: F.linear(*operands))
                flops += calls * 2 * rows * width * out
                seconds += calls * min(best_seconds(route) for route in routes)
            rates[f"matmul_peak_{name}_gflops"] = round(flops / seconds / 1e9, 1)
            flops = seconds = 0.0
            for (q_shape, k_shape), calls in attention_shapes.items():
                q = torch.randn(q_shape, generator=generator).to(dtype)
                k = torch.randn(k_shape, generator=generator).to(dtype)
                flops += calls * sdpa_flop_count(q_shape, k_shape, k_shape)
                seconds += calls * best_seconds(lambda q=q, k=k: F.scaled_dot_product_attention(q, k, k))
            rates[f"attention_{name}_gflops"] = round(flops / seconds / 1e9, 1)
    # The fastest an image could go if every product ran at the rate measured for its shapes (the rest:
    # convolution, projections, at the linear layers' rate): what bf16 can gain at most over fp32 here.
    for name in ("fp32", "bf16"):
        rates[f"bound_s_per_image_{name}"] = round(
            (total - attention) / 1e9 / rates[f"matmul_peak_{name}_gflops"]
            + attention / 1e9 / rates[f"attention_{name}_gflops"], 3)
    rates["bf16_speedup_bound"] = round(rates["bound_s_per_image_fp32"] / rates["bound_s_per_image_bf16"], 2)
    return {"gflop_per_image": round(total / 1e9, 2), "attention_gflop_per_image": round(attention / 1e9, 2),
            "linear_calls_per_image": sum(linear_shapes.values()), "flops_by_op": by_op, **rates}


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
    parser.add_argument("--autocast", action="store_true", help="also time ours under torch.autocast(cpu, bfloat16)")
    parser.add_argument("--batches", default="1,8", help="comma list of batch sizes to time (the roofline needs 1)")
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
    batches = [int(b) for b in args.batches.split(",")]

    print(f"threads={args.threads}, {args.rounds} alternating rounds (best of), batches {batches}, 20 labels, "
          "448 px, ViT-B-16 random weights", flush=True)
    sides = {"ours": Side(sys.executable, OURS_SIDE, side_args),
             "bf16": Side(sys.executable, OURS_SIDE, {**side_args, "precision": "bf16"}),
             "ref": Side(ref_python, REFERENCE_SIDE, side_args)}
    if args.standard_ops:
        sides["std"] = Side(sys.executable, OURS_SIDE, {**side_args, "onednn": False})
    if args.autocast:
        sides["autocast"] = Side(sys.executable, OURS_SIDE, {**side_args, "autocast": True})
    best: dict[str, float] = {}
    rounds: dict[str, list[float]] = {}  # each round's seconds, for same-round ratios
    try:
        for round_index in range(args.rounds):
            for batch in batches:
                for name, side in sides.items():
                    seconds = side.ask(str(batch))
                    key = f"{name}_b{batch}"
                    best[key] = min(best.get(key, float("inf")), seconds)
                    rounds.setdefault(key, []).append(seconds)
                    print(f"round {round_index + 1} {name:>8} batch {batch}: {seconds:.3f} s/image", flush=True)
        peaks = {name: side.ask("peak") for name, side in sides.items()}
        roof = sides["ours"].ask("roofline") if 1 in batches else None
    finally:
        for side in sides.values():
            side.close()
    figures: dict = {}
    for batch in batches:
        figures.update({
            f"ours_s_per_image_b{batch}": round(best[f"ours_b{batch}"], 4),
            f"bf16_s_per_image_b{batch}": round(best[f"bf16_b{batch}"], 4),
            f"ref_s_per_image_b{batch}": round(best[f"ref_b{batch}"], 4),
            f"speedup_b{batch}": round(best[f"ref_b{batch}"] / best[f"ours_b{batch}"], 2),
            f"bf16_speedup_vs_fp32_b{batch}": round(best[f"ours_b{batch}"] / best[f"bf16_b{batch}"], 2),
            f"bf16_speedup_vs_ref_b{batch}": round(best[f"ref_b{batch}"] / best[f"bf16_b{batch}"], 2),
            # On a shared machine the best rounds of two sides may come at different loads: the ratio
            # within each round, and their median, are the steadier figure.
            f"bf16_speedup_vs_fp32_per_round_b{batch}": [
                round(fp32 / bf16, 2) for fp32, bf16 in zip(rounds[f"ours_b{batch}"], rounds[f"bf16_b{batch}"], strict=True)],
            f"bf16_speedup_vs_fp32_median_b{batch}": round(statistics.median(
                fp32 / bf16 for fp32, bf16 in zip(rounds[f"ours_b{batch}"], rounds[f"bf16_b{batch}"], strict=True)), 2),
        })
        if args.standard_ops:
            figures[f"ours_standard_ops_s_per_image_b{batch}"] = round(best[f"std_b{batch}"], 4)
            figures[f"onednn_speedup_b{batch}"] = round(best[f"std_b{batch}"] / best[f"ours_b{batch}"], 2)
        if args.autocast:
            figures[f"autocast_s_per_image_b{batch}"] = round(best[f"autocast_b{batch}"], 4)
            figures[f"bf16_weights_vs_autocast_b{batch}"] = round(best[f"autocast_b{batch}"] / best[f"bf16_b{batch}"], 2)
    figures.update({f"{name}_peak_gib": round(peak, 2) for name, peak in peaks.items()})
    figures["threads"] = args.threads
    if roof is not None:
        flops = roof.pop("flops_by_op")
        print(f"counted FLOPs per image by op: {flops}")
        achieved = {name: roof["gflop_per_image"] / best[f"{side}_b1"] for name, side in (("fp32", "ours"), ("bf16", "bf16"))}
        roof.update({f"achieved_{name}_gflops": round(rate, 1) for name, rate in achieved.items()})
        for name in ("fp32", "bf16"):
            roof[f"{name}_fraction_of_matmul_peak"] = round(achieved[name] / roof[f"matmul_peak_{name}_gflops"], 3)
        print(f"roofline, batch 1: {roof['gflop_per_image']} GFLOP/image counted ({roof['attention_gflop_per_image']} "
              f"in attention); achieved fp32 {roof['achieved_fp32_gflops']} GFLOP/s, bf16 {roof['achieved_bf16_gflops']} "
              f"GFLOP/s; measured matmul peak for the same shapes fp32 {roof['matmul_peak_fp32_gflops']}, bf16 "
              f"{roof['matmul_peak_bf16_gflops']} GFLOP/s (bf16 at {roof['bf16_fraction_of_matmul_peak']:.0%} of it, "
              f"target >= 60%); attention at these shapes fp32 {roof['attention_fp32_gflops']}, bf16 "
              f"{roof['attention_bf16_gflops']} GFLOP/s; at those rates an image takes at least "
              f"{roof['bound_s_per_image_fp32']} s in fp32 and {roof['bound_s_per_image_bf16']} s in bf16, so bf16 can "
              f"be at most {roof['bf16_speedup_bound']}x faster here", flush=True)
        figures["roofline"] = roof
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu asked but CUDA is not available")
        gpu = gpu_figures(work / "weights.pt", paths, args.gpu_repeats)
        print(f"gpu: {gpu}")
        figures.update(gpu)
    for batch in batches:
        print(f"batch {batch}: ours fp32 {figures[f'speedup_b{batch}']}x the reference (target >= 2x), bf16 "
              f"{figures[f'bf16_speedup_vs_fp32_b{batch}']}x ours fp32 best of rounds, median of same-round ratios "
              f"{figures[f'bf16_speedup_vs_fp32_median_b{batch}']}x (target >= 2x)")
    print(f"peak RSS ours {figures['ours_peak_gib']} GiB, bf16 {figures['bf16_peak_gib']} GiB vs reference "
          f"{figures['ref_peak_gib']} GiB (target < 4)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
