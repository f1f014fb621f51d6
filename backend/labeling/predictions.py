"""Label Studio prediction JSON from regions: brush (RLE), polygon and rectangle results.

Every builder returns plain Python types (str, int, float, list, dict, bool) and refuses what
Label Studio would show wrongly: a mask whose size is not the image's, an empty mask, a
non-finite or out-of-range number. An empty region gives no result rather than an empty RLE.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

from gem_engine.regions import Region
from gem_engine.rle import encode_rle


def brush_result(region: Region, *, from_name: str, to_name: str, width: int, height: int) -> dict:
    """Return a ``brushlabels`` result whose RLE is the region's mask at (width, height)."""
    _check_region(region, width, height)
    if not region.mask.any():
        raise ValueError(f"region {region.label!r} has an empty mask: it gives no brush result")
    return _result(
        region,
        "brushlabels",
        {"format": "rle", "rle": encode_rle(region.mask), "brushlabels": [region.label]},
        from_name=from_name,
        to_name=to_name,
        width=width,
        height=height,
    )


def polygon_results(region: Region, *, from_name: str, to_name: str, width: int, height: int) -> list[dict]:
    """Return one closed ``polygonlabels`` result per outer contour of the region (none if it has none)."""
    _check_region(region, width, height)
    results = []
    for polygon in region.polygons:
        points = [[_percent(x, "x"), _percent(y, "y")] for x, y in polygon]
        if len(points) < 3:
            raise ValueError(f"region {region.label!r} has a polygon of {len(points)} points; 3 are needed")
        results.append(
            _result(
                region,
                "polygonlabels",
                {"points": points, "closed": True, "polygonlabels": [region.label]},
                from_name=from_name,
                to_name=to_name,
                width=width,
                height=height,
            )
        )
    return results


def rectangle_result(region: Region, *, from_name: str, to_name: str, width: int, height: int) -> dict:
    """Return a ``rectanglelabels`` result for the region's bounding box."""
    _check_region(region, width, height)
    x, y, box_width, box_height = (_percent(v, name) for v, name in zip(region.box, "xywh", strict=True))
    if box_width <= 0 or box_height <= 0:
        raise ValueError(f"region {region.label!r} has an empty box {region.box}: it gives no rectangle")
    value = {
        "x": x,
        "y": y,
        "width": min(box_width, 100.0 - x),
        "height": min(box_height, 100.0 - y),
        "rotation": 0,
        "rectanglelabels": [region.label],
    }
    return _result(region, "rectanglelabels", value, from_name=from_name, to_name=to_name, width=width, height=height)


def region_results(
    regions: Sequence[Region],
    *,
    to_name: str,
    width: int,
    height: int,
    brush: str | None = None,
    polygon: str | None = None,
    rectangle: str | None = None,
) -> list[dict]:
    """Return the results of every non-empty region for each control named (from_name per kind)."""
    results: list[dict] = []
    for region in regions:
        _check_region(region, width, height)
        if not region.mask.any():
            continue
        if brush is not None:
            results.append(brush_result(region, from_name=brush, to_name=to_name, width=width, height=height))
        if polygon is not None:
            results.extend(polygon_results(region, from_name=polygon, to_name=to_name, width=width, height=height))
        if rectangle is not None:
            results.append(rectangle_result(region, from_name=rectangle, to_name=to_name, width=width, height=height))
    return results


def make_prediction(results: list[dict], *, model_version: str, score: float) -> dict:
    """Return a Label Studio prediction ``{"result", "score", "model_version"}`` with plain values."""
    if not isinstance(model_version, str) or not model_version:
        raise ValueError(f"model_version must be a non-empty string, got {model_version!r}")
    for index, result in enumerate(results):
        if not isinstance(result, dict):
            raise ValueError(f"result {index} must be a dict, got {type(result).__name__}")
        _check_plain(result, f"result[{index}]")
    return {"result": list(results), "score": _score(score), "model_version": model_version}


def _result(
    region: Region, kind: str, value: dict, *, from_name: str, to_name: str, width: int, height: int
) -> dict:
    for name, text in (("from_name", from_name), ("to_name", to_name)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"{name} must be a non-empty string, got {text!r}")
    return {
        "id": uuid.uuid4().hex[:10],
        "type": kind,
        "from_name": from_name,
        "to_name": to_name,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "score": _score(region.score),
        "value": value,
    }


def _check_region(region: Region, width: int, height: int) -> None:
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")
    if not isinstance(region.label, str) or not region.label:
        raise ValueError(f"region label must be a non-empty string, got {region.label!r}")
    shape = getattr(region.mask, "shape", None)
    if shape != (height, width):
        raise ValueError(
            f"region {region.label!r} mask has shape {shape} (height, width) "
            f"but the image is {width}x{height}: masks must be at the image's natural size"
        )


def _score(value: Any) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"score must be a number, got {value!r}") from error
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"score must be a finite number in [0, 1], got {value!r}")
    return score


def _percent(value: Any, name: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if not -1e-6 <= number <= 100.0 + 1e-6:
        raise ValueError(f"{name} must be a percentage in [0, 100], got {value!r}")
    return min(100.0, max(0.0, number))


def _check_plain(value: Any, path: str) -> None:
    """Raise ValueError unless value is JSON made of plain Python types with finite numbers."""
    # Exact types: numpy scalars subclass float (np.float64) or fail json.dumps (np.int64).
    if value is None or type(value) in (str, bool, int):
        return
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"{path} is {value}: predictions must not carry NaN or infinity")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a non-string key {key!r}")
            _check_plain(item, f"{path}.{key}")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(item, f"{path}[{index}]")
        return
    raise ValueError(f"{path} is a {type(value).__name__}; predictions carry plain Python values only")
