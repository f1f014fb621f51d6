"""`gem-labeler evaluate --project` against a real Label Studio: annotations and predictions read back paged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.cli import evaluate as cli
from tests.e2e.checks import brush_result as _brush

pytestmark = pytest.mark.e2e

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="dog"/></PolygonLabels>
</View>
"""
W, H = 20, 10


def _polygon(label: str, points: list[list[float]]) -> dict:
    return {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": W,
            "original_height": H, "image_rotation": 0,
            "value": {"points": points, "closed": True, "polygonlabels": [label]}}


def test_evaluate_project_reads_annotations_and_predictions(ls, label_studio, tmp_path, capsys):
    cat = np.zeros((H, W), bool)
    cat[1:5, 2:8] = True  # 24 px
    dog_truth_polygon = [[50, 50], [100, 50], [100, 100], [50, 100]]  # x 10..20, y 5..10: 50 px
    dog_guess = np.zeros((H, W), bool)
    dog_guess[5:10, 15:20] = True  # 25 px, all inside the dog: I = 25, U = 50
    project = ls.create_project("evaluate", CONFIG)
    tasks = [
        {"data": {"image": "/data/upload/none-1.png"},
         "annotations": [{"result": [_brush("cat", cat)]}],
         "predictions": [{"model_version": "v1", "score": 0.5, "result": [_brush("cat", cat)]}]},
        {"data": {"image": "/data/upload/none-2.png"},
         "annotations": [{"result": [_polygon("dog", dog_truth_polygon)]}],
         "predictions": [{"model_version": "v1", "score": 0.5, "result": [_brush("dog", dog_guess)]}]},
        {"data": {"image": "/data/upload/none-3.png"},
         "predictions": [{"model_version": "v1", "score": 0.5, "result": [_brush("cat", cat)]}]},
    ]
    ls.import_tasks(project["id"], tasks)
    out = tmp_path / "out"
    code = cli.main(["--project", str(project["id"]), "--url", label_studio.url,
                     "--api-key", label_studio.legacy_token, "--out", str(out), "--page-size", "2", "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert report["images"] == 2
    assert list(report["skipped"].values()) == ["no submitted annotation"]
    assert report["labels"]["cat"]["iou"] == 1.0
    assert report["labels"]["dog"]["iou"] == pytest.approx(25 / 50)
    assert report["labels"]["dog"]["area_ratio"] == pytest.approx(25 / 50)
    assert report["overall"]["edits_from_nothing"] == 24 + 50
    assert report["overall"]["edits_from_prelabel"] == 25
    assert (out / "report.png").is_file()
    assert report["model_versions"] == {"v1": 2}


def test_evaluate_project_without_annotations_says_so(ls, label_studio, tmp_path, capsys):
    project = ls.create_project("evaluate: nothing annotated", CONFIG)
    ls.import_tasks(project["id"], [{"data": {"image": "/data/upload/none.png"}}])
    code = cli.main(["--project", str(project["id"]), "--url", label_studio.url, "--api-key",
                     label_studio.legacy_token, "--out", str(tmp_path / "out"), "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    assert report["images"] == 0
    assert any(m.startswith("nothing evaluated") for m in report["messages"])
    assert (tmp_path / "out" / "report.png").is_file()
