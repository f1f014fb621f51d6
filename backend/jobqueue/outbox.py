"""Durable pushes of late predictions to Label Studio: a Redis outbox drained by every worker.

A worker pushes a prediction right after computing it (with the client's own retries, about 8-15 s).
If that fails for a reason that may pass (Label Studio unreachable, 5xx, 429, a rejected API key), the
job id goes into the sorted set `<QUEUE_PREFIX>:outbox`, scored by the time of its next attempt, with
its task id and first-failure time in the hash `<QUEUE_PREFIX>:outbox-entries`; the prediction itself
stays in the result store. A thread in every worker claims due entries with one Lua script that moves
their score a lease ahead (so two workers never hold the same entry, and an entry of a worker that died
comes back after the lease), pushes each after checking Label Studio does not already hold it, and on
failure reschedules it with jittered exponential backoff from PUSH_BACKOFF_S up to an hour. An entry is
dropped, with an error in the log, on a permanent 4xx (task deleted, invalid prediction), when its
prediction is no longer stored, or once it is older than PUSH_MAX_AGE_S. Like every push, it first takes
the (task, model version) marker of `push_once`, so a prediction another path pushed is never pushed again.

While the outbox holds entries Label Studio is probably down, so a worker then queues new pushes in the
outbox (due at once) instead of spending the client's retry window on each: model work never stalls.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from backend.jobqueue import push_once
from backend.jobqueue import queues as rq_queue
from backend.labelstudio.client import LabelStudioClient, LabelStudioError
from backend.settings import Settings

log = logging.getLogger("gem_labeler.outbox")
EVERY_S = 1.0
# Longer than one attempt can take (a GET and a POST, each bounded by CLIENT_TIMEOUT_S), so a lease
# never runs out while its holder is still pushing.
LEASE_S = 300.0
CLIENT_TIMEOUT_S = 30.0
MAX_BACKOFF_S = 3600.0
CLAIM_LIMIT = 50
BUSY_RETRY_S = 5.0  # another pusher holds the prediction's marker: look again this soon
# Statuses after which the same push may succeed later: the key may be fixed, the server may recover.
RETRY_LATER_STATUSES = frozenset({401, 403, 408, 409, 423, 425, 429})

_CLAIM = """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do redis.call('zadd', KEYS[1], ARGV[3], member) end
return due
"""


def due_key(prefix: str) -> str:
    """Return the sorted set of job ids scored by their next push attempt."""
    return f"{prefix}:outbox"


def entries_key(prefix: str) -> str:
    """Return the hash of job id to the entry's JSON (task id, first failure, attempts)."""
    return f"{prefix}:outbox-entries"


@dataclass
class Entry:
    """One prediction waiting to be pushed."""

    job_id: str
    task_id: int
    since: float
    attempts: int = 0


def add(conn: redis.Redis, settings: Settings, job_id: str, task_id: int, *, delay_s: float) -> None:
    """Queue a job's stored prediction for a push in `delay_s` seconds (an existing entry keeps its age)."""
    prefix = settings.queue_prefix
    entry = json.dumps({"task_id": int(task_id), "since": time.time(), "attempts": 0})
    result = rq_queue.key(prefix, "result", job_id)
    with conn.pipeline(transaction=True) as pipe:
        pipe.hsetnx(entries_key(prefix), job_id, entry)
        pipe.zadd(due_key(prefix), {job_id: time.time() + delay_s})
        pipe.ttl(result)
        *_, ttl = pipe.execute()
    # The prediction must outlive the outbox's patience, or the entry would be dropped for want of it.
    keep = int(settings.push_max_age_s + LEASE_S)
    if 0 < ttl < keep:
        conn.expire(result, keep)


def pending(conn: redis.Redis, prefix: str) -> int:
    """Return how many pushes wait in the outbox."""
    return int(conn.zcard(due_key(prefix)))


def claim(conn: redis.Redis, prefix: str, *, now: float | None = None, limit: int = CLAIM_LIMIT) -> list[str]:
    """Return up to `limit` due job ids, each leased to the caller alone for LEASE_S."""
    now = time.time() if now is None else now
    members = conn.eval(_CLAIM, 1, due_key(prefix), now, limit, now + LEASE_S)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def _remove(conn: redis.Redis, prefix: str, job_id: str) -> None:
    with conn.pipeline(transaction=True) as pipe:
        pipe.zrem(due_key(prefix), job_id)
        pipe.hdel(entries_key(prefix), job_id)
        pipe.delete(rq_queue.key(prefix, "push", job_id))
        pipe.execute()


def _load(conn: redis.Redis, prefix: str, job_id: str) -> Entry | None:
    raw = conn.hget(entries_key(prefix), job_id)
    if raw is None:
        return None
    data = json.loads(raw)
    return Entry(job_id, int(data["task_id"]), float(data["since"]), int(data.get("attempts", 0)))


def retry_later(exc: Exception) -> bool:
    """Return whether a failed push may succeed later (so it belongs in the outbox)."""
    if not isinstance(exc, LabelStudioError):
        return True  # unexpected (a bug, a decode error): keep the prediction and look again later
    return exc.retryable or exc.status is None or exc.status >= 500 or exc.status in RETRY_LATER_STATUSES


def deliver(conn: redis.Redis, settings: Settings, client: LabelStudioClient, job_id: str) -> str:
    """Push one claimed entry; return "pushed", "present" (Label Studio had it), "retry" or "dropped"."""
    prefix = settings.queue_prefix
    entry = _load(conn, prefix, job_id)
    if entry is None:
        conn.zrem(due_key(prefix), job_id)
        return "dropped"
    if time.time() - entry.since > settings.push_max_age_s:
        _remove(conn, prefix, job_id)
        log.error("task %s job %s: push to Label Studio dropped: still failing after PUSH_MAX_AGE_S=%s s "
                  "(the prediction stays in Redis; the next /predict for the task returns it)",
                  entry.task_id, job_id, settings.push_max_age_s)
        return "dropped"
    stored = rq_queue.read_results(conn, prefix, [job_id])[0]
    prediction = stored.get("prediction") if stored else None
    if not prediction:
        _remove(conn, prefix, job_id)
        log.error("task %s job %s: push to Label Studio dropped: the prediction is no longer stored",
                  entry.task_id, job_id)
        return "dropped"
    body = {**prediction, "task": entry.task_id}
    version = str(prediction.get("model_version"))
    verdict, token = push_once.begin(conn, prefix, entry.task_id, version)
    if verdict == "done":
        _remove(conn, prefix, job_id)
        log.info("task %s job %s: Label Studio already holds the prediction", entry.task_id, job_id)
        return "present"
    if verdict == "busy":  # another pusher holds it; look again soon, in case that one gives up
        conn.zadd(due_key(prefix), {job_id: time.time() + BUSY_RETRY_S})
        return "retry"
    pushed = False
    try:
        # An earlier attempt may have landed without an answer: never push a prediction twice.
        if any(p.get("model_version") == body.get("model_version") and p.get("result") == body.get("result")
               for p in client.list_predictions(entry.task_id)):
            _remove(conn, prefix, job_id)
            pushed = True
            log.info("task %s job %s: Label Studio already holds the prediction", entry.task_id, job_id)
            return "present"
        client.create_prediction(entry.task_id, prediction)
        pushed = True
    except Exception as exc:  # noqa: BLE001 (every failure is either rescheduled or dropped, never lost silently)
        if not retry_later(exc):
            _remove(conn, prefix, job_id)
            log.error("task %s job %s: push to Label Studio dropped: %s", entry.task_id, job_id, exc)
            return "dropped"
        entry.attempts += 1
        delay = min(settings.push_backoff_s * 2 ** (entry.attempts - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
        data = json.dumps({"task_id": entry.task_id, "since": entry.since, "attempts": entry.attempts})
        with conn.pipeline(transaction=True) as pipe:
            pipe.hset(entries_key(prefix), job_id, data)
            pipe.zadd(due_key(prefix), {job_id: time.time() + delay})
            pipe.execute()
        log.warning("task %s job %s: push to Label Studio attempt %d from the outbox failed (%s); next in %.1f s",
                    entry.task_id, job_id, entry.attempts, exc, delay)
        return "retry"
    finally:
        push_once.finish(conn, settings, entry.task_id, version, token, pushed=pushed)
    _remove(conn, prefix, job_id)
    log.info("task %s job %s: prediction pushed to Label Studio from the outbox", entry.task_id, job_id)
    return "pushed"


def drain(
    conn: redis.Redis, settings: Settings, client: LabelStudioClient, *, stop: threading.Event | None = None
) -> dict[str, int]:
    """Push due entries (up to CLAIM_LIMIT) one by one; return how many ended in each outcome."""
    counts: dict[str, int] = {}
    # One claim per push, so a slow Label Studio never lets a claimed-but-waiting entry's lease run out.
    for _ in range(CLAIM_LIMIT):
        if stop is not None and stop.is_set():
            break
        claimed = claim(conn, settings.queue_prefix, limit=1)
        if not claimed:
            break
        outcome = deliver(conn, settings, client, claimed[0])
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def outbox_client(settings: Settings) -> LabelStudioClient:
    """Return a client making one attempt per request: the outbox's own backoff replaces the client's."""
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, timeout_s=CLIENT_TIMEOUT_S,
                             max_retries=0)


class OutboxLoop:
    """A daemon thread draining the outbox every EVERY_S; separate from the heartbeat, which must never wait."""

    def __init__(self, conn: redis.Redis, settings: Settings, client: Any = None) -> None:
        self.conn, self.settings = conn, settings
        self.client = client if client is not None else outbox_client(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gem-labeler-outbox", daemon=True)

    def start(self) -> OutboxLoop:
        """Start the thread and return self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop; a push still under way is abandoned (a daemon thread), its entry back after LEASE_S."""
        self._stop.set()
        # Short, so SIGTERM (docker stop gives 10 s) never waits on a hanging Label Studio.
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                drain(self.conn, self.settings, self.client, stop=self._stop)
            except redis.RedisError as exc:  # Redis down: the worker loop reports it; try again next tick
                log.debug("outbox: %s", exc)
            except Exception:
                log.exception("outbox: draining failed")
            self._stop.wait(EVERY_S)
