"""A COCO instances file to human masks per image and label, for `gem-labeler evaluate --folder`.

Pipeline: ``FOLDER/annotations.json`` (COCO "instances": ``images`` with ``file_name``, ``width``,
``height``; ``categories`` with ``name``; ``annotations`` with ``image_id``, ``category_id`` and a
``segmentation`` as polygons or RLE, compressed or not) -> pycocotools decodes each segmentation at its
image's size -> the union per (image, category name). Category names are matched with the label config's
labels as written; a category outside the vocabulary (or the config's background) is reported and its
pixels count as background. An annotation without a segmentation falls back to its ``bbox``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

ANNOTATIONS_FILE = "annotations.json"


class CocoError(ValueError):
    """The COCO file cannot be read as COCO instances."""


def read_coco(path: Path, labels: Sequence[str], ignored: Iterable[str] = ()
              ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, tuple[int, int]], list[str]]:
    """Return masks per image file name and label, each image's (height, width), and problems found."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(i["id"]): (str(i["file_name"]), int(i["height"]), int(i["width"])) for i in data["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        annotations = list(data.get("annotations") or [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CocoError(f"{path}: not a COCO instances file (images, categories, annotations): {exc}") from None
    wanted, skip = set(labels), set(ignored)
    problems = [f"COCO category {name!r} is not in the label config's vocabulary; its pixels count as background"
                for name in sorted(set(categories.values())) if name not in wanted and name not in skip]
    masks: dict[str, dict[str, np.ndarray]] = {name: {} for name, _, _ in images.values()}
    shapes = {name: (h, w) for name, h, w in images.values()}
    for index, ann in enumerate(annotations):
        try:
            name, height, width = images[int(ann["image_id"])]
            label = categories[int(ann["category_id"])]
        except (KeyError, TypeError, ValueError):
            problems.append(f"annotation {index}: unknown image_id or category_id; ignored")
            continue
        if label not in wanted:
            continue
        try:
            mask = _decode(ann, height, width)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            problems.append(f"annotation {index} ({name}, {label!r}): cannot decode: {exc}")
            continue
        if not mask.any():
            problems.append(f"annotation {index} ({name}, {label!r}): empty mask")
        masks[name][label] = masks[name][label] | mask if label in masks[name] else mask
    return masks, shapes, problems


def _decode(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    segmentation = ann.get("segmentation")
    if not segmentation:
        x, y, w, h = (float(v) for v in ann["bbox"])
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    if isinstance(segmentation, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        rles = coco_mask.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
        rle = coco_mask.merge(rles)
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:  # compressed RLE
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()
               if isinstance(segmentation["counts"], str) else segmentation["counts"]}
    with warnings.catch_warnings():  # pycocotools 2.0.10 under numpy 2 warns about a copy keyword it ignores
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = coco_mask.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}")
    return mask
