"""Prediction JSON: every builder's output passes label_studio_sdk's validator and decodes back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_from_annotation
from label_studio_sdk.label_interface import LabelInterface

from backend.labeling.predictions import (
    brush_result,
    make_prediction,
    polygon_results,
    rectangle_result,
    region_results,
)
from gem_engine.regions import Region, RegionOptions, extract_regions, mean_score

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="cat"/><Label value="dog"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="cat"/><Label value="dog"/>
  </PolygonLabels>
  <RectangleLabels name="box" toName="image">
    <Label value="cat"/><Label value="dog"/>
  </RectangleLabels>
</View>
"""
WIDTH, HEIGHT = 300, 200


@pytest.fixture(scope="module")
def interface() -> LabelInterface:
    return LabelInterface(CONFIG)


@pytest.fixture(scope="module")
def regions() -> list[Region]:
    yy, xx = np.mgrid[0:16, 0:16]
    cat = np.exp(-((xx - 4) ** 2 + (yy - 8) ** 2) / 8.0)
    dog = np.exp(-((xx - 12) ** 2 + (yy - 6) ** 2) / 8.0)
    found = extract_regions(np.stack([cat, dog]), ["cat", "dog"], (WIDTH, HEIGHT), RegionOptions(instances=True))
    assert {r.label for r in found} == {"cat", "dog"}
    return found


def _errors(interface: LabelInterface, prediction: dict) -> list[str]:
    return interface.validate_prediction(prediction, return_errors=True)


def test_every_builder_validates_with_the_sdk(interface, regions):
    kw = dict(to_name="image", width=WIDTH, height=HEIGHT)
    results = []
    for region in regions:
        results.append(brush_result(region, from_name="brush", **kw))
        results.extend(polygon_results(region, from_name="poly", **kw))
        results.append(rectangle_result(region, from_name="box", **kw))
    prediction = make_prediction(results, model_version="gem-ViT-B-16", score=mean_score(regions))
    assert _errors(interface, prediction) == []
    assert {r["type"] for r in results} == {"brushlabels", "polygonlabels", "rectanglelabels"}
    assert len({r["id"] for r in results}) == len(results)
    # Plain JSON, no NaN: a strict dump succeeds and round-trips unchanged.
    assert json.loads(json.dumps(prediction, allow_nan=False)) == prediction


def test_validator_is_strict_enough_to_catch_wrong_output(interface, regions):
    result = brush_result(regions[0], from_name="brush", to_name="image", width=WIDTH, height=HEIGHT)
    wrong_label = json.loads(json.dumps(result))
    wrong_label["value"]["brushlabels"] = ["horse"]
    wrong_control = dict(result, from_name="poly")
    for bad in (wrong_label, wrong_control):
        assert _errors(interface, make_prediction([bad], model_version="v", score=0.5))


def test_brush_result_fields_and_rle_round_trip(regions):
    region = regions[0]
    result = brush_result(region, from_name="brush", to_name="image", width=WIDTH, height=HEIGHT)
    assert result["type"] == "brushlabels"
    assert result["from_name"] == "brush" and result["to_name"] == "image"
    assert result["original_width"] == WIDTH and result["original_height"] == HEIGHT
    assert result["image_rotation"] == 0
    assert result["value"]["format"] == "rle"
    assert result["value"]["brushlabels"] == [region.label]
    assert result["score"] == region.score
    # The SDK reads exported results, whose value fields sit at the top level.
    layers = decode_from_annotation("brush", [dict(result, **result["value"])])
    (alpha,) = layers.values()
    assert np.array_equal(alpha == 255, region.mask)
    assert set(np.unique(alpha)) <= {0, 255}


def test_polygon_and_rectangle_values(regions):
    region = regions[0]
    polygons = polygon_results(region, from_name="poly", to_name="image", width=WIDTH, height=HEIGHT)
    assert len(polygons) == len(region.polygons) >= 1
    for result, polygon in zip(polygons, region.polygons, strict=True):
        assert result["value"]["closed"] is True
        assert result["value"]["polygonlabels"] == [region.label]
        assert result["value"]["points"] == [[x, y] for x, y in polygon]
    box = rectangle_result(region, from_name="box", to_name="image", width=WIDTH, height=HEIGHT)["value"]
    assert (box["x"], box["y"], box["width"], box["height"]) == pytest.approx(region.box)
    assert box["rotation"] == 0 and box["rectanglelabels"] == [region.label]
    assert box["x"] + box["width"] <= 100 and box["y"] + box["height"] <= 100


def test_region_results_builds_each_kind_and_skips_empty_masks(interface, regions):
    empty = Region("cat", np.zeros((HEIGHT, WIDTH), bool), 0.5, [], (0.0, 0.0, 0.0, 0.0))
    results = region_results(
        [*regions, empty], to_name="image", width=WIDTH, height=HEIGHT, brush="brush", polygon="poly", rectangle="box"
    )
    assert sum(r["type"] == "brushlabels" for r in results) == len(regions)
    assert sum(r["type"] == "rectanglelabels" for r in results) == len(regions)
    assert _errors(interface, make_prediction(results, model_version="v", score=0.7)) == []
    only_boxes = region_results(regions, to_name="image", width=WIDTH, height=HEIGHT, rectangle="box")
    assert [r["type"] for r in only_boxes] == ["rectanglelabels"] * len(regions)
    assert region_results([], to_name="image", width=WIDTH, height=HEIGHT, brush="brush") == []


def test_empty_prediction_validates(interface):
    prediction = make_prediction([], model_version="v", score=mean_score([]))
    assert prediction == {"result": [], "score": 0.0, "model_version": "v"}
    assert _errors(interface, prediction) == []


def test_empty_mask_gives_no_brush_result():
    empty = Region("cat", np.zeros((HEIGHT, WIDTH), bool), 0.5, [], (0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="empty mask"):
        brush_result(empty, from_name="brush", to_name="image", width=WIDTH, height=HEIGHT)
    with pytest.raises(ValueError, match="empty box"):
        rectangle_result(empty, from_name="box", to_name="image", width=WIDTH, height=HEIGHT)
    assert polygon_results(empty, from_name="poly", to_name="image", width=WIDTH, height=HEIGHT) == []


def test_mask_size_mismatch_is_rejected(regions):
    for builder in (brush_result, polygon_results, rectangle_result):
        with pytest.raises(ValueError, match="natural size"):
            builder(regions[0], from_name="x", to_name="image", width=HEIGHT, height=WIDTH)
    with pytest.raises(ValueError, match="positive integer"):
        brush_result(regions[0], from_name="brush", to_name="image", width=0, height=HEIGHT)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -0.1, 1.5, "high", None])
def test_bad_scores_never_reach_json(regions, score):
    region = regions[0]
    bad = Region(region.label, region.mask, score, region.polygons, region.box)
    with pytest.raises(ValueError, match="score"):
        brush_result(bad, from_name="brush", to_name="image", width=WIDTH, height=HEIGHT)
    with pytest.raises(ValueError, match="score"):
        make_prediction([], model_version="v", score=score)


def test_non_finite_geometry_is_rejected(regions):
    region = regions[0]
    nan_polygon = Region(region.label, region.mask, 0.5, [[(1.0, 1.0), (float("nan"), 2.0), (3.0, 1.0)]], region.box)
    with pytest.raises(ValueError, match="finite"):
        polygon_results(nan_polygon, from_name="poly", to_name="image", width=WIDTH, height=HEIGHT)
    outside = Region(region.label, region.mask, 0.5, [], (10.0, 150.0, 5.0, 5.0))
    with pytest.raises(ValueError, match="percentage"):
        rectangle_result(outside, from_name="box", to_name="image", width=WIDTH, height=HEIGHT)


@pytest.mark.parametrize(
    "result",
    [
        {"score": float("nan")},
        {"value": {"x": np.float32(1.0)}},
        {"value": {"rle": np.array([1, 2])}},
        {"value": {"points": [[1.0, np.int64(2)]]}},
        {1: "non-string key"},
    ],
)
def test_make_prediction_refuses_non_plain_values(result):
    with pytest.raises(ValueError):
        make_prediction([result], model_version="v", score=0.5)


def test_make_prediction_requires_model_version():
    with pytest.raises(ValueError, match="model_version"):
        make_prediction([], model_version="", score=0.5)
