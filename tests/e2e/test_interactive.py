"""Path 3: interactive pre-annotation through Label Studio's interactive-annotating endpoint."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tests.e2e.checks import brush_mask
from tests.e2e.images import write_images
from tests.e2e.label_configs import INTERACTIVE, LABELS
from tests.e2e.ls_rest import RETRIEVE_PREDICTIONS_ACTION, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def interactive_task(ls, gem_backend, tmp_path_factory):
    """A project with smart tools, one uploaded image, the backend connected as interactive."""
    project = ls.create_project("path 3: interactive", INTERACTIVE)
    [image] = write_images(tmp_path_factory.mktemp("interactive"), [(180, 120)], prefix="smart")
    ls.import_files(project["id"], [image.path])
    record = ls.connect_ml_backend(project["id"], gem_backend.url, interactive=True,
                                  basic_auth=gem_backend.basic_auth)
    assert record["state"] == "CO" and record["is_interactive"], record
    [task] = ls.tasks(project["id"])
    return record, task, image


def _brush_results(answer: dict) -> list[dict]:
    assert "errors" not in answer, answer
    results = answer["data"]["result"]
    assert all(r["to_name"] == "image" for r in results)
    return [r for r in results if r["type"] == "brushlabels"]


def test_a_text_prompt_returns_a_region(ls, interactive_task):
    record, task, image = interactive_task
    width, height = image.natural_size
    context = {"result": [{"from_name": "prompt", "to_name": "image", "type": "textarea",
                           "value": {"text": ["red disc"]}, "original_width": width, "original_height": height}]}
    answer = ls.interactive_annotating(record["id"], task["id"], context)
    brushes = _brush_results(answer)
    assert brushes, answer
    for result in brushes:
        assert result["from_name"] == "brush"
        assert result["value"]["brushlabels"] == ["red disc"]  # the text names this label
        assert brush_mask(result).shape == (height, width)


def test_a_keypoint_returns_the_region_under_it(ls, interactive_task):
    record, task, image = interactive_task
    width, height = image.natural_size
    # Where does the model see "red disc"? Take the batch prediction's mask and click inside its largest
    # piece, as an annotator clicks on the object.
    ls.run_action(task["project"], RETRIEVE_PREDICTIONS_ACTION, [task["id"]])
    [prediction] = wait_for(lambda: ls.predictions(task["id"]), timeout_s=60, what="the batch prediction")
    label, mask = next((r["value"]["brushlabels"][0], brush_mask(r)) for r in prediction["result"]
                       if r["type"] == "brushlabels")
    assert label in LABELS
    pieces, count = ndimage.label(mask)
    largest = 1 + int(np.argmax(ndimage.sum(mask, pieces, range(1, count + 1))))
    inside = ndimage.distance_transform_edt(pieces == largest)
    y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
    point = {"from_name": "keypoint", "to_name": "image", "type": "keypointlabels", "is_positive": True,
             "original_width": width, "original_height": height,
             "value": {"x": (x + 0.5) * 100 / width, "y": (y + 0.5) * 100 / height, "width": 0.5,
                       "keypointlabels": [label]}}
    answer = ls.interactive_annotating(record["id"], task["id"], {"result": [point]})
    brushes = _brush_results(answer)
    assert brushes, answer
    assert all(r["value"]["brushlabels"] == [label] for r in brushes)
    assert any(brush_mask(r)[y, x] for r in brushes), "no returned region contains the clicked point"
    # The region is the clicked piece, not every pixel of the label.
    union = np.logical_or.reduce([brush_mask(r) for r in brushes])
    assert union.sum() <= mask.sum()


def test_a_negative_keypoint_alone_returns_no_region(ls, interactive_task):
    record, task, image = interactive_task
    width, height = image.natural_size
    point = {"from_name": "keypoint", "to_name": "image", "type": "keypointlabels", "is_positive": False,
             "original_width": width, "original_height": height,
             "value": {"x": 50, "y": 50, "width": 0.5, "keypointlabels": [LABELS[0]]}}
    answer = ls.interactive_annotating(record["id"], task["id"], {"result": [point]})
    assert "errors" not in answer, answer
    assert answer["data"]["result"] == []
