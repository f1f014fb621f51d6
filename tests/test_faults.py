"""Faults a long pre-labeling run must survive, each on its own redis-server (a private loopback port).

- a worker killed with SIGKILL in the middle of a 100-task `gem-labeler prelabel` run: another worker
  finishes it, and Label Studio receives exactly one prediction per task;
- Redis stopped and restarted in the middle of a run: /predict answers 503 naming Redis, /health keeps
  answering fast, and the run completes afterwards with nothing lost;
- Label Studio refusing connections while workers push late predictions: pushes retry with backoff
  and every prediction arrives once it accepts again.

- a task that kills its worker process each time it runs: after JOB_MAX_ATTEMPTS it gets an error and the
  queue moves on;
- two workers racing for a batch's job while Label Studio is slow: each task computed and pushed once.

The helpers at the top (images, result counts) serve other tests too; the private redis-server is in
tests/worker_processes.py (fixture `redis_server`).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.jobqueue import queues as rq_queue
from tests.worker_processes import free_port, start_worker, wait_for, worker_env

ROOT = Path(__file__).parents[1]
PNG_BYTES = (ROOT / "tests" / "fixtures" / "bad_inputs" / "ok_rgb.png").read_bytes()


def write_images(folder: Path, count: int, size: tuple[int, int] = (96, 72)) -> list[str]:
    """Write `count` small distinct PNGs and return their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    rng = np.random.default_rng(0)
    width, height = size
    for i in range(count):
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
        x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
        pixels[y : y + height // 3, x : x + width // 3] = rng.integers(0, 255, 3, dtype=np.uint8)
        name = f"f{i:03d}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    return names


def result_count(conn: redis.Redis, prefix: str) -> int:
    """Return how many job results are stored under this deployment's prefix."""
    return sum(1 for _ in conn.scan_iter(match=rq_queue.key(prefix, "result", "*"), count=1000))


def test_kill_9_worker_mid_bulk_run_loses_and_doubles_nothing(redis_server, tiny_vit_checkpoint, tmp_path):
    from tests.test_bulk_project import PROJECT, TOKEN, FakeLabelStudio

    files = tmp_path / "files"
    names = write_images(files, 100, (96, 72))
    tasks = [{"id": 1000 + i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(names)]
    fake = FakeLabelStudio(tasks)
    prefix = f"k{uuid.uuid4().hex[:8]}"
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, JOB_RETRIES="0", WORKER_BATCH_SIZE="4",
                    LABEL_STUDIO_URL="", LABEL_STUDIO_API_KEY="")
    conn = redis_server.client()
    first = start_worker(env, tmp_path / "worker1.log")
    second = None
    try:
        wait_for(lambda: rq_queue.worker_count(conn, prefix) or first.poll() is not None, 120, "worker 1")
        assert first.poll() is None, (tmp_path / "worker1.log").read_text()
        run = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "prelabel", "--project", str(PROJECT), "--url", fake.url,
             "--api-key", TOKEN, "--json", "--no-progress", "--push-batch", "10"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        batch = rq_queue.get_queues(conn, prefix)[1]

        def frozen_midway() -> list[str]:
            """Freeze worker 1 while it runs a job in the middle of the run; return the jobs it holds."""
            if not 5 <= result_count(conn, prefix) <= 80:
                return []
            # Frozen, the worker cannot change its started registry, so what we read is what the kill
            # abandons; reading it on a running worker races with the job finishing.
            first.send_signal(signal.SIGSTOP)
            held = batch.started_job_registry.get_job_ids(cleanup=False)
            if not held:
                first.send_signal(signal.SIGCONT)
            return held

        abandoned = wait_for(frozen_midway, 120, "worker 1 to be busy in the middle of the run", poll_s=0.005)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        assert batch.started_job_registry.get_job_ids(cleanup=False) == abandoned
        done_at_kill = result_count(conn, prefix)
        assert abandoned and done_at_kill < 100
        # RQ alone would keep the abandoned job in its started registry for JOB_TIMEOUT_S + 60 s, then fail
        # it. RQ 3 registers the execution a moment before it marks the job started, so a kill in between
        # leaves it "queued" there: the reaper must recover both.
        status = Job.fetch(abandoned[0], connection=conn, serializer=JSONSerializer).get_status(refresh=False)
        assert status in ("started", "queued")

        second = start_worker(env, tmp_path / "worker2.log")
        stdout, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stderr + (tmp_path / "worker2.log").read_text()
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert (summary["done"], summary["failed"], summary["pending"]) == (100, 0, 0), summary
        per_task = Counter(p["task"] for batch_ in fake.posts() for p in batch_)
        assert sorted(per_task) == [t["id"] for t in tasks]
        assert set(per_task.values()) == {1}, "every task exactly one prediction"
        assert result_count(conn, prefix) == 100
        queues = rq_queue.get_queues(conn, prefix)
        # prelabel ends when every result is stored; a job whose task was computed in another job's batch
        # may still sit in the queue for a moment, to be found done and skipped.
        wait_for(lambda: all(q.count == 0 and q.started_job_registry.count == 0 for q in queues), 60,
                 "the queues to drain")
        for queue in queues:
            assert queue.failed_job_registry.count == 0
        assert "re-queued: its worker" in (tmp_path / "worker2.log").read_text()
        for ident in abandoned:
            assert Job.fetch(ident, connection=conn, serializer=JSONSerializer).get_status() == "finished"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(30)
        fake.close()


def test_redis_restart_mid_run_answers_503_then_completes(redis_server, tiny_vit_checkpoint, tmp_path):
    from backend.settings import Settings
    from tests.test_api import serve
    from tests.test_worker import CONFIG

    files = tmp_path / "files"
    names = write_images(files, 40)
    tasks = [{"id": 2000 + i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(names)]
    prefix = f"r{uuid.uuid4().hex[:8]}"
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, WORKER_BATCH_SIZE="2", JOB_RETRIES="3",
                    PREDICT_WAIT_S="0", LABEL_STUDIO_URL="", LABEL_STUDIO_API_KEY="")
    settings = Settings.from_env(env)
    conn = redis_server.client()
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: rq_queue.worker_count(conn, prefix) or worker.poll() is not None, 120, "the worker")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        body = {"tasks": tasks, "label_config": CONFIG}
        with serve(settings) as client:
            first = client.post("/predict", json=body)
            assert first.status_code == 200, first.text
            wait_for(lambda: result_count(conn, prefix) >= 4, 120, "the first results")
            redis_server.stop()
            try:
                started = time.monotonic()
                down = client.post("/predict", json=body)
                assert time.monotonic() - started < 10
                assert down.status_code == 503
                detail = down.json()["detail"]
                assert f"Redis at redis://127.0.0.1:{redis_server.port}/0 is unreachable" in detail, detail
                for _ in range(3):
                    started = time.monotonic()
                    health = client.get("/health")
                    assert time.monotonic() - started < 1.5
                    assert health.status_code == 200 and health.json()["status"] == "DEGRADED"
                    assert "unreachable" in health.json()["redis"] and health.json()["workers"] is None
                    time.sleep(1)
                assert worker.poll() is None, "the worker must outlive a Redis outage"
            finally:
                redis_server.start()
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]

            last: list = []

            def all_finished():
                reply = client.post("/predict", json=body)
                assert reply.status_code == 200, reply.text
                results = reply.json()["results"]
                last[:] = [r for r in results if "result" not in r and "error" not in r]
                return results if not last else None

            try:
                results = wait_for(all_finished, 180, "every task to finish after Redis returned", poll_s=1)
            except AssertionError as exc:  # say which tasks stayed pending, where their jobs are, what the worker did
                raise AssertionError(f"{exc}; still pending: {last}\n"
                                     f"{_job_whereabouts(conn, prefix, [p['job_id'] for p in last], tmp_path / 'worker.log')}"
                                     ) from None
        assert len(results) == len(tasks)
        assert [r for r in results if "error" in r] == []
        assert result_count(conn, prefix) == len(tasks)
        assert worker.poll() is None
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)


def test_after_a_redis_outage_a_failed_job_is_still_retried_after_its_backoff(redis_server, tiny_vit_checkpoint,
                                                                             tmp_path):
    """RQ's scheduler (a forked process) died with Redis and its successor waited ten minutes; the workers'
    own reaps must queue a due retry within seconds of its backoff (2 s) after Redis is back."""
    from backend.settings import Settings
    from tests.loopback_http import QuietHandler, start_server
    from tests.test_jobqueue_rules import _payload

    requests: list[float] = []

    class Busy(QuietHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            requests.append(time.monotonic())
            self.reply(503, b"busy", "text/plain")

    host = start_server(Busy, poll_interval=0.05)
    prefix = f"s{uuid.uuid4().hex[:8]}"
    extra = {"JOB_RETRIES": "1", "WORKER_BATCH_SIZE": "1", "ALLOWED_IMAGE_HOSTS": "127.0.0.1",
             "ALLOW_PRIVATE_ADDRESSES": "true"}
    files = tmp_path / "files"
    files.mkdir()
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, **extra)
    conn = redis_server.client()
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: rq_queue.worker_count(conn, prefix) or worker.poll() is not None, 120, "the worker")
        redis_server.stop()
        time.sleep(3)
        redis_server.start()
        wait_for(lambda: rq_queue.worker_count(conn, prefix) or worker.poll() is not None, 60, "the worker back")
        settings = Settings.from_env({"REDIS_URL": redis_server.url, "QUEUE_PREFIX": prefix, **extra})
        payload = _payload(settings, 1, f"http://127.0.0.1:{host.server_address[1]}/a.png")
        assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "enqueued"
        try:
            wait_for(lambda: len(requests) >= 2, 40, "the retry after the backoff")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {len(requests)} request(s)\n"
                                 f"{_job_whereabouts(conn, prefix, [payload['job_id']], tmp_path / 'worker.log')}"
                                 ) from None
        assert requests[1] - requests[0] >= 2.0  # the backoff was kept
        [stored] = rq_queue.read_stored(conn, prefix, [payload["job_id"]])
        assert stored is None or "503" in stored.error
        assert worker.poll() is None
    finally:
        host.shutdown()
        host.server_close()
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)


def _job_whereabouts(conn, prefix: str, job_ids: list[str], worker_log) -> str:
    """Return, per job, its RQ status, the registries holding it, its claim and attempts, and its log lines."""
    lines = []
    queues = rq_queue.get_queues(conn, prefix)
    for ident in job_ids:
        try:
            status = Job.fetch(ident, connection=conn, serializer=JSONSerializer).get_status(refresh=True)
        except Exception as exc:  # noqa: BLE001 (a diagnostic: say what fetching it did)
            status = repr(exc)
        where = [f"{q.name}:{name}" for q in queues for name, registry in (
            ("queued", None), ("started", q.started_job_registry), ("scheduled", q.scheduled_job_registry),
            ("failed", q.failed_job_registry), ("finished", q.finished_job_registry),
            ("intermediate", None)) if (ident in q.get_job_ids() if name == "queued" else
                                         ident in q.intermediate_queue.get_job_ids() if name == "intermediate" else
                                         ident in registry.get_job_ids(cleanup=False))]
        claim = rq_queue.key(prefix, "claim", ident)
        lines.append(f"job {ident}: status {status}, in {where or 'no registry'}, claim "
                     f"{conn.get(claim)!r} (ttl {conn.ttl(claim)}), attempts "
                     f"{conn.get(rq_queue.key(prefix, 'attempts', ident))!r}")
        lines += [f"  {line}" for line in worker_log.read_text().splitlines() if ident in line]
    locks = {k.decode(): conn.get(k) for k in conn.scan_iter(match="rq:scheduler*")}
    lines.append(f"scheduler keys: {locks}")
    lines += [line for line in worker_log.read_text().splitlines()
              if any(word in line for word in ("ERROR", "WARNING", "Redis is back", "listening", "cheduler"))]
    return "\n".join(lines)


class RecordingLabelStudio:
    """POST /api/predictions/ and GET /api/predictions/?task= on a fixed loopback port, recording bodies."""

    def __init__(self, port: int) -> None:
        from urllib.parse import parse_qs, urlsplit

        from tests.loopback_http import QuietHandler, start_server

        self.predictions: list[dict] = []
        self.posts = 0
        self.post_status = 201  # another status: every POST is refused with it and nothing is stored
        self.post_delay_s = 0.0  # a slow Label Studio: each POST takes this long
        owner = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.posts += 1
                time.sleep(owner.post_delay_s)
                if owner.post_status != 201:
                    self.reply(owner.post_status, {"detail": "Not found."})
                    return
                owner.predictions.append(body)
                self.reply(201, {"id": len(owner.predictions), **body})

            def do_GET(self):  # noqa: N802
                task = int(parse_qs(urlsplit(self.path).query)["task"][0])
                self.reply(200, [p for p in owner.predictions if p.get("task") == task])

        self.server = start_server(Handler, port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_label_studio_down_longer_than_client_retries_outbox_delivers_each_once(
    redis_server, tiny_vit_checkpoint, tmp_path
):
    """Label Studio refuses connections past the client's retry window: the outbox pushes every one once."""
    from backend.jobqueue import outbox
    from backend.settings import Settings
    from tests.test_api import serve
    from tests.test_worker import CONFIG

    files = tmp_path / "files"
    names = write_images(files, 12)
    tasks = [{"id": 3000 + i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(names)]
    # Bound but not listening: connections are refused, and no other process can take the port meanwhile.
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    port = refusing.getsockname()[1]
    prefix = f"l{uuid.uuid4().hex[:8]}"
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, PREDICT_WAIT_S="0", JOB_RETRIES="0",
                    LABEL_STUDIO_URL=f"http://127.0.0.1:{port}", LABEL_STUDIO_API_KEY="test-token",
                    PUSH_BACKOFF_S="0.5", ALLOW_UNAUTHENTICATED="true")
    settings = Settings.from_env(env)
    conn = redis_server.client()
    log_path = tmp_path / "worker.log"
    worker = start_worker(env, log_path)
    ls = None
    try:
        wait_for(lambda: rq_queue.worker_count(conn, prefix) or worker.poll() is not None, 120, "the worker")
        assert worker.poll() is None, log_path.read_text()
        with serve(settings) as client:
            reply = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG})
        assert reply.status_code == 200
        items = reply.json()["results"]
        # The idle worker may finish a task before the API answers (PREDICT_WAIT_S=0 does not wait, it still
        # reads what is there): that one is answered directly and never pushed. The others are pushed.
        assert all(item.get("status") == "pending" or "result" in item for item in items), items
        pushed = {task["id"] for task, item in zip(tasks, items, strict=True) if item.get("status") == "pending"}
        assert len(pushed) >= len(tasks) // 2, items
        wait_for(lambda: log_path.read_text().count("failed (ConnectError); retry in") >= 2, 120,
                 "the worker to retry pushes to the unreachable Label Studio")
        # Past the client's own retries: every push waits in the outbox, and its loop has failed again.
        wait_for(lambda: outbox.pending(conn, prefix) == len(pushed), 60, "every push to wait in the outbox")
        wait_for(lambda: "from the outbox failed" in log_path.read_text(), 30, "an outbox retry to fail")
        assert "queued in the outbox" in log_path.read_text()
        refusing.close()
        ls = RecordingLabelStudio(port)
        wait_for(lambda: len({p["task"] for p in ls.predictions}) == len(pushed), 120,
                 "every prediction to reach Label Studio once it is back", poll_s=0.2)
        time.sleep(1)  # a doubled push would land now
        per_task = Counter(p["task"] for p in ls.predictions)
        assert set(per_task) == pushed and set(per_task.values()) == {1}, per_task
        assert "dropped" not in log_path.read_text()
        assert outbox.pending(conn, prefix) == 0 and not conn.exists(outbox.entries_key(prefix))
        assert all(p["result"] and p["model_version"].startswith("gem-labeler-gem-tiny-vit-") for p in ls.predictions)
        assert result_count(conn, prefix) == len(tasks)
    finally:
        refusing.close()
        if ls is not None:
            ls.close()
        if worker.poll() is None:
            worker.terminate()
            worker.wait(30)


def test_reaper_frees_dead_claims_and_requeues_stranded_jobs_once(redis_server):
    """The reaper's rules on their own: dead holders lose claims, live ones keep them; limbo jobs go back once."""
    from backend.jobqueue import reaper
    from backend.settings import Settings

    conn = redis_server.client()
    prefix = f"p{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env({"REDIS_URL": redis_server.url, "QUEUE_PREFIX": prefix, "JOB_RETRIES": "0"})
    reaper.mark_alive(conn, prefix, "live-worker")
    conn.set(rq_queue.key(prefix, "claim", "job-a"), "dead-worker")
    conn.set(rq_queue.key(prefix, "claim", "job-b"), "live-worker")
    payload = {"job_id": f"{prefix}-stranded", "prefix": prefix, "task_id": 1, "project": "1"}
    assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "enqueued"
    batch = rq_queue.get_queues(conn, prefix)[1]
    # What a worker's dequeue does before it starts the job: queue -> intermediate list.
    assert conn.lmove(batch.key, batch.intermediate_queue.key, "LEFT", "RIGHT") == payload["job_id"].encode()
    assert batch.count == 0

    assert reaper.reap(conn, prefix) == []  # first sighting: a live worker may be about to start it
    assert not conn.exists(rq_queue.key(prefix, "claim", "job-a"))
    assert conn.get(rq_queue.key(prefix, "claim", "job-b")) == b"live-worker"
    assert reaper.reap(conn, prefix) == [payload["job_id"]]
    assert reaper.reap(conn, prefix) == []
    assert batch.get_job_ids() == [payload["job_id"]] and conn.llen(batch.intermediate_queue.key) == 0
    assert Job.fetch(payload["job_id"], connection=conn, serializer=JSONSerializer).get_status() == "queued"

    heartbeat = reaper.Heartbeat(conn, prefix, "beating").start()
    assert conn.ttl(reaper.alive_key(prefix, "beating")) > 0
    heartbeat.stop()
    assert not conn.exists(reaper.alive_key(prefix, "beating"))


def _outbox_settings(redis_server, port: int, **extra: str):
    from backend.settings import Settings

    return Settings.from_env({"REDIS_URL": redis_server.url, "QUEUE_PREFIX": f"o{uuid.uuid4().hex[:8]}",
                              "LABEL_STUDIO_URL": f"http://127.0.0.1:{port}", "LABEL_STUDIO_API_KEY": "test-token",
                              "PUSH_BACKOFF_S": "0.1", **extra})


def _queue_push(conn, settings, job_id: str, task_id: int) -> dict:
    from backend.jobqueue import outbox

    prediction = {"result": [{"type": "brushlabels", "value": {"rle": [1, 2]}}], "model_version": "v1", "score": 0.5}
    rq_queue.store_result(conn, settings.queue_prefix, job_id, {"task_id": task_id, "prediction": prediction}, 600)
    outbox.add(conn, settings, job_id, task_id, delay_s=0)
    return prediction


def test_outbox_drops_a_push_label_studio_refuses_for_good(redis_server, caplog):
    """A 404 (task deleted) is logged and leaves the outbox at once; it is never tried again."""
    from backend.jobqueue import outbox

    ls = RecordingLabelStudio(free_port())
    ls.post_status = 404
    try:
        settings = _outbox_settings(redis_server, ls.server.server_address[1])
        conn = redis_server.client()
        _queue_push(conn, settings, "job-deleted", 77)
        client = outbox.outbox_client(settings)
        with caplog.at_level("ERROR", logger="gem_labeler.outbox"):
            assert outbox.drain(conn, settings, client) == {"dropped": 1}
        assert ls.posts == 1 and ls.predictions == []
        assert outbox.pending(conn, settings.queue_prefix) == 0 and not conn.exists(outbox.entries_key(settings.queue_prefix))
        assert any("task 77 job job-deleted: push to Label Studio dropped" in r.message and "404" in r.message
                   for r in caplog.records), caplog.text
        assert outbox.drain(conn, settings, client) == {}
        assert ls.posts == 1
        # The prediction itself is kept: the next /predict for the task still returns it.
        assert rq_queue.read_results(conn, settings.queue_prefix, ["job-deleted"])[0]["prediction"]
    finally:
        ls.close()


def test_outbox_retries_with_backoff_skips_what_label_studio_holds_and_expires(redis_server, caplog):
    from backend.jobqueue import outbox

    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    port = refusing.getsockname()[1]
    ls = None
    try:
        settings = _outbox_settings(redis_server, port, PUSH_MAX_AGE_S="30")
        prefix = settings.queue_prefix
        conn = redis_server.client()
        client = outbox.outbox_client(settings)
        prediction = _queue_push(conn, settings, "job-a", 5)
        _queue_push(conn, settings, "job-b", 6)
        assert outbox.drain(conn, settings, client) == {"retry": 2}
        assert outbox.drain(conn, settings, client) == {}  # not due before its backoff
        scores = dict(conn.zrange(outbox.due_key(prefix), 0, -1, withscores=True))
        assert all(0 < score - time.time() <= 0.1 for score in scores.values()), scores
        # The result's TTL is stretched so the prediction outlives the outbox's patience.
        assert conn.ttl(rq_queue.key(prefix, "result", "job-a")) > settings.push_max_age_s
        refusing.close()
        ls = RecordingLabelStudio(port)
        ls.predictions.append({**prediction, "task": 5})  # an earlier attempt landed unanswered
        time.sleep(0.15)
        assert outbox.drain(conn, settings, client) == {"present": 1, "pushed": 1}
        assert ls.posts == 1 and [p["task"] for p in ls.predictions] == [5, 6]
        # An entry older than PUSH_MAX_AGE_S is dropped without another attempt.
        _queue_push(conn, settings, "job-old", 8)
        entry = json.loads(conn.hget(outbox.entries_key(prefix), "job-old"))
        conn.hset(outbox.entries_key(prefix), "job-old", json.dumps({**entry, "since": time.time() - 31}))
        with caplog.at_level("ERROR", logger="gem_labeler.outbox"):
            assert outbox.drain(conn, settings, client) == {"dropped": 1}
        assert ls.posts == 1 and "PUSH_MAX_AGE_S=30" in caplog.text
    finally:
        refusing.close()
        if ls is not None:
            ls.close()


def test_outbox_claims_are_exclusive_and_come_back_after_the_lease(redis_server):
    from backend.jobqueue import outbox

    settings = _outbox_settings(redis_server, free_port())
    prefix = settings.queue_prefix
    conn = redis_server.client()
    jobs = [f"job-{i}" for i in range(60)]
    for i, job in enumerate(jobs):
        outbox.add(conn, settings, job, i, delay_s=0)
    taken: list[list[str]] = [[], []]

    def grab(slot: int) -> None:
        own = redis_server.client()
        while claimed := outbox.claim(own, prefix, limit=1):
            taken[slot] += claimed

    threads = [threading.Thread(target=grab, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == sorted(jobs)
    assert outbox.claim(conn, prefix, now=time.time() + 10, limit=100) == []
    # A holder that died mid-push: its entries are due again once the lease has run out.
    assert sorted(outbox.claim(conn, prefix, now=time.time() + outbox.LEASE_S + 1, limit=100)) == sorted(jobs)


def _task_jobs(settings, prefix: str):
    from backend.jobqueue.digests import local_contents
    from backend.jobqueue.jobs import TaskJobs
    from backend.labelstudio.label_config import parse_label_config
    from backend.options import ProjectOptions
    from tests.test_worker import CONFIG

    options = ProjectOptions.from_settings(settings)
    return TaskJobs(prefix=prefix, project="1", vocabulary=parse_label_config(CONFIG), options=options,
                    contents=local_contents(options))


def _enqueue_tasks(conn, settings, jobs, tasks: list[dict], *, push: bool = False) -> list[str]:
    """Enqueue tasks as the API does (asking for a push, as the webhook does, when `push`); return job ids."""
    ids = []
    for task in tasks:
        url = task["data"]["image"]
        ident = jobs.job_id(task, url)
        if push:
            conn.set(rq_queue.key(settings.queue_prefix, "push", ident), "1", ex=600)
        assert rq_queue.enqueue(conn, settings, jobs.payload(ident, task, url), interactive=False) == "enqueued"
        ids.append(ident)
    return ids


@pytest.mark.slow
def test_a_task_that_kills_its_worker_gets_an_error_after_max_attempts_and_the_queue_moves_on(
    redis_server, tiny_vit_checkpoint, tmp_path
):
    """Each time the poison task runs, its worker process dies (SIGKILL, as the OOM killer does)."""
    from backend.settings import Settings
    from tests.loopback_http import HangingImageHost

    files = tmp_path / "files"
    names = write_images(files, 3)
    host = HangingImageHost(PNG_BYTES)  # never answers while the test lets the worker live
    prefix = f"d{uuid.uuid4().hex[:8]}"
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, JOB_RETRIES="0", WORKER_BATCH_SIZE="4",
                     JOB_MAX_ATTEMPTS="2", ALLOWED_IMAGE_HOSTS="127.0.0.1", ALLOW_PRIVATE_ADDRESSES="true")
    settings = Settings.from_env(env)
    conn = redis_server.client()
    poison = {"id": 1, "data": {"image": f"{host.url}/poison.png"}}
    tasks = [poison] + [{"id": 2 + i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(names)]
    ids = _enqueue_tasks(conn, settings, _task_jobs(settings, prefix), tasks)
    poison_result = rq_queue.key(prefix, "result", ids[0])
    workers: list[subprocess.Popen] = []
    kills = 0
    try:
        while True:
            worker = start_worker(env, tmp_path / f"worker{len(workers)}.log")
            workers.append(worker)
            # The poison task started (it fetches its image first), or got its error instead.
            wait_for(lambda: host.requests > kills or conn.exists(poison_result) or worker.poll() is not None,  # noqa: B023
                     180, "the poison task to start again or to fail")
            if conn.exists(poison_result):
                break
            assert worker.poll() is None, (tmp_path / f"worker{len(workers) - 1}.log").read_text()[-3000:]
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            kills += 1
            assert kills <= 2, "a task that kills its worker must not be re-queued forever"
        def ended() -> list[dict] | None:
            results = rq_queue.read_results(conn, prefix, ids)
            return results if all(results) else None

        results = wait_for(ended, 180, "every task to end")
        assert kills == 2 and host.requests == 2
        error = results[0]["error"]
        assert "died 2 times" in error and "JOB_MAX_ATTEMPTS=2" in error and "retry_failed" in error
        assert all("prediction" in r for r in results[1:]), results[1:]
        queues = rq_queue.get_queues(conn, prefix)
        wait_for(lambda: all(q.count == 0 and q.started_job_registry.count == 0 for q in queues), 60, "an empty queue")
        assert all(q.failed_job_registry.count == 0 for q in queues)
        # The attempts are counted in Redis: a restarted worker (here, three of them) saw them all.
        assert int(conn.get(rq_queue.key(prefix, "attempts", ids[0]))) >= 2
    finally:
        host.close()
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(30)


@pytest.mark.slow
def test_two_workers_racing_for_a_batched_job_compute_and_push_each_task_once(
    redis_server, tiny_vit_checkpoint, tmp_path
):
    """Worker Y batches four jobs; worker X takes one of them meanwhile; Label Studio is slow to accept."""
    from backend.settings import Settings
    from tests.loopback_http import HangingImageHost

    files = tmp_path / "files"
    names = write_images(files, 3)
    keeps_x_busy, keeps_batch_open = HangingImageHost(PNG_BYTES), HangingImageHost(PNG_BYTES)
    ls = RecordingLabelStudio(free_port())
    ls.post_delay_s = 2.0
    prefix = f"x{uuid.uuid4().hex[:8]}"
    env = worker_env(redis_server.url, prefix, tiny_vit_checkpoint, files, JOB_RETRIES="0", WORKER_BATCH_SIZE="4",
                     ALLOWED_IMAGE_HOSTS="127.0.0.1", ALLOW_PRIVATE_ADDRESSES="true",
                     LABEL_STUDIO_URL=f"http://127.0.0.1:{ls.server.server_address[1]}",
                     LABEL_STUDIO_API_KEY="test-token")
    settings = Settings.from_env(env)
    conn = redis_server.client()
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    workers = [start_worker(env, path) for path in logs]
    try:
        wait_for(lambda: rq_queue.worker_count(conn, prefix) == 2 or any(w.poll() is not None for w in workers), 120,
                 "both workers")
        jobs = _task_jobs(settings, prefix)
        # One worker (X) gets stuck on a slow image ...
        _enqueue_tasks(conn, settings, jobs, [{"id": 90, "data": {"image": f"{keeps_x_busy.url}/x.png"}}])
        wait_for(lambda: keeps_x_busy.requests, 60, "a worker to be busy")
        # ... so the other (Y) takes the first of four jobs and claims the three after it for its batch, whose
        # last image is slow: Y holds the claims while X becomes free and takes the second job.
        tasks = [{"id": 100 + i, "data": {"image": f"/data/local-files/?d={name}"}} for i, name in enumerate(names)]
        tasks.append({"id": 103, "data": {"image": f"{keeps_batch_open.url}/last.png"}})
        ids = _enqueue_tasks(conn, settings, jobs, tasks, push=True)
        wait_for(lambda: keeps_batch_open.requests, 60, "the batch to be under way")
        assert conn.exists(*[rq_queue.key(prefix, "claim", ident) for ident in ids]) == 4
        keeps_x_busy.release()
        text = lambda: "".join(path.read_text() for path in logs)  # noqa: E731
        wait_for(lambda: f"job {ids[1]}: started" in text(), 60, "the other worker to take a batched job")
        keeps_batch_open.release()
        wait_for(lambda: len({p["task"] for p in ls.predictions}) == 4, 120, "every prediction to be pushed")
        time.sleep(3 * ls.post_delay_s)  # a second computation or push would land now
        per_task = Counter(p["task"] for p in ls.predictions)
        assert per_task == {task["id"]: 1 for task in tasks}, per_task
        for ident in ids:
            assert text().count(f"job {ident}: stored") == 1, f"job {ident} computed more than once"
    finally:
        keeps_x_busy.close()
        keeps_batch_open.close()
        ls.close()
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(30)


def test_a_prediction_is_pushed_once_per_task_and_version_whichever_path_pushes(redis_server):
    """Racing pushers, a retry after a failed push, and the outbox: one prediction per (task, version)."""
    from concurrent.futures import ThreadPoolExecutor

    from backend.jobqueue import outbox, push_once

    ls = RecordingLabelStudio(free_port())
    try:
        settings = _outbox_settings(redis_server, ls.server.server_address[1])
        prefix = settings.queue_prefix
        conn = redis_server.client()
        with ThreadPoolExecutor(8) as pool:
            claims = list(pool.map(lambda _: push_once.begin(redis_server.client(), prefix, 5, "v1"), range(8)))
        assert sorted(verdict for verdict, _ in claims) == ["busy"] * 7 + ["go"]
        token = next(token for verdict, token in claims if verdict == "go")
        push_once.finish(conn, settings, 5, "v1", token, pushed=True)
        # Another job for the same task and version waits in the outbox: it must not push again.
        _queue_push(conn, settings, "job-other", 5)
        client = outbox.outbox_client(settings)
        assert outbox.drain(conn, settings, client) == {"present": 1} and ls.posts == 0
        # A failed push releases the marker: the retry pushes, once; a later one for the same task does not.
        verdict, token = push_once.begin(conn, prefix, 6, "v1")
        assert verdict == "go"
        push_once.finish(conn, settings, 6, "v1", token, pushed=False)
        _queue_push(conn, settings, "job-6", 6)
        assert outbox.drain(conn, settings, client) == {"pushed": 1} and ls.posts == 1
        _queue_push(conn, settings, "job-6-again", 6)
        assert outbox.drain(conn, settings, client) == {"present": 1} and ls.posts == 1
        assert push_once.begin(conn, prefix, 6, "v2")[0] == "go", "another version is another prediction"
        # A worker that finds another pusher's lease leaves the push to the outbox, which waits that one out.
        from backend.jobqueue import worker

        prediction = {"result": [{"type": "brushlabels", "value": {"rle": [3, 4]}}], "model_version": "v1"}
        rq_queue.store_result(conn, prefix, "job-8", {"task_id": 8, "prediction": prediction}, 600)
        stranger = "pushing:elsewhere.1.2.3:abc"
        conn.set(push_once.marker_key(prefix, 8, "v1"), stranger, ex=60)
        assert worker._push(conn, {"task_id": 8, "job_id": "job-8"}, prediction, worker._State(settings)) is False
        assert outbox.drain(conn, settings, client) == {} and ls.posts == 1, "not before the other pusher is done"
        conn.delete(push_once.marker_key(prefix, 8, "v1"))  # that pusher failed and released it (or its lease lapsed)
        conn.zadd(outbox.due_key(prefix), {"job-8": 0})
        assert outbox.drain(conn, settings, client) == {"pushed": 1} and ls.posts == 2
    finally:
        ls.close()


def test_a_prelabel_push_waits_for_a_live_pusher_and_takes_over_a_killed_ones_lease(redis_server):
    """A `prelabel` killed between taking a push marker and pushing left a lease: the rerun must still push.

    A marker held by a live process is left to it (offered again later, not counted as pushed); once that
    process is killed, a pusher on the same machine takes the marker over at once instead of waiting out the
    lease; a holder it cannot judge (another host, an unnamed lease) still counts as alive.
    """
    from backend.bulk.common import Progress, Summary
    from backend.bulk.project import ProjectRun, _push
    from backend.jobqueue import push_once

    class ImportRecorder:  # the push logic under test calls only this method of the Label Studio client
        def __init__(self):
            self.batches = []

        def import_predictions(self, project, predictions):
            self.batches.append([p["task"] for p in predictions])

    settings = _outbox_settings(redis_server, free_port())
    prefix, conn = settings.queue_prefix, redis_server.client()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, redis; from backend.jobqueue import push_once; "
         f"print(push_once.begin(redis.Redis.from_url({redis_server.url!r}), {prefix!r}, 1, 'v')[0], flush=True); "
         "time.sleep(120)"], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "go"
        client = ImportRecorder()
        run, summary = ProjectRun(project=7, push_batch=10, progress=False), Summary()
        predictions = [{"task": task, "model_version": "v", "result": []} for task in (1, 2)]
        with Progress(2, desc="push", enabled=False) as bar:
            held = _push(client, run, list(predictions), summary, bar, conn, settings)
            assert held == predictions[:1] and summary.done == 1, "a live holder's task is neither sent nor done"
            assert client.batches == [[2]]
            holder.kill()
            holder.wait(10)
            assert _push(client, run, held, summary, bar, conn, settings) == []
        assert client.batches == [[2], [1]] and summary.done == 2
        assert push_once.begin(conn, prefix, 1, "v")[0] == "done"
        for stranger in ("pushing:elsewhere.4026531836.1.1:abc", "pushing:abc"):
            conn.set(push_once.marker_key(prefix, 3, "v"), stranger)
            assert push_once.begin(conn, prefix, 3, "v")[0] == "busy", stranger
    finally:
        holder.kill()
