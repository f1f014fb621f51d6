"""The product reads task images from the real Label Studio with either token kind 1.23 issues."""

from __future__ import annotations

import pytest

from backend.labelstudio import images
from backend.settings import Settings
from tests.e2e.images import write_exif_rotated_jpeg
from tests.e2e.label_configs import BRUSH_ONLY

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rotated_upload(ls, tmp_path_factory):
    """An uploaded EXIF-rotated JPEG: its task's URL and the image's natural size."""
    project = ls.create_project("tokens", BRUSH_ONLY)
    image = write_exif_rotated_jpeg(tmp_path_factory.mktemp("tokens") / "token-rotated.jpg")
    ls.import_files(project["id"], [image.path])
    [task] = ls.tasks(project["id"])
    return task, image


@pytest.mark.parametrize("kind", ["legacy", "personal access token"])
def test_the_backend_reads_uploads_with_either_token(label_studio, rotated_upload, kind):
    task, image = rotated_upload
    token = label_studio.legacy_token if kind == "legacy" else label_studio.personal_access_token
    settings = Settings.from_env({}, label_studio_url=label_studio.url, label_studio_api_key=token)
    decoded = images.load_task_image(task["data"]["image"], settings, task_id=task["id"], project_id=task["project"])
    assert decoded.size == image.natural_size  # EXIF orientation applied
    assert decoded.mode == "RGB"


def test_a_revoked_token_is_a_clear_error_not_a_crash(label_studio, rotated_upload):
    task, _ = rotated_upload
    settings = Settings.from_env({}, label_studio_url=label_studio.url, label_studio_api_key="f" * 40)
    with pytest.raises(images.ImageError) as caught:
        images.load_task_image(task["data"]["image"], settings, task_id=task["id"], project_id=task["project"])
    assert caught.value.status in (401, 403), caught.value.message
    assert "LABEL_STUDIO_API_KEY" in caught.value.message or "token" in caught.value.message.lower()
