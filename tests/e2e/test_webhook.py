"""Path 2: tasks imported into a project with the TASKS_CREATED webhook get predictions with no user action."""

from __future__ import annotations

import httpx
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
    record = ls.connect_ml_backend(project["id"], gem_backend.url, basic_auth=gem_backend.basic_auth)
    assert record["state"] == "CO", record
    hook = ls.add_webhook(project["id"], f"{gem_backend.url}/webhook", ["TASKS_CREATED"],
                          headers=gem_backend.webhook_headers)
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


def test_callers_without_the_credentials_are_refused(gem_backend):
    """The backend holds a Label Studio key, so nobody without its basic auth or webhook secret may use it."""
    event = {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": [{"id": 1, "data": {"image": "/data/a.png"}}]}
    with httpx.Client(base_url=gem_backend.url, timeout=10) as anonymous:
        assert anonymous.post("/webhook", json=event).status_code == 401
        assert anonymous.post("/webhook", json=event, headers={"X-Webhook-Secret": "guess"}).status_code == 401
        assert anonymous.post("/predict", json={"tasks": event["tasks"]}).status_code == 401
        assert anonymous.post("/predict", json={"tasks": event["tasks"]},
                              headers=gem_backend.webhook_headers).status_code == 401
        assert anonymous.get("/health").status_code == 401
