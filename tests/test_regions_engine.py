"""Real engine maps to regions and Label Studio JSON: the tiny open_clip ViT, GEM, the SDK validator."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.labeling.predictions import make_prediction, region_results
from gem_engine.engine import HeatmapEngine
from gem_engine.models import load_model
from gem_engine.regions import RegionOptions, extract_regions, mean_score
from gem_engine.rle import decode_rle

LABELS = ["cat", "dog", "background"]
CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="dog"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="cat"/><Label value="dog"/></RectangleLabels>
</View>
"""


@pytest.fixture(scope="module")
def engine_maps(tiny_vit_checkpoint) -> tuple[np.ndarray, tuple[int, int]]:
    loaded = load_model(
        tiny_vit_checkpoint["model_name"],
        tiny_vit_checkpoint["pretrained"],
        config_path=tiny_vit_checkpoint["model_config"],
        device="cpu",
    )
    engine = HeatmapEngine(loaded, method="gem")
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (150, 230, 3), dtype=np.uint8))
    (maps,) = engine.heatmaps([image], [[label] for label in LABELS])
    return maps, image.size


@pytest.mark.parametrize("mode", ["semantic", "independent"])
def test_engine_maps_become_valid_predictions(engine_maps, mode):
    maps, (width, height) = engine_maps
    assert maps.shape[0] == len(LABELS)
    regions = extract_regions(maps, LABELS, (width, height), RegionOptions(mode=mode, instances=True))
    assert regions, "random-weight maps still have structure, so Otsu finds some region"
    assert all(r.label in ("cat", "dog") for r in regions)  # "background" never becomes a region
    results = region_results(regions, to_name="image", width=width, height=height, brush="brush", polygon="poly", rectangle="box")
    prediction = make_prediction(results, model_version="test", score=mean_score(regions))
    assert LabelInterface(CONFIG).validate_prediction(prediction, return_errors=True) == []
    json.dumps(prediction, allow_nan=False)
    brushes = [r for r in results if r["type"] == "brushlabels"]
    assert len(brushes) == len(regions)
    for region, brush in zip(regions, brushes, strict=True):
        assert np.array_equal(decode_rle(brush["value"]["rle"], height, width), region.mask)


def test_engine_maps_with_nan_rows_still_give_finite_json(engine_maps):
    maps, (width, height) = engine_maps
    broken = maps.copy()
    broken[:, 0, :] = np.nan
    broken[1] = np.inf
    regions = extract_regions(broken, LABELS, (width, height))
    assert all(r.label == "cat" for r in regions)  # dog's map has no finite value left
    results = region_results(regions, to_name="image", width=width, height=height, brush="brush", polygon="poly")
    json.dumps(make_prediction(results, model_version="test", score=mean_score(regions)), allow_nan=False)
