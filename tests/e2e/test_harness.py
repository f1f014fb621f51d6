"""The harness itself against a real Label Studio: auth, uploads, local files, action ids, cleanup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from tests.e2e import harness
from tests.e2e.images import EXIF_ORIENTATION, ROTATE_90_CW, write_exif_rotated_jpeg, write_images
from tests.e2e.label_configs import MASKS_POLYGONS_BOXES
from tests.e2e.ls_rest import RETRIEVE_PREDICTIONS_ACTION, LabelStudioAPIError, LabelStudioREST

pytestmark = pytest.mark.e2e


def test_label_studio_version_and_health(label_studio):
    response = httpx.get(f"{label_studio.url}/api/version", timeout=10)
    assert response.status_code == 200
    assert response.json()["release"] == harness.LABEL_STUDIO_VERSION
    assert httpx.get(f"{label_studio.url}/health", timeout=10).json() == {"status": "UP"}


def test_legacy_token_and_personal_access_token_both_authenticate(label_studio):
    with LabelStudioREST(label_studio.url, token=label_studio.legacy_token) as legacy:
        assert legacy.call("GET", "/api/current-user/whoami")["email"] == label_studio.email
    # A personal access token is a JWT refresh token: exchanged for a short-lived access token.
    pat = label_studio.personal_access_token
    assert pat.count(".") == 2
    access = httpx.post(f"{label_studio.url}/api/token/refresh/", json={"refresh": pat}, timeout=10)
    assert access.status_code == 200, access.text
    with LabelStudioREST(label_studio.url, bearer=access.json()["access"]) as bearer:
        assert bearer.call("GET", "/api/current-user/whoami")["email"] == label_studio.email
    with LabelStudioREST(label_studio.url, token="0" * 40) as wrong, pytest.raises(LabelStudioAPIError, match="401"):
        wrong.call("GET", "/api/current-user/whoami")


def test_retrieve_predictions_action_is_offered(ls):
    project = ls.create_project("actions", MASKS_POLYGONS_BOXES)
    ids = {action["id"] for action in ls.actions(project["id"])}
    assert RETRIEVE_PREDICTIONS_ACTION in ids


def test_uploads_of_several_sizes_and_exif_jpeg_keep_their_bytes(ls, ls_workdir):
    project = ls.create_project("uploads", MASKS_POLYGONS_BOXES)
    images = write_images(ls_workdir, [(64, 48), (200, 120), (97, 211)])
    images.append(write_exif_rotated_jpeg(ls_workdir / "rotated.jpg"))
    report = ls.import_files(project["id"], [image.path for image in images])
    assert report["task_count"] == len(images)

    tasks = sorted(ls.tasks(project["id"]), key=lambda task: task["id"])
    assert len(tasks) == len(images)
    for task, image in zip(tasks, images, strict=True):
        url = task["data"]["image"]
        assert url.startswith("/data/upload/"), url
        assert url.endswith(image.path.name), (url, image.path.name)
        # Label Studio stores uploads as they are: the EXIF orientation survives for the backend to apply.
        assert ls.download(url) == image.path.read_bytes()
    rotated = tasks[-1]["data"]["image"]
    with Image.open(images[-1].path) as stored:
        assert stored.getexif()[EXIF_ORIENTATION] == ROTATE_90_CW
        assert stored.size == images[-1].stored_size
    assert rotated.endswith("rotated.jpg")


def test_local_files_are_served_under_the_document_root(label_studio, ls, ls_workdir):
    [image] = write_images(label_studio.files_root / "set-a", [(40, 30)], prefix="local")
    relative = image.path.relative_to(label_studio.files_root)
    project = ls.create_project("local files", MASKS_POLYGONS_BOXES)
    storage = ls.add_local_storage(project["id"], image.path.parent)
    ls.sync_local_storage(storage["id"])
    [task] = ls.tasks(project["id"])
    url = task["data"]["image"]
    assert url == f"{label_studio.url}/data/local-files/?d={relative}"
    assert ls.download(url) == image.path.read_bytes()
    # Outside a connected storage the same server refuses to serve a file.
    [other] = write_images(label_studio.files_root / "set-b", [(20, 20)], prefix="hidden")
    with pytest.raises(LabelStudioAPIError, match="404"):
        ls.download(f"/data/local-files/?d={other.path.relative_to(label_studio.files_root)}")


def test_a_bad_label_config_is_refused_with_a_message(ls):
    with pytest.raises(LabelStudioAPIError, match="400"):
        ls.create_project("broken", "<View><Image name='image' value='$image'/><BrushLabels name='b'")


def test_start_command_passes_a_password_that_starts_with_a_dash(label_studio_install, tmp_path):
    # token_urlsafe starts with "-" about once in 64 draws; Label Studio's own parser must still read it.
    cmd = harness.start_command(label_studio_install.executable, port=8123, data_dir=tmp_path, email="e@example.com",
                                password="-Xy_dash", token="t0k")
    python = label_studio_install.venv / "bin" / "python"
    script = ("import json, sys; from label_studio.core.argparser import parse_input_args; "
              "a = parse_input_args(sys.argv[1:]); "
              "print(json.dumps([a.password, a.username, a.user_token, a.port, a.internal_host]))")
    done = subprocess.run([str(python), "-c", script, *cmd[1:]], env=harness.label_studio_env(tmp_path, port=0),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["-Xy_dash", "e@example.com", "t0k", 8123, "127.0.0.1"]


def test_stop_ends_the_whole_process_group(tmp_path):
    # The leader starts a grandchild that would outlive a plain terminate().
    script = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', " \
             "'import time; time.sleep(120)']); print(p.pid, flush=True); time.sleep(120)"
    process = harness.start_process("sleeper", [sys.executable, "-c", script], env=dict(os.environ),
                                    log=tmp_path / "sleeper.log")
    deadline = time.monotonic() + 20
    while not process.log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(process.log.read_text().split()[0])
    process.stop(grace_s=5)
    assert not process.alive()
    deadline = time.monotonic() + 5
    while _running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(grandchild)


def test_a_server_that_dies_at_start_fails_with_its_log(tmp_path):
    process = harness.start_process("doomed", [sys.executable, "-c", "print('bad config: no model'); raise SystemExit(3)"],
                                    env=dict(os.environ), log=tmp_path / "doomed.log")
    with pytest.raises(harness.HarnessError, match="(?s)exited with code 3.*bad config: no model"):
        harness.wait_healthy(process, f"http://127.0.0.1:{harness.free_port()}/health", timeout_s=30)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
