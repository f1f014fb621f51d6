"""What one job is: deterministic job ids and JSON payloads (per-project options live in `backend.options`).

Pure data; no Redis, no torch. The API builds payloads, workers execute them (`backend.jobqueue.worker.run_job`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from backend.labelstudio.label_config import Vocabulary
from backend.options import ProjectOptions, model_version

JOB_FUNCTION = "backend.jobqueue.worker.run_job"
FAILURE_CALLBACK = "backend.jobqueue.worker.on_job_failure"


# A project id becomes part of Redis keys: Label Studio's are integers; a bounded plain word is accepted.
PROJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def project_id(project: Any) -> str:
    """Return the project id from Label Studio's `project` field ("12.1700000000" or 12 or {"id": 12});
    raise ValueError for one that is not a plain word of at most 64 characters."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or project == "":
        return ""
    ident = str(project).split(".", 1)[0]
    if not PROJECT_ID.fullmatch(ident):
        raise ValueError(f"project id {ident[:80]!r} is not a plain id (1 to 64 letters, digits, '-' or '_')")
    return ident


def job_id(
    *,
    prefix: str,
    project: str,
    task_id: Any,
    version: str,
    config_hash: str,
    image_url: str,
    context: Any = None,
) -> str:
    """Return the deterministic id of the job computing one task, so a repeat reuses it."""
    blob = json.dumps([prefix, project, task_id, version, config_hash, image_url, context], sort_keys=True)
    return f"{prefix}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def make_payload(
    *,
    job: str,
    prefix: str,
    project: str,
    task: dict[str, Any],
    image_url: str,
    vocabulary: Vocabulary,
    options: ProjectOptions,
    version: str,
    context: dict[str, Any] | None = None,
    shared: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the JSON payload a worker needs to compute one task.

    `shared` may hold the "vocabulary" and "options" dicts already made for other tasks of the same request.
    """
    shared = shared or {}
    return {
        "job_id": job,
        "prefix": prefix,
        "project": project,
        "task_id": task.get("id"),
        "image_url": image_url,
        "vocabulary": shared.get("vocabulary") or vocabulary.to_dict(),
        "options": shared.get("options") or options.to_dict(),
        "model_version": version,
        "context": context,
    }


class TaskJobs:
    """Job ids and payloads for tasks of one project, vocabulary and options.

    The API, the webhook and bulk pre-labeling all name jobs through this one recipe: a task they share
    must get the same job id, or it would be computed twice.
    """

    def __init__(self, *, prefix: str, project: str, vocabulary: Vocabulary, options: ProjectOptions,
                 contents: Mapping[str, str] | None = None) -> None:
        """`contents`: the content digests of the options' weight and config files (`backend.jobqueue.digests`)."""
        self.prefix, self.project, self.vocabulary, self.options = prefix, project, vocabulary, options
        self.version = model_version(options, contents)
        self.config_hash = vocabulary.config_hash()
        # Turned into JSON once for all the payloads of a request or run.
        self._shared = {"vocabulary": vocabulary.to_dict(), "options": options.to_dict()}

    def job_id(self, task: dict[str, Any], image_url: str, context: Any = None) -> str:
        """Return the deterministic job id of one task."""
        return job_id(prefix=self.prefix, project=self.project, task_id=task.get("id"), version=self.version,
                      config_hash=self.config_hash, image_url=image_url, context=context)

    def payload(
        self, ident: str, task: dict[str, Any], image_url: str, context: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Return the worker payload of one task whose job id is `ident`."""
        return make_payload(job=ident, prefix=self.prefix, project=self.project, task=task, image_url=image_url,
                            vocabulary=self.vocabulary, options=self.options, version=self.version,
                            context=context, shared=self._shared)


def image_url_of(task: Any, vocabulary: Vocabulary) -> str:
    """Return the task's image URL; raise ValueError saying why there is none."""
    if not isinstance(task, dict):
        raise ValueError("task is not a JSON object")
    data = task.get("data")
    if not isinstance(data, dict):
        raise ValueError("task has no 'data' object")
    url = data.get(vocabulary.image_key)
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"task data has no image under {vocabulary.image_key!r} (the Image tag's value)")
    return url.strip()
