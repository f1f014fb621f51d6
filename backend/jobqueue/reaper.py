"""Worker liveness and the reaper that puts work of dead workers back in the queue.

RQ notices a job whose worker died (kill -9, OOM, lost machine) only when its StartedJobRegistry entry
expires, JOB_TIMEOUT_S + 60 s after the job started, and then counts the death as a failure (a retry
used up, or an AbandonedJobError stored). Pre-labeling runs for hours, so a death must cost seconds
and never a task. Each worker therefore keeps `<prefix>:alive:<worker name>` alive from a thread
(ALIVE_TTL_S, refreshed every BEAT_S, independent of the job it runs), and every worker regularly
reaps: a started job whose execution names a worker without that key goes back to the front of its
queue, and a batch claim held by such a worker is released. The ZREM of the registry entry decides
which reaper re-queues a job, so two reapers never queue it twice.

The same reaps queue the retries whose backoff has passed (RQ's ScheduledJobRegistry), instead of RQ's
scheduler: that scheduler is a forked process that dies when Redis goes away, and its successor waits for
its lock to lapse and for the worker's ten-minute maintenance round, so after a Redis outage a retried
job sat scheduled for up to ten minutes. Here the ZREM decides again, and any live worker does it.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.jobqueue import queues as rq_queue

log = logging.getLogger("gem_labeler.reaper")
ALIVE_TTL_S = 10
BEAT_S = 2.0
REAP_EVERY_S = 4.0
# Deletes a claim only if the dead holder still owns it (a live worker may have claimed it meanwhile).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


alive_key = rq_queue.alive_key


def mark_alive(conn: redis.Redis, prefix: str, worker_name: str) -> None:
    """Refresh this worker's liveness key."""
    conn.set(alive_key(prefix, worker_name), "1", ex=ALIVE_TTL_S)


def reap(conn: redis.Redis, prefix: str) -> list[str]:
    """Return the ids of jobs re-queued (their worker is dead, or their retry is due); free dead workers' claims."""
    requeued: list[str] = []
    for queue in rq_queue.get_queues(conn, prefix):
        registry = queue.started_job_registry
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            execution_key = f"rq:execution:{job_id}:{execution_id}"
            holder = conn.hget(execution_key, "worker_name")
            if not holder or conn.exists(alive_key(prefix, holder.decode())):
                continue  # alive, or an execution RQ itself will expire and clean up
            if not conn.zrem(registry.key, f"{job_id}:{execution_id}"):
                continue  # another reaper took it
            conn.delete(execution_key)
            try:
                job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            job.started_at = None
            queue.enqueue_job(job, at_front=True)
            requeued.append(job_id)
            log.warning("job %s re-queued: its worker %s died while running it", job_id, holder.decode())
        requeued += _reap_limbo(conn, prefix, queue)
        requeued += _release_due(conn, queue)
    for claim in conn.scan_iter(match=rq_queue.key(prefix, "claim", "*"), count=500):
        holder = conn.get(claim)
        if holder and not conn.exists(alive_key(prefix, holder.decode())):
            if conn.eval(_RELEASE, 1, claim, holder):
                log.warning("claim %s released: its worker %s is dead", claim.decode(), holder.decode())
    return requeued


def _reap_limbo(conn: redis.Redis, prefix: str, queue: rq_queue.Queue) -> list[str]:
    """Re-queue jobs a worker popped but never started (Redis went away, or it died in between)."""
    requeued = []
    limbo = queue.intermediate_queue
    started = set(queue.started_job_registry.get_job_ids(cleanup=False))
    for job_id in limbo.get_job_ids():
        if job_id in started:
            continue
        # A live worker moves a job from here to the started registry within milliseconds; only a job
        # seen here by two reaps in a row (REAP_EVERY_S apart) is stranded.
        if conn.set(rq_queue.key(prefix, "limbo", job_id), "1", nx=True, ex=int(10 * REAP_EVERY_S)):
            continue
        if not conn.lrem(limbo.key, 1, job_id):
            continue
        conn.delete(rq_queue.key(prefix, "limbo", job_id))
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        queue.enqueue_job(job, at_front=True)
        requeued.append(job_id)
        log.warning("job %s re-queued: it was taken from the queue but never started", job_id)
    return requeued


def _release_due(conn: redis.Redis, queue: rq_queue.Queue) -> list[str]:
    """Queue the jobs of `queue` whose retry time has come (at the front when they were first queued so)."""
    registry = queue.scheduled_job_registry
    released = []
    for job_id in registry.get_jobs_to_schedule(int(time.time())):
        if not conn.zrem(registry.key, job_id):
            continue  # another reaper took it
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        queue.enqueue_job(job, at_front=job.should_enqueue_at_front())
        released.append(job_id)
        log.info("job %s queued: its retry is due", job_id)
    return released


class Heartbeat:
    """A daemon thread keeping one worker's liveness key and reaping dead workers' jobs."""

    def __init__(self, conn: redis.Redis, prefix: str, worker_name: str) -> None:
        self.conn, self.prefix, self.worker_name = conn, prefix, worker_name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gem-labeler-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Mark the worker alive now (before it takes a job), start the thread, and return self."""
        mark_alive(self.conn, self.prefix, self.worker_name)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and drop the liveness key, so reapers need not wait for it to expire."""
        self._stop.set()
        self._thread.join(5)
        try:
            self.conn.delete(alive_key(self.prefix, self.worker_name))
        except redis.RedisError:
            pass

    def _run(self) -> None:
        since_reap = REAP_EVERY_S  # reap at once: a restarted worker picks up what its predecessor left
        while not self._stop.is_set():
            try:
                mark_alive(self.conn, self.prefix, self.worker_name)
                if since_reap >= REAP_EVERY_S:
                    since_reap = 0.0
                    reap(self.conn, self.prefix)
            except redis.RedisError as exc:  # Redis down: keep trying; the worker loop reports it
                log.debug("heartbeat: %s", exc)
            except Exception:  # a dead heartbeat would get this live worker's jobs reaped: never stop beating
                log.exception("heartbeat: reaping failed")
            self._stop.wait(BEAT_S)
            since_reap += BEAT_S
