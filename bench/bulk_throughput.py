"""Folder-mode throughput against the engine called directly in a loop on the same images.

Peer: decode each image and call `HeatmapEngine.heatmaps` on it, one image at a time, model already loaded.
Ours: `gem-labeler prelabel --images` (backend.bulk.folder) on the same files: the worker pipeline (heatmaps,
regions, brush RLE, polygons, boxes), overlay PNGs, the resume state and the import file, model already
loaded. Then the same folder with two worker processes, whose time includes spawning them and loading the
model in each (what a user waits for). Random weights (no download); same process, same run.

    .venv/bin/python bench/bulk_throughput.py                 # ViT-B-16 at 448 px, 16 images
    .venv/bin/python bench/bulk_throughput.py --tiny --images 40
    .venv/bin/python bench/bulk_throughput.py --scaling --images 8 [--precision fp32|bf16|auto] [--rounds 2]

--scaling answers how to run workers on a CPU machine instead: images/s of the worker pipeline
(`predict_payloads`, what an RQ worker runs on each batch of jobs it claims) in worker processes that
have loaded the model and warmed up, timed from a barrier: one process with all cores' threads taking
batches of 1 and of 8 jobs (WORKER_BATCH_SIZE), and one process per core, one thread each, batches of 1,
the images split between them. Each configuration runs `--rounds` times in alternation, best of.

Prints the figures last as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.bulk.folder import FolderRun, ImageJob, PipelineLabelerSpec, run_folder  # noqa: E402
from backend.labelstudio.images import decode_image  # noqa: E402
from backend.labelstudio.label_config import parse_label_config  # noqa: E402
from backend.options import ProjectOptions  # noqa: E402
from backend.settings import Settings  # noqa: E402
from gem_engine.engine import HeatmapEngine  # noqa: E402

LABELS = ("cat", "dog", "remote control", "sofa", "person")
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="brush" toName="image">' + "".join(f'<Label value="{x}"/>' for x in LABELS) + "</BrushLabels>"
    '<PolygonLabels name="poly" toName="image">' + "".join(f'<Label value="{x}"/>' for x in LABELS) + "</PolygonLabels>"
    '<RectangleLabels name="box" toName="image">' + "".join(f'<Label value="{x}"/>' for x in LABELS)
    + "</RectangleLabels></View>"
)


def make_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    """Write `count` JPEGs with a few shapes on a noisy background."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for index in range(count):
        pixels = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.integers(0, width - 80), rng.integers(0, height - 80)
            r = int(rng.integers(20, 80))
            draw.ellipse((x, y, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        image.save(folder / f"img{index:04d}.jpg", quality=90)


def engine_loop(engine: HeatmapEngine, files: list[Path]) -> float:
    """Return seconds to decode and run the engine on each file, one call per image."""
    prompts = [[label] for label in LABELS]
    started = time.perf_counter()
    for path in files:
        engine.heatmaps([decode_image(path.read_bytes())], prompts)
    return time.perf_counter() - started


def _scaling_worker(spec: PipelineLabelerSpec, jobs: list[ImageJob], batch: int, threads: int, barrier,
                    results) -> None:
    """One worker process: load and warm up, wait for the others, then label `jobs` `batch` at a time."""
    torch.set_num_threads(threads)
    labeler = spec()
    labeler.label(jobs[:1])  # model load, text cache, first-call allocations
    barrier.wait()
    started = time.perf_counter()
    for start in range(0, len(jobs), batch):
        labeler.label(jobs[start : start + batch])
    results.put(time.perf_counter() - started)


def scaling_rate(spec: PipelineLabelerSpec, jobs: list[ImageJob], *, processes: int, threads: int,
                 batch: int) -> float:
    """Return images/s of `processes` warmed-up worker processes sharing `jobs`, timed from a common start."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_scaling_worker,
                               args=(spec, jobs[index::processes], batch, threads, barrier, results))
               for index in range(processes)]
    for worker in workers:
        worker.start()
    try:
        seconds = [results.get(timeout=3600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
    return len(jobs) / max(seconds)


def scaling(spec: PipelineLabelerSpec, files: list[Path], rounds: int) -> dict:
    """Return images/s of each worker layout (best of `rounds` alternating rounds) and the best layout."""
    cores = os.cpu_count() or 1
    jobs = [ImageJob(path.name, str(path), [0, 0]) for path in files]
    layouts = {  # name: (processes, threads each, jobs per batch)
        f"1x{cores}threads_batch1": (1, cores, 1),
        f"1x{cores}threads_batch8": (1, cores, 8),
        f"{cores}x1thread_batch1": (cores, 1, 1),
    }
    best: dict[str, float] = {}
    for round_index in range(rounds):
        for name, (processes, threads, batch) in layouts.items():
            rate = scaling_rate(spec, jobs, processes=processes, threads=threads, batch=batch)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"round {round_index + 1} {name:>22}: {rate:.3f} img/s", flush=True)
    figures = {f"{name}_images_per_s": round(rate, 3) for name, rate in best.items()}
    figures["best_layout"] = max(best, key=best.get)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the generated images")
    parser.add_argument("--tiny", action="store_true", help="the tiny test ViT instead of ViT-B-16 (quick check)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="images per engine call in folder mode (CLI default)")
    parser.add_argument("--scaling", action="store_true",
                        help="worker layouts instead: one process at batch 1 and 8, against one process per core")
    parser.add_argument("--precision", default=None, help="PRECISION of the run (default: the environment's, auto)")
    parser.add_argument("--rounds", type=int, default=2, help="--scaling: alternating rounds, best of")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    work = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    try:
        folder = work / "images"
        make_images(folder, args.images, (width, height))
        files = sorted(folder.glob("*.jpg"))
        if args.tiny:
            from tests import tiny_models

            model, config = tiny_models.TINY_VIT, str(tiny_models.config_path(tiny_models.TINY_VIT))
        else:
            model, config = "ViT-B-16", ""
        settings = Settings.from_env(device="cpu" if not torch.cuda.is_available() else "auto")
        params = {"method": "gem", "model": model, "model_pretrained": "none", "model_config": config}
        if args.precision:
            params["precision"] = args.precision
        options = ProjectOptions.from_settings(settings, params)
        vocabulary = parse_label_config(CONFIG)
        spec = PipelineLabelerSpec(settings=settings, options=options, vocabulary=vocabulary, folder=str(folder))
        if args.scaling:
            print(f"{len(files)} images {width}x{height}, {model} random weights, {len(LABELS)} labels, gem, "
                  f"precision {options.precision}, {os.cpu_count()} cores", flush=True)
            figures = scaling(spec, files, args.rounds)
            print(json.dumps({"images": len(files), "model": model, "precision": options.precision, **figures}))
            return
        labeler = spec()
        # Load the model and warm both paths once (first-call allocations, text embedding cache).
        labeler.label([ImageJob(files[0].name, str(files[0]), [0, 0])])
        engine = labeler.engines.get(options)
        engine_loop(engine, files[:1])
        device = str(engine.loaded.device)
        print(f"{len(files)} images {width}x{height}, {model} random weights, {len(LABELS)} labels, gem, {device}, "
              f"torch threads {torch.get_num_threads()}")

        # The peer runs first and last, and its mean is the reference: on a shared machine the load drifts.
        first_s = engine_loop(engine, files)
        print(f"engine loop:        {first_s:7.2f} s  {len(files) / first_s:6.2f} img/s")

        def folder_run(out: Path, workers: int) -> float:
            run = FolderRun(folder=folder, out=out, vocabulary=vocabulary, workers=workers,
                            batch_size=args.batch_size, progress=False)
            started = time.perf_counter()
            summary = run_folder(run, (lambda: labeler) if workers <= 1 else spec, run_key=spec.run_key)
            elapsed = time.perf_counter() - started
            if summary.done != len(files):
                raise SystemExit(f"folder mode finished {summary.done} of {len(files)}: {summary.render()}")
            return elapsed

        ours_s = folder_run(work / "out1", 1)
        print(f"folder mode:        {ours_s:7.2f} s  {len(files) / ours_s:6.2f} img/s")
        two_s = folder_run(work / "out2", args.workers)
        print(f"folder, {args.workers} workers:  {two_s:7.2f} s  {len(files) / two_s:6.2f} img/s  "
              "(includes spawning the workers and loading the model in each)")
        last_s = engine_loop(engine, files)
        print(f"engine loop again:  {last_s:7.2f} s  {len(files) / last_s:6.2f} img/s")
        peer_s = (first_s + last_s) / 2
        print(f"ratio folder/engine {peer_s / ours_s:.3f} (target >= 0.85), "
              f"{args.workers} workers/engine {peer_s / two_s:.3f}")
        print(json.dumps({
            "images": len(files), "model": model, "device": device, "batch_size": args.batch_size,
            "engine_loop_s": round(peer_s, 3), "engine_loop_first_s": round(first_s, 3),
            "engine_loop_last_s": round(last_s, 3), "folder_s": round(ours_s, 3), "ratio": round(peer_s / ours_s, 3),
            "workers": args.workers, "folder_workers_s": round(two_s, 3),
            "ratio_workers": round(peer_s / two_s, 3),
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
