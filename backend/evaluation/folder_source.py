"""Folder mode of `gem-labeler evaluate`: ``FOLDER/images/*`` with ``FOLDER/masks/<stem>.png`` or a COCO file.

Pipeline: the images go through the product's own folder pipeline (`backend.bulk.folder.run_folder` with
the worker pipeline's labeler, predictions kept in ``OUT/prelabel/state.jsonl``, so a rerun reuses them)
-> each prediction's Label Studio results decode to masks (`annotations.results_to_masks`) -> the human
masks: each mask PNG (one channel, pixel value = label index) becomes one mask per label through the label
map, or ``FOLDER/annotations.json`` (COCO instances, `backend.evaluation.coco`) gives them -> `Sample`.

The label map is ``FOLDER/labels.txt`` (line i names pixel value i; "background" or the label config's
background label for value 0) or ``FOLDER/labels.json`` (``{"0": "background", "1": "cat"}``). Ignored
pixels (`IGNORE_VALUE`, 255, when the map does not name it, and every value the map names "ignore" or
"void", any case: the band Pascal VOC draws around each object) become the sample's ignore mask, which no
metric counts (`metrics.Accumulator.add`). Other pixel values the map does not name count as background
and are reported per image. With a COCO file, categories are matched to labels by name; an image the
file does not list is skipped, one it lists without annotations has nothing in it; COCO truth has no
ignore region.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from backend.bulk.folder import STATE_FILE, FolderRun, PipelineLabelerSpec, StateFile, find_images, run_folder
from backend.evaluation.annotations import mask_kind, result_size, results_to_masks
from backend.evaluation.coco import ANNOTATIONS_FILE, read_coco
from backend.evaluation.samples import Sample
from backend.labelstudio.label_config import BACKGROUND_NAMES, Vocabulary
from backend.options import ProjectOptions
from backend.settings import Settings

IGNORE_VALUE = 255  # ignored unless the label map names it
IGNORE_NAMES = frozenset({"ignore", "void"})  # a value the label map names so is ignored
# One image's truth: (shape, masks per label, ignore mask or None, problems).
Truth = tuple[tuple[int, int], dict[str, np.ndarray], np.ndarray | None, list[str]]


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


def ignore_values(label_map: dict[int, str]) -> set[int]:
    """Return the pixel values no metric counts: 255 unless the map names it, and values named ignore/void."""
    ignored = {value for value, name in label_map.items() if name.strip().lower() in IGNORE_NAMES}
    if IGNORE_VALUE not in label_map:
        ignored.add(IGNORE_VALUE)
    return ignored


def split_label_map(label_map: dict[int, str], vocabulary: Vocabulary, labels: tuple[str, ...]
                    ) -> tuple[dict[int, str], list[str]]:
    """Return the pixel values that name evaluated labels, and problems (names outside the vocabulary).

    Values named ignore or void are neither (`ignore_values`).
    """
    background = {name.lower() for name in vocabulary.background} | BACKGROUND_NAMES
    kept: dict[int, str] = {}
    problems: list[str] = []
    for value, name in sorted(label_map.items()):
        if name.strip().lower() in IGNORE_NAMES or name.lower() in background:
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
    images, masks, coco = folder / "images", folder / "masks", folder / ANNOTATIONS_FILE
    if not images.is_dir() or not (masks.is_dir() or coco.is_file()):
        raise FolderLayoutError(f"{folder} needs images/ and either masks/ (masks/<image stem>.png plus labels.txt "
                                f"or labels.json) or {ANNOTATIONS_FILE} (COCO instances)")
    if masks.is_dir():
        label_map = read_label_map(folder)
        values, problems = split_label_map(label_map, vocabulary, labels)
        ignored = ignore_values(label_map)

        def truth(relpath: str) -> Truth | str:
            return _png_truth(masks / Path(relpath).with_suffix(".png"), values, set(label_map), ignored)
    else:
        by_name, shapes, problems = read_coco(coco, labels, vocabulary.background)

        def truth(relpath: str) -> Truth | str:
            if relpath not in by_name:
                return f"not listed in {ANNOTATIONS_FILE}"
            return shapes[relpath], by_name[relpath], None, []
    spec = PipelineLabelerSpec(settings=settings, options=options, vocabulary=vocabulary, folder=str(images))
    records = predict_folder(images, out, spec, batch_size=batch_size, progress=progress, limit=limit)
    relpaths = find_images(images)[:limit] if limit is not None else find_images(images)
    return problems, (_sample(relpath, truth(relpath), records.get(relpath), labels, vocabulary.background)
                      for relpath in relpaths)


def _png_truth(mask_path: Path, values: dict[int, str], named: set[int], ignored: set[int]
               ) -> Truth | str:
    """Return (shape, masks per label, ignore mask or None, problems) of one mask PNG, or why it cannot be used."""
    if not mask_path.is_file():
        return f"no mask {mask_path.name} in masks/"
    try:
        with Image.open(mask_path) as picture:
            if picture.mode not in {"L", "P", "I", "I;16"}:
                return f"mask {mask_path.name} is {picture.mode}: expected one channel of label indices (L, P or I)"
            indices = np.asarray(picture)
    except OSError as exc:
        return f"cannot read mask {mask_path.name}: {exc}"
    shape = (int(indices.shape[0]), int(indices.shape[1]))
    problems = []
    present = [int(v) for v in np.unique(indices)]
    unnamed = [v for v in present if v not in named and v not in ignored]
    if unnamed:
        problems.append(f"mask values {unnamed} are not in the label map: counted as background")
    annotated: dict[str, np.ndarray] = {}
    for value, name in values.items():
        annotated[name] = annotated.get(name, np.zeros(shape, bool)) | (indices == value)
    void = [v for v in present if v in ignored]
    ignore = np.isin(indices, void) if void else None
    return shape, annotated, ignore, problems


def _sample(relpath: str, truth: Truth | str, record: dict | None, labels: tuple[str, ...],
            ignored: tuple[str, ...]) -> Sample:
    if isinstance(truth, str):
        return Sample(relpath, skipped=truth)
    if record is None or record.get("status") != "done":
        reason = (record or {}).get("reason", "not labeled")
        return Sample(relpath, skipped=f"no pre-label: {reason}")
    shape, annotated, ignore, problems = truth
    sample = Sample(relpath, shape=shape, model_version=str(record["prediction"].get("model_version") or ""),
                    annotated=annotated, problems=list(problems), ignore=ignore)
    results = record["prediction"].get("result", [])
    drawn = result_size(results)
    if drawn is not None and drawn != shape:
        sample.problems.append(f"image is {drawn[1]}x{drawn[0]} but its mask {shape[1]}x{shape[0]}: "
                               "the pre-label is resized to the mask")
    decoded = results_to_masks(results, shape, labels, ignored=ignored, only=mask_kind(results))
    sample.predicted = decoded.masks
    sample.problems.extend(f"pre-label: {p}" for p in decoded.problems)
    return sample
