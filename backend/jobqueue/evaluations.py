"""A project's evaluation report in Redis: `POST /evaluate` queues it on the workers, `GET /evaluation/{project}`
reads it.

Pipeline: `enqueue` (job `backend.evaluation.job.run`, by name: the queue side never imports the
evaluation code, which decodes masks with scikit-image) -> a worker reads the project's annotations and
predictions from Label Studio and evaluates them (`gem-labeler evaluate --project`'s figures) -> `save`
keeps the report (state, the report or the error) for RESULT_TTL_S -> `load`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from backend.jobqueue import queues as rq_queue

JOB_FUNCTION = "backend.evaluation.job.run"


def _key(prefix: str, project: str) -> str:
    return rq_queue.key(prefix, "evaluation", project or "_")


def enqueue(conn: redis.Redis, settings: Any, project: str, model_version: str | None = None) -> str:
    """Queue an evaluation of `project`'s predictions (of `model_version`, else each task's latest); return the job id."""
    job_id = f"{settings.queue_prefix}-evaluate-{project}-{uuid.uuid4().hex[:12]}"
    save(conn, settings.queue_prefix, project, {"state": "queued", "job_id": job_id, "model_version": model_version},
         settings.result_ttl_s)
    payload = {"prefix": settings.queue_prefix, "project": project, "model_version": model_version,
               "ttl_s": settings.result_ttl_s}
    rq_queue.enqueue_project_job(conn, settings, JOB_FUNCTION, payload, job_id=job_id,
                                 timeout_s=settings.job_timeout_s, description=f"evaluate project {project}")
    return job_id


def save(conn: redis.Redis, prefix: str, project: str, state: dict[str, Any], ttl_s: int) -> None:
    """Keep a project's evaluation state (queued, running, done with its report, failed with its error)."""
    conn.set(_key(prefix, project), json.dumps({**state, "updated": time.time()}), ex=ttl_s)


def load(conn: redis.Redis, prefix: str, project: str) -> dict[str, Any] | None:
    """Return a project's last evaluation state, or None."""
    raw = conn.get(_key(prefix, project))
    return json.loads(raw) if raw else None
