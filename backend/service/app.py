"""The FastAPI app Label Studio talks to: parse, enqueue, wait, format. Never imports torch.

Routes: GET /health, POST /setup, POST /predict, POST /webhook, POST /train, GET /calibration/{project},
POST /evaluate, GET /evaluation/{project}, GET /metrics, GET /jobs/{id}.
/predict parses and enqueues in the thread pool (short), then waits for the workers' results in the event
loop with an asyncio Redis client: a waiting request holds no thread, so any number of them leave /health
and other requests their threads. With no live worker it answers at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic_core
import redis
import redis.asyncio
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.jobqueue import calibrations, digests, evaluations
from backend.jobqueue import queues as rq_queue
from backend.jobqueue.jobs import TaskJobs, image_url_of, project_id
from backend.labelstudio.label_config import LabelConfigError, Vocabulary, parse_label_config
from backend.options import OptionsError, ProjectOptions
from backend.service.auth import basic_auth, check_protection, predict_may_push
from backend.service.body_limit import BodyLimit
from backend.service.metrics import CONTENT_TYPE, ApiMetrics
from backend.settings import Settings

log = logging.getLogger("gem_labeler.api")
MODEL_CLASS = "GemLabeler"
PROJECT_TTL_S = 90 * 86400
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
# Seconds the API waits for workers to publish the content digest of a weights file it has not seen.
DIGEST_WAIT_S = 20.0
NO_WORKER = ("no worker is alive (none has a fresh heartbeat in Redis): start `gem-labeler worker` with the same "
             "REDIS_URL and QUEUE_PREFIX")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")
T = TypeVar("T")


class _Redis:
    """Lazily made Redis clients: a normal one, one with very short timeouts for /health, and an asyncio one
    per event loop (for waiting)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._main: redis.Redis | None = None
        self._health: redis.Redis | None = None
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None

    def main(self) -> redis.Redis:
        if self._main is None:
            self._main = rq_queue.connect(self.url)
        return self._main

    def health(self) -> redis.Redis:
        if self._health is None:
            self._health = rq_queue.connect(self.url, timeout_s=0.3)
        return self._health

    def waiting(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, rq_queue.connect_async(self.url))
        return self._async[1]


@dataclass
class _PredictPlan:
    """A /predict request parsed and enqueued: what remains is to wait for `results` and answer."""

    jobs: TaskJobs
    tasks: list[Any]
    context: dict[str, Any] | None
    items: list[bytes | dict[str, Any] | None]  # per task; None where a job's result is awaited
    named: dict[int, str]  # task index -> job id
    results: list[rq_queue.StoredResult | None]  # per job id in `named` order
    wait: bool  # False when no worker could deliver: answer with what is stored


def _bad_request(message: str) -> HTTPException:
    return HTTPException(status_code=400, detail=message)


def _project(value: Any) -> str:
    try:
        return project_id(value)
    except ValueError as exc:
        raise _bad_request(str(exc)) from None


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the FastAPI app serving Label Studio's ML backend protocol (SettingsError when it would run
    open while holding a Label Studio API key: `backend.service.auth.check_protection`)."""
    settings = settings or Settings.from_env()
    check_protection(settings)
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

    @app.exception_handler(StarletteHTTPException)
    async def logged(request: Request, exc: StarletteHTTPException) -> Response:
        # Label Studio shows only "400 ... /setup": the reason must reach the server's log as well.
        if exc.status_code in (400, 503):
            log.warning("%s %s answered %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
        return await http_exception_handler(request, exc)

    def project_state(project: str) -> tuple[dict[str, Any], str | None]:
        """Return the project's extra params (its calibration over those /setup stored) and label config."""
        conn = clients.main()
        stored = rq_queue.load_project(conn, prefix, project) or {}
        extra = calibrations.project_params(conn, prefix, project, stored.get("extra_params") or {})
        return extra, stored.get("label_config")

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

    def task_jobs(project: str, vocabulary: Vocabulary, options: ProjectOptions) -> TaskJobs:
        """Return the project's job recipe; raises DigestUnavailable until workers published its files' digests."""
        conn = clients.main()
        contents = digests.resolve(conn, prefix, options, wait_s=0)
        jobs = TaskJobs(prefix=prefix, project=project, vocabulary=vocabulary, options=options, contents=contents)
        # Errors stored under other settings must not come back when these settings return.
        if rq_queue.note_project_fingerprint(conn, prefix, project, f"{jobs.version}:{jobs.config_hash}",
                                             PROJECT_TTL_S):
            log.info("project %s: model version or label config changed; its stored errors were dropped", project)
        return jobs

    async def versioned(work: Callable[[], T]) -> T:
        """Return `work()` run in the thread pool; when it needs a digest the workers were just asked for,
        wait for it (in the event loop) and run it once more."""
        try:
            return await run_in_threadpool(work)
        except digests.DigestUnavailable as exc:
            if not exc.asked:
                raise HTTPException(503, str(exc)) from None
            await digests.wait_published(clients.waiting(), prefix, exc.paths, DIGEST_WAIT_S)
        try:
            return await run_in_threadpool(work)
        except digests.DigestUnavailable as exc:
            raise HTTPException(503, str(exc)) from None

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
            if not info["workers"]:
                info.update(status="DEGRADED", reason=f"{NO_WORKER}; /predict answers 503 until one runs")
        except (redis.RedisError, rq_queue.RedisUnavailable, OSError) as exc:
            info["redis"] = rq_queue.describe_error(settings.redis_url, exc)
            info["workers"] = None
            info.update(status="DEGRADED", reason=info["redis"])
        return info

    def setup_project(body: dict[str, Any]) -> dict[str, Any]:
        config = body.get("schema") or body.get("label_config")
        vocabulary = vocabulary_for(config)
        extra = body.get("extra_params") or {}
        if isinstance(extra, str):  # Label Studio sends the text box as a JSON string
            extra = _json_object(extra)
        options_for(extra)  # a bad extra param is the caller's to fix, whatever Redis says
        project = _project(body.get("project"))
        options = options_for(calibrations.project_params(clients.main(), prefix, project, extra))
        jobs = task_jobs(project, vocabulary, options)
        rq_queue.save_project(clients.main(), prefix, project, {"label_config": config, "extra_params": extra},
                              PROJECT_TTL_S)
        return {"model_version": jobs.version}

    @app.post("/setup")
    async def setup(body: dict[str, Any]) -> dict[str, Any]:
        return await versioned(lambda: setup_project(body))

    def plan_predict(body: dict[str, Any], retry_failed: bool) -> _PredictPlan:
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise _bad_request("'tasks' must be a list of Label Studio tasks")
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if isinstance(context, dict) and context.get("result") is not None and not isinstance(context["result"], list):
            raise _bad_request("'params.context.result' must be a list of Label Studio results")
        interactive = bool(context and isinstance(context, dict) and context.get("result"))
        project = _project(body.get("project"))
        extra, stored_config = project_state(project)
        vocabulary = vocabulary_for(body.get("label_config") or stored_config)
        jobs = task_jobs(project, vocabulary, options_for(extra))
        return _plan(clients.main(), settings, jobs, tasks, context if interactive else None, retry_failed)

    @app.post("/predict")
    async def predict(body: dict[str, Any], retry_failed: bool = False) -> Response:
        started = time.monotonic()
        plan = await versioned(lambda: plan_predict(body, retry_failed))
        if plan.wait:
            plan.results = await rq_queue.wait_for_results(
                clients.waiting(), prefix, list(plan.named.values()), settings.predict_wait_s, known=plan.results)
        items = await run_in_threadpool(_answers, clients.main(), settings, plan)
        metrics.predict_latency.labels("interactive" if plan.context else "batch").observe(time.monotonic() - started)
        outcomes = [_outcome(item) for item in items]
        for outcome in outcomes:
            metrics.predict_tasks.labels(outcome).inc()
        if plan.context and outcomes and all(o == "pending" for o in outcomes):
            workers = await run_in_threadpool(rq_queue.worker_count, clients.main(), prefix)
            raise HTTPException(
                504,
                f"no interactive result within PREDICT_WAIT_S={settings.predict_wait_s} s "
                f"({workers} worker(s) listening); try again or add workers",
            )
        # Stored predictions go out as the bytes the worker stored; only the small items are serialized.
        parts = [item if isinstance(item, bytes) else pydantic_core.to_json(item) for item in items]
        answer = (b'{"results":[' + b",".join(parts) + b'],"model_version":' + pydantic_core.to_json(plan.jobs.version)
                  + b"}")
        return Response(answer, media_type="application/json")

    @app.post("/webhook")
    def webhook(body: dict[str, Any], background: BackgroundTasks) -> dict[str, Any]:
        action = body.get("action")
        project_obj = body.get("project") or {}
        project = _project(project_obj)
        if action == "TASKS_CREATED":
            tasks = body.get("tasks") or []
            if not isinstance(tasks, list):
                raise _bad_request("webhook 'tasks' must be a list of Label Studio tasks")
            config = project_obj.get("label_config") if isinstance(project_obj, dict) else None
            background.add_task(_prelabel_created, clients.main(), settings, project, tasks, config)
            return {"status": "accepted", "tasks": len(tasks)}
        if action == "START_TRAINING":
            return start_calibration(project)
        if action in ANNOTATION_EVENTS:
            # Not stored: calibration reads a project's annotations from Label Studio's API when it runs.
            return {"status": "acknowledged", "action": action}
        return {"status": "ignored", "action": action}

    def needs_label_studio(project: str, what: str) -> None:
        if not project:
            raise _bad_request(f"{what} needs the project id ('project': id or {{'id': id}})")
        if not settings.can_push:
            raise _bad_request(f"{what} reads the project's annotations from Label Studio: set "
                               "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for the API and the workers")

    def start_calibration(project: str) -> dict[str, Any]:
        needs_label_studio(project, "calibration")
        try:
            job_id = calibrations.enqueue(clients.main(), settings, project)
        except calibrations.CalibrationRunning as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("project %s: calibration queued as job %s", project, job_id)
        return {"status": "started", "job_id": job_id, "project": project,
                "progress": f"/calibration/{project}"}

    @app.post("/train")
    def train(body: dict[str, Any]) -> dict[str, Any]:
        # The ML backend protocol's training hook (Label Studio's "Start Training"); same as START_TRAINING.
        return start_calibration(_project(body.get("project")))

    @app.get("/calibration/{project}")
    def calibration(project: str) -> dict[str, Any]:
        project = _project(project)
        conn = clients.main()
        stored = calibrations.history(conn, prefix, project)
        return {"project": project, "status": calibrations.status(conn, prefix, project),
                "active": stored["active"], "versions": stored["versions"]}

    @app.post("/evaluate")
    def evaluate(body: dict[str, Any]) -> dict[str, Any]:
        project = _project(body.get("project"))
        needs_label_studio(project, "evaluation")
        version = body.get("model_version")
        if version is not None and not isinstance(version, str):
            raise _bad_request("'model_version' must be a string")
        job_id = evaluations.enqueue(clients.main(), settings, project, version)
        return {"status": "started", "job_id": job_id, "project": project, "report": f"/evaluation/{project}"}

    @app.get("/evaluation/{project}")
    def evaluation(project: str) -> dict[str, Any]:
        project = _project(project)
        found = evaluations.load(clients.main(), prefix, project)
        if found is None:
            raise HTTPException(404, f"project {project} has no evaluation (POST /evaluate, or it expired after "
                                     "RESULT_TTL_S)")
        return {"project": project, **found}

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


def _plan(
    conn: redis.Redis,
    settings: Settings,
    jobs: TaskJobs,
    tasks: list[Any],
    context: dict[str, Any] | None,
    retry_failed: bool,
) -> _PredictPlan:
    """Return the request's plan: stored results read, missing jobs enqueued (unless no worker is alive)."""
    prefix = settings.queue_prefix
    items: list[bytes | dict[str, Any] | None] = [None] * len(tasks)
    named: dict[int, str] = {}  # task index -> job id
    urls: dict[int, str] = {}
    for i, task in enumerate(tasks):
        try:
            urls[i] = image_url_of(task, jobs.vocabulary)
        except ValueError as exc:
            items[i] = {"error": str(exc), "task": _task_id(task)}
            continue
        named[i] = jobs.job_id(task, urls[i], context)
    ids = list(named.values())
    if retry_failed:
        for ident in rq_queue.forget_errors(conn, prefix, ids):
            log.info("job %s: stored error dropped (retry_failed)", ident)
    results = rq_queue.read_stored(conn, prefix, ids)
    missing = [i for i, result in zip(named, results, strict=True) if result is None]
    alive = not missing or rq_queue.worker_count(conn, prefix) > 0
    if context is None or alive:  # batch jobs wait in the queue for a worker; an interactive one would be stale
        for i in missing:
            payload = jobs.payload(named[i], tasks[i], urls[i], context)
            status = rq_queue.enqueue(conn, settings, payload, interactive=context is not None)
            log.info("task %s job %s: %s", payload["task_id"], named[i], status)
    if not alive and len(missing) == len(tasks):
        raise HTTPException(503, f"{NO_WORKER}; the {len(missing)} task(s) asked for need computing")
    if not alive:
        for i in missing:
            items[i] = {"error": f"{NO_WORKER}; the task is queued for when one runs", "job_id": named[i],
                        "task": _task_id(tasks[i])}
    return _PredictPlan(jobs, tasks, context, items, named, results, wait=alive)


def _answers(conn: redis.Redis, settings: Settings, plan: _PredictPlan) -> list[bytes | dict[str, Any]]:
    """Return one item per task: a prediction's JSON bytes, an error, or a pending marker (no `result` key)."""
    prefix = settings.queue_prefix
    items = list(plan.items)
    push = predict_may_push(settings) and plan.context is None
    for (i, ident), result in zip(plan.named.items(), plan.results, strict=True):
        if items[i] is not None:
            continue
        if result is None and push:
            result = rq_queue.request_push(conn, prefix, ident, settings.result_ttl_s)
        items[i] = _item(result, ident, _task_id(plan.tasks[i]), settings, push)
    return [item for item in items if item is not None]


def _item(
    result: rq_queue.StoredResult | None, ident: str, task_id: Any, settings: Settings, push: bool
) -> bytes | dict[str, Any]:
    if result is None:
        later = "the worker will push it to Label Studio" if push else "ask again for the result"
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
        extra = calibrations.project_params(conn, prefix, project, stored.get("extra_params") or {})
        options = ProjectOptions.from_settings(settings, extra)
        contents = digests.resolve(conn, prefix, options, wait_s=DIGEST_WAIT_S)
    except (LabelConfigError, OptionsError, redis.RedisError, digests.DigestUnavailable) as exc:
        log.error("webhook TASKS_CREATED project %s: not pre-labeled: %s", project, exc)
        return
    jobs = TaskJobs(prefix=prefix, project=project, vocabulary=vocabulary, options=options, contents=contents)
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
