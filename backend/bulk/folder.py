"""Folder mode of `gem-labeler prelabel`: a folder of images to a Label Studio import file and overlay PNGs.

No Label Studio and no Redis needed. Each finished image appends one JSON line to ``OUT/state.jsonl``
as soon as it is done, so a stopped run loses nothing and a rerun skips what is already there (same
file size and mtime, same model version and label config). ``OUT/tasks.json`` (the import file) and
``OUT/failures.json`` are rewritten from that state at the end of every run, interrupted or not.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np

from backend.bulk.common import Failure, Progress, StopRequest, Summary
from backend.jobqueue.jobs import make_payload
from backend.labelstudio.images import ImageError, decode_image
from backend.labelstudio.label_config import Vocabulary
from backend.options import ProjectOptions, model_version
from backend.settings import Settings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
STATE_FILE = "state.jsonl"
IMPORT_FILE = "tasks.json"
FAILURES_FILE = "failures.json"
OVERLAY_DIR = "overlays"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
INTERRUPT_GRACE_S = 10.0


@dataclass(frozen=True)
class Labeled:
    """What the engine path made of one image: the prediction, its regions, and a map for the overlay."""

    prediction: dict[str, Any]
    regions: Sequence[Any]  # gem_engine.regions.Region (label, mask, box, ...)
    heat: np.ndarray | None  # [h, w] in [0, 1] at any resolution (upsampled for the overlay), or None


@dataclass(frozen=True)
class LabelError:
    """Why one image got no prediction; retryable: a later run may succeed (so a rerun tries it again)."""

    reason: str
    retryable: bool = False


class Labeler(Protocol):
    """Turns image files into predictions (or error messages); built once per process."""

    run_key: str  # changes whenever predictions would change (model version, label config)
    labels: Sequence[str]  # vocabulary order, for overlay colours

    def label(self, jobs: Sequence[ImageJob]) -> list[Labeled | LabelError]: ...


LabelerFactory = Callable[[], Labeler]


@dataclass(frozen=True)
class ImageJob:
    """One image to label, with the fingerprint it had when listed."""

    relpath: str
    path: str
    fingerprint: list[int]


@dataclass(frozen=True)
class PipelineLabelerSpec:
    """Picklable recipe of the worker pipeline for a folder (worker processes build it after spawn)."""

    settings: Settings
    options: ProjectOptions
    vocabulary: Vocabulary
    folder: str

    @property
    def version(self) -> str:
        """Return the model version every prediction carries (weights and config by the content read here)."""
        from backend.jobqueue.digests import local_contents

        return model_version(self.options, local_contents(self.options))

    @property
    def run_key(self) -> str:
        """Return what a saved result must match to be reused: model version and label config."""
        return f"{self.version}:{self.vocabulary.config_hash()}"

    def __call__(self) -> PipelineLabeler:
        return PipelineLabeler(self)


class PipelineLabeler:
    """Folder images through `backend.labeling.pipeline`, exactly the path workers take for Label Studio tasks."""

    def __init__(self, spec: PipelineLabelerSpec) -> None:
        from dataclasses import replace

        from backend.labeling.pipeline import EngineCache

        # Images are read as local-files URLs under the folder: the same resolver, size and path checks.
        self.settings = replace(spec.settings, local_files_document_root=str(Path(spec.folder).resolve()))
        self.spec = spec
        self.run_key = spec.run_key
        self.labels = spec.vocabulary.labels
        self.engines = EngineCache(self.settings)
        self._foreground = [i for i, label in enumerate(self.labels) if label not in spec.vocabulary.background]

    def label(self, jobs: Sequence[ImageJob]) -> list[Labeled | LabelError]:
        """Return per job its prediction with regions and overlay map, or the error message."""
        from backend.labeling.pipeline import predict_payloads

        payloads = [
            make_payload(
                job=f"folder-{index}",
                prefix=self.settings.queue_prefix,
                project="",
                task={},
                image_url=LOCAL_FILES_PREFIX + quote(job.relpath, safe="/"),
                vocabulary=self.spec.vocabulary,
                options=self.spec.options,
                version=self.spec.version,
            )
            for index, job in enumerate(jobs)
        ]
        results: list[Labeled | LabelError] = []
        for outcome in predict_payloads(payloads, self.engines, self.settings):
            if outcome.error is not None or outcome.prediction is None:
                results.append(LabelError(outcome.error or "no prediction", outcome.retry))
            else:
                results.append(Labeled(outcome.prediction, outcome.found, self._heat(outcome.maps)))
        return results

    def _heat(self, maps: np.ndarray | None) -> np.ndarray | None:
        if maps is None or not self._foreground:
            return None
        from gem_engine.maps import normalize

        return normalize(maps[self._foreground]).max(axis=0)


@dataclass(frozen=True)
class UrlStyle:
    """How the import file names images: a local-files URL under a prefix, or the path as given."""

    prefix: str = LOCAL_FILES_PREFIX
    document_root: Path | None = None  # local-files paths are relative to it (Label Studio's LOCAL_FILES_DOCUMENT_ROOT)
    as_given: bool = False

    def url(self, folder: Path, relpath: str) -> str:
        """Return the image reference the import file stores for one image of the folder."""
        path = folder / relpath
        if self.as_given:
            return str(path)
        root = self.document_root if self.document_root is not None else folder
        try:
            inside = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise ValueError(
                f"{path} is not under the local-files document root {root}; set --document-root "
                "(LOCAL_FILES_DOCUMENT_ROOT) to a folder that contains it, or use --url-as-given"
            ) from None
        return self.prefix + quote(inside.as_posix(), safe="/")


@dataclass(frozen=True)
class FolderRun:
    """Everything one folder run needs besides the labeler."""

    folder: Path
    out: Path
    vocabulary: Vocabulary
    url_style: UrlStyle = UrlStyle()
    overlays: bool = True
    limit: int | None = None
    dry_run: bool = False
    workers: int = 1
    batch_size: int = 4
    alpha: float = 0.5
    colormap: str = "jet"
    progress: bool = True
    retry_failed: bool = False  # also retry images whose earlier failure looked permanent


def find_images(folder: Path, *, exclude: Path | None = None) -> list[str]:
    """Return the image files under a folder as sorted POSIX paths relative to it (hidden entries skipped)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    excluded = exclude.resolve() if exclude is not None else None
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (excluded is None or (here / d).resolve() != excluded)
        )
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((here / name).relative_to(folder).as_posix())
    return sorted(found)


def fingerprint(path: Path) -> list[int]:
    """Return what tells a changed file from the one already labeled: size and modification time."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def overlay_relpath(relpath: str) -> str:
    """Return an image's overlay path under OUT (the full name is kept so a.jpg and a.png do not collide)."""
    return f"{OVERLAY_DIR}/{relpath}.png"


class StateFile:
    """Append-only JSON lines, one per finished image; the last line for an image wins."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        """Return the latest record of every image; a torn last line (a killed run) is ignored."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with self.path.open("r", encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("image"), str):
                    records[record["image"]] = record
        return records

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Write records durably enough that a Ctrl-C right after loses none of them."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            # A torn line from a killed run must not swallow the next record: start on a fresh line.
            if handle.tell() > 0 and not self._ends_with_newline():
                handle.write("\n")
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"


def classify(record: dict[str, Any] | None, *, run_key: str, print_: list[int], out: Path, overlays: bool,
             retry_failed: bool = False) -> str:
    """Return what a rerun does with an image: "skip" (done), "known" (same permanent failure), or "run"."""
    if not record or record.get("run") != run_key or record.get("fingerprint") != print_:
        return "run"
    if record.get("status") == "done":
        return "skip" if not overlays or (out / record.get("overlay", "")).is_file() else "run"
    if record.get("status") == "failed" and not record.get("retryable", True) and not retry_failed:
        return "known"  # an unchanged file that could not be decoded will not decode now either
    return "run"


def build_import(
    records: dict[str, dict[str, Any]], images: Sequence[str], run: FolderRun, run_key: str
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Return the import file's tasks (images done by this run key, in folder order) and the current failures."""
    tasks: list[dict[str, Any]] = []
    failures: list[Failure] = []
    for relpath in images:
        record = records.get(relpath)
        if record is None or record.get("run") != run_key:
            continue
        if record.get("status") == "done":
            tasks.append(
                {
                    "data": {run.vocabulary.image_key: run.url_style.url(run.folder, relpath)},
                    "predictions": [record["prediction"]],
                }
            )
        elif record.get("status") == "failed":
            failures.append(Failure(relpath, record.get("reason", "unknown error")))
    return tasks, failures


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace a JSON file in one step, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Compact: the C encoder is many times faster than the indenting one on long brush RLE lists.
    tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# One process's work: decode, label, render


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ImageError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def label_batch(labeler: Labeler, jobs: Sequence[ImageJob], run: FolderRun) -> list[dict[str, Any]]:
    """Return one state record per job (labeled, overlay written); every failure becomes a record with its reason."""
    try:
        outcomes = labeler.label(jobs)
    except Exception as exc:  # noqa: BLE001 - the pipeline reports per image; this is a last resort
        outcomes = [LabelError(_failure_reason(exc), retryable=True)] * len(jobs)
    records: list[dict[str, Any]] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        base = {"image": job.relpath, "fingerprint": job.fingerprint, "run": labeler.run_key}
        if isinstance(outcome, LabelError):
            records.append({**base, "status": "failed", "reason": outcome.reason, "retryable": outcome.retryable})
            continue
        record = {**base, "status": "done", "prediction": outcome.prediction}
        if run.overlays:
            try:
                record["overlay"] = write_overlay(Path(job.path), outcome, labeler.labels, run, job.relpath)
            except (OSError, ValueError, ImageError) as exc:
                record = {**base, "status": "failed", "reason": f"overlay: {_failure_reason(exc)}", "retryable": True}
        records.append(record)
    return records


def write_overlay(path: Path, labeled: Labeled, labels: Sequence[str], run: FolderRun, relpath: str) -> str:
    """Write an image's overlay PNG (combined heatmap, region outlines, label names); return its path under OUT."""
    from backend.labeling.overlays import render_overview

    # Decoded again (the pipeline read it by URL): the cost is small beside the engine, and only with overlays.
    image = decode_image(path.read_bytes())
    heat = resize_map(labeled.heat, image.size) if labeled.heat is not None else np.zeros(
        (image.height, image.width), np.float32
    )
    picture = render_overview(image, heat, labels, labeled.regions, alpha=run.alpha, colormap=run.colormap)
    rel = overlay_relpath(relpath)
    target = run.out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    picture.save(tmp, format="PNG", compress_level=1)  # fast: overlays are for a quick look, not archiving
    os.replace(tmp, target)
    return rel


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return a [h, w] map bilinearly resized to size=(width, height)."""
    from gem_engine.maps import upsample

    return upsample(np.asarray(heat, dtype=np.float32)[None], size)[0]


# --------------------------------------------------------------------------------------------------
# Worker processes for --workers N


_WORKER: dict[str, Any] = {}


def _worker_init(factory: LabelerFactory, run: FolderRun, threads: int) -> None:
    # The parent owns Ctrl-C: it decides what to wait for, so children must not die mid-image on SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    _WORKER["labeler"] = factory()
    _WORKER["run"] = run


def _worker_batch(jobs: list[ImageJob]) -> list[dict[str, Any]]:
    return label_batch(_WORKER["labeler"], jobs, _WORKER["run"])


# --------------------------------------------------------------------------------------------------
# The run


def _batches(jobs: Sequence[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    for start in range(0, len(jobs), size):
        yield list(jobs[start : start + size])


def run_folder(run: FolderRun, factory: LabelerFactory, *, run_key: str) -> Summary:
    """Label every new or changed image of a folder; return the summary (also written as OUT files).

    ``run_key`` must equal the labeler's ``run_key``; it is passed separately so that a dry run or a run
    with nothing to do never builds (loads) the labeler. The first Ctrl-C stops taking new images, lets
    running ones finish (briefly, in worker processes), and still writes the import file.
    """
    started = time.monotonic()
    summary = Summary(dry_run=run.dry_run)
    images = find_images(run.folder, exclude=run.out)
    if run.limit is not None:
        images = images[: run.limit]
    summary.total = len(images)
    state = StateFile(run.out / STATE_FILE)
    records = state.load()
    jobs: list[ImageJob] = []
    stat_failures: list[Failure] = []
    for relpath in images:
        path = run.folder / relpath
        try:
            print_ = fingerprint(path)
        except OSError as exc:
            stat_failures.append(Failure(relpath, f"cannot read: {exc}"))
            continue
        verdict = classify(records.get(relpath), run_key=run_key, print_=print_, out=run.out, overlays=run.overlays,
                           retry_failed=run.retry_failed)
        if verdict == "skip":
            summary.skipped += 1
        elif verdict == "run":
            jobs.append(ImageJob(relpath, str(path), print_))
    if run.dry_run:
        summary.done = len(jobs)
        summary.failed = stat_failures
        summary.elapsed_s = time.monotonic() - started
        return summary

    run.out.mkdir(parents=True, exist_ok=True)
    handled = 0
    crash: Failure | None = None
    with StopRequest() as stop, Progress(len(jobs), desc="pre-labeling", enabled=run.progress) as progress:
        try:
            if jobs:
                runner = _run_in_pool if run.workers > 1 else _run_here
                for finished in runner(run, factory, jobs, stop):
                    state.append(finished)
                    handled += len(finished)
                    done = sum(r["status"] == "done" for r in finished)
                    progress.advance(done=done, failed=len(finished) - done)
                    summary.done += done
        except KeyboardInterrupt:
            stop.requested = True  # a second Ctrl-C: abandon running work, still write what is finished
        except BrokenProcessPool as exc:  # a worker killed (out of memory, say): keep what is finished
            crash = Failure("(worker process)", f"a worker process died, the rest is unfinished: {exc}")
    summary.interrupted = stop.requested
    listed = set(images)
    tasks, failures = build_import(state.load(), find_images(run.folder, exclude=run.out), run, run_key)
    write_json_atomic(run.out / IMPORT_FILE, tasks)
    summary.failed = stat_failures + [f for f in failures if f.item in listed] + ([crash] if crash else [])
    write_json_atomic(run.out / FAILURES_FILE, [{"image": f.item, "reason": f.reason} for f in summary.failed])
    summary.pending = len(jobs) - handled
    summary.elapsed_s = time.monotonic() - started
    return summary


def _run_here(
    run: FolderRun, factory: LabelerFactory, jobs: list[ImageJob], stop: StopRequest
) -> Iterator[list[dict[str, Any]]]:
    labeler = factory()
    for batch in _batches(jobs, run.batch_size):
        if stop.requested:
            return
        yield label_batch(labeler, batch, run)


def _run_in_pool(
    run: FolderRun, factory: LabelerFactory, jobs: list[ImageJob], stop: StopRequest
) -> Iterator[list[dict[str, Any]]]:
    threads = max(1, (os.cpu_count() or 1) // run.workers)
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or torch threads
    before = {child.pid for child in multiprocessing.active_children()}
    executor = ProcessPoolExecutor(
        max_workers=run.workers, mp_context=context, initializer=_worker_init, initargs=(factory, run, threads)
    )
    pending: set[Future] = set()
    batches = _batches(jobs, run.batch_size)
    grace_until: float | None = None
    try:
        # Keep each worker two batches ahead, so none idles and a Ctrl-C leaves little queued work.
        for batch in batches:
            pending.add(executor.submit(_worker_batch, batch))
            if len(pending) >= 2 * run.workers:
                break
        while pending:
            if stop.requested and grace_until is None:
                grace_until = time.monotonic() + INTERRUPT_GRACE_S
                pending = {f for f in pending if not f.cancel()}
            if grace_until is not None and time.monotonic() > grace_until:
                return
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
                if not stop.requested:
                    batch = next(batches, None)
                    if batch is not None:
                        pending.add(executor.submit(_worker_batch, batch))
    finally:
        if not stop.requested:
            executor.shutdown(wait=True)
        else:
            executor.shutdown(wait=False, cancel_futures=True)
            for child in multiprocessing.active_children():
                if child.pid not in before:  # only the pool's own processes
                    child.terminate()
                    child.join(timeout=5)
