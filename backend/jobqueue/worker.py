"""`gem-labeler worker`: an RQ worker that loads the model once per process and batches waiting jobs.

It is an RQ `SimpleWorker` (jobs run in the worker process itself, no fork), so the model loaded at
start serves every job and CUDA is never touched after a fork. When a job starts and more jobs for the
same model and method wait in its queue, it claims up to WORKER_BATCH_SIZE - 1 of them, runs all their
images through the engine together and stores every result before it releases the claims (released
earlier, a claimed job could be computed a second time by another worker); when RQ later hands out a
claimed job it finds its result stored and returns at once. A claim is a Redis key with the job timeout as
TTL, so a job claimed by a worker that died is computed by whoever runs it next.

Every start of a job is counted in Redis and taken back when the job ends here, so the count that stays is
how often a worker process died running it: such a job runs alone, and after JOB_MAX_ATTEMPTS deaths its
task gets an error instead. Late predictions are pushed after the results are stored, each once per (task,
model version) (`backend.jobqueue.push_once`). The default model's weight and config digests are published
before the worker listens (`backend.jobqueue.digests`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from rq import SimpleWorker, get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.jobqueue import digests, outbox, push_once
from backend.jobqueue import queues as rq_queue
from backend.jobqueue.reaper import Heartbeat
from backend.labeling.pipeline import EngineCache, EngineTimer, TaskOutcome, predict_payloads
from backend.labelstudio.client import LabelStudioError
from backend.options import ProjectOptions, content_files
from backend.settings import Settings

log = logging.getLogger("gem_labeler.worker")


class _State:
    """What one worker process keeps between jobs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engines = EngineCache(settings)
        self._ls_client: Any = None

    def ls_client(self) -> Any:
        """Return the Label Studio client, or None when no credentials are configured."""
        if not self.settings.can_push:
            return None
        if self._ls_client is None:
            from backend.labelstudio.client import LabelStudioClient

            self._ls_client = LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key)
        return self._ls_client


_STATE: _State | None = None
_HOLDER: str | None = None  # this process's RQ worker name, once it is one


def state() -> _State:
    """Return this process's worker state, made on first use from the environment."""
    global _STATE
    if _STATE is None:
        _STATE = _State(Settings.from_env())
    return _STATE


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Compute one task (and any batchable waiting ones); return a short summary (the result is stored)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job runs inside an RQ worker")
    conn: redis.Redis = job.connection
    st = state()
    prefix, ident = payload["prefix"], payload["job_id"]
    log.info("task %s job %s: started (project %s)", payload.get("task_id"), ident, payload.get("project"))
    if conn.exists(rq_queue.key(prefix, "result", ident)):
        log.info("task %s job %s: result already stored (batched earlier)", payload.get("task_id"), ident)
        return {"job_id": ident, "batched": True}
    if not _claim(conn, prefix, ident, st.settings.job_timeout_s):
        return _await_other(conn, payload, st.settings.job_timeout_s)
    batch = [payload]
    pushes: list[tuple[dict[str, Any], TaskOutcome]] = []
    try:
        deaths = rq_queue.start_attempts(conn, prefix, [ident], st.settings.result_ttl_s)[0] - 1
        if deaths >= st.settings.job_max_attempts:
            own = TaskOutcome(error=_died_error(deaths, st.settings))
            _store(conn, payload, own, st)
            return {"job_id": ident, "batch": 1, "error": own.error}
        # A job whose worker died before runs alone, so a task that kills its worker takes no others with it.
        if st.settings.worker_batch_size > 1 and deaths == 0:
            batch += _claim_waiting(conn, job, payload, st.settings.worker_batch_size - 1, st.settings.job_timeout_s)
        try:
            outcomes = predict_payloads(batch, st.engines, st.settings, on_engine_run=_engine_timer(conn, prefix),
                                        ls_client=st.ls_client())
        finally:
            rq_queue.end_attempts(conn, prefix, [p["job_id"] for p in batch])
        own = None
        for item, outcome in zip(batch, outcomes, strict=True):
            if item is payload:
                own = outcome
            if not outcome.retry and _store(conn, item, outcome, st):
                pushes.append((item, outcome))
    finally:
        # Only now that the results are stored: a claim freed earlier would let another worker compute the
        # same task again. Claims of jobs left without a result are freed so that their own run computes them.
        conn.delete(*[rq_queue.key(prefix, "claim", p["job_id"]) for p in batch])
    for item, outcome in pushes:
        if _push(conn, item, outcome.prediction, st):
            conn.delete(rq_queue.key(prefix, "push", item["job_id"]))
    assert own is not None
    if own.retry:
        raise RuntimeError(own.error or "transient failure")
    summary = {"job_id": ident, "batch": len(batch)}
    summary.update({"error": own.error} if own.error else {"regions": own.regions})
    return summary


def _died_error(deaths: int, settings: Settings) -> str:
    return (f"the worker process died {deaths} times while computing this task (out of memory, a crash or a "
            f"kill?), so it is not tried again (JOB_MAX_ATTEMPTS={settings.job_max_attempts}); once the cause is "
            "fixed, ask again with retry_failed (/predict?retry_failed=true or `gem-labeler prelabel --retry-failed`)")


def _engine_timer(conn: redis.Redis, prefix: str) -> EngineTimer:
    """Return a callback that adds engine calls to the figures /metrics reads from Redis."""

    def record(method: str, seconds: float, images: int) -> None:
        try:
            rq_queue.record_engine_time(conn, prefix, method, seconds, images)
        except redis.RedisError:
            log.warning("could not record engine time in Redis")

    return record


def _store(conn: redis.Redis, payload: dict[str, Any], outcome: TaskOutcome, st: _State) -> bool:
    """Store a task's outcome; return whether its prediction must be pushed (an API request gave up on it)."""
    prefix, ident, task_id = payload["prefix"], payload["job_id"], payload.get("task_id")
    if outcome.error is not None:
        result = {"task_id": task_id, "error": outcome.error}
        rq_queue.store_result(conn, prefix, ident, result, st.settings.error_ttl_s, project=payload.get("project"))
        log.warning("task %s job %s: failed: %s", task_id, ident, outcome.error)
        return False
    result = {"task_id": task_id, "prediction": outcome.prediction}
    push = rq_queue.store_result(conn, prefix, ident, result, st.settings.result_ttl_s)
    log.info("task %s job %s: stored %d region(s)%s", task_id, ident, outcome.regions, ", pushing" if push else "")
    return push


def _push(conn: redis.Redis, payload: dict[str, Any], prediction: dict[str, Any] | None, st: _State) -> bool:
    """Push a late prediction now or queue it in the outbox; return whether the push is settled here."""
    client = st.ls_client()
    task_id, ident = payload.get("task_id"), payload["job_id"]
    if client is None or prediction is None or task_id is None:
        return True
    version = str(prediction.get("model_version") or payload.get("model_version"))
    verdict, token = push_once.begin(conn, st.settings.queue_prefix, task_id, version)
    if verdict == "done":
        log.info("task %s job %s: not pushed: Label Studio holds it already", task_id, ident)
        return True
    if verdict == "busy":
        # The other pusher may yet fail or die mid-push: the outbox looks again until it finishes or its lease lapses.
        outbox.add(conn, st.settings, ident, int(task_id), delay_s=outbox.BUSY_RETRY_S)
        log.info("task %s job %s: another pusher is sending it; checked again from the outbox", task_id, ident)
        return False
    pushed = False
    try:
        if outbox.pending(conn, st.settings.queue_prefix):
            # Pushes already wait: Label Studio is probably down, and the worker must not stall on it.
            outbox.add(conn, st.settings, ident, int(task_id), delay_s=0)
            log.info("task %s job %s: push queued in the outbox behind earlier ones", task_id, ident)
            return False
        client.create_prediction(int(task_id), prediction)
        pushed = True
        log.info("task %s job %s: prediction pushed to Label Studio", task_id, ident)
        return True
    except Exception as exc:  # the result stays stored: the outbox retries it, or the next /predict returns it
        if isinstance(exc, LabelStudioError) and not outbox.retry_later(exc):
            log.error("task %s job %s: push to Label Studio refused, not retried: %s", task_id, ident, exc)
            return True
        outbox.add(conn, st.settings, ident, int(task_id), delay_s=st.settings.push_backoff_s)
        log.warning("task %s job %s: push to Label Studio failed (%s); queued in the outbox", task_id, ident, exc)
        return False
    finally:
        push_once.finish(conn, st.settings, task_id, version, token, pushed=pushed)


def _claim(conn: redis.Redis, prefix: str, ident: str, ttl_s: int) -> bool:
    # The claim names its worker, so a reaper can release it as soon as that worker is dead.
    holder = _HOLDER or str(os.getpid())
    return bool(conn.set(rq_queue.key(prefix, "claim", ident), holder, nx=True, ex=ttl_s))


def _await_other(conn: redis.Redis, payload: dict[str, Any], timeout_s: int) -> dict[str, Any]:
    """Wait for the worker that claimed this job in its batch; compute it here if that worker died."""
    prefix, ident = payload["prefix"], payload["job_id"]
    claim = rq_queue.key(prefix, "claim", ident)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if conn.exists(rq_queue.key(prefix, "result", ident)):
            return {"job_id": ident, "batched": True}
        if not conn.exists(claim):
            return run_job(payload)
        time.sleep(0.05)
    raise TimeoutError(f"job {ident} stayed claimed by another worker for {timeout_s} s")


def _claim_waiting(
    conn: redis.Redis, job: Job, payload: dict[str, Any], limit: int, ttl_s: int
) -> list[dict[str, Any]]:
    """Return payloads of jobs waiting in the same queue with the same engine, claimed for this batch."""
    queue = rq_queue.Queue(job.origin, connection=conn, serializer=JSONSerializer)
    key = ProjectOptions.from_dict(payload["options"]).engine_key()
    taken: list[dict[str, Any]] = []
    for other in Job.fetch_many(queue.get_job_ids(0, 4 * limit), connection=conn, serializer=JSONSerializer):
        if len(taken) >= limit:
            break
        if other is None or not other.args:
            continue
        candidate = other.args[0]
        if not isinstance(candidate, dict) or "options" not in candidate or candidate.get("job_id") == payload["job_id"]:
            continue
        if ProjectOptions.from_dict(candidate["options"]).engine_key() != key:
            continue
        if conn.get(rq_queue.key(candidate["prefix"], "attempts", candidate["job_id"])) not in (None, b"0"):
            continue  # it killed a worker before: it runs alone, in its own job
        if _claim(conn, candidate["prefix"], candidate["job_id"], ttl_s):
            taken.append(candidate)
    if taken:
        rq_queue.start_attempts(conn, payload["prefix"], [t["job_id"] for t in taken], state().settings.result_ttl_s)
    return taken


def publish_digests(prefix: str, paths: list[str]) -> dict[str, str]:
    """Return the content digests of the files readable here, after publishing them (an RQ job the API
    enqueues when a project names a file no worker has published yet)."""
    return {path: digest[:16] for path, digest in digests.publish(get_current_job().connection, prefix, paths).items()}


def on_job_failure(job: Job, connection: redis.Redis, exc_type: Any, exc_value: Any, _tb: Any) -> None:
    """Store a clear error for a job that failed and has no retries left (RQ failure callback)."""
    if job.should_retry:
        return
    payload = job.args[0] if job.args else {}
    if not isinstance(payload, dict) or "job_id" not in payload:
        return
    st = state()
    error = f"{getattr(exc_type, '__name__', 'Error')}: {exc_value}"
    result = {"task_id": payload.get("task_id"), "error": error}
    rq_queue.store_result(connection, payload["prefix"], payload["job_id"], result, st.settings.error_ttl_s,
                          project=payload.get("project"))
    log.error("task %s job %s: failed after retries: %s", payload.get("task_id"), payload["job_id"], error)


def main(settings: Settings, *, burst: bool = False) -> int:
    """Run a worker until stopped; return the process exit code."""
    global _STATE
    if not settings.redis_url:
        log.error("REDIS_URL is not set: a worker needs the Redis the API uses")
        return 2
    _STATE = _State(settings)
    conn = rq_queue.connect(settings.redis_url, timeout_s=10)
    try:
        conn.ping()
    except redis.RedisError as exc:
        log.error("%s", rq_queue.describe_error(settings.redis_url, exc))
        return 2
    defaults = ProjectOptions.from_settings(settings)
    try:
        warm_s = _STATE.engines.warm_up(defaults)
        log.info("engine warmed up in %.1f s", warm_s)
    except Exception as exc:  # missing weights, unknown model: say so and stop, never serve broken
        log.error("cannot load the model: %s", exc)
        return 3
    # Before listening: once this worker counts as alive, the API can name its model's version.
    for path, digest in digests.publish(conn, settings.queue_prefix, content_files(defaults)).items():
        log.info("published the content digest of %s: %s", path, digest[:16])
    # RQ's blocking dequeue waits up to its dequeue timeout (minutes) for a job: the loop gets its own
    # connections, whose read timeout RQ raises above that, instead of the short one `conn` has.
    loop_conn = rq_queue.connect(settings.redis_url, timeout_s=10, blocking=True)
    queues = rq_queue.get_queues(loop_conn, settings.queue_prefix)
    global _HOLDER
    while True:
        worker = SimpleWorker(queues, connection=loop_conn, serializer=JSONSerializer)
        _HOLDER = worker.name
        heartbeat = Heartbeat(conn, settings.queue_prefix, worker.name).start()
        pusher = outbox.OutboxLoop(conn, settings).start() if settings.can_push else None
        log.info("worker %s listening on %s", worker.name, ", ".join(q.name for q in queues))
        try:
            # No RQ scheduler: the heartbeat's reaps queue due retries (see backend.jobqueue.reaper).
            worker.work(burst=burst, with_scheduler=False, logging_level=settings.log_level)
        except redis.RedisError as exc:  # raised by RQ's own teardown when Redis is gone
            log.error("%s", rq_queue.describe_error(settings.redis_url, exc))
        finally:
            heartbeat.stop()
            if pusher is not None:
                pusher.stop()
        if burst or worker._stop_requested or worker._shutdown_requested_date is not None:
            return 0  # finished, or asked to stop (SIGTERM / Ctrl-C)
        # RQ's loop quits on an error outside a job, such as Redis going away between two jobs; the
        # process lives on under a new worker name, so reapers hand the interrupted job to a worker.
        _wait_for_redis(conn, settings.redis_url)


def _wait_for_redis(conn: redis.Redis, url: str) -> None:
    """Return once Redis answers PING again, retrying with capped backoff."""
    delay = 0.5
    while True:
        try:
            conn.ping()
            log.info("Redis is back: starting a fresh worker")
            return
        except redis.RedisError as exc:
            log.error("%s; retry in %.1f s", rq_queue.describe_error(url, exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
