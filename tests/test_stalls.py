"""A service that never stalls: many waiting /predict requests, an idle worker, a dead worker.

Each test runs a private redis-server on a loopback port and real `gem-labeler worker` processes with the
tiny ViT; the API is the real app served by uvicorn on loopback.
"""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.jobqueue import queues as rq_queue
from backend.jobqueue.jobs import TaskJobs
from backend.jobqueue.reaper import ALIVE_TTL_S
from backend.labelstudio.label_config import parse_label_config
from backend.options import ProjectOptions
from backend.settings import Settings
from tests.loopback_http import HangingImageHost
from tests.test_api import serve
from tests.test_faults import PNG_BYTES, write_images
from tests.test_worker import CONFIG
from tests.worker_processes import start_worker, wait_for, worker_env

pytestmark = pytest.mark.slow
WAITING = 100


def test_health_answers_within_a_second_while_100_predict_requests_wait(redis_server, tiny_vit_checkpoint, tmp_path):
    """Waiting /predict requests hold no thread: /health (and everything else) still gets one."""
    files = tmp_path / "files"
    names = write_images(files, 1)
    host = HangingImageHost(PNG_BYTES)
    prefix = f"w{uuid.uuid4().hex[:8]}"
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, WORKER_BATCH_SIZE="1", JOB_RETRIES="0",
                     PREDICT_WAIT_S="15", ALLOWED_IMAGE_HOSTS="127.0.0.1", ALLOW_PRIVATE_ADDRESSES="true")
    conn = redis_server.client()
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: rq_queue.worker_count(conn, prefix) or worker.poll() is not None, 120, "the worker")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        with serve(Settings.from_env(env)) as client, ThreadPoolExecutor(WAITING + 1) as pool:
            url = client.base_url

            def ask(task: dict) -> int:
                with httpx.Client(base_url=url, timeout=60) as own:
                    return own.post("/predict", json={"tasks": [task], "label_config": CONFIG}).status_code

            # The one worker gets stuck on a slow image host, so every request below waits its full budget.
            stuck = pool.submit(ask, {"id": 1, "data": {"image": f"{host.url}/stuck.png"}})
            wait_for(lambda: host.requests, 30, "the worker to be busy")
            batch = rq_queue.get_queues(conn, prefix)[1]
            replies = [pool.submit(ask, {"id": 1000 + i, "data": {"image": f"/data/local-files/?d={names[0]}&n={i}"}})
                       for i in range(WAITING)]
            # All of them enqueued their job and wait (Starlette's thread pool has 40 threads).
            wait_for(lambda: batch.count >= WAITING, 10, f"{WAITING} requests to be waiting")
            timings = []
            for _ in range(5):
                before = time.monotonic()
                health = client.get("/health", timeout=10)
                timings.append(time.monotonic() - before)
                assert health.status_code == 200 and health.json()["workers"] == 1
                time.sleep(0.2)
            assert not any(reply.done() for reply in replies), "they were still waiting"
            assert max(timings) < 1.0, timings
            assert [reply.result() for reply in replies] == [200] * WAITING
            host.release()
            assert stuck.result() == 200
    finally:
        host.close()
        worker.terminate()
        worker.wait(30)


def test_an_idle_worker_takes_a_job_within_a_second_and_a_dead_one_is_noticed(redis_server, tiny_vit_checkpoint,
                                                                               tmp_path):
    """Idle for 30 s, a worker still listens (no socket timeout, no backoff); killed, /health and /predict say so."""
    files = tmp_path / "files"
    names = write_images(files, 2)
    prefix = f"i{uuid.uuid4().hex[:8]}"
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, JOB_RETRIES="0", PREDICT_WAIT_S="30")
    settings = Settings.from_env(env)
    conn = redis_server.client()
    log_path = tmp_path / "worker.log"
    worker = start_worker(env, log_path)
    try:
        wait_for(lambda: rq_queue.worker_count(conn, prefix) or worker.poll() is not None, 120, "the worker")
        assert worker.poll() is None, log_path.read_text()
        time.sleep(30)
        options = ProjectOptions.from_settings(settings)
        from backend.jobqueue.digests import local_contents

        jobs = TaskJobs(prefix=prefix, project="1", vocabulary=parse_label_config(CONFIG), options=options,
                        contents=local_contents(options))
        task = {"id": 1, "data": {"image": f"/data/local-files/?d={names[0]}"}}
        ident = jobs.job_id(task, task["data"]["image"])
        assert rq_queue.enqueue(conn, settings, jobs.payload(ident, task, task["data"]["image"]),
                                interactive=False) == "enqueued"
        enqueued = datetime.now(UTC)
        job = wait_for(lambda: (j := Job.fetch(ident, connection=conn, serializer=JSONSerializer)).started_at and j,
                       30, "the job to start")
        assert (job.started_at.replace(tzinfo=UTC) - enqueued).total_seconds() < 1.0
        text = log_path.read_text()
        assert "Timeout reading" not in text and "could not connect to Redis" not in text, text[-2000:]

        # Killed: within its heartbeat's lifetime /health says so and /predict answers at once.
        with serve(settings) as client:
            assert client.get("/health").json()["status"] == "UP"
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            health = wait_for(lambda: (h := client.get("/health").json())["status"] == "DEGRADED" and h,
                              ALIVE_TTL_S + 5, "/health to notice the dead worker", poll_s=0.5)
            assert health["workers"] == 0 and "no worker is alive" in health["reason"]
            before = time.monotonic()
            other = {"id": 2, "data": {"image": f"/data/local-files/?d={names[1]}"}}
            reply = client.post("/predict", json={"tasks": [other], "label_config": CONFIG})
            assert reply.status_code == 503 and "no worker is alive" in reply.json()["detail"]
            assert time.monotonic() - before < 3
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)
