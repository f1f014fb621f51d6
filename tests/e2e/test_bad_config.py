"""A project whose label config the backend cannot serve: connecting it is refused, with the reason at /setup."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.ls_rest import LabelStudioAPIError

pytestmark = pytest.mark.e2e

TEXT_ONLY = """<View>
  <Text name="text" value="$text"/>
  <Choices name="sentiment" toName="text"><Choice value="good"/><Choice value="bad"/></Choices>
</View>"""


def test_connecting_a_project_without_image_masks_is_refused_with_the_reason(ls, gem_backend):
    project = ls.create_project("bad config", TEXT_ONLY)
    # Label Studio 1.23 refuses the connection but shows only the status of /setup, not its body...
    with pytest.raises(LabelStudioAPIError) as refused:
        ls.connect_ml_backend(project["id"], gem_backend.url, basic_auth=gem_backend.basic_auth)
    assert "400" in str(refused.value) and "/setup" in str(refused.value)
    assert "labeling configuration" in str(refused.value)
    assert not ls.call("GET", "/api/ml", params={"project": project["id"]})
    # ...so the body must say it all for the backend's logs and for anyone calling /setup.
    answer = httpx.post(f"{gem_backend.url}/setup", json={"project": f"{project['id']}.0", "schema": TEXT_ONLY},
                        timeout=10, auth=gem_backend.basic_auth)
    assert answer.status_code == 400
    detail = answer.json()["detail"].lower()
    assert "label config" in detail and "image" in detail, detail
    # The backend's own log says why, for Label Studio's connection attempt too (which showed only "400").
    log = gem_backend.process.log.read_text()
    assert log.count("POST /setup answered 400: label config:") >= 2, log[-3000:]
