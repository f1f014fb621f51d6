"""Folder mode of `gem-labeler evaluate`: ``FOLDER/images/*`` with ``FOLDER/masks/<stem>.png``.

Pipeline: the images go through the product's own folder pipeline (`backend.bulk.folder.run_folder` with
the worker pipeline's labeler, predictions kept in ``OUT/prelabel/state.jsonl``, so a rerun reuses them)
-> each prediction's Label Studio results decode to masks (`annotations.results_to_masks`) -> each mask
PNG (one channel, pixel value = label index) becomes one mask per label through the label map -> `Sample`.

The label map is ``FOLDER/labels.txt`` (line i names pixel value i; "background" or the label config's
background label for value 0) or ``FOLDER/labels.json`` (``{"0": "background", "1": "cat"}``); pixel
values it does not name (for example 255, "ignore" in many datasets) count as background and are reported
per image (an ignore region that no metric counts is not supported yet).
COCO JSON is not supported yet (pycocotools is not installed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from backend.bulk.folder import STATE_FILE, FolderRun, PipelineLabelerSpec, StateFile, find_images, run_folder
from backend.evaluation.annotations import mask_kind, result_size, results_to_masks
from backend.evaluation.samples import Sample
from backend.labelstudio.label_config import BACKGROUND_NAMES, Vocabulary
from backend.options import ProjectOptions
from backend.settings import Settings


class FolderLayoutError(ValueError):
    """The folder does not have the images/, masks/ and labels layout."""


def read_label_map(folder: Path) -> dict[int, str]:
    """Return pixel value -> label name from FOLDER/labels.json or FOLDER/labels.txt."""
    as_json, as_text = folder / "labels.json", folder / "labels.txt"
    if as_json.is_file():
        try:
            raw = json.loads(as_json.read_text(encoding="utf-8"))
            return {int(k): str(v) for k, v in raw.items()}
        except (ValueError, AttributeError) as exc:
            raise FolderLayoutError(f"{as_json}: expected {{\"pixel value\": \"label\"}}: {exc}") from None
    if as_text.is_file():
        lines = as_text.read_text(encoding="utf-8").splitlines()
        return {i: line.strip() for i, line in enumerate(lines) if line.strip()}
    raise FolderLayoutError(f"{folder} has neither labels.json nor labels.txt (pixel value -> label name)")


def split_label_map(label_map: dict[int, str], vocabulary: Vocabulary, labels: tuple[str, ...]
                    ) -> tuple[dict[int, str], list[str]]:
    """Return the pixel values that name evaluated labels, and problems (names outside the vocabulary)."""
    background = {name.lower() for name in vocabulary.background} | BACKGROUND_NAMES
    kept: dict[int, str] = {}
    problems: list[str] = []
    for value, name in sorted(label_map.items()):
        if name.lower() in background:
            continue
        if name not in labels:
            problems.append(f"mask value {value} names {name!r}, which is not in the label config's vocabulary;"
                            " its pixels count as background")
            continue
        kept[value] = name
    return kept, problems


def predict_folder(images: Path, out: Path, spec: PipelineLabelerSpec, *, batch_size: int, progress: bool,
                   limit: int | None = None) -> dict[str, dict]:
    """Run the folder pipeline over the images (reusing earlier results); return relpath -> state record."""
    run = FolderRun(folder=images, out=out, vocabulary=spec.vocabulary, overlays=False, batch_size=batch_size,
                    progress=progress, limit=limit)
    run_folder(run, spec, run_key=spec.run_key)
    return {k: v for k, v in StateFile(out / STATE_FILE).load().items() if v.get("run") == spec.run_key}


def folder_samples(folder: Path, out: Path, settings: Settings, options: ProjectOptions, vocabulary: Vocabulary,
                   labels: tuple[str, ...], *, batch_size: int = 4, progress: bool = True,
                   limit: int | None = None) -> tuple[list[str], Iterator[Sample]]:
    """Return the source-level problems and the samples of a folder (predicting first)."""
    images, masks = folder / "images", folder / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise FolderLayoutError(f"{folder} needs images/ and masks/ folders (masks/<image stem>.png)")
    label_map = read_label_map(folder)
    values, problems = split_label_map(label_map, vocabulary, labels)
    spec = PipelineLabelerSpec(settings=settings, options=options, vocabulary=vocabulary, folder=str(images))
    records = predict_folder(images, out, spec, batch_size=batch_size, progress=progress, limit=limit)
    relpaths = find_images(images)[:limit] if limit is not None else find_images(images)
    return problems, (_sample(relpath, masks, records.get(relpath), values, set(label_map), labels,
                              vocabulary.background) for relpath in relpaths)


def _sample(relpath: str, masks: Path, record: dict | None, values: dict[int, str], named: set[int],
            labels: tuple[str, ...], ignored: tuple[str, ...]) -> Sample:
    mask_path = masks / Path(relpath).with_suffix(".png")
    if not mask_path.is_file():
        return Sample(relpath, skipped=f"no mask {mask_path.name} in masks/")
    if record is None or record.get("status") != "done":
        reason = (record or {}).get("reason", "not labeled")
        return Sample(relpath, skipped=f"no pre-label: {reason}")
    try:
        with Image.open(mask_path) as picture:
            if picture.mode not in {"L", "P", "I", "I;16"}:
                return Sample(relpath, skipped=f"mask {mask_path.name} is {picture.mode}: expected one channel "
                                                "of label indices (L, P or I)")
            indices = np.asarray(picture)
    except OSError as exc:
        return Sample(relpath, skipped=f"cannot read mask {mask_path.name}: {exc}")
    shape = (int(indices.shape[0]), int(indices.shape[1]))
    sample = Sample(relpath, shape=shape, model_version=str(record["prediction"].get("model_version") or ""))
    unnamed = sorted(int(v) for v in np.unique(indices) if int(v) not in named)
    if unnamed:
        sample.problems.append(f"mask values {unnamed} are not in the label map: counted as background")
    for value, name in values.items():
        sample.annotated[name] = sample.annotated.get(name, np.zeros(shape, bool)) | (indices == value)
    results = record["prediction"].get("result", [])
    drawn = result_size(results)
    if drawn is not None and drawn != shape:
        sample.problems.append(f"image is {drawn[1]}x{drawn[0]} but its mask {shape[1]}x{shape[0]}: "
                               "the pre-label is resized to the mask")
    decoded = results_to_masks(results, shape, labels, ignored=ignored, only=mask_kind(results))
    sample.predicted = decoded.masks
    sample.problems.extend(f"pre-label: {p}" for p in decoded.problems)
    return sample
