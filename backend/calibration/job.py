"""The calibration job a worker runs: a Label Studio project's annotations -> examples -> fit -> a new version.

Pipeline: claim the project's fit lock -> Label Studio: the project's label config (vocabulary) and its
tasks with annotations (paged) -> per task, the annotation that counts (`evaluation.annotations`), its
brush / polygon / rectangle results decoded to masks, the image fetched like any task's and analysed by
this worker's engine, newest annotation first until the examples hold CALIBRATION_MAX_BYTES -> `fit.fit`
against the calibration in force -> when adopted, a new version (`jobqueue.calibrations.add_version`) ->
status "done" with the report; the lock is freed in every case.

A worker keeps the analyses of the last images it calibrated with (by engine, image URL and prompts; at most
CACHED_ANALYSES of them and CACHED_BYTES of maps), so a project calibrated again after more annotations pays
only for its new images.

Masks and maps are fitted at a reduced size (longest side FIT_SIDE): the knobs fitted are thresholds on
probabilities, which do not depend on the pixel count, and the fit reruns the regions dozens of times.
Maps finer than that (PAMR's, at the model's input size) are resized to it when analysed: the regions
would resize them to the masks' size anyway, and 46 maps of 448 x 448 are 37 MB an image, which a few
hundred annotated tasks held at once would not fit in a worker's memory.
A task that cannot be used (no submitted annotation, an image that no longer downloads, results that do
not decode) is listed in the report with the reason and skipped; nothing stops the fit but a project with
too few usable tasks, which the report says too.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from rq import get_current_job

from backend.calibration.fit import DEFAULT_MIN_EXAMPLES, Example, fit
from backend.evaluation.annotations import pick_annotation, results_to_masks
from backend.jobqueue import calibrations
from backend.jobqueue import queues as rq_queue
from backend.jobqueue.jobs import image_url_of
from backend.jobqueue.worker import state
from backend.labelstudio import images
from backend.labelstudio.label_config import Vocabulary, parse_label_config
from backend.options import ProjectOptions
from gem_engine.engine import ImageAnalysis
from gem_engine.maps import upsample

log = logging.getLogger("gem_labeler.calibration")
FIT_SIDE = 320
CACHED_ANALYSES = 512
CACHED_BYTES = 2 * 1024**3
_ANALYSES: OrderedDict[tuple[Any, ...], tuple[Any, tuple[int, int]]] = OrderedDict()  # key -> (analysis, size)


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """Calibrate one project (RQ job); return the fit's report (also kept in the project's status)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("the calibration job runs inside an RQ worker")
    conn, prefix, project = job.connection, payload["prefix"], str(payload["project"])
    held = calibrations.claim(conn, prefix, project, job.id)
    if held is not None:
        message = f"project {project}: calibration job {held} is running; this one ({job.id}) was not started"
        calibrations.set_status(conn, prefix, project, state="refused", message=message)
        return {"refused": message}
    try:
        calibrations.set_status(conn, prefix, project, state="running", job_id=job.id, step="reading tasks",
                                done=0, total=0, started=time.time(), report=None, message="")
        report = _calibrate(conn, prefix, project, payload)
        calibrations.set_status(conn, prefix, project, state="done", step="finished", report=report,
                                message=report["reason"], finished=time.time())
        return report
    except Exception as exc:
        calibrations.set_status(conn, prefix, project, state="failed", message=f"{type(exc).__name__}: {exc}",
                                finished=time.time())
        raise
    finally:
        calibrations.release(conn, prefix, project, job.id)


def _calibrate(conn: Any, prefix: str, project: str, payload: dict[str, Any]) -> dict[str, Any]:
    st = state()
    client = st.ls_client()
    if client is None:
        raise RuntimeError("calibration reads the project's annotations from Label Studio: set LABEL_STUDIO_URL "
                           "and LABEL_STUDIO_API_KEY for the workers")
    project_id = int(project)
    vocabulary = parse_label_config(client.get_project(project_id).get("label_config"))
    extra = (rq_queue.load_project(conn, prefix, project) or {}).get("extra_params") or {}
    base = ProjectOptions.from_settings(st.settings, extra)
    current = calibrations.active_params(conn, prefix, project)
    annotated = [(t, a) for t in client.iter_tasks(project_id, int(payload.get("page_size") or 100), fields="all")
                 if (a := pick_annotation(t.get("annotations") or [])) is not None]
    engine = st.engines.get(base)

    def example(task: dict[str, Any], annotation: dict[str, Any]) -> tuple[Example, list[str], bool]:
        return _example(task, annotation, vocabulary, base, engine, st.settings, client)

    def progress(done: int) -> None:
        calibrations.set_status(conn, prefix, project, step="computing maps", done=done, total=len(annotated))

    gathered = gather_examples(annotated, example, st.settings.calibration_max_bytes, progress)
    examples = gathered.examples
    calibrations.set_status(conn, prefix, project, step="fitting", done=len(annotated), total=len(annotated))
    min_examples = int(payload.get("min_examples") or DEFAULT_MIN_EXAMPLES)
    result = fit(examples, list(vocabulary.labels), base, current, background_labels=vocabulary.background,
                 min_examples=min_examples)
    report = {**result.to_dict(), "project": project, "annotated_tasks": len(annotated), "used": len(examples),
              "skipped": gathered.skipped, "problems": gathered.problems, "left_out": gathered.left_out,
              "previous_params": current, "analyses_reused": gathered.reused}
    if not annotated:
        report["reason"] = "the project has no task with a submitted annotation: annotate some tasks first"
    elif gathered.left_out:
        report["reason"] += (f" (fitted on the {len(annotated) - gathered.left_out} most recently annotated tasks: "
                             f"their maps filled CALIBRATION_MAX_BYTES; {gathered.left_out} older ones left out)")
    if result.adopted:
        report["version"] = calibrations.add_version(conn, prefix, project, result.params, _summary(report))
    log.info("project %s: calibration %s", project, report["reason"])
    return report


@dataclass
class Gathered:
    """The examples a fit gets, and what happened to the other annotated tasks."""

    examples: list[Example] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it could not be used
    problems: dict[str, list[str]] = field(default_factory=dict)  # task -> what was wrong in its annotation
    left_out: int = 0  # annotated tasks not read: the examples before them filled the byte budget
    reused: int = 0  # analyses that came from the worker's cache


def newest_first(annotated: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[int]:
    """Return the positions of (task, annotation) pairs, the most recently created or updated annotation first."""
    def when(index: int) -> str:
        annotation = annotated[index][1]
        return str(annotation.get("updated_at") or annotation.get("created_at") or "")

    return sorted(range(len(annotated)), key=when, reverse=True)


def gather_examples(annotated: list[tuple[dict[str, Any], dict[str, Any]]],
                    example: Callable[[dict[str, Any], dict[str, Any]], tuple[Example, list[str], bool]],
                    max_bytes: int, progress: Callable[[int], None] = lambda done: None) -> Gathered:
    """Return the examples of the annotated tasks, newest annotation first until their maps and masks hold
    `max_bytes`, in the tasks' own order (the fit's folds follow it).

    A fit holds every example at once (it reruns the regions on each, dozens of times), so a project with
    thousands of annotated tasks would run the worker out of memory; the budget keeps the newest instead.
    `example(task, annotation)` returns (example, problems, reused); an image or annotation that cannot be
    used raises ImageError or ValueError and is listed in `skipped`."""
    gathered, held, kept = Gathered(), 0, []
    order = newest_first(annotated)
    for done, index in enumerate(order):
        if held >= max_bytes:
            gathered.left_out = len(order) - done
            break
        progress(done)
        task, annotation = annotated[index]
        name = f"task {task.get('id')}"
        try:
            found, problems, reused = example(task, annotation)
        except (images.ImageError, ValueError) as exc:
            gathered.skipped[name] = str(exc)
            continue
        kept.append((index, found))
        gathered.reused += reused
        held += example_bytes(found)
        if problems:
            gathered.problems[name] = problems
    gathered.examples = [found for _, found in sorted(kept, key=lambda pair: pair[0])]
    return gathered


def example_bytes(example: Example) -> int:
    """Return the bytes an example holds in maps and masks."""
    return analysis_bytes(example.analysis) + sum(mask.nbytes for mask in example.truth.values())


def analysis_bytes(analysis: ImageAnalysis) -> int:
    """Return the bytes an analysis holds in maps."""
    return analysis.maps.nbytes + analysis.background_maps.nbytes


def _example(task: dict[str, Any], annotation: dict[str, Any], vocabulary: Vocabulary, base: ProjectOptions,
             engine: Any, settings: Any, client: Any) -> tuple[Example, list[str], bool]:
    """Return one task's example (its image analysed, its annotation as masks), the problems found, and
    whether its analysis came from this worker's cache."""
    results = annotation.get("result") or []
    url = image_url_of(task, vocabulary)
    key = (base.engine_key(), url, vocabulary.prompts, base.background_prompts)
    reused = key in _ANALYSES
    if reused:
        _ANALYSES.move_to_end(key)
        analysis, (width, height) = _ANALYSES[key]
    else:
        image = images.load_task_image(url, settings, task_id=task.get("id"), project_id=task.get("project"),
                                       ls_client=client)
        analysis = engine.analyze([image], [list(p) for p in vocabulary.prompts], base.background_prompts)[0]
        width, height = image.size
        analysis = at_fit_size(analysis, fit_shape(width, height))
        _ANALYSES[key] = (analysis, (width, height))
        _evict()
    shape = fit_shape(width, height)
    decoded = results_to_masks(results, shape, vocabulary.labels, ignored=vocabulary.background)
    truth = {label: mask for label, mask in decoded.masks.items() if mask.any()}
    return Example(f"task {task.get('id')}", analysis, truth, shape), decoded.problems, reused


def fit_shape(width: int, height: int) -> tuple[int, int]:
    """Return the (height, width) an image's masks and maps are fitted at: longest side at most FIT_SIDE."""
    scale = min(1.0, FIT_SIDE / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def at_fit_size(analysis: ImageAnalysis, shape: tuple[int, int]) -> ImageAnalysis:
    """Return the analysis with its maps resized to `shape` (height, width) when they hold more pixels."""
    rows, cols = analysis.maps.shape[-2:]
    if rows * cols <= shape[0] * shape[1]:
        return analysis
    size = (shape[1], shape[0])
    return replace(analysis, maps=upsample(analysis.maps, size),
                   background_maps=upsample(analysis.background_maps, size))


def _evict() -> None:
    """Drop the oldest cached analyses past CACHED_ANALYSES images or CACHED_BYTES of maps."""
    held = sum(analysis_bytes(a) for a, _ in _ANALYSES.values())
    while len(_ANALYSES) > CACHED_ANALYSES or (len(_ANALYSES) > 1 and held > CACHED_BYTES):
        oldest, _ = _ANALYSES.popitem(last=False)[1]
        held -= analysis_bytes(oldest)


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """Return the part of a report kept with its version (the per-task lists stay in the status only)."""
    return {k: report[k] for k in ("reason", "held_out", "label_examples", "default_labels", "used", "annotated_tasks")}
