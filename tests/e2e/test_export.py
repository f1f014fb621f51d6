"""Path 5: Label Studio's JSON export holds the predictions, and their masks are the engine's masks."""

from __future__ import annotations

import numpy as np
import pytest

from backend.jobqueue.digests import local_contents
from backend.jobqueue.jobs import image_url_of, make_payload
from backend.labeling.pipeline import EngineCache, predict_payloads
from backend.labelstudio.label_config import parse_label_config
from backend.options import ProjectOptions, model_version
from backend.settings import Settings
from tests.e2e.checks import brush_mask, check_prediction
from tests.e2e.images import write_exif_rotated_jpeg, write_images
from tests.e2e.label_configs import MASKS_POLYGONS_BOXES
from tests.e2e.ls_rest import RETRIEVE_PREDICTIONS_ACTION, wait_for

pytestmark = pytest.mark.e2e


def _by_region(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        labels = r["value"][r["type"]]
        grouped.setdefault((r["from_name"], labels[0]), []).append(r)
    return grouped


def test_export_holds_the_engine_masks(ls, gem_backend, ls_workdir):
    project = ls.create_project("path 5: export", MASKS_POLYGONS_BOXES)
    images = write_images(ls_workdir, [(140, 100), (77, 133)], prefix="export")
    images.append(write_exif_rotated_jpeg(ls_workdir / "export-rotated.jpg", stored_size=(130, 90)))
    ls.import_files(project["id"], [image.path for image in images])
    record = ls.connect_ml_backend(project["id"], gem_backend.url, basic_auth=gem_backend.basic_auth)
    ls.run_action(project["id"], RETRIEVE_PREDICTIONS_ACTION)
    wait_for(lambda: all(t["predictions"] for t in ls.tasks(project["id"])), timeout_s=120,
             what="predictions on every task")

    exported = ls.export_json(project["id"])
    assert len(exported) == len(images)

    # The engine, run here in the test process through the product's own pipeline, with the backend's
    # settings (same model file, same options), on the same images fetched from Label Studio.
    settings = Settings.from_env(gem_backend.env)
    options = ProjectOptions.from_settings(settings, {})
    version = model_version(options, local_contents(options))
    assert version == record["model_version"]
    vocabulary = parse_label_config(MASKS_POLYGONS_BOXES)
    payloads = [make_payload(job=f"export-{t['id']}", prefix="e2e-export", project=str(project["id"]), task=t,
                             image_url=image_url_of(t, vocabulary), vocabulary=vocabulary, options=options,
                             version=version) for t in exported]
    outcomes = predict_payloads(payloads, EngineCache(settings), settings)

    compared = 0
    for task, outcome in zip(exported, outcomes, strict=True):
        assert outcome.error is None, outcome.error
        image = next(i for i in images if task["data"]["image"].endswith(i.path.name))
        [prediction] = task["predictions"]
        check_prediction(prediction, natural_size=image.natural_size, model_version=version)
        ours = _by_region(outcome.prediction["result"])
        theirs = _by_region(prediction["result"])
        assert ours.keys() == theirs.keys()
        for key, results in theirs.items():
            if key[0] == "brush":
                exported_mask = np.logical_or.reduce([brush_mask(r) for r in results])
                engine_mask = np.logical_or.reduce([brush_mask(r) for r in ours[key]])
                assert exported_mask.shape == (image.natural_size[1], image.natural_size[0])
                np.testing.assert_array_equal(exported_mask, engine_mask)
                compared += 1
            else:
                assert sorted(str(r["value"]) for r in results) == sorted(str(r["value"]) for r in ours[key])
    assert compared >= len(images)
