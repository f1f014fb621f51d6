"""Project mode of `gem-labeler evaluate`: a Label Studio project's annotated tasks against its predictions.

Pipeline: `LabelStudioClient.get_project` (label config -> vocabulary) and `iter_tasks(fields="all")`
(paged, with annotations and predictions) -> per task the annotation that counts
(`annotations.pick_annotation`) and the prediction to judge (the given model version, else the latest)
-> both result lists decode to masks at the size they were drawn on -> `Sample`. No image is downloaded:
Label Studio stores each result's original image size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from backend.evaluation.annotations import mask_kind, pick_annotation, result_size, results_to_masks
from backend.evaluation.samples import Sample
from backend.labelstudio.client import LabelStudioClient
from backend.labelstudio.label_config import Vocabulary, parse_label_config


def project_vocabulary(client: LabelStudioClient, project_id: int) -> Vocabulary:
    """Return the vocabulary of a project's label config."""
    return parse_label_config(client.get_project(project_id).get("label_config"))


def pick_prediction(predictions: Sequence[Mapping[str, Any]], model_version: str | None) -> Mapping[str, Any] | None:
    """Return the prediction of `model_version` (latest of them), or the latest of all when none is given."""
    pool = [p for p in predictions if model_version is None or p.get("model_version") == model_version]
    if not pool:
        return None
    return max(pool, key=lambda p: (str(p.get("created_at") or ""), int(p.get("id") or 0)))


def task_sample(task: Mapping[str, Any], labels: tuple[str, ...], ignored: tuple[str, ...],
                model_version: str | None) -> Sample:
    """Return one task's sample, or a skipped one saying why (no annotation, no prediction, no size)."""
    name = f"task {task.get('id')}"
    annotation = pick_annotation(task.get("annotations") or [])
    if annotation is None:
        return Sample(name, skipped="no submitted annotation")
    prediction = pick_prediction(task.get("predictions") or [], model_version)
    if prediction is None:
        which = f"of model version {model_version!r}" if model_version else ""
        return Sample(name, skipped=f"no prediction {which}".strip())
    truth, guess = annotation.get("result") or [], prediction.get("result") or []
    shape = result_size(truth) or result_size(guess)
    if shape is None:
        return Sample(name, skipped="neither the annotation nor the prediction has a region (image size unknown)")
    sample = Sample(name, shape=shape, model_version=str(prediction.get("model_version") or ""))
    annotated = results_to_masks(truth, shape, labels, ignored=ignored)
    predicted = results_to_masks(guess, shape, labels, ignored=ignored, only=mask_kind(guess))
    sample.annotated, sample.predicted = annotated.masks, predicted.masks
    sample.problems = [f"annotation: {p}" for p in annotated.problems] + [f"pre-label: {p}" for p in
                                                                           predicted.problems]
    return sample


def project_samples(client: LabelStudioClient, project_id: int, labels: tuple[str, ...], ignored: tuple[str, ...],
                    *, model_version: str | None = None, page_size: int = 100) -> Iterator[Sample]:
    """Yield a sample per task of the project (skipped ones included, so the report can count them)."""
    for task in client.iter_tasks(project_id, page_size, fields="all"):
        yield task_sample(task, labels, ignored, model_version)
