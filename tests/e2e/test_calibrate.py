"""Calibration started from Label Studio: "Start Training" on a project whose annotators drew the truth of
its scenes makes the workers fit the project's thresholds, adopt them (held-out tasks improve), and the
project's predictions carry the new model version (and `POST /evaluate` judges them against the
annotations); a rollback from the command line restores the old one.

The project is miscalibrated on purpose (presence_threshold 0.05 in its extra params: nearly every colour
label is judged present in every scene), so a working fit must raise the threshold. Bad input rides along:
a task whose image no longer exists, an annotation naming a label outside the vocabulary, an empty brush.
"""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from backend.cli import calibrate as cli
from tests import scenes
from tests.e2e.checks import brush_result
from tests.e2e.ls_rest import RETRIEVE_PREDICTIONS_ACTION, wait_for

pytestmark = pytest.mark.e2e
LABELS = [scenes.mention(color, None) for color in scenes.COLORS]
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="brush" toName="image">'
          + "".join(f'<Label value="{label}"/>' for label in LABELS) + "</BrushLabels></View>")
ANNOTATED = 12
SEED = 515


def _truth(scene: scenes.Scene) -> list[dict]:
    masks: dict[str, np.ndarray] = {}
    for obj in scene.objects:
        label = scenes.mention(obj.color, None)
        masks[label] = masks.get(label, np.zeros_like(obj.mask)) | obj.mask
    return [brush_result(label, mask) for label, mask in masks.items()]


def _backend_version(backend, project: int) -> str:
    reply = httpx.post(f"{backend.url}/predict", json={"project": project, "tasks": [], "label_config": CONFIG},
                       auth=backend.basic_auth, timeout=30)
    reply.raise_for_status()
    return reply.json()["model_version"]


def test_start_training_calibrates_the_project_and_a_rollback_restores_it(ls, label_studio, scenes_backend,
                                                                           monkeypatch):
    folder = f"calibrate-{uuid.uuid4().hex[:8]}"
    (label_studio.files_root / folder).mkdir()
    items = list(scenes.scenes(SEED, ANNOTATED + 1))
    tasks = []
    for index, scene in enumerate(items):
        scene.image.save(label_studio.files_root / folder / f"scene-{index}.png")
        data = {"image": f"/data/local-files/?d={folder}/scene-{index}.png"}
        tasks.append({"data": data, "annotations": [{"result": _truth(scene)}]} if index < ANNOTATED else {"data": data})
    blank = np.zeros(items[0].objects[0].mask.shape, dtype=bool)
    tasks[0]["annotations"][0]["result"].append(brush_result("zebra", items[0].objects[0].mask))
    tasks[1]["annotations"][0]["result"].append(brush_result(LABELS[0], blank))
    tasks.append({"data": {"image": f"/data/local-files/?d={folder}/deleted.png"},
                  "annotations": [{"result": _truth(items[2])}]})
    project = ls.create_project("calibrate", CONFIG)
    pid = project["id"]
    ls.import_tasks(pid, tasks)
    record = ls.connect_ml_backend(pid, scenes_backend.url, basic_auth=scenes_backend.basic_auth,
                                   extra_params={"presence_threshold": 0.05})
    assert record["state"] == "CO", record
    before = _backend_version(scenes_backend, pid)

    ls.call("POST", f"/api/ml/{record['id']}/train", json={}, expect=(200, 201))

    def finished():
        reply = httpx.get(f"{scenes_backend.url}/calibration/{pid}", auth=scenes_backend.basic_auth, timeout=30)
        status = reply.json()["status"] or {}
        return reply.json() if status.get("state") in ("done", "failed", "refused") else None

    state = wait_for(finished, timeout_s=300, interval_s=1, what="the calibration Label Studio started")
    status, report = state["status"], state["status"]["report"]
    assert status["state"] == "done", status
    assert report["annotated_tasks"] == ANNOTATED + 1 and report["used"] == ANNOTATED
    [(skipped_task, why)] = report["skipped"].items()
    assert "deleted.png" in why or "not found" in why.lower(), why
    problems = [p for found in report["problems"].values() for p in found]
    assert any("'zebra'" in p and "not in the vocabulary" in p for p in problems), problems
    assert any("empty mask" in p for p in problems), problems
    assert report["adopted"], report["reason"]
    assert report["params"]["presence_threshold"] > 0.05
    held = report["held_out"]
    assert held["fitted"]["miou"] > held["current"]["miou"]
    assert state["active"] == 1 and [v["version"] for v in state["versions"]] == [1]
    assert report["analyses_reused"] == 0

    after = _backend_version(scenes_backend, pid)
    assert after != before
    every = [t["id"] for t in ls.tasks(pid)]
    ls.run_action(pid, RETRIEVE_PREDICTIONS_ACTION, every)
    predicted = wait_for(lambda: (lambda found: found if len(found) >= ANNOTATED + 1 else None)(
        [p for t in every for p in ls.predictions(t)]), timeout_s=180, what="predictions after calibration")
    assert {p["model_version"] for p in predicted} == {after}

    # The evaluation route judges those predictions against the annotations, on a worker.
    started = httpx.post(f"{scenes_backend.url}/evaluate", json={"project": pid, "model_version": after},
                         auth=scenes_backend.basic_auth, timeout=30)
    assert started.status_code == 200, started.text

    def evaluated():
        reply = httpx.get(f"{scenes_backend.url}/evaluation/{pid}", auth=scenes_backend.basic_auth, timeout=30)
        return reply.json() if reply.json().get("state") in ("done", "failed") else None

    evaluation = wait_for(evaluated, timeout_s=120, interval_s=1, what="the evaluation")
    assert evaluation["state"] == "done", evaluation
    overall = evaluation["report"]["overall"]
    assert evaluation["report"]["images"] == ANNOTATED  # the task whose image is gone has no prediction
    assert overall["miou_with_background"] > 2 * overall["baseline_miou_all_background"], overall

    monkeypatch.setenv("REDIS_URL", scenes_backend.env["REDIS_URL"])
    monkeypatch.setenv("QUEUE_PREFIX", scenes_backend.env["QUEUE_PREFIX"])
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.personal_access_token)
    # Calibrating again from the command line: the fitted values are in force now, so the fit must beat
    # them (it may not); the worker reuses every map it computed for the first fit.
    code = cli.main(["--project", str(pid), "--no-progress", "--json"])
    again = httpx.get(f"{scenes_backend.url}/calibration/{pid}", auth=scenes_backend.basic_auth, timeout=30).json()
    assert again["status"]["state"] == "done" and code == (0 if again["status"]["report"]["adopted"] else 1)
    assert again["status"]["report"]["analyses_reused"] == ANNOTATED
    assert again["status"]["report"]["previous_params"] == report["params"]
    active = again["active"]
    assert cli.main(["--project", str(pid), "--rollback", "--to", "0"]) == 0
    assert _backend_version(scenes_backend, pid) == before
    assert cli.main(["--project", str(pid), "--rollback", "--to", str(active)]) == 0
    assert _backend_version(scenes_backend, pid) != before
