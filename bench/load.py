"""Load: concurrent Label Studio-like clients against /predict, with the API and workers as real processes.

Everything runs on loopback: a private redis-server, `gem-labeler api` and N `gem-labeler worker`
processes with the tiny random-weight ViT (tests/tiny_models.py; no downloads), and C client threads
sending one-task /predict requests for S seconds. Half of the requests ask for tasks already computed
(Label Studio re-opening a task), half for new ones. Reported: requests, status counts (any 5xx
other than a 503 naming Redis is a failure), p50/p99 latency per kind, the peak RSS of the API and of
each worker (sampled every 0.2 s), and, as the peer measured in the same run, GET /health latency:
the HTTP floor of the same server. The last line is the JSON of the figures.

    .venv/bin/python bench/load.py                      # 16 clients, 60 s, 2 workers
    .venv/bin/python bench/load.py --clients 4 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="red square"/><Label value="blue disk"/></BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="red square"/><Label value="blue disk"/></RectangleLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_images(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        pixels = np.full((120, 160, 3), 128, dtype=np.uint8)
        x, y = int(rng.integers(0, 100)), int(rng.integers(0, 60))
        pixels[y : y + 50, x : x + 50] = (220, 30, 30)
        name = f"img{i:04d}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    return names


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Sampler(threading.Thread):
    """Samples the RSS of named processes (with their children) and keeps each one's peak."""

    def __init__(self, processes: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.peak = dict.fromkeys(processes, 0)
        self.peak_tree = dict.fromkeys(processes, 0)  # with children (a worker's forked RQ scheduler)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, proc in self.processes.items():
                try:
                    rss = proc.memory_info().rss
                    tree = rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak[name], rss)
                self.peak_tree[name] = max(self.peak_tree[name], tree)
            self.stop.wait(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wait", type=float, default=10.0, help="PREDICT_WAIT_S of the API")
    parser.add_argument("--warm-tasks", type=int, default=40, help="tasks computed before the clock starts")
    args = parser.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.seconds <= 600 and 1 <= args.workers <= 8):
        parser.error("bounded: 1-64 clients, 1-600 s, 1-8 workers")

    from tests import tiny_models

    work = Path(tempfile.mkdtemp(prefix="gem-load-"))
    files = work / "files"
    files.mkdir()
    names = write_images(files, 200)
    weights = work / "tiny-vit.pt"
    tiny_models.save_checkpoint(tiny_models.build_tiny_model(tiny_models.TINY_VIT), weights)
    redis_port, api_port = free_port(), free_port()
    env = {
        **os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "QUEUE_PREFIX": "load",
        "MODEL_NAME": tiny_models.TINY_VIT, "MODEL_CONFIG": str(tiny_models.config_path(tiny_models.TINY_VIT)),
        "MODEL_PRETRAINED": str(weights), "DEVICE": "cpu", "LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "PREDICT_WAIT_S": str(args.wait), "HOST": "127.0.0.1", "PORT": str(api_port), "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        "PYTHONPATH": str(ROOT), "DATA_DIR": str(work / "data"), "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "",
    }
    procs: list[subprocess.Popen] = []
    logs = (work / "processes.log").open("ab")
    try:
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--dir", str(work)], stdout=logs, stderr=subprocess.STDOUT))
        cli = [sys.executable, "-m", "backend.cli"]
        api = subprocess.Popen([*cli, "api"], env=env, cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT)
        workers = [subprocess.Popen([*cli, "worker"], env=env, cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT)
                   for _ in range(args.workers)]
        procs += [api, *workers]
        base = f"http://127.0.0.1:{api_port}"
        with httpx.Client(base_url=base, timeout=60, trust_env=False) as client:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if (client.get("/health").json().get("workers") or 0) >= args.workers:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"stack did not start; see {work / 'processes.log'}")
                time.sleep(0.5)

            def task(ident: int) -> dict:
                return {"id": ident, "data": {"image": f"/data/local-files/?d={names[ident % len(names)]}"}}

            # Tasks 0..warm-1 are computed before the clock starts: the "already computed" pool.
            started = time.monotonic()
            while True:
                warm = client.post("/predict", json={"tasks": [task(i) for i in range(args.warm_tasks)],
                                                     "label_config": CONFIG}, timeout=300)
                assert warm.status_code == 200, warm.text
                if all("result" in item for item in warm.json()["results"]):
                    break
                if time.monotonic() - started > 300:
                    raise SystemExit(f"warm-up tasks did not finish; see {work / 'processes.log'}")
            print(f"{args.warm_tasks} warm-up tasks computed in {time.monotonic() - started:.1f} s")

        sampler = Sampler({"api": api.pid, **{f"worker{i}": w.pid for i, w in enumerate(workers)}})
        sampler.start()
        lock = threading.Lock()
        latencies: dict[str, list[float]] = {"cached": [], "new": [], "health": []}
        statuses: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        bad_5xx: list[str] = []
        next_new = [100_000]
        stop_at = time.monotonic() + args.seconds

        def client_loop(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=base, timeout=args.wait + 60, trust_env=False) as http:
                while time.monotonic() < stop_at:
                    roll = rng.random()
                    if roll < 0.1:
                        kind, started = "health", time.monotonic()
                        reply = http.get("/health")
                    else:
                        if roll < 0.55:
                            kind, ident = "cached", rng.randrange(args.warm_tasks)
                        else:
                            with lock:
                                kind, ident = "new", next_new[0]
                                next_new[0] += 1
                        started = time.monotonic()
                        reply = http.post("/predict", json={"tasks": [task(ident)], "label_config": CONFIG})
                    elapsed = time.monotonic() - started
                    with lock:
                        latencies[kind].append(elapsed)
                        statuses[str(reply.status_code)] += 1
                        if reply.status_code >= 500 and not (reply.status_code == 503 and "Redis" in reply.text):
                            bad_5xx.append(f"{reply.status_code} {reply.text[:200]}")
                        if kind != "health" and reply.status_code == 200:
                            item = reply.json()["results"][0]
                            outcomes["prediction" if "result" in item else "error" if "error" in item else "pending"] += 1

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        wall = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.seconds + args.wait + 120)
        wall = time.monotonic() - wall
        sampler.stop.set()
        sampler.join()
        alive = all(p.poll() is None for p in procs)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    mib = 1024 * 1024
    figures = {
        "clients": args.clients, "seconds": round(wall, 1), "workers": args.workers,
        "requests": sum(statuses.values()), "statuses": dict(statuses), "predict_outcomes": dict(outcomes),
        "unexpected_5xx": len(bad_5xx), "processes_alive_after": alive,
        "cached_p50_ms": round(statistics.median(latencies["cached"]) * 1000, 1) if latencies["cached"] else None,
        "cached_p99_ms": round(percentile(latencies["cached"], 99) * 1000, 1),
        "new_p50_ms": round(statistics.median(latencies["new"]) * 1000, 1) if latencies["new"] else None,
        "new_p99_ms": round(percentile(latencies["new"], 99) * 1000, 1),
        "health_p50_ms": round(statistics.median(latencies["health"]) * 1000, 1) if latencies["health"] else None,
        "health_p99_ms": round(percentile(latencies["health"], 99) * 1000, 1),
        "peak_rss_api_mib": round(sampler.peak["api"] / mib, 1),
        "peak_rss_worker_mib": [round(sampler.peak[f"worker{i}"] / mib, 1) for i in range(args.workers)],
        "peak_rss_worker_with_children_mib": [round(sampler.peak_tree[f"worker{i}"] / mib, 1)
                                              for i in range(args.workers)],
    }
    if figures["cached_p50_ms"] and figures["health_p50_ms"]:
        figures["cached_vs_health_p50"] = round(figures["cached_p50_ms"] / figures["health_p50_ms"], 2)
    print(f"{figures['requests']} requests from {args.clients} clients in {wall:.1f} s with {args.workers} workers")
    print(f"statuses {dict(statuses)}; /predict outcomes {dict(outcomes)}; unexpected 5xx: {len(bad_5xx)}")
    for line in bad_5xx[:5]:
        print("  ", line)
    print(f"already computed: p50 {figures['cached_p50_ms']} ms, p99 {figures['cached_p99_ms']} ms "
          f"({figures.get('cached_vs_health_p50')}x the /health p50 of {figures['health_p50_ms']} ms)")
    print(f"new tasks: p50 {figures['new_p50_ms']} ms, p99 {figures['new_p99_ms']} ms")
    print(f"peak RSS: api {figures['peak_rss_api_mib']} MiB, workers {figures['peak_rss_worker_mib']} MiB "
          f"({figures['peak_rss_worker_with_children_mib']} MiB with the RQ scheduler each may fork; shared pages "
          "counted twice)")
    print(json.dumps(figures))
    return 0 if not bad_5xx and alive else 1


if __name__ == "__main__":
    sys.exit(main())
