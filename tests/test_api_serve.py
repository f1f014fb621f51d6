"""`gem-labeler serve` as `make run` starts it: embedded Redis in DATA_DIR, the API and one worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.test_api import free_port
from tests.test_worker import CONFIG, ROOT, scene


def test_serve_starts_redis_api_and_worker(tmp_path, tiny_vit_checkpoint):
    scene(tmp_path / "scene.png")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        MODEL_NAME=tiny_vit_checkpoint["model_name"],
        MODEL_CONFIG=tiny_vit_checkpoint["model_config"],
        MODEL_PRETRAINED=tiny_vit_checkpoint["pretrained"],
        DEVICE="cpu",
        LOCAL_FILES_DOCUMENT_ROOT=str(tmp_path),
        PREDICT_WAIT_S="60",
        PYTHONPATH=str(ROOT),
    )
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port",
                                str(port)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                try:
                    health = client.get("/health").json()
                    if health.get("workers") == 1:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
            assert health["redis"] == "ok"
            reply = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=scene.png"}}],
                                                  "label_config": CONFIG})
            assert reply.status_code == 200 and "result" in reply.json()["results"][0], reply.text
        assert (tmp_path / "data" / "redis.rdb").parent.is_dir()
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    assert code == 0, (tmp_path / "serve.log").read_text()
