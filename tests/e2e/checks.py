"""Assertions on predictions as Label Studio stores them, shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle

from gem_engine.rle import encode_rle
from tests.e2e.label_configs import LABELS

# control name -> (result type, value key holding the labels)
CONTROLS = {
    "brush": ("brushlabels", "brushlabels"),
    "polygon": ("polygonlabels", "polygonlabels"),
    "box": ("rectanglelabels", "rectanglelabels"),
}


def brush_result(label: str, mask: np.ndarray, *, from_name: str = "brush", to_name: str = "image") -> dict:
    """Return a brush result of `label` covering `mask` (bool [height, width]), as an annotator's is stored."""
    height, width = mask.shape
    return {"from_name": from_name, "to_name": to_name, "type": "brushlabels", "original_width": width,
            "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [label]}}


def brush_mask(result: dict) -> np.ndarray:
    """Return the bool [height, width] mask of a stored brush result, decoded by the Label Studio SDK."""
    height, width = result["original_height"], result["original_width"]
    values = np.asarray(sdk_decode_rle(result["value"]["rle"]), dtype=np.uint8)
    assert values.size == height * width * 4, (values.size, width, height)
    return values.reshape(height, width, 4)[:, :, 3] > 0


def check_prediction(prediction: dict, *, natural_size: tuple[int, int], model_version: str,
                     controls: Iterable[str] = CONTROLS, image_name: str = "image") -> dict[str, int]:
    """Assert one stored prediction is well-formed for the project; return how many results each type has."""
    assert prediction["model_version"] == model_version
    assert prediction["score"] is None or 0.0 <= prediction["score"] <= 1.0
    width, height = natural_size
    counts = dict.fromkeys(controls, 0)
    for result in prediction["result"]:
        control = result["from_name"]
        assert control in counts, f"unknown from_name {control!r}"
        kind, key = CONTROLS[control]
        assert result["to_name"] == image_name
        assert result["type"] == kind
        assert set(result["value"][key]) <= set(LABELS), result["value"][key]
        assert (result["original_width"], result["original_height"]) == (width, height)
        if kind == "brushlabels":
            assert result["value"]["format"] == "rle"
            mask = brush_mask(result)
            assert mask.shape == (height, width)
            assert mask.any(), "an empty mask must not be sent"
        elif kind == "polygonlabels":
            points = np.asarray(result["value"]["points"], dtype=float)
            assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
            assert ((points >= 0) & (points <= 100)).all()
        else:
            value = result["value"]
            assert 0 <= value["x"] <= 100 and 0 <= value["y"] <= 100
            assert 0 < value["width"] <= 100 and 0 < value["height"] <= 100
        counts[control] += 1
    return counts
