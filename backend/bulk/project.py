"""Project mode of `gem-labeler prelabel`: every task of a Label Studio project, through the queue and workers.

Tasks are listed page by page (task fields only); tasks that already hold a prediction of the current
model version, and annotated tasks unless asked, are skipped. The rest are enqueued exactly as the API
enqueues them (same payloads, same deterministic job ids), a bounded number at a time, so a job that is
already queued, running or finished is reused and never computed twice. As results arrive this command
imports them into the project in batches (one `import/predictions` request per batch), so nothing is
stored twice either: a rerun lists the project again and skips what is there. A stopped run leaves its
finished-but-unsent results in Redis (RESULT_TTL_S) and the next run sends them without recomputing.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from backend.bulk.common import Failure, Progress, StopRequest, Summary, UsageError, describe_options
from backend.jobqueue import calibrations, digests, push_once
from backend.jobqueue import queues as rq_queue
from backend.jobqueue.jobs import TaskJobs, image_url_of
from backend.labelstudio.client import LabelStudioClient, LabelStudioError
from backend.labelstudio.label_config import Vocabulary, parse_label_config
from backend.options import ProjectOptions
from backend.settings import Settings

log = logging.getLogger("gem_labeler.bulk")
INTERRUPT_GRACE_S = 10.0
NO_WORKER_HINT_S = 15.0
DIGEST_WAIT_S = 60.0  # how long running workers get to publish the digest of a weights file
REAP_EVERY_S = 5.0  # how often outstanding jobs are checked for having been lost
HELD_RECHECK_S = 2.0  # how often a prediction another pusher is sending is checked again


@dataclass(frozen=True)
class ProjectRun:
    """What one project run does, besides where Label Studio and Redis are."""

    project: int
    include_annotated: bool = False
    limit: int | None = None
    dry_run: bool = False
    workers: int = 0
    page_size: int = 100
    push_batch: int = 50
    max_outstanding: int = 200  # jobs enqueued but not finished; bounds what a Ctrl-C leaves in the queue
    poll_s: float = 0.25
    progress: bool = True
    params: dict[str, Any] = field(default_factory=dict)  # option overrides from the command line
    retry_failed: bool = False  # drop stored errors of the tasks first, so they are computed again


# --------------------------------------------------------------------------------------------------
# Which tasks need work


def is_annotated(task: dict[str, Any]) -> bool:
    """Return whether a listed task carries annotations (counted or embedded)."""
    if task.get("total_annotations"):
        return True
    return bool(task.get("annotations"))


def prediction_versions(task: dict[str, Any], client: LabelStudioClient) -> set[str]:
    """Return the model versions of a task's predictions, asking Label Studio only when the listing omits them."""
    embedded = task.get("predictions")
    if isinstance(embedded, list) and all(isinstance(p, dict) for p in embedded):
        return {str(p.get("model_version") or "") for p in embedded}
    listed = task.get("predictions_model_versions")
    if isinstance(listed, list):
        return {str(v) for v in listed}
    # Label Studio 1.23 sends "" here with fields=task_only even when the task has predictions.
    if isinstance(listed, str) and listed.strip():
        return {v.strip() for v in listed.split(",") if v.strip()}
    if "total_predictions" in task and not task.get("total_predictions"):
        return set()
    return {str(p.get("model_version") or "") for p in client.list_predictions(int(task["id"]))}


def plan(
    tasks: Iterable[dict[str, Any]], run: ProjectRun, client: LabelStudioClient, vocabulary: Vocabulary, version: str
) -> tuple[list[tuple[dict[str, Any], str]], Summary]:
    """Return the tasks to pre-label with their image URLs, and a summary holding the skips and bad tasks."""
    summary = Summary(dry_run=run.dry_run)
    todo: list[tuple[dict[str, Any], str]] = []
    for task in tasks:
        if run.limit is not None and summary.total >= run.limit:
            break
        summary.total += 1
        ident = str(task.get("id"))
        if not run.include_annotated and is_annotated(task):
            summary.skipped += 1
            continue
        if version in prediction_versions(task, client):
            summary.skipped += 1
            continue
        try:
            todo.append((task, image_url_of(task, vocabulary)))
        except ValueError as exc:
            summary.failed.append(Failure(ident, str(exc)))
    return todo, summary


# --------------------------------------------------------------------------------------------------
# Local workers for --workers N


class LocalWorkers:
    """`gem-labeler worker --burst` processes for one run, in their own session so Ctrl-C reaches only us.

    Burst workers exit once the queue is empty, so even if this command is killed they finish what it
    enqueued and go away instead of lingering; while work remains, an exited one is replaced.
    """

    def __init__(self, count: int, settings: Settings, options: ProjectOptions, log_path: Path) -> None:
        self.count = count
        self.log_path = log_path
        self.processes: list[subprocess.Popen] = []
        self._env = {
            **os.environ,
            "REDIS_URL": settings.redis_url,
            "QUEUE_PREFIX": settings.queue_prefix,
            # The run's own Label Studio (--url/--api-key), so workers read its uploads and presign its images.
            "LABEL_STUDIO_URL": settings.label_studio_url,
            "LABEL_STUDIO_API_KEY": settings.label_studio_api_key,
            # The worker preloads the model of its settings: make that the model this run asks for.
            "METHOD": options.method,
            "MODEL_NAME": options.model_name,
            "MODEL_PRETRAINED": options.model_pretrained,
            "MODEL_CONFIG": options.model_config,
        }
        self._log = None

    def ensure(self, queued: int) -> None:
        """Keep `count` workers running while jobs wait; raise RuntimeError when one failed (say, no model)."""
        self.poll()
        self.processes = [p for p in self.processes if p.returncode is None]
        if queued <= 0 or len(self.processes) >= self.count:
            return
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        while len(self.processes) < self.count:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "backend.cli", "worker", "--burst"],
                    env=self._env,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def poll(self) -> None:
        """Raise RuntimeError when a worker failed; exits with status 0 are normal for burst workers."""
        for process in self.processes:
            if process.poll() not in (None, 0):
                raise RuntimeError(f"a local worker exited with status {process.returncode}; see {self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the workers to finish their current job and exit; kill those that do not."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()


# --------------------------------------------------------------------------------------------------
# The run


def run_project(
    run: ProjectRun, settings: Settings, client: LabelStudioClient, conn: Any, *, options: ProjectOptions | None = None
) -> Summary:
    """Pre-label one project through the queue; return the summary (failures with reasons, pending jobs)."""
    started = time.monotonic()
    project = str(run.project)
    prefix = settings.queue_prefix
    try:
        config = client.get_project(run.project).get("label_config")
    except LabelStudioError as exc:
        raise UsageError(f"cannot read project {run.project} from Label Studio: {exc}") from None
    vocabulary = parse_label_config(config)
    extra: dict[str, Any] = {}
    if options is None:
        extra = calibrations.project_params(conn, prefix, project)
        # Options the project set at /setup (extra_params) apply here too; the command line wins.
        options = ProjectOptions.from_settings(settings, {**extra, **run.params})
    try:
        # Published by the workers, else read here: local workers load the files this shell sees.
        contents = digests.resolve(conn, prefix, options, wait_s=DIGEST_WAIT_S, local=True)
    except digests.DigestUnavailable as exc:
        raise UsageError(str(exc)) from None
    jobs = TaskJobs(prefix=prefix, project=project, vocabulary=vocabulary, options=options, contents=contents)
    print(describe_options(options, jobs.version, extra_params=extra, flags=run.params), file=sys.stderr, flush=True)
    todo, summary = plan(client.iter_tasks(run.project, page_size=run.page_size), run, client, vocabulary,
                         jobs.version)
    if run.dry_run:
        summary.done = len(todo)
        summary.elapsed_s = time.monotonic() - started
        return summary

    workers = LocalWorkers(run.workers, settings, options, Path(settings.data_dir) / "prelabel-workers.log")
    outstanding: dict[str, Any] = {}  # job id -> task id
    to_push: list[dict[str, Any]] = []
    # Predictions another live pusher is sending: offered again until it finishes, fails or its lease lapses.
    held: list[dict[str, Any]] = []
    recheck_at = 0.0
    upcoming = iter(todo)
    exhausted = False
    hinted = False
    idle_since = time.monotonic()
    grace_until: float | None = None
    reaped_at = time.monotonic()
    try:
        with StopRequest() as stop, Progress(len(todo), desc=f"project {project}", enabled=run.progress) as bar:
            try:
                while True:
                    if stop.requested and grace_until is None:
                        grace_until = time.monotonic() + INTERRUPT_GRACE_S
                    while not stop.requested and not exhausted and len(outstanding) < run.max_outstanding:
                        item = next(upcoming, None)
                        if item is None:
                            exhausted = True
                            break
                        task, url = item
                        ident = jobs.job_id(task, url)
                        if run.retry_failed and rq_queue.forget_errors(conn, prefix, [ident]):
                            log.info("task %s job %s: stored error dropped (--retry-failed)", task.get("id"), ident)
                        status = rq_queue.enqueue(conn, settings, jobs.payload(ident, task, url), interactive=False)
                        log.info("task %s job %s: %s", task.get("id"), ident, status)
                        outstanding[ident] = task.get("id")
                    if workers.count and outstanding and not stop.requested:
                        workers.ensure(queued=_queued(conn, prefix))  # after enqueuing: burst workers find work
                    finished = _collect(conn, prefix, outstanding, to_push, summary, bar)
                    if finished:
                        idle_since = time.monotonic()
                    if len(to_push) >= run.push_batch or (to_push and (not outstanding or stop.requested)):
                        held += _push(client, run, to_push, summary, bar, conn, settings)
                    if held and time.monotonic() >= recheck_at:
                        held = _push(client, run, held, summary, bar, conn, settings)
                        recheck_at = time.monotonic() + HELD_RECHECK_S
                    if not outstanding and not held and (exhausted or stop.requested):
                        break
                    if grace_until is not None and (
                        time.monotonic() > grace_until or not _any_running(conn, prefix, outstanding)
                    ):
                        break
                    workers.poll()
                    if outstanding and time.monotonic() - reaped_at > REAP_EVERY_S:
                        _reap_lost(conn, prefix, outstanding, summary, bar)
                        reaped_at = time.monotonic()
                    if not hinted and time.monotonic() - idle_since > NO_WORKER_HINT_S:
                        hinted = _hint_if_no_workers(conn, prefix)
                    time.sleep(run.poll_s)
            except KeyboardInterrupt:
                stop.requested = True  # a second Ctrl-C: stop waiting, still send what is finished
            if to_push:
                held += _push(client, run, to_push, summary, bar, conn, settings)
            summary.interrupted = stop.requested
    finally:
        workers.stop()
    summary.pending = len(outstanding) + len(held) + (0 if exhausted else sum(1 for _ in upcoming))
    summary.elapsed_s = time.monotonic() - started
    return summary


def _collect(
    conn: Any, prefix: str, outstanding: dict[str, Any], to_push: list[dict[str, Any]], summary: Summary,
    bar: Progress,
) -> int:
    """Move finished jobs out of `outstanding`: predictions to the push list, errors to the failures."""
    if not outstanding:
        return 0
    idents = list(outstanding)
    finished = 0
    for ident, result in zip(idents, rq_queue.read_results(conn, prefix, idents), strict=True):
        if result is None:
            continue
        finished += 1
        task_id = outstanding.pop(ident)
        if "error" in result:
            summary.failed.append(Failure(str(task_id), result["error"]))
            bar.advance(failed=1)
        else:
            to_push.append({**result["prediction"], "task": task_id})
            bar.advance(done=1)  # per task as it is computed; a refused push moves it to the failures
    return finished


def _reap_lost(conn: Any, prefix: str, outstanding: dict[str, Any], summary: Summary, bar: Progress) -> None:
    """Fail outstanding jobs that can no longer deliver: gone from Redis, or dead without a stored result."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    idents = list(outstanding)
    jobs = Job.fetch_many(idents, connection=conn, serializer=JSONSerializer)
    suspects = {}
    for ident, job in zip(idents, jobs, strict=True):
        if job is None:
            suspects[ident] = "its job disappeared from Redis (expired or deleted); run again to recompute"
        elif job.get_status(refresh=False) in rq_queue.DEAD_STATUSES:
            suspects[ident] = f"its job ended {job.get_status(refresh=False)} without a result (worker killed?)"
    # A result may have been stored between the two reads: only what is still missing is lost.
    for ident, result in zip(suspects, rq_queue.read_results(conn, prefix, list(suspects)), strict=True):
        if result is None:
            summary.failed.append(Failure(str(outstanding.pop(ident)), suspects[ident]))
            bar.advance(failed=1)


def _push(client: LabelStudioClient, run: ProjectRun, to_push: list[dict[str, Any]], summary: Summary,
          bar: Progress, conn: Any, settings: Settings) -> list[dict[str, Any]]:
    """Import finished predictions into the project in batches; a refused batch fails its tasks, kept for a rerun.

    A prediction that another path pushed for the same task and model version is not sent again. One that
    another pusher is sending right now is returned, to be offered again: that pusher may yet fail or die.
    """
    prefix = settings.queue_prefix
    held = []
    while to_push:
        batch, to_push[:] = to_push[: run.push_batch], to_push[run.push_batch :]
        claims = [push_once.begin(conn, prefix, p["task"], p["model_version"]) for p in batch]
        sending = [(p, token) for p, (verdict, token) in zip(batch, claims, strict=True) if verdict == "go"]
        busy = [p for p, (verdict, _) in zip(batch, claims, strict=True) if verdict == "busy"]
        held += busy
        summary.done += len(batch) - len(sending) - len(busy)
        try:
            if sending:
                client.import_predictions(run.project, [p for p, _ in sending])
        except (LabelStudioError, ValueError) as exc:
            for prediction, token in sending:
                push_once.finish(conn, settings, prediction["task"], prediction["model_version"], token, pushed=False)
                summary.failed.append(Failure(str(prediction["task"]), f"push to Label Studio: {exc}"))
            bar.advance(done=-len(sending), failed=len(sending))
            continue
        for prediction, token in sending:
            push_once.finish(conn, settings, prediction["task"], prediction["model_version"], token, pushed=True)
        summary.done += len(sending)
    return held


def _queued(conn: Any, prefix: str) -> int:
    """Return how many jobs wait in the batch queue."""
    return int(conn.llen(f"rq:queue:{rq_queue.queue_name(prefix, rq_queue.BATCH)}"))


def _any_running(conn: Any, prefix: str, outstanding: dict[str, Any]) -> bool:
    """Return whether a worker is computing any outstanding job (started by RQ, or claimed into a batch)."""
    if not outstanding:
        return False
    from rq.registry import StartedJobRegistry

    registry = StartedJobRegistry(rq_queue.queue_name(prefix, rq_queue.BATCH), connection=conn)
    if set(registry.get_job_ids()) & outstanding.keys():
        return True
    claims = conn.exists(*[rq_queue.key(prefix, "claim", ident) for ident in outstanding])
    return bool(claims)


def _hint_if_no_workers(conn: Any, prefix: str) -> bool:
    try:
        if rq_queue.worker_count(conn, prefix):
            return False
    except Exception:  # noqa: BLE001 - a hint is never worth failing the run
        return False
    print(
        f"\nno worker is listening on queue {rq_queue.queue_name(prefix, rq_queue.BATCH)}: start "
        "`gem-labeler worker` with the same REDIS_URL and QUEUE_PREFIX, or rerun with --workers N",
        file=sys.stderr,
        flush=True,
    )
    return True


# --------------------------------------------------------------------------------------------------
# Command-line entry (called by backend.cli.prelabel.main)


def run_project_mode(args: Any, settings: Settings, params: dict[str, Any]) -> Summary:
    """Run project mode from parsed `prelabel` arguments; return the summary."""
    url = args.url or settings.label_studio_url
    api_key = args.api_key or settings.label_studio_api_key
    if not url or not api_key:
        raise UsageError("project mode needs the Label Studio URL and API key: --url/--api-key or "
                         "LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY")
    if args.page_size < 1 or args.push_batch < 1:
        raise UsageError("--page-size and --push-batch must be >= 1")
    run = ProjectRun(
        project=args.project, include_annotated=args.include_annotated, limit=args.limit, dry_run=args.dry_run,
        workers=args.workers, page_size=args.page_size, push_batch=args.push_batch,
        progress=not args.no_progress, params=params, retry_failed=args.retry_failed,
    )
    # Local workers (--workers) read uploads and presign images with the same Label Studio as this command.
    settings = replace(settings, label_studio_url=url, label_studio_api_key=api_key)
    if settings.redis_url:
        return _run_with_redis(run, settings, url, api_key)
    if args.workers <= 0 and not args.dry_run:
        raise UsageError("set REDIS_URL to the Redis your workers use, or pass --workers N for a local run")
    from backend.jobqueue.embedded import embedded_redis

    # Attached to the Redis of a `gem-labeler serve` in DATA_DIR if one runs (never stopped here), else private.
    with embedded_redis(settings.data_dir, private=True) as redis_url:
        return _run_with_redis(run, replace(settings, redis_url=redis_url), url, api_key)


def _run_with_redis(run: ProjectRun, settings: Settings, url: str, api_key: str) -> Summary:
    try:
        conn = rq_queue.connect(settings.redis_url, timeout_s=10)
        conn.ping()
        with LabelStudioClient(url, api_key) as client:
            return run_project(run, settings, client, conn)
    except (ValueError, LabelStudioError, RuntimeError) as exc:
        # A malformed URL or key, a bad config, Label Studio refusing, local workers dying: one clear line.
        raise UsageError(str(exc)) from None
    except redis.RedisError as exc:
        raise UsageError(rq_queue.describe_error(settings.redis_url, exc)) from None
