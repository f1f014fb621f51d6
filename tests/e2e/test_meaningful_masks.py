"""Masks that mean something: the trained tiny CLIP behind the product puts a label's brush on its object,
and gives none to labels whose object is not in the image.

The random tiny ViT proves the plumbing; these tests run a second backend with the scenes model
(`scenes_backend` in conftest.py: tests/fixtures/models/scenes-vit.*, trained by scripts/train_tiny_clip.py
on synthetic scenes) at the product's defaults and check, through Label Studio, that predicted brush masks land on the drawn objects
far more often than chance (one project per scene, labelled with what it shows), and that with a fixed
vocabulary, as a real project has, the labels that are not in an image get no region (GEM and Grad-CAM).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import localization
from tests import scenes
from tests.e2e.checks import brush_mask
from tests.e2e.ls_rest import RETRIEVE_PREDICTIONS_ACTION, wait_for

pytestmark = pytest.mark.e2e
SCENES = 8


def _config(labels: list[str]) -> str:
    tags = "".join(f'<Label value="{label}"/>' for label in labels)
    return f'<View><Image name="image" value="$image"/><BrushLabels name="brush" toName="image">{tags}</BrushLabels></View>'


def test_brush_masks_land_on_the_named_objects(ls, scenes_backend, tmp_path):
    held_out = list(scenes.scenes(localization.HELD_OUT_SEED + 1, SCENES))
    precision, chance, overlapping = [], [], 0
    for index, scene in enumerate(held_out):
        labels = [obj.name for obj in scene.objects]
        project = ls.create_project(f"scene {index}", _config(labels))
        path = tmp_path / f"scene-{index}.png"
        scene.image.save(path)
        ls.import_files(project["id"], [path])
        record = ls.connect_ml_backend(project["id"], scenes_backend.url, basic_auth=scenes_backend.basic_auth)
        assert record["state"] == "CO", record
        ls.run_action(project["id"], RETRIEVE_PREDICTIONS_ACTION)
        [task] = wait_for(lambda pid=project["id"]: [t for t in ls.tasks(pid) if t["predictions"]], timeout_s=120,
                          what=f"the prediction of scene {index}")
        masks: dict[str, np.ndarray] = {}
        for result in task["predictions"][0]["result"]:
            label = result["value"]["brushlabels"][0]
            masks[label] = masks.get(label, False) | brush_mask(result)
        for obj in scene.objects:
            chance.append(obj.mask.mean())  # a mask placed at random lands this much on the object
            mask = masks.get(obj.name)
            if mask is None:
                precision.append(0.0)
                continue
            inside = (mask & obj.mask).sum() / mask.sum()
            precision.append(inside)
            overlapping += bool(inside > 0)
    mean_precision, mean_chance = float(np.mean(precision)), float(np.mean(chance))
    print(f"scenes: {len(precision)} objects, {overlapping} overlapped by their label's mask, "
          f"mean precision {mean_precision:.3f} vs chance {mean_chance:.3f}")
    # Measured on these 8 scenes: 0.827 vs 0.044 (19x), 16 of 17 objects overlapped by their label's mask, with
    # the default PAMR of semantic mode (0.676, 15x, all 17 overlapped without it).
    assert mean_precision >= 5 * mean_chance, (mean_precision, mean_chance)
    assert overlapping >= 0.8 * len(precision), (overlapping, len(precision))


COLORS = [scenes.mention(color, None) for color in scenes.COLORS]


def _predict(ls, backend, name: str, labels: list[str], images: list, folder, extra_params: dict | None = None):
    """Return per image its brush masks by label, from a project with `labels` and "Retrieve predictions"."""
    project = ls.create_project(name, _config(labels))
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"{name.replace(' ', '-')}-{index}.png")
        image.save(paths[-1])
    ls.import_files(project["id"], paths)
    record = ls.connect_ml_backend(project["id"], backend.url, basic_auth=backend.basic_auth, extra_params=extra_params)
    assert record["state"] == "CO", record
    ls.run_action(project["id"], RETRIEVE_PREDICTIONS_ACTION)
    def all_predicted():
        tasks = [t for t in ls.tasks(project["id"]) if t["predictions"]]
        return tasks if len(tasks) == len(images) else None

    tasks = wait_for(all_predicted, timeout_s=240, what=f"the predictions of {name}")
    tasks.sort(key=lambda t: t["id"])
    found = []
    for task in tasks:
        masks: dict[str, np.ndarray] = {}
        for result in task["predictions"][0]["result"]:
            label = result["value"]["brushlabels"][0]
            masks[label] = masks.get(label, False) | brush_mask(result)
        found.append((task["predictions"][0], masks))
    return found


@pytest.mark.parametrize("method", ["gem", "gradcam"])
def test_a_fixed_vocabulary_gives_absent_labels_no_region(ls, scenes_backend, tmp_path, method):
    # Clear scenes: one object each, so five of the six colour labels are absent from every image.
    clear = [s for s in scenes.scenes(localization.HELD_OUT_SEED + 2, 40) if len(s.objects) == 1][:6]
    found = _predict(ls, scenes_backend, f"fixed vocabulary {method}", COLORS, [s.image for s in clear], tmp_path,
                     {"method": method})
    absent_regions = absent_area = hits = 0
    for scene, (prediction, masks) in zip(clear, found, strict=True):
        present = scenes.mention(scene.objects[0].color, None)
        absent = [label for label in masks if label != present]
        absent_regions += len(absent)
        absent_area += float(np.any([masks[label] for label in absent], axis=0).mean()) if absent else 0.0
        hits += present in masks
        # The prediction scores the mean of its regions (one brush result each here), 0 without any.
        region_scores = [r["score"] for r in prediction["result"]]
        assert prediction["score"] == pytest.approx(np.mean(region_scores) if region_scores else 0.0, abs=1e-6)
    print(f"{method}: {absent_regions} regions of absent labels in {len(clear)} images (of {5 * len(clear)} absent "
          f"labels), mean absent area {absent_area / len(clear):.3f}, present labels found {hits}/{len(clear)}")
    # Before the presence step every label got a region on every image: 30 of 30. Measured with GEM: 1 of 30, every
    # present label found. (The one wrongly present label may cover much of its image: this fixture's grey
    # backgrounds are often tinted blue; bench/prelabel_quality.py reports that area over many scenes.)
    assert absent_regions <= 3, absent_regions
    if method == "gem":  # Grad-CAM's masks on this tiny model are poor (1 of 6 found): only its silence is checked
        assert hits >= 4, hits


@pytest.mark.parametrize("method", ["gem", "gradcam"])
def test_a_one_label_project_whose_object_is_absent_gets_a_prediction_without_regions(ls, scenes_backend, tmp_path,
                                                                                    method):
    label = "red object"
    scene_list = list(scenes.scenes(localization.HELD_OUT_SEED + 3, 40))
    without = [s for s in scene_list if len(s.objects) == 1 and s.objects[0].color not in ("red", "orange")][:2]
    with_it = [s for s in scene_list if len(s.objects) == 1 and s.objects[0].color == "red"][:1]
    found = _predict(ls, scenes_backend, f"one label {method}", [label], [s.image for s in without + with_it],
                     tmp_path, {"method": method})
    for prediction, masks in found[: len(without)]:
        assert prediction["result"] == [] and masks == {} and prediction["score"] == 0, prediction
    prediction, masks = found[-1]
    if method == "gem":  # and with the object there, its region (Grad-CAM: see the test above)
        assert label in masks and prediction["score"] > 0
