"""Redis side of the backend: connections, RQ queues (JSON serializer), enqueueing, result storage.

Results live under their own keys (`<prefix>:result:<job id>`, JSON, with a TTL) so that /predict reads
a whole batch with one MGET. The "push to Label Studio" handshake between the API (which gave up
waiting) and the worker (which finished) is two small transactions, so a prediction is either
returned by /predict or pushed by the worker, never both and never neither. Beside them: stored errors
listed per project (dropped when its settings change), starts of each job not yet ended (what stays
counted are worker deaths), and the liveness keys that decide how many workers are alive.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core
import redis
import redis.asyncio
from rq import Queue, Retry
from rq.callbacks import Callback
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from backend.jobqueue.jobs import FAILURE_CALLBACK, JOB_FUNCTION
from backend.settings import Settings

INTERACTIVE = "interactive"
BATCH = "batch"
RETRY_INTERVALS = [2, 10, 30]
# A job in one of these states with no stored result will never deliver one: its worker died, or its
# result (an error kept only ERROR_TTL_S) expired while RQ still remembers the job.
DEAD_STATUSES = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED)


class RedisUnavailable(RuntimeError):
    """Redis cannot be reached; the message says where and why."""


def connect(url: str, *, timeout_s: float = 2.0, blocking: bool = False) -> redis.Redis:
    """Return a Redis client with short timeouts (the connection is made lazily).

    `blocking`: for an RQ worker loop, whose blocking dequeue waits minutes for a job; its reads get no
    timeout of ours (RQ sets one just above its dequeue timeout) and TCP keepalive holds the idle line.
    """
    if not url:
        raise RedisUnavailable("REDIS_URL is not set")
    # The health check_interval keeps a long-lived API connection honest after a Redis restart.
    options: dict[str, Any] = {"socket_connect_timeout": timeout_s, "health_check_interval": 30,
                               "socket_timeout": None if blocking else timeout_s}
    if blocking and not url.startswith("unix:"):  # unix sockets have no keepalive
        options["socket_keepalive"] = True
    return redis.Redis.from_url(url, **options)


def connect_async(url: str, *, timeout_s: float = 2.0) -> redis.asyncio.Redis:
    """Return an asyncio Redis client (for waiting without a thread), with the same short timeouts."""
    if not url:
        raise RedisUnavailable("REDIS_URL is not set")
    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=30
    )


def describe_error(url: str, exc: Exception) -> str:
    """Return a user-facing sentence for a Redis failure."""
    scheme, _, rest = url.partition("://")
    where = f"{scheme}://{rest.rsplit('@', 1)[-1]}" if rest else url  # never echo a password
    return f"Redis at {where} is unreachable ({type(exc).__name__}: {exc}); start it or fix REDIS_URL"


def queue_name(prefix: str, priority: str) -> str:
    """Return the RQ queue name for a priority (`interactive` or `batch`)."""
    return f"{prefix}-{priority}"


def get_queues(conn: redis.Redis, prefix: str) -> list[Queue]:
    """Return the queues in the order workers must serve them: interactive before batch."""
    return [Queue(queue_name(prefix, p), connection=conn, serializer=JSONSerializer) for p in (INTERACTIVE, BATCH)]


def key(prefix: str, kind: str, ident: str) -> str:
    """Return a Redis key of this deployment (`kind` is result, push, claim, project, annotations...)."""
    return f"{prefix}:{kind}:{ident}"


def enqueue(conn: redis.Redis, settings: Settings, payload: dict[str, Any], *, interactive: bool) -> str:
    """Enqueue a payload's job unless it is already queued, running or done; return what happened.

    Returns "enqueued", "exists" (another request's job will deliver), or "done" (a result is stored).
    """
    prefix = payload["prefix"]
    job = payload["job_id"]
    queue = Queue(
        queue_name(prefix, INTERACTIVE if interactive else BATCH), connection=conn, serializer=JSONSerializer
    )
    for _ in range(2):
        try:
            queue.enqueue_call(
                JOB_FUNCTION,
                args=(payload,),
                job_id=job,
                timeout=settings.job_timeout_s,
                result_ttl=settings.result_ttl_s,
                failure_ttl=settings.error_ttl_s,
                # Interactive jobs are not retried: the annotator is waiting and can simply click again.
                retry=Retry(max=settings.job_retries, interval=RETRY_INTERVALS)
                if settings.job_retries and not interactive else None,
                on_failure=Callback(FAILURE_CALLBACK),
                description=f"task {payload['task_id']} project {payload['project']}",
                unique=True,
            )
            return "enqueued"
        except DuplicateJobError:
            if conn.exists(key(prefix, "result", job)):
                return "done"
            try:
                status = Job.fetch(job, connection=conn, serializer=JSONSerializer).get_status(refresh=False)
            except NoSuchJobError:
                continue  # expired between the two calls: enqueue again
            if status in DEAD_STATUSES:
                Job(job, connection=conn, serializer=JSONSerializer).delete(remove_from_queue=True)
                continue
            return "exists"
    return "exists"


def enqueue_project_job(conn: redis.Redis, settings: Settings, function: str, payload: dict[str, Any], *,
                        job_id: str, timeout_s: int, description: str) -> None:
    """Queue a job about a whole project (a calibration, an evaluation) at the front of the batch queue: one
    such job, asked for by a person, should not wait behind a project's pre-labeling jobs."""
    queue = Queue(queue_name(settings.queue_prefix, BATCH), connection=conn, serializer=JSONSerializer)
    queue.enqueue_call(function, args=(payload,), job_id=job_id, timeout=timeout_s, result_ttl=settings.result_ttl_s,
                       failure_ttl=settings.error_ttl_s, at_front=True, description=description)


# A stored result is one Redis string: a small JSON header (task_id, error), then, for a prediction, a
# newline and the prediction's JSON. /predict splices those prediction bytes into its answer without
# parsing them: they are mostly long RLE integer lists, the largest cost of a request otherwise.
_SEPARATOR = b"\n"  # never inside compact JSON, which escapes newlines in strings


@dataclass(frozen=True)
class StoredResult:
    """A job's stored result: its header and, unless it is an error, the prediction's JSON bytes."""

    header: dict[str, Any]
    prediction_json: bytes | None

    @property
    def error(self) -> str | None:
        """Return the stored error, if the job failed."""
        return self.header.get("error")

    def parsed(self) -> dict[str, Any]:
        """Return the result as one dict: header fields plus `prediction`, when there is one."""
        if self.prediction_json is None:
            return dict(self.header)
        return {**self.header, "prediction": pydantic_core.from_json(self.prediction_json)}


def _encode(result: dict[str, Any]) -> bytes:
    header = pydantic_core.to_json({k: v for k, v in result.items() if k != "prediction"})
    if "prediction" not in result:
        return header
    return header + _SEPARATOR + pydantic_core.to_json(result["prediction"])


def _decode(raw: bytes | None) -> StoredResult | None:
    if raw is None:
        return None
    head, separator, tail = raw.partition(_SEPARATOR)
    return StoredResult(pydantic_core.from_json(head), tail if separator else None)


def read_stored(conn: redis.Redis, prefix: str, job_ids: Sequence[str]) -> list[StoredResult | None]:
    """Return the stored result of each job, prediction JSON unparsed (None where there is none yet)."""
    if not job_ids:
        return []
    return [_decode(raw) for raw in conn.mget([key(prefix, "result", j) for j in job_ids])]


def read_results(conn: redis.Redis, prefix: str, job_ids: Sequence[str]) -> list[dict[str, Any] | None]:
    """Return the stored result of each job as a dict (None where there is none yet)."""
    return [r.parsed() if r is not None else None for r in read_stored(conn, prefix, job_ids)]


async def wait_for_results(
    aconn: redis.asyncio.Redis,
    prefix: str,
    job_ids: Sequence[str],
    timeout_s: float,
    *,
    known: list[StoredResult | None],
    poll_s: float = 0.02,
) -> list[StoredResult | None]:
    """Return the results of `job_ids`, waiting up to `timeout_s` for missing ones (None where still missing),
    in the event loop with an asyncio client: a waiting request holds no thread."""
    results = list(known)
    deadline = time.monotonic() + timeout_s
    delay = poll_s
    while any(r is None for r in results) and time.monotonic() < deadline:
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.25)
        missing = [i for i, r in enumerate(results) if r is None]
        raw = await aconn.mget([key(prefix, "result", job_ids[i]) for i in missing])
        for i, value in zip(missing, raw, strict=True):
            results[i] = _decode(value)
    return results


def store_result(
    conn: redis.Redis, prefix: str, job: str, result: dict[str, Any], ttl_s: int, *, project: str | None = None
) -> bool:
    """Store a job's result; return whether an API request gave up on it (the worker must push it).

    An error of a `project` is also listed under the project, so that a change of its settings can drop it.
    """
    with conn.pipeline(transaction=True) as pipe:
        pipe.set(key(prefix, "result", job), _encode(result), ex=ttl_s)
        pipe.get(key(prefix, "push", job))
        if "error" in result and project is not None:
            pipe.sadd(key(prefix, "errors", project or "_"), job)
            pipe.expire(key(prefix, "errors", project or "_"), ttl_s)
        push = pipe.execute()[1]
    return push is not None


def forget_errors(conn: redis.Redis, prefix: str, job_ids: Sequence[str]) -> list[str]:
    """Delete the stored errors (and the attempt counts) of these jobs, so a request computes them again;
    return the ids whose error was dropped. Stored predictions are kept."""
    failed = [j for j, r in zip(job_ids, read_stored(conn, prefix, job_ids), strict=True) if r and r.error is not None]
    if failed:
        conn.delete(*[key(prefix, kind, j) for j in failed for kind in ("result", "attempts")])
    return failed


def drop_project_errors(conn: redis.Redis, prefix: str, project: str) -> int:
    """Delete every stored error of a project (its settings or model version changed); return how many."""
    listed = key(prefix, "errors", project or "_")
    ids = [j.decode() for j in conn.smembers(listed)]
    dropped = forget_errors(conn, prefix, ids)
    conn.delete(listed)
    return len(dropped)


def note_project_fingerprint(conn: redis.Redis, prefix: str, project: str, fingerprint: str, ttl_s: int) -> bool:
    """Remember what a project's predictions are made with (model version, label config); when that changed,
    drop the project's stored errors and return True."""
    previous = conn.set(key(prefix, "fingerprint", project or "_"), fingerprint, ex=ttl_s, get=True)
    if previous is None or previous.decode() == fingerprint:
        return False
    drop_project_errors(conn, prefix, project)
    return True


def start_attempts(conn: redis.Redis, prefix: str, job_ids: Sequence[str], ttl_s: int) -> list[int]:
    """Count one more start of each job; return, per job, the starts not yet ended (this one included).

    `end_attempts` takes the start back when the job ends in this process, whatever the outcome, so what
    stays counted are the starts whose worker process died (out of memory, a crash, a kill).
    """
    with conn.pipeline(transaction=False) as pipe:
        for job in job_ids:
            pipe.incr(key(prefix, "attempts", job))
            pipe.expire(key(prefix, "attempts", job), ttl_s)
        replies = pipe.execute()
    return [int(count) for count in replies[::2]]


def end_attempts(conn: redis.Redis, prefix: str, job_ids: Sequence[str]) -> None:
    """Take back the starts counted by `start_attempts` for jobs that ended in this process."""
    if job_ids:
        with conn.pipeline(transaction=False) as pipe:
            for job in job_ids:
                pipe.decr(key(prefix, "attempts", job))
            pipe.execute()


def request_push(conn: redis.Redis, prefix: str, job: str, ttl_s: int) -> StoredResult | None:
    """Ask the worker to push the job's prediction; return the result instead if it just arrived."""
    with conn.pipeline(transaction=True) as pipe:
        pipe.set(key(prefix, "push", job), "1", ex=ttl_s)
        pipe.get(key(prefix, "result", job))
        _, raw = pipe.execute()
    if raw is None:
        return None
    conn.delete(key(prefix, "push", job))
    return _decode(raw)


def job_status(conn: redis.Redis, prefix: str, job: str) -> dict[str, Any] | None:
    """Return status, error and timing of one job, or None when Redis knows nothing of it."""
    stored = read_results(conn, prefix, [job])[0]
    try:
        rq_job = Job.fetch(job, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        rq_job = None
    if rq_job is None and stored is None:
        return None
    info: dict[str, Any] = {"id": job}
    if rq_job is not None:
        status = rq_job.get_status(refresh=False)
        info.update(
            status=str(status.value if hasattr(status, "value") else status),
            queue=rq_job.origin,
            description=rq_job.description,
            enqueued_at=rq_job.enqueued_at.isoformat() if rq_job.enqueued_at else None,
            started_at=rq_job.started_at.isoformat() if rq_job.started_at else None,
            ended_at=rq_job.ended_at.isoformat() if rq_job.ended_at else None,
            retries_left=rq_job.retries_left,
        )
    if stored is not None:
        if "error" in stored:
            info.update(status="failed", error=stored["error"])
        else:
            info.update(status="finished")
        info["task_id"] = stored.get("task_id")
    return info


def queue_counts(conn: redis.Redis, prefix: str) -> dict[str, dict[str, int]]:
    """Return, per queue, how many jobs are queued, started, finished and failed."""
    counts: dict[str, dict[str, int]] = {}
    for queue in get_queues(conn, prefix):
        priority = queue.name.rsplit("-", 1)[-1]
        counts[priority] = {
            "queued": queue.count,
            "started": queue.started_job_registry.count,
            "finished": queue.finished_job_registry.count,
            "failed": queue.failed_job_registry.count,
        }
    return counts


def record_engine_time(conn: redis.Redis, prefix: str, method: str, seconds: float, images: int) -> None:
    """Add one engine call's time to the shared per-method totals (for /metrics)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.hincrbyfloat(key(prefix, "engine", "seconds"), method, seconds)
        pipe.hincrby(key(prefix, "engine", "images"), method, images)
        pipe.execute()


def engine_totals(conn: redis.Redis, prefix: str) -> dict[str, tuple[float, int]]:
    """Return per method the total engine seconds and images."""
    seconds = conn.hgetall(key(prefix, "engine", "seconds"))
    images = conn.hgetall(key(prefix, "engine", "images"))
    return {m.decode(): (float(s), int(images.get(m, 0))) for m, s in seconds.items()}


def save_project(conn: redis.Redis, prefix: str, project: str, data: dict[str, Any], ttl_s: int) -> None:
    """Remember a project's label config and extra params (from /setup)."""
    conn.set(key(prefix, "project", project or "_"), json.dumps(data), ex=ttl_s)


def load_project(conn: redis.Redis, prefix: str, project: str) -> dict[str, Any] | None:
    """Return what /setup stored for a project, if anything."""
    raw = conn.get(key(prefix, "project", project or "_"))
    return json.loads(raw) if raw else None


def alive_key(prefix: str, worker_name: str) -> str:
    """Return the key that exists while the named worker process lives (refreshed by its heartbeat)."""
    return key(prefix, "alive", worker_name)


def worker_count(conn: redis.Redis, prefix: str) -> int:
    """Return how many workers listen on this deployment's queues and are alive (their heartbeat is fresh).

    RQ's own registry keeps a killed worker listed for minutes; the liveness key expires within seconds.
    """
    from rq import Worker

    names = [k.split(":", 2)[-1] for k in Worker.all_keys(queue=get_queues(conn, prefix)[0])]
    if not names:
        return 0
    return int(conn.exists(*[alive_key(prefix, name) for name in names]))
