"""Path 2: tasks imported into a project with the TASKS_CREATED webhook get predictions with no user action."""

from __future__ import annotations

import pytest

from tests.e2e.checks import check_prediction
from tests.e2e.images import write_exif_rotated_jpeg, write_images
from tests.e2e.label_configs import MASKS_POLYGONS_BOXES
from tests.e2e.ls_rest import wait_for

pytestmark = pytest.mark.e2e


def test_imported_tasks_get_predictions_through_the_webhook(ls, gem_backend, ls_workdir):
    # Label Studio must not fetch predictions itself on import: only the webhook may cause them.
    project = ls.create_project("path 2: webhook", MASKS_POLYGONS_BOXES, evaluate_predictions_automatically=False)
    assert project["evaluate_predictions_automatically"] is False
    record = ls.connect_ml_backend(project["id"], gem_backend.url)
    assert record["state"] == "CO", record
    hook = ls.add_webhook(project["id"], f"{gem_backend.url}/webhook", ["TASKS_CREATED"])
    assert hook["actions"] == ["TASKS_CREATED"]

    images = write_images(ls_workdir, [(80, 60), (150, 210)], prefix="hooked")
    images.append(write_exif_rotated_jpeg(ls_workdir / "hooked-rotated.jpg"))
    report = ls.import_files(project["id"], [image.path for image in images])
    assert report["task_count"] == len(images)

    def predicted() -> list[dict] | None:
        tasks = ls.tasks(project["id"])
        return tasks if len(tasks) == len(images) and all(t["predictions"] for t in tasks) else None

    tasks = wait_for(predicted, timeout_s=120, what="the worker to push predictions of the imported tasks")
    for task in tasks:
        image = next(i for i in images if task["data"]["image"].endswith(i.path.name))
        [prediction] = task["predictions"]
        counts = check_prediction(prediction, natural_size=image.natural_size, model_version=record["model_version"])
        assert counts["brush"] >= 1, prediction
    # The backend saw the tasks through the webhook (its log names each by project and task id).
    log = gem_backend.process.log.read_text()
    for task in tasks:
        assert f"webhook project {project['id']} task {task['id']} " in log
