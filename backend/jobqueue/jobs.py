"""What one job is: per-project options, the model version, deterministic job ids and JSON payloads.

Pure data; no Redis, no torch. The API builds payloads, workers execute them (`backend.jobqueue.worker.run_job`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from backend.labelstudio.label_config import Vocabulary
from backend.settings import METHODS, REGION_MODES, Settings, choices

PRODUCT = "gem-labeler"
JOB_FUNCTION = "backend.jobqueue.worker.run_job"
FAILURE_CALLBACK = "backend.jobqueue.worker.on_job_failure"
OUTPUT_TYPES = ("brush", "polygon", "rectangle")


class OptionsError(ValueError):
    """A per-project option (Label Studio `extra_params`) has a value that cannot be used."""


@dataclass(frozen=True)
class ProjectOptions:
    """Model, method and region options one project's predictions are made with."""

    method: str
    model_name: str
    model_pretrained: str
    model_config: str
    region_mode: str
    threshold: str
    min_area: float
    score_threshold: float
    outputs: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings, extra_params: dict[str, Any] | None = None) -> ProjectOptions:
        """Return environment defaults overridden by a project's extra params; raise OptionsError when invalid."""
        base = cls(
            method=settings.method,
            model_name=settings.model_name,
            model_pretrained=settings.model_pretrained,
            model_config=settings.model_config,
            region_mode=settings.region_mode,
            threshold=settings.threshold,
            min_area=settings.min_area,
            score_threshold=settings.score_threshold,
            outputs=_outputs(settings.outputs),
        )
        return base.with_params(extra_params or {})

    def with_params(self, params: dict[str, Any]) -> ProjectOptions:
        """Return these options with `params` (extra_params names, `model` for model_name) applied."""
        if not isinstance(params, dict):
            raise OptionsError("extra_params must be a JSON object")
        params = {("model_name" if k == "model" else k): v for k, v in params.items()}
        known = {f.name for f in fields(self)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise OptionsError(f"unknown extra params {unknown}; known: {sorted(known | {'model'})}")
        changes: dict[str, Any] = {}
        try:
            for name, value in params.items():
                if name in ("min_area", "score_threshold"):
                    changes[name] = float(value)
                elif name == "outputs":
                    changes[name] = _outputs(value if isinstance(value, str) else ",".join(value))
                else:
                    changes[name] = str(value)
        except (TypeError, ValueError):
            raise OptionsError(f"extra param {name}={value!r} has the wrong type") from None
        options = replace(self, **changes)
        options.validate()
        return options

    def validate(self) -> None:
        """Raise OptionsError naming the first option that cannot work."""
        if self.method not in METHODS:
            raise OptionsError(f"method must be {choices(METHODS)}, not {self.method!r}")
        if self.region_mode not in REGION_MODES:
            raise OptionsError(f"region_mode must be {choices(REGION_MODES)}, not {self.region_mode!r}")
        if self.threshold != "otsu":
            try:
                value = float(self.threshold)
            except ValueError:
                raise OptionsError(f"threshold must be 'otsu' or a number in [0, 1], not {self.threshold!r}") from None
            if not 0.0 <= value <= 1.0:
                raise OptionsError(f"threshold must be in [0, 1], not {value}")
        if not 0.0 <= self.min_area < 1.0:
            raise OptionsError(f"min_area is a fraction of the image area in [0, 1), not {self.min_area}")
        if not self.outputs:
            raise OptionsError(f"outputs must name at least one of {OUTPUT_TYPES}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form."""
        data = asdict(self)
        data["outputs"] = list(self.outputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProjectOptions:
        """Return the options `to_dict` described."""
        return cls(**{**data, "outputs": tuple(data["outputs"])})

    def engine_key(self) -> tuple[str, str, str, str]:
        """Return what decides which loaded model and engine serve these options."""
        return (self.model_name, self.model_pretrained, self.model_config, self.method)


def _outputs(raw: str) -> tuple[str, ...]:
    items = tuple(s.strip().lower() for s in raw.split(",") if s.strip())
    bad = [s for s in items if s not in OUTPUT_TYPES]
    if bad:
        raise OptionsError(f"outputs {bad} unknown; choose from {OUTPUT_TYPES}")
    return items


def model_version(options: ProjectOptions) -> str:
    """Return the stable version string of predictions made with `options` (model, weights, method, params)."""
    weights = options.model_pretrained.replace("\\", "/").rsplit("/", 1)[-1] or "none"
    params = json.dumps(
        [options.region_mode, options.threshold, options.min_area, options.score_threshold, list(options.outputs),
         options.model_config.replace("\\", "/").rsplit("/", 1)[-1]],
    )
    digest = hashlib.sha256(params.encode()).hexdigest()[:8]
    return f"{PRODUCT}-{options.method}-{options.model_name}-{weights}-{digest}"


def project_id(project: Any) -> str:
    """Return the project id from Label Studio's `project` field ("12.1700000000" or 12 or {"id": 12})."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or project == "":
        return ""
    return str(project).split(".", 1)[0]


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

    def __init__(self, *, prefix: str, project: str, vocabulary: Vocabulary, options: ProjectOptions) -> None:
        self.prefix, self.project, self.vocabulary, self.options = prefix, project, vocabulary, options
        self.version = model_version(options)
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
