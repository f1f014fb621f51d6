"""The evaluation job a worker runs for `POST /evaluate`: a project's predictions against its annotations.

Pipeline: the worker's Label Studio client -> `project_source` (label config, tasks with annotations and
predictions, paged) -> `evaluator.evaluate` -> the report in Redis (`jobqueue.evaluations`), read by
`GET /evaluation/{project}`. The same figures as `gem-labeler evaluate --project`, without the PNG.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job

from backend.evaluation.evaluator import evaluate
from backend.evaluation.project_source import project_samples, project_vocabulary
from backend.jobqueue import evaluations
from backend.jobqueue.worker import state


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one project (RQ job); return the short state (the report itself is kept in Redis)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("the evaluation job runs inside an RQ worker")
    conn, prefix, project, ttl = job.connection, payload["prefix"], str(payload["project"]), int(payload["ttl_s"])
    base = {"job_id": job.id, "model_version": payload.get("model_version")}
    evaluations.save(conn, prefix, project, {**base, "state": "running"}, ttl)
    try:
        client = state().ls_client()
        if client is None:
            raise RuntimeError("evaluation reads the project from Label Studio: set LABEL_STUDIO_URL and "
                               "LABEL_STUDIO_API_KEY for the workers")
        vocabulary = project_vocabulary(client, int(project))
        samples = list(project_samples(client, int(project), vocabulary.foreground, vocabulary.background,
                                       model_version=payload.get("model_version")))
        report = evaluate(samples, vocabulary.foreground)
    except Exception as exc:
        evaluations.save(conn, prefix, project, {**base, "state": "failed", "error": f"{type(exc).__name__}: {exc}"},
                         ttl)
        raise
    evaluations.save(conn, prefix, project, {**base, "state": "done", "report": report}, ttl)
    return {"project": project, "images": report["images"]}
