"""Path 1: masks, polygons and boxes for uploaded images through the Data Manager's "Retrieve Predictions"."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.checks import check_prediction
from tests.e2e.images import write_exif_rotated_jpeg, write_images
from tests.e2e.label_configs import MASKS_POLYGONS_BOXES
from tests.e2e.ls_rest import RETRIEVE_PREDICTIONS_ACTION, wait_for

pytestmark = pytest.mark.e2e

SIZES = [(64, 48), (200, 120), (97, 211), (320, 256)]


def connect(ls, project_id: int, backend) -> tuple[dict, str]:
    """Connect the backend to a project as the settings page does (basic auth in the connection's auth fields);
    return the record and its model version."""
    record = ls.connect_ml_backend(project_id, backend.url, basic_auth=backend.basic_auth)
    assert record["state"] == "CO", record  # connected: /health and /setup answered
    version = record["model_version"]
    assert version, record
    return record, version


def test_retrieve_predictions_labels_every_uploaded_image(ls, gem_backend, ls_workdir):
    project = ls.create_project("path 1: retrieve predictions", MASKS_POLYGONS_BOXES)
    images = write_images(ls_workdir, SIZES)
    images.append(write_exif_rotated_jpeg(ls_workdir / "rotated.jpg"))
    ls.import_files(project["id"], [image.path for image in images])
    record, version = connect(ls, project["id"], gem_backend)

    # The version Label Studio recorded is the one the backend's /setup gives for this project.
    setup = httpx.post(f"{gem_backend.url}/setup", json={"project": f"{project['id']}.0",
                                                          "schema": MASKS_POLYGONS_BOXES}, timeout=10,
                       auth=gem_backend.basic_auth)
    assert setup.status_code == 200 and setup.json()["model_version"] == version

    answer = ls.run_action(project["id"], RETRIEVE_PREDICTIONS_ACTION)
    assert answer["processed_items"] == len(images)

    tasks = wait_for(lambda: _all_predicted(ls, project["id"], len(images)), timeout_s=120,
                     what="a prediction on every task")
    by_name = {image.path.name: image for image in images}
    totals = {"brush": 0, "polygon": 0, "box": 0}
    for task in tasks:
        image = next(i for name, i in by_name.items() if task["data"]["image"].endswith(name))
        [prediction] = task["predictions"]  # one per task: never computed or stored twice
        counts = check_prediction(prediction, natural_size=image.natural_size, model_version=version)
        assert counts["brush"] >= 1, f"no mask for {image.path.name}: {prediction}"
        for k, v in counts.items():
            totals[k] += v
    assert totals["polygon"] >= 1 and totals["box"] >= 1, totals

    # Asking again adds nothing: Label Studio skips tasks that have this model version's prediction.
    ls.run_action(project["id"], RETRIEVE_PREDICTIONS_ACTION)
    assert sum(len(t["predictions"]) for t in ls.tasks(project["id"])) == len(images)


def _all_predicted(ls, project_id: int, count: int) -> list[dict] | None:
    tasks = ls.tasks(project_id)
    if len(tasks) == count and all(task["predictions"] for task in tasks):
        return tasks
    return None
