"""A project's calibrations in Redis: the versions fitted so far, which one is in force, and the running fit.

Pipeline: a fit that held-out tasks confirmed -> `add_version` (version n, its extra params and report,
now the active one) -> `project_params` merges the active version's params over the project's own extra
params wherever a project's options are made (API, webhook pre-labeling, `prelabel --project`), so they
enter the model version like any extra param -> `rollback` makes the previous version (or none) active
again: the model version returns to what it was, and Label Studio shows which predictions came from which.

One fit per project at a time: `claim` takes a lock naming the fit's job (a job re-run after its worker
died holds it already), `release` frees it. The fit's progress and last report live in `status`.
Nothing here expires: a calibration is the project's state, like its annotations.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from backend.jobqueue import queues as rq_queue

# A fit that has not finished within this many seconds has lost its worker for good: its lock lapses.
LOCK_TTL_S = 3 * 3600


def _key(prefix: str, kind: str, project: str) -> str:
    return rq_queue.key(prefix, kind, project or "_")


def history(conn: redis.Redis, prefix: str, project: str) -> dict[str, Any]:
    """Return {"active": n (0 = none), "versions": [{"version", "params", "created", "report"}, ...]}."""
    raw = conn.get(_key(prefix, "calibration", project))
    return json.loads(raw) if raw else {"active": 0, "versions": []}


def active_params(conn: redis.Redis, prefix: str, project: str) -> dict[str, Any]:
    """Return the extra params of the calibration in force for a project ({} when none)."""
    data = history(conn, prefix, project)
    for entry in data["versions"]:
        if entry["version"] == data["active"]:
            return dict(entry["params"])
    return {}


def project_params(conn: redis.Redis, prefix: str, project: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a project's extra params (given, else those /setup stored) with its active calibration over them."""
    if extra is None:
        extra = (rq_queue.load_project(conn, prefix, project) or {}).get("extra_params") or {}
    return {**extra, **active_params(conn, prefix, project)}


def _update(conn: redis.Redis, prefix: str, project: str, change) -> dict[str, Any]:
    """Apply `change(history) -> history` atomically (optimistic locking) and return the new history."""
    name = _key(prefix, "calibration", project)
    result: dict[str, Any] = {}

    def apply(pipe: redis.client.Pipeline) -> None:
        raw = pipe.get(name)
        data = json.loads(raw) if raw else {"active": 0, "versions": []}
        new = change(data)
        pipe.multi()
        pipe.set(name, json.dumps(new))
        result.update(new)

    conn.transaction(apply, name)
    return result


def add_version(conn: redis.Redis, prefix: str, project: str, params: dict[str, Any], report: dict[str, Any]) -> int:
    """Store an adopted calibration as the project's next version, make it active, and return its number."""

    def change(data: dict[str, Any]) -> dict[str, Any]:
        number = max((v["version"] for v in data["versions"]), default=0) + 1
        entry = {"version": number, "params": params, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "report": report}
        return {"active": number, "versions": [*data["versions"], entry]}

    return _update(conn, prefix, project, change)["active"]


def rollback(conn: redis.Redis, prefix: str, project: str, to: int | None = None) -> int:
    """Make version `to` active (default: the version before the active one; 0 = no calibration); return it.

    Raises ValueError when there is nothing to roll back or `to` names no stored version.
    """

    def change(data: dict[str, Any]) -> dict[str, Any]:
        numbers = [v["version"] for v in data["versions"]]
        if to is None:
            if not data["active"]:
                raise ValueError(f"project {project}: no calibration is in force, nothing to roll back")
            earlier = [n for n in numbers if n < data["active"]]
            target = max(earlier, default=0)
        else:
            if to != 0 and to not in numbers:
                raise ValueError(f"project {project}: no calibration version {to} (stored: {numbers or 'none'})")
            target = to
        return {**data, "active": target}

    return _update(conn, prefix, project, change)["active"]


def claim(conn: redis.Redis, prefix: str, project: str, job_id: str) -> str | None:
    """Take the project's fit lock for `job_id`; return None when taken, else the job id holding it already."""
    name = _key(prefix, "calibration-lock", project)
    if conn.set(name, job_id, nx=True, ex=LOCK_TTL_S):
        return None
    holder = conn.get(name)
    return None if holder is not None and holder.decode() == job_id else (holder.decode() if holder else None)


def holder(conn: redis.Redis, prefix: str, project: str) -> str | None:
    """Return the id of the fit running for a project, or None."""
    raw = conn.get(_key(prefix, "calibration-lock", project))
    return raw.decode() if raw else None


def release(conn: redis.Redis, prefix: str, project: str, job_id: str) -> None:
    """Free the project's fit lock if `job_id` holds it."""
    conn.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
              1, _key(prefix, "calibration-lock", project), job_id)


def set_status(conn: redis.Redis, prefix: str, project: str, **fields: Any) -> None:
    """Merge `fields` into the project's fit status (state, done, total, message, report, ...)."""
    name = _key(prefix, "calibration-status", project)
    current = status(conn, prefix, project) or {}
    current.update(fields, updated=time.time())
    conn.set(name, json.dumps(current))


def status(conn: redis.Redis, prefix: str, project: str) -> dict[str, Any] | None:
    """Return the project's last or running fit status, or None when it never had one."""
    raw = conn.get(_key(prefix, "calibration-status", project))
    return json.loads(raw) if raw else None


JOB_FUNCTION = "backend.calibration.job.run"  # by name: the queue side never imports the engine


class CalibrationRunning(RuntimeError):
    """A fit for the project is queued or running; a second one is refused."""


def enqueue(conn: redis.Redis, settings: Any, project: str, *, min_examples: int | None = None,
            page_size: int = 100) -> str:
    """Queue a fit of `project` on the workers (ahead of pre-labeling jobs) and return its job id.

    Raises CalibrationRunning naming the fit in progress; the lock is taken here, before the job exists,
    so two requests never both start one.
    """
    job_id = f"{settings.queue_prefix}-calibrate-{project}-{uuid.uuid4().hex[:12]}"
    running = claim(conn, settings.queue_prefix, project, job_id)
    if running is not None:
        raise CalibrationRunning(f"project {project}: a calibration is already running (job {running}); wait for "
                                 f"it to finish (GET /calibration/{project} or `gem-labeler calibrate --project "
                                 f"{project} --status`)")
    payload = {"prefix": settings.queue_prefix, "project": project, "min_examples": min_examples,
               "page_size": page_size}
    try:
        set_status(conn, settings.queue_prefix, project, state="queued", job_id=job_id, step="waiting for a worker",
                   done=0, total=0, message="", report=None)
        rq_queue.enqueue_project_job(conn, settings, JOB_FUNCTION, payload, job_id=job_id, timeout_s=LOCK_TTL_S,
                                     description=f"calibrate project {project}")
    except BaseException:
        release(conn, settings.queue_prefix, project, job_id)
        raise
    return job_id
