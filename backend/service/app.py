"""The FastAPI app Label Studio talks to: parse, enqueue, wait, format. Never imports torch.

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /metrics, GET /jobs/{id}.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import pydantic_core
import redis
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from backend.jobqueue import queues as rq_queue
from backend.jobqueue.jobs import TaskJobs, image_url_of, project_id
from backend.labelstudio.label_config import LabelConfigError, Vocabulary, parse_label_config
from backend.options import OptionsError, ProjectOptions, model_version
from backend.service.auth import basic_auth
from backend.service.body_limit import BodyLimit
from backend.service.metrics import CONTENT_TYPE, ApiMetrics
from backend.settings import Settings

log = logging.getLogger("gem_labeler.api")
MODEL_CLASS = "GemLabeler"
PROJECT_TTL_S = 90 * 86400
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")


class _Redis:
    """Lazily made Redis clients: a normal one, and one with very short timeouts for /health."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._main: redis.Redis | None = None
        self._health: redis.Redis | None = None

    def main(self) -> redis.Redis:
        if self._main is None:
            self._main = rq_queue.connect(self.url)
        return self._main

    def health(self) -> redis.Redis:
        if self._health is None:
            self._health = rq_queue.connect(self.url, timeout_s=0.3)
        return self._health


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the FastAPI app serving Label Studio's ML backend protocol."""
    settings = settings or Settings.from_env()
    clients = _Redis(settings.redis_url)
    prefix = settings.queue_prefix
    metrics = ApiMetrics(clients.health, prefix)
    app = FastAPI(title="gem-labeler", dependencies=[Depends(basic_auth(settings))])
    app.state.settings = settings
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        message = rq_queue.describe_error(settings.redis_url, exc)
        log.error("%s %s: %s", request.method, request.url.path, message)
        return JSONResponse(status_code=503, content={"detail": message})

    @app.exception_handler(rq_queue.RedisUnavailable)
    async def redis_unset(request: Request, exc: rq_queue.RedisUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    def project_state(project: str) -> tuple[dict[str, Any], str | None]:
        stored = rq_queue.load_project(clients.main(), prefix, project) or {}
        return stored.get("extra_params") or {}, stored.get("label_config")

    def options_for(extra: dict[str, Any]) -> ProjectOptions:
        try:
            return ProjectOptions.from_settings(settings, extra)
        except OptionsError as exc:
            raise _bad_request(f"extra_params: {exc}") from None

    def vocabulary_for(config: str | None) -> Vocabulary:
        try:
            return parse_label_config(config)
        except LabelConfigError as exc:
            raise _bad_request(f"label config: {exc}") from None

    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        info: dict[str, Any] = {"status": "UP", "model_class": MODEL_CLASS}
        try:
            conn = clients.health()
            conn.ping()
            info["redis"] = "ok"
            info["workers"] = rq_queue.worker_count(conn, prefix)
            info["queued"] = {q: c["queued"] for q, c in rq_queue.queue_counts(conn, prefix).items()}
        except (redis.RedisError, rq_queue.RedisUnavailable, OSError) as exc:
            info["redis"] = rq_queue.describe_error(settings.redis_url, exc)
            info["workers"] = None
        return info

    @app.post("/setup")
    def setup(body: dict[str, Any]) -> dict[str, Any]:
        vocabulary_for(body.get("schema") or body.get("label_config"))
        extra = body.get("extra_params") or {}
        if isinstance(extra, str):  # Label Studio sends the text box as a JSON string
            extra = _json_object(extra)
        options = options_for(extra)
        project = project_id(body.get("project"))
        data = {"label_config": body.get("schema") or body.get("label_config"), "extra_params": extra}
        rq_queue.save_project(clients.main(), prefix, project, data, PROJECT_TTL_S)
        return {"model_version": model_version(options)}

    @app.post("/predict")
    def predict(body: dict[str, Any]) -> Response:
        started = time.monotonic()
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise _bad_request("'tasks' must be a list of Label Studio tasks")
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if isinstance(context, dict) and context.get("result") is not None and not isinstance(context["result"], list):
            raise _bad_request("'params.context.result' must be a list of Label Studio results")
        interactive = bool(context and isinstance(context, dict) and context.get("result"))
        project = project_id(body.get("project"))
        extra, stored_config = project_state(project)
        vocabulary = vocabulary_for(body.get("label_config") or stored_config)
        options = options_for(extra)
        jobs = TaskJobs(prefix=prefix, project=project, vocabulary=vocabulary, options=options)
        items = _predict(clients.main(), settings, jobs, tasks, context if interactive else None)
        mode = "interactive" if interactive else "batch"
        metrics.predict_latency.labels(mode).observe(time.monotonic() - started)
        outcomes = [_outcome(item) for item in items]
        for outcome in outcomes:
            metrics.predict_tasks.labels(outcome).inc()
        if interactive and outcomes and all(o == "pending" for o in outcomes):
            workers = rq_queue.worker_count(clients.main(), prefix)
            raise HTTPException(
                504,
                f"no interactive result within PREDICT_WAIT_S={settings.predict_wait_s} s "
                f"({workers} worker(s) listening); try again or add workers",
            )
        # Stored predictions go out as the bytes the worker stored; only the small items are serialized.
        parts = [item if isinstance(item, bytes) else pydantic_core.to_json(item) for item in items]
        body = b'{"results":[' + b",".join(parts) + b'],"model_version":' + pydantic_core.to_json(jobs.version) + b"}"
        return Response(body, media_type="application/json")

    @app.post("/webhook")
    def webhook(body: dict[str, Any], background: BackgroundTasks) -> dict[str, Any]:
        action = body.get("action")
        project_obj = body.get("project") or {}
        project = project_id(project_obj)
        if action == "TASKS_CREATED":
            tasks = body.get("tasks") or []
            if not isinstance(tasks, list):
                raise _bad_request("webhook 'tasks' must be a list of Label Studio tasks")
            config = project_obj.get("label_config") if isinstance(project_obj, dict) else None
            background.add_task(_prelabel_created, clients.main(), settings, project, tasks, config)
            return {"status": "accepted", "tasks": len(tasks)}
        if action in ANNOTATION_EVENTS:
            event = {"action": action, "annotation": body.get("annotation"), "task": body.get("task"),
                     "received_at": time.time()}
            rq_queue.store_annotation(clients.main(), prefix, project, event)
            return {"status": "stored"}
        return {"status": "ignored", "action": action}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/jobs/{ident}")
    def job(ident: str) -> dict[str, Any]:
        # RQ raises on ids outside [A-Za-z0-9_-]; no job can have one, so it is simply unknown.
        info = rq_queue.job_status(clients.main(), prefix, ident) if _JOB_ID.fullmatch(ident) else None
        if info is None:
            raise HTTPException(404, f"no job {ident!r} (unknown, or its result expired after RESULT_TTL_S)")
        return info

    return app


def _predict(
    conn: redis.Redis,
    settings: Settings,
    jobs: TaskJobs,
    tasks: list[Any],
    context: dict[str, Any] | None,
) -> list[bytes | dict[str, Any]]:
    """Return one item per task: a prediction's JSON bytes, an error, or a pending marker (no `result` key)."""
    prefix = settings.queue_prefix
    items: list[bytes | dict[str, Any] | None] = [None] * len(tasks)
    named: dict[int, tuple[str, str]] = {}  # task index -> (job id, image URL)
    for i, task in enumerate(tasks):
        try:
            url = image_url_of(task, jobs.vocabulary)
        except ValueError as exc:
            items[i] = {"error": str(exc), "task": _task_id(task)}
            continue
        named[i] = (jobs.job_id(task, url, context), url)
    order = list(named)
    ids = [named[i][0] for i in order]
    results = rq_queue.read_stored(conn, prefix, ids)
    # Payloads only for tasks without a stored result.
    for i, result in zip(order, results, strict=True):
        if result is None:
            ident, url = named[i]
            payload = jobs.payload(ident, tasks[i], url, context)
            status = rq_queue.enqueue(conn, settings, payload, interactive=context is not None)
            log.info("task %s job %s: %s", payload["task_id"], ident, status)
    results = rq_queue.wait_for_results(conn, prefix, ids, settings.predict_wait_s, known=results)
    for i, result in zip(order, results, strict=True):
        ident = named[i][0]
        if result is None and settings.can_push and context is None:
            result = rq_queue.request_push(conn, prefix, ident, settings.result_ttl_s)
        items[i] = _item(result, ident, _task_id(tasks[i]), settings)
    return [item for item in items if item is not None]


def _item(
    result: rq_queue.StoredResult | None, ident: str, task_id: Any, settings: Settings
) -> bytes | dict[str, Any]:
    if result is None:
        later = "the worker will push it to Label Studio" if settings.can_push else "ask again for the result"
        return {"status": "pending", "job_id": ident, "task": task_id, "detail": f"not finished in time; {later}"}
    if result.prediction_json is None:
        return {"error": result.error or "failed without a message", "job_id": ident, "task": task_id}
    return result.prediction_json


def _outcome(item: bytes | dict[str, Any]) -> str:
    if isinstance(item, bytes):
        return "result"
    return "error" if "error" in item else "pending"


def _prelabel_created(
    conn: redis.Redis, settings: Settings, project: str, tasks: list[Any], config: str | None
) -> None:
    """Enqueue batch pre-labeling of tasks Label Studio just created; results are pushed when possible."""
    prefix = settings.queue_prefix
    try:
        stored = rq_queue.load_project(conn, prefix, project) or {}
        vocabulary = parse_label_config(config or stored.get("label_config"))
        options = ProjectOptions.from_settings(settings, stored.get("extra_params") or {})
    except (LabelConfigError, OptionsError, redis.RedisError) as exc:
        log.error("webhook TASKS_CREATED project %s: not pre-labeled: %s", project, exc)
        return
    jobs = TaskJobs(prefix=prefix, project=project, vocabulary=vocabulary, options=options)
    for task in tasks:
        try:
            url = image_url_of(task, vocabulary)
        except ValueError as exc:
            log.warning("webhook project %s task %s skipped: %s", project, _task_id(task), exc)
            continue
        ident = jobs.job_id(task, url)
        payload = jobs.payload(ident, task, url)
        try:
            if settings.can_push:
                conn.set(rq_queue.key(prefix, "push", ident), "1", ex=settings.result_ttl_s)
            status = rq_queue.enqueue(conn, settings, payload, interactive=False)
        except redis.RedisError as exc:
            log.error("webhook project %s task %s: %s", project, task.get("id"),
                      rq_queue.describe_error(settings.redis_url, exc))
            return
        log.info("webhook project %s task %s job %s: %s", project, task.get("id"), ident, status)


def _task_id(task: Any) -> Any:
    return task.get("id") if isinstance(task, dict) else None


def _json_object(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad_request(f"extra_params is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _bad_request("extra_params must be a JSON object")
    return value
