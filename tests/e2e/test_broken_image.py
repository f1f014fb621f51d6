"""Path 6: a task whose image is broken gets a clear error; every other task is pre-labeled."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.checks import check_prediction
from tests.e2e.images import write_broken_image, write_images
from tests.e2e.label_configs import MASKS_POLYGONS_BOXES
from tests.e2e.ls_rest import RETRIEVE_PREDICTIONS_ACTION, wait_for

pytestmark = pytest.mark.e2e


def test_broken_images_fail_alone_with_a_clear_error(label_studio, ls, gem_backend, ls_workdir):
    project = ls.create_project("path 6: broken image", MASKS_POLYGONS_BOXES)
    good = write_images(ls_workdir, [(90, 70), (120, 160), (64, 64)], prefix="good")
    corrupt = write_broken_image(ls_workdir / "corrupt.jpg")
    ls.import_files(project["id"], [image.path for image in good] + [corrupt])
    # A URL into Label Studio's uploads that does not exist (a deleted file, a typo in imported JSON).
    missing_url = f"/data/upload/{project['id']}/deleted-long-ago.png"
    ls.import_tasks(project["id"], [{"image": missing_url}])
    record = ls.connect_ml_backend(project["id"], gem_backend.url, basic_auth=gem_backend.basic_auth)
    tasks = ls.tasks(project["id"])
    assert len(tasks) == len(good) + 2
    broken_ids = {t["id"] for t in tasks if t["data"]["image"] == missing_url or t["data"]["image"].endswith("corrupt.jpg")}
    assert len(broken_ids) == 2

    ls.run_action(project["id"], RETRIEVE_PREDICTIONS_ACTION)

    def good_ones_done() -> list[dict] | None:
        current = ls.tasks(project["id"])
        return current if all(t["predictions"] for t in current if t["id"] not in broken_ids) else None

    tasks = wait_for(good_ones_done, timeout_s=120, what="predictions of the tasks with good images")
    for task in tasks:
        if task["id"] in broken_ids:
            assert task["predictions"] == [], "a broken image must not get a prediction"
            continue
        image = next(i for i in good if task["data"]["image"].endswith(i.path.name))
        [prediction] = task["predictions"]
        check_prediction(prediction, natural_size=image.natural_size, model_version=record["model_version"])

    # Ask the backend what Label Studio asks, until both broken tasks have a final answer (an image
    # fetch that failed with a 5xx is retried with backoff first).
    body = {"tasks": [t for t in tasks if t["id"] in broken_ids],
            "project": f"{project['id']}.0", "label_config": MASKS_POLYGONS_BOXES, "params": {}}

    def final_errors() -> list[dict] | None:
        answer = httpx.post(f"{gem_backend.url}/predict", json=body, timeout=60, auth=gem_backend.basic_auth)
        assert answer.status_code == 200, answer.text
        found = answer.json()["results"]
        return found if all("error" in item for item in found) else None

    items = wait_for(final_errors, timeout_s=120, interval_s=1, what="errors for both broken tasks")
    assert len(items) == 2
    for item in items:
        assert "result" not in item
        assert item["task"] in broken_ids
        assert item["error"].startswith("image: "), item
    # Errors have nothing to push: the user asks again, Label Studio sends only the tasks still without
    # predictions, and gets the stored errors at once, as items without a result (skipped and logged).
    ls.run_action(project["id"], RETRIEVE_PREDICTIONS_ACTION)
    reasons = {item["task"]: item["error"].lower() for item in items}
    missing_id = next(t["id"] for t in tasks if t["data"]["image"] == missing_url)
    corrupt_id = (broken_ids - {missing_id}).pop()
    # Label Studio 1.23 answers a missing upload with 500 (then 403 to the retry), not 404.
    assert any(w in reasons[missing_id] for w in ("no such file", "404", "not found")), reasons[missing_id]
    assert any(w in reasons[corrupt_id] for w in ("corrupt", "not an image", "cannot identify")), reasons[corrupt_id]
    ls_log = label_studio.process.log.read_text()
    skipped = [line for line in ls_log.splitlines() if "incorrect prediction" in line]
    for item in items:
        assert any(item["error"] in line for line in skipped), ("Label Studio's log should show the backend's "
                                                                 f"reason for the broken task: {skipped}")
