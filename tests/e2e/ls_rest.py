"""A small Label Studio REST client for the end-to-end suite: the calls a user's clicks make.

Kept separate from the product's own `backend/labelstudio/client.py`, so that the suite checks the product
against Label Studio's API as documented, not against itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

# The Data Manager's "Retrieve Predictions" action: its id is the entry point's function name in
# label_studio/data_manager/actions/basic.py (1.23.2).
RETRIEVE_PREDICTIONS_ACTION = "retrieve_tasks_predictions"


class LabelStudioAPIError(AssertionError):
    """Label Studio answered a call of the suite with an unexpected status."""


class LabelStudioREST:
    """Thin wrapper over httpx that raises on unexpected statuses and returns parsed JSON."""

    def __init__(self, url: str, *, token: str | None = None, bearer: str | None = None, timeout_s: float = 120.0):
        headers = {"Authorization": f"Token {token}"} if token else {"Authorization": f"Bearer {bearer}"}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()

    def __enter__(self) -> LabelStudioREST:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, path: str, *, expect: Iterable[int] = (200, 201), **kwargs: Any) -> Any:
        """Return the JSON body (or None when empty) of a call; raise LabelStudioAPIError on another status."""
        response = self.http.request(method, path, **kwargs)
        if response.status_code not in tuple(expect):
            raise LabelStudioAPIError(f"{method} {path} -> HTTP {response.status_code}: {response.text[:1000]}")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    # Projects and tasks

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict:
        """Return the created project."""
        return self.call("POST", "/api/projects", json={"title": title, "label_config": label_config, **fields})

    def import_files(self, project_id: int, files: Sequence[Path]) -> dict:
        """Return Label Studio's import report after uploading image files, one task each."""
        handles = [open(path, "rb") for path in files]
        try:
            # Label Studio reads one file per form field, so each file gets its own field name.
            payload = [(path.name, (path.name, handle, _mime(path))) for path, handle in zip(files, handles, strict=True)]
            return self.call("POST", f"/api/projects/{project_id}/import", files=payload)
        finally:
            for handle in handles:
                handle.close()

    def import_tasks(self, project_id: int, tasks: list[dict]) -> dict:
        """Return Label Studio's import report after importing task JSON."""
        return self.call("POST", f"/api/projects/{project_id}/import", json=tasks)

    def tasks(self, project_id: int) -> list[dict]:
        """Return every task of a project, with its predictions."""
        found: list[dict] = []
        page = 1
        while True:
            body = self.call("GET", "/api/tasks", params={"project": project_id, "page": page, "page_size": 100,
                                                          "fields": "all"}, expect=(200, 404))
            if body is None or isinstance(body, str) or "tasks" not in body:
                break
            found.extend(body["tasks"])
            if len(found) >= body.get("total", 0) or not body["tasks"]:
                break
            page += 1
        return found

    def predictions(self, task_id: int) -> list[dict]:
        """Return the stored predictions of one task."""
        return self.call("GET", "/api/predictions", params={"task": task_id})

    def all_predictions(self, project_id: int) -> list[dict]:
        """Return the stored predictions of every task of a project."""
        return self.call("GET", "/api/predictions", params={"project": project_id})

    def add_local_storage(self, project_id: int, folder: Path, *, regex: str = r".*\.(png|jpe?g)$") -> dict:
        """Return the Local Files import storage connected to a project (`folder` under the document root)."""
        return self.call("POST", "/api/storages/localfiles/", json={
            "project": project_id, "path": str(folder), "regex_filter": regex, "use_blob_urls": True,
            "title": folder.name})

    def sync_local_storage(self, storage_id: int) -> dict:
        """Return the storage after Label Studio made one task per matching file."""
        return self.call("POST", f"/api/storages/localfiles/{storage_id}/sync")

    # ML backend, webhooks, actions

    def connect_ml_backend(self, project_id: int, url: str, *, title: str = "gem-labeler",
                           interactive: bool = True, extra_params: dict | None = None,
                           basic_auth: tuple[str, str] | None = None) -> dict:
        """Return the ML backend record after connecting `url` to a project, as the project settings page does
        (with `basic_auth`: the dialog's "Basic Authentication" method, user and password)."""
        body: dict[str, Any] = {"project": project_id, "url": url, "title": title, "is_interactive": interactive}
        if basic_auth is not None:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        if extra_params is not None:
            body["extra_params"] = extra_params
        return self.call("POST", "/api/ml", json=body)

    def ml_backend(self, backend_id: int) -> dict:
        """Return the ML backend record (state, model_version, error_message)."""
        return self.call("GET", f"/api/ml/{backend_id}")

    def add_webhook(self, project_id: int, url: str, actions: Sequence[str],
                    headers: dict[str, str] | None = None) -> dict:
        """Return the created project webhook, which sends `headers` with every call."""
        return self.call("POST", "/api/webhooks/", json={"project": project_id, "url": url, "send_payload": True,
                                                         "send_for_all_actions": False, "actions": list(actions),
                                                         "is_active": True, "headers": headers or {}})

    def actions(self, project_id: int) -> list[dict]:
        """Return the Data Manager actions available in a project."""
        return self.call("GET", "/api/dm/actions", params={"project": project_id})

    def run_action(self, project_id: int, action_id: str, task_ids: Sequence[int] | None = None) -> dict:
        """Return the result of a Data Manager action on the given tasks (all tasks when None)."""
        selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": list(task_ids)}
        return self.call("POST", "/api/dm/actions", params={"id": action_id, "project": project_id},
                         json={"selectedItems": selected})

    def interactive_annotating(self, backend_id: int, task_id: int, context: dict) -> dict:
        """Return Label Studio's answer to an interactive pre-annotation request ({'data': ...} or {'errors': ...})."""
        return self.call("POST", f"/api/ml/{backend_id}/interactive-annotating",
                         json={"task": task_id, "context": context})

    def export_json(self, project_id: int, *, timeout_s: float = 60.0) -> list[dict]:
        """Return the project's JSON export (every task, full predictions), made as the Export dialog does.

        The quick `GET /export` lists predictions by id only; the dialog creates an export snapshot with
        `serialization_options.predictions.only_id = false`, waits for it, then downloads it as JSON.
        """
        snapshot = self.call("POST", f"/api/projects/{project_id}/exports/", json={
            "task_filter_options": {"only_with_annotations": False},
            "serialization_options": {"predictions": {"only_id": False}, "drafts": {"only_id": True}}})
        path = f"/api/projects/{project_id}/exports/{snapshot['id']}"
        wait_for(lambda: self.call("GET", path)["status"] == "completed", timeout_s=timeout_s,
                 what=f"export snapshot {snapshot['id']}")
        return self.call("GET", f"{path}/download", params={"exportType": "JSON"})

    def download(self, path: str) -> bytes:
        """Return the bytes Label Studio serves at `path` (an upload or local-files URL)."""
        response = self.http.get(path)
        if response.status_code != 200:
            raise LabelStudioAPIError(f"GET {path} -> HTTP {response.status_code}")
        return response.content


def wait_for(condition: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.5, what: str) -> Any:
    """Return the first truthy value of `condition()`; raise AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last value: {value!r}")


def _mime(path: Path) -> str:
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}.get(path.suffix.lower(),
                                                                                  "application/octet-stream")
