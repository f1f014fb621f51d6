"""LabelStudioClient and load_task_image against a real Label Studio 1.23.2 (the e2e suite's cached install).

The loopback fakes in test_ls_client.py / test_images_http.py pin behaviour; this pins the endpoints,
the token exchange and the answers of the real server (two bugs were found this way: DRF's 406 to
``Accept: image/*`` and the 500-then-403 for a missing upload).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.labelstudio.client import LabelStudioClient, LabelStudioError
from backend.labelstudio.images import ImageError, load_task_image
from tests.e2e import harness
from tests.e2e.ls_rest import LabelStudioREST

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).parent / "fixtures" / "bad_inputs"
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>')
RESULT = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 40, "original_height": 30,
           "value": {"format": "rle", "rle": [0, 0, 0, 0], "brushlabels": ["cat"]}}]


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> SimpleNamespace:
    """A running Label Studio with one project: two uploaded images and one local-files task."""
    server = harness.start_label_studio(harness.ensure_label_studio(), tmp_path_factory.mktemp("ls-client-live"))
    try:
        with LabelStudioREST(server.url, token=server.legacy_token) as rest:
            pat = rest.call("POST", "/api/token/")["token"]
            project = rest.create_project("ls-client-live", CONFIG)["id"]
            rest.import_files(project, [CORPUS / "exif_rotated.jpg", CORPUS / "ok_rgb.png"])
            (server.files_root / "ds").mkdir()
            shutil.copy(CORPUS / "ok_rgb.png", server.files_root / "ds" / "local.png")
            rest.import_tasks(project, [{"image": "/data/local-files/?d=ds/local.png"}])
            rest.call("POST", "/api/storages/localfiles/",
                      json={"project": project, "path": str(server.files_root / "ds"), "use_blob_urls": True})
        yield SimpleNamespace(url=server.url, legacy=server.legacy_token, pat=pat, project=project)
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["legacy", "pat"])
def test_tasks_images_and_predictions_round_trip(live, kind: str):
    key = getattr(live, kind)
    with LabelStudioClient(live.url, key) as client:
        assert client.token_kind == ("legacy" if kind == "legacy" else "refresh")
        tasks = list(client.iter_tasks(live.project, page_size=2))
        assert len(tasks) == 3 and len({t["id"] for t in tasks}) == 3
        settings = SimpleNamespace(label_studio_url=live.url, label_studio_api_key=key)
        sizes = [load_task_image(t["data"]["image"], settings, task_id=t["id"]).size for t in tasks]
        assert sizes == [(30, 40), (40, 30), (40, 30)]  # EXIF-upright upload, upload, local file via Label Studio

        version = f"live-{kind}"
        assert client.import_predictions(live.project, [
            {"task": t["id"], "result": RESULT, "score": 0.5, "model_version": version} for t in tasks[:2]
        ]) == {"created": 2}
        created = client.create_prediction(tasks[2]["id"], {"result": RESULT, "score": 0.4, "model_version": version})
        assert created["task"] == tasks[2]["id"] and created["model_version"] == version
        for task in tasks:
            mine = [p for p in client.list_predictions(task["id"]) if p["model_version"] == version]
            assert len(mine) == 1 and mine[0]["result"] == RESULT  # what the no-doubles check compares


def test_label_studio_errors_are_clear(live):
    settings = SimpleNamespace(label_studio_url=live.url, label_studio_api_key=live.pat)
    with pytest.raises(ImageError, match="no such file") as info:
        load_task_image("/data/upload/1/missing.png", settings)
    assert info.value.reason == "not_found"
    with pytest.raises(ImageError) as info:  # no cloud storage connected to the project
        load_task_image("s3://bucket/x.png", settings, task_id=1)
    assert info.value.reason == "not_found"
    with pytest.raises(ImageError, match="LABEL_STUDIO_API_KEY") as info:
        load_task_image("/data/local-files/?d=ds/local.png",
                        SimpleNamespace(label_studio_url=live.url, label_studio_api_key="wrong"))
    assert info.value.reason == "auth"
    with pytest.raises(LabelStudioError) as error:
        LabelStudioClient(live.url, live.legacy).import_predictions(live.project, [{"task": 10**6, "result": RESULT}])
    assert error.value.status == 400 and not error.value.retryable
