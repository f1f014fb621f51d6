"""Path 4: `gem-labeler prelabel --project ID` pre-labels a 30-task project; reruns add nothing; a killed run resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e import harness
from tests.e2e.images import write_images
from tests.e2e.label_configs import MASKS_POLYGONS_BOXES
from tests.e2e.ls_rest import wait_for

pytestmark = pytest.mark.e2e
TASKS = 30


def _prelabel_cmd(project_id: int, push_batch: int = 10) -> list[str]:
    exe = Path(sys.executable).with_name("gem-labeler")
    return [str(exe), "prelabel", "--project", str(project_id), "--no-progress", "--json", "--push-batch",
            str(push_batch)]


def _summary(completed: subprocess.CompletedProcess) -> dict:
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary; stdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-3000:]}"
    return json.loads(lines[-1])


def _run(project_id: int, env: dict[str, str], cwd: Path) -> dict:
    done = subprocess.run(_prelabel_cmd(project_id), env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    summary = _summary(done)
    assert done.returncode == 0, (done.returncode, summary, done.stderr[-3000:])
    return summary


def _project_with_tasks(ls, workdir: Path, title: str, base: tuple[int, int]) -> dict:
    project = ls.create_project(title, MASKS_POLYGONS_BOXES)
    sizes = [(base[0] + 8 * i, base[1] + 4 * i) for i in range(TASKS)]
    images = write_images(workdir, sizes, prefix=title.split(":")[0].replace(" ", "-"))
    report = ls.import_files(project["id"], [image.path for image in images])
    assert report["task_count"] == TASKS
    return project


def _per_task(ls, project_id: int) -> Counter:
    counts = Counter({task["id"]: 0 for task in ls.tasks(project_id)})
    counts.update(p["task"] for p in ls.all_predictions(project_id))
    return counts


def test_prelabel_labels_every_task_once_and_a_rerun_adds_nothing(ls, gem_backend, ls_workdir):
    project = _project_with_tasks(ls, ls_workdir, "bulk-once: prelabel", (64, 48))
    first = _run(project["id"], gem_backend.env, harness_root())
    assert (first["total"], first["done"], first["failed"], first["pending"]) == (TASKS, TASKS, 0, 0), first
    counts = _per_task(ls, project["id"])
    assert len(counts) == TASKS and set(counts.values()) == {1}, counts
    versions = {p["model_version"] for p in ls.all_predictions(project["id"])}
    assert len(versions) == 1

    second = _run(project["id"], gem_backend.env, harness_root())
    assert (second["done"], second["skipped"], second["failed"]) == (0, TASKS, 0), second
    assert _per_task(ls, project["id"]) == counts


def test_a_killed_prelabel_resumes_without_duplicates(ls, gem_backend, ls_workdir):
    # Larger images and one prediction per import request stretch the run, so the kill lands halfway.
    project = _project_with_tasks(ls, ls_workdir, "bulk-kill: prelabel", (320, 240))
    log = ls_workdir / "killed-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_prelabel_cmd(project["id"], push_batch=1), env=gem_backend.env, cwd=harness_root(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        sent = wait_for(lambda: len(ls.all_predictions(project["id"])), timeout_s=180, interval_s=0.05,
                        what="the first predictions of the run to be killed")
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: the worst way to stop it
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    at_kill = len(ls.all_predictions(project["id"]))
    assert 0 < sent <= at_kill < TASKS, f"not killed halfway ({sent} then {at_kill} of {TASKS}); log:\n" \
                                        f"{log.read_text()[-2000:]}"
    time.sleep(0.5)  # a push in flight at the kill may still land; the rerun must cope either way

    rerun = _run(project["id"], gem_backend.env, harness_root())
    assert rerun["failed"] == 0 and rerun["pending"] == 0, rerun
    assert rerun["skipped"] + rerun["done"] == TASKS, rerun
    assert rerun["done"] <= TASKS - at_kill, rerun
    counts = _per_task(ls, project["id"])
    assert len(counts) == TASKS and set(counts.values()) == {1}, f"missing or duplicated: {counts}"


def harness_root() -> Path:
    """Return the repository root the commands run in."""
    return Path(harness.__file__).resolve().parents[2]
