"""`gem-labeler evaluate`: folder mode end to end on the tiny model; project mode on recorded Label Studio JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from backend.cli import evaluate as cli
from backend.evaluation.project_source import pick_prediction, task_sample
from tests.e2e.checks import brush_result

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="cat"/><Label value="remote control"/><Label value="background"/>
  </BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="cat"/><Label value="remote control"/></RectangleLabels>
</View>
"""


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)


def _scene(folder, stem: str, size: tuple[int, int], seed: int) -> np.ndarray:
    """Write images/<stem>.png and masks/<stem>.png; return the mask (0 bg, 1 cat, 2 remote control, 3 unicorn,
    255 the ignored band around the cat, as Pascal VOC draws it)."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 - 1: h // 2 + 1, w // 4 - 1: w // 2 + 1] = 255
    mask[h // 4: h // 2, w // 4: w // 2] = 1
    pixels[mask == 1] = (250, 30, 30)
    mask[h - 10:, :10] = 2
    mask[:5, w - 5:] = 3  # a label the config does not have
    mask[h - 3:, w - 3:] = 4  # a value the label map does not name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / "images" / f"{stem}.png")
    Image.fromarray(mask, mode="L").save(folder / "masks" / f"{stem}.png")
    return mask


def test_folder_mode_end_to_end(tmp_path, tiny_vit_checkpoint, capsys):
    folder = tmp_path / "data"
    masks = [_scene(folder, "a", (64, 48), 1), _scene(folder, "b", (40, 40), 2)]
    _scene(folder, "c", (32, 32), 3)
    (folder / "masks" / "c.png").unlink()  # an image without a mask
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG not really")  # an image that fails to load
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(folder / "masks" / "broken.png")
    (folder / "labels.txt").write_text("background\ncat\nremote control\nunicorn\n")
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    ck = tiny_vit_checkpoint
    code = cli.main(["--folder", str(folder), "--config", str(config), "--out", str(out), "--json", "--no-progress",
                     "--model", ck["model_name"], "--model-config", ck["model_config"], "--pretrained",
                     ck["pretrained"], "--presence", "none"])
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    table = "\n".join(lines[:-1])
    assert code == 0
    assert report["images"] == 2
    [(version, judged)] = report["model_versions"].items()  # one run of the pipeline: one version
    assert judged == 2 and version
    assert set(report["labels"]) == {"cat", "remote control"}
    assert "no mask" in report["skipped"]["c.png"]
    assert "no pre-label" in report["skipped"]["broken.png"]
    assert any("unicorn" in m for m in report["messages"])
    assert report["problems"]["a.png"] == ["mask values [4] are not in the label map: counted as background"]
    # Figures that do not depend on the model, computed here from the masks directly:
    # annotated pixels of the two labels, and the all-background baseline (class IoU: background
    # = background pixels / all pixels, every label 0), unicorn pixels counting as background and the
    # 255 band in no figure.
    cat = sum(int((m == 1).sum()) for m in masks)
    remote = sum(int((m == 2).sum()) for m in masks)
    ignored = sum(int((m == 255).sum()) for m in masks)
    total = sum(m.size for m in masks) - ignored
    overall = report["overall"]
    assert ignored > 0 and overall["ignored_pixels"] == ignored
    assert f"ignored pixels (the masks' void region, in no figure): {ignored}" in "\n".join(lines)
    assert overall["edits_from_nothing"] == cat + remote
    assert report["labels"]["cat"]["annotated_pixels"] == cat
    assert overall["baseline_miou_all_background"] == pytest.approx((total - cat - remote) / total / 3)
    assert overall["pixels_saved"] == overall["edits_from_nothing"] - overall["edits_from_prelabel"]
    assert np.asarray(report["confusion"]["rows_annotated_cols_predicted"]).sum() == total
    assert "mIoU with background" in table and "cat" in table
    assert json.loads((out / "report.json").read_text())["images"] == 2
    with Image.open(out / "report.png") as png:
        assert png.size[0] > 200 and png.size[1] > 200
    # The pre-labels came from the folder pipeline's state, which a rerun reuses.
    assert (out / "prelabel" / "state.jsonl").is_file()


def test_folder_mode_bad_layout_is_a_clear_message(tmp_path, capsys):
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    code = cli.main(["--folder", str(tmp_path / "nothing"), "--config", str(config), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "needs images/ and either masks/" in err and "annotations.json (COCO instances)" in err


def test_folder_mode_reads_a_coco_file(tmp_path, tiny_vit_checkpoint, capsys):
    from pycocotools import mask as coco_mask

    folder = tmp_path / "coco"
    (folder / "images").mkdir(parents=True)
    for name, size in (("a.png", (40, 30)), ("b.png", (24, 24)), ("c.png", (16, 16))):
        Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(folder / "images" / name)
    remote = np.zeros((30, 40), np.uint8)
    remote[20:30, 0:8] = 1  # 80 px
    compressed = coco_mask.encode(np.asfortranarray(remote))
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 24, "height": 24}],  # c.png is not listed
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "remote control"}, {"id": 3, "name": "unicorn"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[10, 5, 20, 5, 20, 15, 10, 15]]},
            {"id": 2, "image_id": 1, "category_id": 2,
             "segmentation": {"size": [30, 40], "counts": compressed["counts"].decode()}},
            {"id": 3, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 5, 0, 5, 5]]},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [2, 2, 4, 3]},  # no segmentation: its box
            {"id": 5, "image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]},
        ],
    }
    (folder / "annotations.json").write_text(json.dumps(coco))
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    ck = tiny_vit_checkpoint
    code = cli.main(["--folder", str(folder), "--config", str(config), "--out", str(tmp_path / "out"), "--json",
                     "--no-progress", "--model", ck["model_name"], "--model-config", ck["model_config"],
                     "--pretrained", ck["pretrained"], "--presence", "none"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert report["images"] == 2 and report["skipped"] == {"c.png": "not listed in annotations.json"}
    assert any("'unicorn'" in m for m in report["messages"])
    assert any("annotation 4: unknown image_id" in m for m in report["messages"])
    # Hand-computed annotated pixels: the polygon is 10 x 10 px (pycocotools' rasterisation), the RLE 80 px,
    # the box 4 x 3 px.
    assert report["labels"]["cat"]["annotated_pixels"] == 100 + 12
    assert report["labels"]["remote control"]["annotated_pixels"] == 80
    assert report["labels"]["cat"]["images_annotated"] == 2


def _brush(label: str, mask: np.ndarray) -> dict:
    return {"id": f"r-{label}", **brush_result(label, mask)}


def test_project_task_recorded_json():
    # A task as GET /api/tasks/?fields=all returns it: two annotations (one cancelled), two predictions.
    truth = np.zeros((10, 10), bool)
    truth[:5, :5] = True
    old_guess = np.zeros((10, 10), bool)
    old_guess[5:, 5:] = True
    task = {
        "id": 7, "data": {"image": "/data/upload/1/a.png"},
        "annotations": [
            {"id": 1, "was_cancelled": False, "ground_truth": False, "created_at": "2026-12-01T10:00:00Z",
             "updated_at": "2026-12-01T10:00:00Z", "result": [_brush("cat", truth)]},
            {"id": 2, "was_cancelled": True, "ground_truth": False, "created_at": "2026-12-02T10:00:00Z",
             "updated_at": "2026-12-02T10:00:00Z", "result": []},
        ],
        "predictions": [
            {"id": 10, "model_version": "v1", "created_at": "2026-11-01T10:00:00Z", "score": 0.5,
             "result": [_brush("cat", old_guess)]},
            {"id": 11, "model_version": "v2", "created_at": "2026-12-03T10:00:00Z", "score": 0.5,
             "result": [_brush("cat", truth), _brush("dog", truth)]},
        ],
    }
    sample = task_sample(task, ("cat",), ("background",), None)
    assert sample.skipped is None
    assert np.array_equal(sample.annotated["cat"], truth)
    assert np.array_equal(sample.predicted["cat"], truth)  # the latest prediction (v2)
    assert sample.model_version == "v2"
    assert any("dog" in p for p in sample.problems)
    older = task_sample(task, ("cat",), ("background",), "v1")
    assert np.array_equal(older.predicted["cat"], old_guess)
    assert task_sample(task, ("cat",), (), "v3").skipped == "no prediction of model version 'v3'"
    assert task_sample({**task, "annotations": [task["annotations"][1]]}, ("cat",), (), None).skipped == \
        "no submitted annotation"
    assert pick_prediction([], None) is None
