"""Task payloads to Label Studio predictions: image -> analysis -> presence -> regions -> result JSON (workers only).

Images that share a model, a method and a prompt list go through the engine in one call. Interactive
context changes what is asked:
- a TextArea text: that free text is the only prompt (open vocabulary); its regions are labelled with the
  vocabulary label it names (label or synonym, any case), else with each control's first label;
- keypoints: the connected region of the keypoint's label that contains each positive point, minus
  regions containing a negative point;
- a rectangle: the label's mask inside it, computed on the crop (more pixels per patch).
In all three the annotator names what is there, so no presence decision drops the label they asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image

from backend.labeling import predictions as builders
from backend.labelstudio import images
from backend.labelstudio.label_config import Vocabulary
from backend.options import ProjectOptions
from backend.settings import Settings
from gem_engine.engine import HeatmapEngine, ImageAnalysis
from gem_engine.models import LoadedModel, WeightsNotFoundError, load_model
from gem_engine.prelabel import prelabel_regions, recalibrate
from gem_engine.presence import PresenceOptions
from gem_engine.regions import Region, RegionOptions, mean_score

log = logging.getLogger("gem_labeler.pipeline")
# Errors in the model or engine that no retry can fix (bad model/method combination, bad prompt).
PERMANENT_ERRORS = (ValueError, TypeError, KeyError, WeightsNotFoundError)
# Per-project models are loaded on demand; beyond this many the least recently used is dropped.
MAX_MODELS = 2
PAYLOAD_KEYS = ("job_id", "prefix", "image_url", "vocabulary", "options", "model_version")
# Told of every engine call: (method, seconds, images); workers count them for /metrics.
EngineTimer = Callable[[str, float, int], None]


@dataclass
class TaskOutcome:
    """What became of one task: a prediction, or an error (retry: a later attempt may succeed)."""

    prediction: dict[str, Any] | None = None
    error: str | None = None
    retry: bool = False
    regions: int = 0
    # For callers that render overlays (bulk folder mode); never stored or sent.
    found: list[Region] = dataclasses.field(default_factory=list, repr=False)
    maps: np.ndarray | None = dataclasses.field(default=None, repr=False)  # raw [L, h, w] of a whole-image run


class EngineCache:
    """Models and engines of one worker process, each loaded once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[tuple[Any, ...], LoadedModel] = {}  # by ProjectOptions.model_key()
        self._engines: dict[tuple[Any, ...], HeatmapEngine] = {}  # by ProjectOptions.engine_key()

    def get(self, options: ProjectOptions) -> HeatmapEngine:
        """Return the engine for a project's model and method, loading the model on first use."""
        key = options.engine_key()
        model_key = options.model_key()
        if model_key in self._models:  # mark as recently used
            self._models[model_key] = self._models.pop(model_key)
        engine = self._engines.get(key)
        if engine is None:
            loaded = self._models.get(model_key)
            if loaded is None:
                while len(self._models) >= MAX_MODELS:
                    oldest = next(iter(self._models))
                    del self._models[oldest]
                    for stale in [k for k in self._engines if k[: len(oldest)] == oldest]:
                        del self._engines[stale]
                    log.info("dropped model %s to make room", oldest[0])
                started = time.monotonic()
                pretrained = options.model_pretrained
                loaded = load_model(
                    options.model_name,
                    None if pretrained.lower() in ("", "none") else pretrained,
                    config_path=options.model_config or None,
                    device=self.settings.device,
                    precision=options.precision,
                    cache_dir=self.settings.model_cache_dir or None,
                )
                self._models[model_key] = loaded
                log.info("loaded model %s (%s) on %s, %s (precision %s), in %.1f s", options.model_name,
                         pretrained or "random", loaded.device, loaded.dtype, options.precision,
                         time.monotonic() - started)
            engine = HeatmapEngine(loaded, method=options.method, **engine_options(options))
            self._engines[key] = engine
        return engine

    def warm_up(self, options: ProjectOptions) -> float:
        """Return the seconds one dummy image took through engine and regions (first calls pay lazy setup)."""
        started = time.monotonic()
        image = PIL.Image.new("RGB", (64, 48), (120, 90, 60))
        analysis = self.get(options).analyze([image], [["an object"]], options.background_prompts)[0]
        prelabel_regions(analysis, ["an object"], image.size, region_options(options), presence_options(options))
        return time.monotonic() - started


def engine_options(options: ProjectOptions) -> dict[str, Any]:
    """Return the HeatmapEngine options a project's options ask for ("auto" leaves the engine's default)."""
    chosen = {
        "image_size": options.image_size,
        "input_mode": options.input_mode,
        "templates": options.templates,
        "gem_blocks": options.gem_blocks,
        "pamr_iterations": options.resolved("pamr_iterations"),  # "auto" depends on the region mode
        "window_size": options.window_size,
        "window_stride": options.window_stride,
        "max_side": options.max_side,
    }
    return {name: value for name, value in chosen.items() if value != "auto"}


@dataclass
class _Work:
    """One engine input: an image (maybe a crop) and what to ask about it."""

    index: int
    image: PIL.Image.Image
    labels: tuple[str, ...]
    prompts: tuple[tuple[str, ...], ...]
    offset: tuple[int, int, int, int] | None = None  # crop (left, top, right, bottom) in the full image


def predict_payloads(
    payloads: list[dict[str, Any]],
    engines: EngineCache,
    settings: Settings,
    *,
    on_engine_run: EngineTimer | None = None,
    ls_client: Any = None,
) -> list[TaskOutcome]:
    """Return one outcome per payload, in order; errors of one task never affect the others."""
    outcomes = [TaskOutcome() for _ in payloads]
    works: list[_Work] = []
    full_sizes: dict[int, tuple[int, int]] = {}
    for i, payload in enumerate(payloads):
        missing = [k for k in PAYLOAD_KEYS if k not in payload]
        if missing:
            outcomes[i] = TaskOutcome(error=f"malformed job payload: missing {missing}")
            continue
        try:
            image = images.load_task_image(
                payload["image_url"], settings, task_id=_int_or_none(payload.get("task_id")),
                project_id=_int_or_none(payload.get("project")), ls_client=ls_client,
            )
        except images.ImageError as exc:
            outcomes[i] = TaskOutcome(error=f"image: {exc}", retry=exc.retryable)
            continue
        except Exception as exc:  # unknown failure: let the job's retries decide
            outcomes[i] = TaskOutcome(error=f"image: {type(exc).__name__}: {exc}", retry=True)
            continue
        full_sizes[i] = image.size
        vocabulary = Vocabulary.from_dict(payload["vocabulary"])
        works.extend(_plan(i, image, vocabulary, payload.get("context")))

    groups: dict[tuple[Any, ...], list[_Work]] = defaultdict(list)
    for work in works:
        options = ProjectOptions.from_dict(payloads[work.index]["options"])
        groups[(options.engine_key(), work.prompts, options.background_prompts)].append(work)

    analyses_of: dict[int, list[tuple[_Work, ImageAnalysis]]] = defaultdict(list)
    for (_engine, prompts, background), group in groups.items():
        options = ProjectOptions.from_dict(payloads[group[0].index]["options"])
        try:
            engine = engines.get(options)
            started = time.perf_counter()
            analyses = engine.analyze([w.image for w in group], [list(p) for p in prompts], background)
            elapsed = time.perf_counter() - started
        except PERMANENT_ERRORS as exc:
            for w in group:
                outcomes[w.index] = TaskOutcome(error=f"engine: {type(exc).__name__}: {exc}")
            continue
        except Exception as exc:  # out of memory, device errors: a later attempt may succeed
            for w in group:
                outcomes[w.index] = TaskOutcome(error=f"engine: {type(exc).__name__}: {exc}", retry=True)
            continue
        if on_engine_run is not None:
            on_engine_run(options.method, elapsed, len(group))
        for w, analysis in zip(group, analyses, strict=True):
            analyses_of[w.index].append((w, analysis))

    for i, payload in enumerate(payloads):
        if outcomes[i].error is not None or i not in analyses_of:
            continue
        try:
            outcomes[i] = _finish(payload, analyses_of[i], full_sizes[i])
        except PERMANENT_ERRORS as exc:
            outcomes[i] = TaskOutcome(error=f"regions: {type(exc).__name__}: {exc}")
    return outcomes


def _plan(index: int, image: PIL.Image.Image, vocabulary: Vocabulary, context: Any) -> list[_Work]:
    """Return what to run through the engine for one task (one item, or one per rectangle)."""
    labels, prompts = vocabulary.labels, vocabulary.prompts
    results = context.get("result") if isinstance(context, dict) else None
    if not results:
        return [_Work(index, image, labels, prompts)]
    text = " ".join(
        " ".join(str(t) for t in (r.get("value") or {}).get("text") or [])
        for r in results if r.get("type") == "textarea"
    ).strip()
    if text:
        return [_Work(index, image, (text,), ((text,),))]
    width, height = image.size
    works: list[_Work] = []
    for r in results:
        if r.get("type") != "rectanglelabels":
            continue
        value = r.get("value") or {}
        left, top = _pixel(value.get("x", 0), width), _pixel(value.get("y", 0), height)
        right = int(np.clip(left + float(value.get("width", 0)) * width / 100, left + 1, width))
        bottom = int(np.clip(top + float(value.get("height", 0)) * height / 100, top + 1, height))
        crop_labels, crop_prompts = _with_label(vocabulary, (value.get("rectanglelabels") or [None])[0])
        works.append(_Work(index, image.crop((left, top, right, bottom)), crop_labels, crop_prompts,
                           offset=(left, top, right, bottom)))
    if works:
        return works
    extra = [(r.get("value") or {}).get("keypointlabels", [None])[0] for r in results
             if r.get("type") == "keypointlabels"]
    for label in extra:
        labels, prompts = _with_label(vocabulary, label)
        vocabulary = dataclasses.replace(vocabulary, labels=labels, prompts=prompts)
    return [_Work(index, image, vocabulary.labels, vocabulary.prompts)]


def _with_label(vocabulary: Vocabulary, label: str | None) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Return the vocabulary's labels and prompts, plus `label` as its own prompt when it is not in it."""
    if not label or _match(vocabulary, label) is not None:
        return vocabulary.labels, vocabulary.prompts
    return vocabulary.labels + (label,), vocabulary.prompts + ((label,),)


def _match(vocabulary: Vocabulary, text: str) -> str | None:
    """Return the vocabulary label a text names (label or synonym, any case), or None."""
    wanted = text.strip().casefold()
    for label, synonyms in zip(vocabulary.labels, vocabulary.prompts, strict=True):
        if wanted == label.casefold() or wanted in (s.casefold() for s in synonyms):
            return label
    return None


def region_options(options: ProjectOptions, background_names: tuple[str, ...] = (), *,
                   instances: bool = False) -> RegionOptions:
    """Return how a project's maps become regions."""
    return RegionOptions(
        mode=options.region_mode,
        threshold=options.threshold if options.threshold == "otsu" else float(options.threshold),
        background_names=background_names,
        min_area_fraction=options.min_area,
        logit_scale=options.logit_scale,
        background_threshold=options.background_threshold,
        instances=instances,
    )


def presence_options(options: ProjectOptions, *, asked: bool = False) -> PresenceOptions:
    """Return how a project's labels are judged present; `asked`: the annotator named them (interactive)."""
    return PresenceOptions(
        evidence="none" if asked else options.presence,
        threshold=options.presence_threshold,
        label_thresholds=dict(options.label_presence_thresholds),
        background_prompts=options.background_prompts,
    )


def _finish(payload: dict[str, Any], items: list[tuple[_Work, ImageAnalysis]], size: tuple[int, int]) -> TaskOutcome:
    vocabulary = Vocabulary.from_dict(payload["vocabulary"])
    options = ProjectOptions.from_dict(payload["options"])
    context = payload.get("context") if isinstance(payload.get("context"), dict) else {}
    asked = bool(context.get("result"))
    # Keypoints select one connected component, so only they need instances.
    regions_of = region_options(options, vocabulary.background,
                                instances=any(r.get("type") == "keypointlabels" for r in context.get("result") or []))
    presence = presence_options(options, asked=asked)
    regions: list[Region] = []
    for work, analysis in items:
        found = prelabel_regions(analysis, list(work.labels), work.image.size, regions_of, presence)
        if work.offset is not None:
            found = [_uncrop(r, work.offset, size) for r in found]
        regions.extend(found)
    if asked:
        regions = _interactive(regions, vocabulary, context["result"], size, bool(items and items[0][0].offset))
    slope, offset = options.score_slope, options.score_offset
    regions = [dataclasses.replace(r, score=recalibrate(r.score, slope, offset)) for r in regions]
    regions = [r for r in regions if r.score >= options.score_threshold]
    width, height = size
    results: list[dict[str, Any]] = []
    for control in vocabulary.controls:
        if control.kind not in options.outputs:
            continue
        for region in regions:
            label = region.label if region.label in control.labels else _output_label(vocabulary, region.label, control)
            if label is None:
                continue
            named = dataclasses.replace(region, label=label)
            kw = {"from_name": control.from_name, "to_name": control.to_name, "width": width, "height": height}
            if control.kind == "brush":
                results.append(builders.brush_result(named, **kw))
            elif control.kind == "polygon":
                results.extend(builders.polygon_results(named, **kw))
            else:
                results.append(builders.rectangle_result(named, **kw))
    prediction = builders.make_prediction(results, model_version=payload["model_version"], score=mean_score(regions))
    maps = items[0][1].maps if len(items) == 1 and items[0][0].offset is None else None
    return TaskOutcome(prediction=prediction, regions=len(regions), found=regions, maps=maps)


def _output_label(vocabulary: Vocabulary, label: str, control: Any) -> str | None:
    """Return the control label for a free-text or outside label: the one it names, else the first."""
    named = _match(vocabulary, label)
    if named is not None:
        return named if named in control.labels else None
    if label in vocabulary.labels:
        return None  # a vocabulary label of another control
    return control.labels[0]


def _interactive(
    regions: list[Region], vocabulary: Vocabulary, results: list[dict[str, Any]], size: tuple[int, int],
    cropped: bool,
) -> list[Region]:
    """Return the regions the keypoints select (rectangle and text regions pass through)."""
    points = [r for r in results if r.get("type") == "keypointlabels"]
    if not points or cropped:
        wanted = {(_match(vocabulary, (r.get("value") or {}).get("rectanglelabels", [""])[0]) or
                   (r.get("value") or {}).get("rectanglelabels", [""])[0]) for r in results
                  if r.get("type") == "rectanglelabels"}
        return [r for r in regions if not wanted or r.label in wanted]
    width, height = size
    chosen: list[Region] = []
    negatives: list[tuple[int, int]] = []
    for point in points:
        value = point.get("value") or {}
        x, y = _pixel(value.get("x", 0), width), _pixel(value.get("y", 0), height)
        if point.get("is_positive", True) is False:
            negatives.append((x, y))
            continue
        raw = (value.get("keypointlabels") or [None])[0]
        label = (_match(vocabulary, raw) or raw) if raw else None
        for region in regions:
            if (label is None or region.label == label) and region.mask[y, x] and region not in chosen:
                chosen.append(region)
    return [r for r in chosen if not any(r.mask[y, x] for x, y in negatives)]


def _uncrop(region: Region, offset: tuple[int, int, int, int], size: tuple[int, int]) -> Region:
    """Return a region found on a crop, placed in the full image (mask, polygons and box)."""
    left, top, right, bottom = offset
    width, height = size
    crop_w, crop_h = right - left, bottom - top
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = region.mask

    def place(px: float, py: float) -> tuple[float, float]:
        return ((left + px * crop_w / 100) * 100 / width, (top + py * crop_h / 100) * 100 / height)

    polygons = [[place(px, py) for px, py in polygon] for polygon in region.polygons]
    bx, by = place(region.box[0], region.box[1])
    box = (bx, by, region.box[2] * crop_w / width, region.box[3] * crop_h / height)
    return Region(label=region.label, mask=mask, score=region.score, polygons=polygons, box=box)


def _pixel(percent: Any, extent: int) -> int:
    """Return the pixel a Label Studio percent coordinate falls on, inside [0, extent - 1]."""
    return int(np.clip(float(percent) * extent / 100, 0, extent - 1))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
