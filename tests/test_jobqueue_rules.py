"""Queue rules on real Redis with real RQ workers: how many times a transient failure is retried, and where a
job taken back from a dead worker goes in its queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.jobqueue import queues as rq_queue
from backend.jobqueue import reaper, worker
from backend.jobqueue.jobs import make_payload
from backend.labelstudio.label_config import parse_label_config
from backend.options import ProjectOptions, model_version
from backend.settings import Settings
from tests.loopback_http import QuietHandler, start_server

CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="red square"/></BrushLabels></View>"""


@pytest.fixture
def prefix() -> str:
    return f"rules{uuid.uuid4().hex[:8]}"


@pytest.fixture
def conn(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    conn = rq_queue.connect(redis_url)
    yield conn
    keys = list(conn.scan_iter(match=f"*{prefix}*", count=1000))  # only this test's keys (its own prefix)
    if keys:
        conn.delete(*keys)


@pytest.fixture
def down_image_host() -> Iterator[dict]:
    """An image host that answers 503 (a transient failure: retryable) to every request, and counts them."""
    seen = {"requests": 0}

    class Handler(QuietHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            seen["requests"] += 1
            self.reply(503, b"busy", "text/plain")

    server = start_server(Handler, poll_interval=0.05)
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}/a.png"
    yield seen
    server.shutdown()
    server.server_close()


def _settings(redis_url: str, prefix: str, retries: int) -> Settings:
    return Settings.from_env({"REDIS_URL": redis_url, "QUEUE_PREFIX": prefix, "JOB_RETRIES": str(retries),
                              "WORKER_BATCH_SIZE": "1", "ALLOWED_IMAGE_HOSTS": "127.0.0.1",
                              "ALLOW_PRIVATE_ADDRESSES": "true"})


def _payload(settings: Settings, task_id: int, image_url: str) -> dict:
    options = ProjectOptions.from_settings(settings)
    return make_payload(job=f"{settings.queue_prefix}-t{task_id}", prefix=settings.queue_prefix, project="1",
                        task={"id": task_id}, image_url=image_url, vocabulary=parse_label_config(CONFIG),
                        options=options, version=model_version(options))


# ------------------------------------------------------------------------------------------ retries


@pytest.mark.parametrize(("retries", "interactive", "attempts"),
                         [(0, False, 1), (1, False, 2), (3, False, 4), (3, True, 1)])
def test_transient_failure_is_retried_job_retries_times_in_batch_only(
        redis_url, conn, prefix, down_image_host, monkeypatch, retries, interactive, attempts):
    """JOB_RETRIES=n: one run plus n retries for a bulk job; an interactive job runs once (the annotator is
    waiting and can ask again). The task then holds the error."""
    settings = _settings(redis_url, prefix, retries)
    # The backoff (2, 10, 30 s) is RQ's scheduler's business; without it the retry is queued at once, so a
    # burst worker runs every attempt in this test.
    monkeypatch.setattr(rq_queue, "RETRY_INTERVALS", [0])
    monkeypatch.setattr(worker, "_STATE", worker._State(settings))
    payload = _payload(settings, 7, down_image_host["url"])
    assert rq_queue.enqueue(conn, settings, payload, interactive=interactive) == "enqueued"

    SimpleWorker(rq_queue.get_queues(conn, prefix), connection=conn, serializer=JSONSerializer).work(burst=True)

    assert down_image_host["requests"] == attempts
    job = Job.fetch(payload["job_id"], connection=conn, serializer=JSONSerializer)
    assert job.get_status() == "failed"
    [stored] = rq_queue.read_stored(conn, prefix, [payload["job_id"]])
    assert stored is not None and "503" in stored.error


# ------------------------------------------------------------------------------------------ reaper


def _enqueue_tasks(conn: redis.Redis, settings: Settings, count: int) -> list[str]:
    """Queue `count` batch jobs (tasks 0..count-1, images nobody serves); return their ids in queue order."""
    ids = []
    for task in range(count):
        payload = _payload(settings, task, f"http://127.0.0.1:9/{task}.png")
        assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "enqueued"
        ids.append(payload["job_id"])
    return ids


def _fake_started(conn: redis.Redis, queue, job_id: str, worker_name: str) -> None:
    """Put a queued job where RQ puts a running one (started registry + execution hash), held by `worker_name`."""
    assert conn.lrem(queue.key, 1, job_id) == 1
    conn.zadd(queue.started_job_registry.key, {f"{job_id}:exec1": 9_999_999_999})
    conn.hset(f"rq:execution:{job_id}:exec1", "worker_name", worker_name)


def test_reaped_jobs_go_back_at_the_front_of_their_queue(redis_url, conn, prefix):
    """A job taken back from a dead worker (or from limbo) already waited its turn: it runs next, before the
    jobs queued after it, not behind them."""
    settings = _settings(redis_url, prefix, 0)
    ids = _enqueue_tasks(conn, settings, 5)
    batch = rq_queue.get_queues(conn, prefix)[1]
    assert batch.get_job_ids() == ids
    # Job 0 was running on a worker that died; job 1 was popped into RQ's intermediate list and never started.
    _fake_started(conn, batch, ids[0], "dead-worker")
    assert conn.lmove(batch.key, batch.intermediate_queue.key, "LEFT", "RIGHT") == ids[1].encode()
    assert batch.get_job_ids() == ids[2:]

    assert reaper.reap(conn, prefix) == [ids[0]]  # limbo needs a second sighting
    assert batch.get_job_ids() == [ids[0], *ids[2:]]
    assert reaper.reap(conn, prefix) == [ids[1]]
    assert batch.get_job_ids() == [ids[1], ids[0], *ids[2:]]


def test_due_retries_are_queued_by_reaps_once_and_not_before_their_time(redis_url, conn, prefix):
    """A retry waits its backoff in RQ's scheduled registry; the workers' reaps queue it when it is due (no
    RQ scheduler process, which dies with a Redis outage), each once whichever worker reaps first."""
    from datetime import UTC, datetime, timedelta

    settings = _settings(redis_url, prefix, 1)
    ids = _enqueue_tasks(conn, settings, 3)
    batch = rq_queue.get_queues(conn, prefix)[1]
    now = datetime.now(UTC)
    for job_id, when in ((ids[0], now - timedelta(seconds=1)), (ids[1], now + timedelta(hours=1))):
        assert conn.lrem(batch.key, 1, job_id) == 1
        batch.schedule_job(Job.fetch(job_id, connection=conn, serializer=JSONSerializer), when)
    assert batch.get_job_ids() == [ids[2]]

    assert reaper.reap(conn, prefix) == [ids[0]]
    assert reaper.reap(conn, prefix) == []  # queued once
    assert batch.get_job_ids() == [ids[2], ids[0]]
    assert batch.scheduled_job_registry.get_job_ids() == [ids[1]]  # not due yet
    assert Job.fetch(ids[0], connection=conn, serializer=JSONSerializer).get_status() == "queued"
