"""LabelStudioClient against a real fake-Label-Studio HTTP server on loopback: endpoints, auth, paging, retries."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from backend.labelstudio.client import LabelStudioClient, LabelStudioError
from tests.loopback_http import QuietHandler

KEY = "test-signing-key-of-32-bytes-long"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: object


@dataclass
class FakeLabelStudio:
    """Routes are (method, path) -> function(call) -> (status, body, headers); every call is recorded."""

    routes: dict[tuple[str, str], Callable[[Call], tuple]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, method: str, path: str, *answers: tuple) -> None:
        """Answer with each of `answers` in turn, repeating the last one."""
        queue = list(answers)
        self.routes[(method, path)] = lambda call: queue.pop(0) if len(queue) > 1 else queue[0]


def start_server(state: FakeLabelStudio, bound: socket.socket | None = None) -> ThreadingHTTPServer:
    class Handler(QuietHandler):
        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            call = Call(self.command, parts.path, parse_qs(parts.query),
                        {k.lower(): v for k, v in self.headers.items()}, json.loads(raw) if raw else None)
            state.calls.append(call)
            route = state.routes.get((self.command, parts.path))
            status, body, headers = route(call) if route else (404, {"detail": "Not found."}, {})
            try:
                self.reply(status, body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting, on purpose in the timeout tests

        do_GET = do_POST = _handle  # noqa: N815 - http.server's naming

    if bound is None:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    else:
        # A socket bound but not listening refuses connections while keeping its port from other processes.
        httpd = ThreadingHTTPServer(bound.getsockname(), Handler, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = bound
        httpd.server_activate()
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd


@pytest.fixture
def ls() -> Iterator[FakeLabelStudio]:
    state = FakeLabelStudio()
    httpd = start_server(state)
    yield state
    httpd.shutdown()
    httpd.server_close()


def client_for(ls: FakeLabelStudio, key: str = "legacy-token", **kwargs) -> LabelStudioClient:
    kwargs.setdefault("backoff_s", 0.01)
    return LabelStudioClient(ls.url, key, **kwargs)


def pat(token_type: str, expires_in: float) -> str:
    claims = {"token_type": token_type, "exp": int(time.time() + expires_in), "user_id": 1, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, KEY, algorithm="HS256")


PREDICTION = {"result": [{"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2]}}],
              "score": 0.5, "model_version": "gem-ViT-B-16-abc"}


# ------------------------------------------------------------------------------------------ endpoints


def test_import_predictions_posts_the_list_to_the_project_endpoint(ls):
    ls.on("POST", "/api/projects/3/import/predictions", (201, {"created": 2}, {}))
    predictions = [{"task": 11, **PREDICTION}, {"task": 12, **PREDICTION}]
    assert client_for(ls).import_predictions(3, predictions) == {"created": 2}
    (call,) = ls.calls
    assert call.headers["authorization"] == "Token legacy-token"
    assert call.body == predictions


def test_create_prediction_posts_one_with_its_task(ls):
    ls.on("POST", "/api/predictions/", (201, {"id": 5, "task": 11}, {}))
    assert client_for(ls).create_prediction(11, PREDICTION) == {"id": 5, "task": 11}
    assert ls.calls[0].body == {**PREDICTION, "task": 11}


def test_bad_predictions_are_refused_before_any_request(ls):
    client = client_for(ls)
    with pytest.raises(ValueError, match="'task'"):
        client.import_predictions(3, [{"result": []}])
    with pytest.raises(ValueError, match="'result'"):
        client.create_prediction(3, {"score": 1})
    assert client.import_predictions(3, []) == {"created": 0}
    assert ls.calls == []


def test_iter_tasks_pages_through_task_fields_only(ls):
    tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(7)]

    def page(call: Call):
        number, size = int(call.query["page"][0]), int(call.query["page_size"][0])
        chunk = tasks[(number - 1) * size : number * size]
        return (200, {"tasks": chunk, "total": len(tasks)}, {}) if chunk else (404, {"detail": "Invalid page."}, {})

    ls.routes[("GET", "/api/tasks/")] = page
    assert list(client_for(ls).iter_tasks(1, page_size=3)) == tasks
    assert [c.query["page"] for c in ls.calls] == [["1"], ["2"], ["3"]]
    assert all(c.query["fields"] == ["task_only"] and c.query["project"] == ["1"] for c in ls.calls)


def test_iter_tasks_stops_at_the_404_after_an_exact_last_page(ls):
    tasks = [{"id": i, "data": {}} for i in range(6)]

    def page(call: Call):
        number = int(call.query["page"][0])
        chunk = tasks[(number - 1) * 3 : number * 3]
        return (200, {"tasks": chunk}, {}) if chunk else (404, {"detail": "Invalid page."}, {})

    ls.routes[("GET", "/api/tasks/")] = page
    assert [t["id"] for t in client_for(ls).iter_tasks(1, page_size=3)] == list(range(6))


def test_iter_tasks_survives_a_server_side_page_size_cap(ls):
    tasks = [{"id": i, "data": {}} for i in range(7)]

    def page(call: Call):
        number, size = int(call.query["page"][0]), min(int(call.query["page_size"][0]), 2)  # TASK_API_PAGE_SIZE_MAX=2
        chunk = tasks[(number - 1) * size : number * size]
        return (200, {"tasks": chunk, "total": len(tasks)}, {}) if chunk else (404, {"detail": "Invalid page."}, {})

    ls.routes[("GET", "/api/tasks/")] = page
    assert [t["id"] for t in client_for(ls).iter_tasks(1, page_size=5)] == list(range(7))


def test_iter_tasks_of_a_missing_project_is_an_error(ls):
    ls.on("GET", "/api/tasks/", (404, {"detail": "Not found."}, {}))
    with pytest.raises(LabelStudioError) as info:
        list(client_for(ls).iter_tasks(99))
    assert info.value.status == 404


def test_presign_urls():
    client = LabelStudioClient("http://ls:8080/", "t")
    encoded = base64.urlsafe_b64encode(b"s3://bucket/a b.jpg").decode()
    assert client.presign("s3://bucket/a b.jpg", task_id=4) == f"http://ls:8080/tasks/4/presign/?fileuri={encoded}"
    assert client.presign("s3://bucket/a b.jpg", project_id=2) == f"http://ls:8080/projects/2/presign/?fileuri={encoded}"
    with pytest.raises(ValueError):
        client.presign("s3://x/y")


def test_constructor_validates_its_arguments():
    with pytest.raises(ValueError, match="http"):
        LabelStudioClient("ls:8080", "t")
    with pytest.raises(ValueError, match="API key"):
        LabelStudioClient("http://ls:8080", "")


# ------------------------------------------------------------------------------------------ auth


def test_personal_access_token_is_exchanged_and_reused_until_it_nears_expiry(ls):
    refresh = pat("refresh", 3600)
    fresh, short = pat("access", 600), pat("access", 10)  # 10 s is inside the refresh margin
    ls.on("POST", "/api/token/refresh/", (200, {"access": short}, {}), (200, {"access": fresh}, {}))
    ls.on("POST", "/api/predictions/", (201, {"id": 1}, {}))
    client = client_for(ls, refresh)
    assert client.token_kind == "refresh"
    for _ in range(3):
        client.create_prediction(1, PREDICTION)
    paths = [c.path for c in ls.calls]
    # The short-lived token is replaced before its first use runs out; the fresh one then serves the rest.
    assert paths == ["/api/token/refresh/", "/api/predictions/", "/api/token/refresh/", "/api/predictions/",
                     "/api/predictions/"]
    assert ls.calls[0].body == {"refresh": refresh} and "authorization" not in ls.calls[0].headers
    assert ls.calls[1].headers["authorization"] == f"Bearer {short}"
    assert ls.calls[4].headers["authorization"] == f"Bearer {fresh}"


def test_a_rejected_access_token_is_refreshed_once(ls):
    first, second = pat("access", 600), pat("access", 600)
    ls.on("POST", "/api/token/refresh/", (200, {"access": first}, {}), (200, {"access": second}, {}))
    ls.routes[("POST", "/api/predictions/")] = lambda call: (
        (201, {"id": 1}, {}) if call.headers["authorization"] == f"Bearer {second}" else (401, {"detail": "x"}, {})
    )
    client_for(ls, pat("refresh", 3600)).create_prediction(1, PREDICTION)
    assert [c.path for c in ls.calls].count("/api/token/refresh/") == 2


def test_expired_personal_access_token_says_so(ls):
    client = client_for(ls, pat("refresh", -60))
    with pytest.raises(LabelStudioError, match="expired"):
        client.create_prediction(1, PREDICTION)
    assert ls.calls == []


def test_failed_token_exchange_is_reported(ls):
    ls.on("POST", "/api/token/refresh/", (401, {"detail": "Token is blacklisted"}, {}))
    with pytest.raises(LabelStudioError, match="blacklisted") as info:
        client_for(ls, pat("refresh", 3600)).create_prediction(1, PREDICTION)
    assert info.value.status == 401


def test_wrong_legacy_token_is_not_retried(ls):
    ls.on("POST", "/api/predictions/", (401, {"detail": "Invalid token."}, {}))
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY") as info:
        client_for(ls).create_prediction(1, PREDICTION)
    assert info.value.status == 401 and not info.value.retryable and len(ls.calls) == 1


# ------------------------------------------------------------------------------------------ retries


def recording_sleep(delays: list[float]) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        delays.append(seconds)
        time.sleep(seconds)

    return sleep


def test_5xx_is_retried_with_growing_backoff(ls):
    ls.on("POST", "/api/projects/1/import/predictions",
          (503, b"<html>Service Unavailable</html>", {}), (503, {}, {}), (429, {}, {}), (201, {"created": 1}, {}))
    delays: list[float] = []
    client = client_for(ls, backoff_s=0.02, sleep=recording_sleep(delays))
    assert client.import_predictions(1, [{"task": 1, **PREDICTION}]) == {"created": 1}
    assert len(ls.calls) == 4 and len(delays) == 3
    # Full backoff is 0.02, 0.04, 0.08 with jitter in [0.5, 1]: each step at least the previous step's floor.
    for attempt, delay in enumerate(delays):
        assert 0.02 * 2**attempt * 0.5 <= delay <= 0.02 * 2**attempt
    assert all(call.body == [{"task": 1, **PREDICTION}] for call in ls.calls)


def test_retry_after_is_honoured_and_capped(ls):
    ls.on("POST", "/api/predictions/", (429, {}, {"Retry-After": "3600"}), (201, {"id": 1}, {}))
    delays: list[float] = []
    client_for(ls, max_backoff_s=0.05, sleep=recording_sleep(delays)).create_prediction(1, PREDICTION)
    assert delays == [0.05]


def test_retries_give_up_with_a_retryable_error(ls):
    ls.on("POST", "/api/predictions/", (503, {"detail": "maintenance"}, {}))
    with pytest.raises(LabelStudioError, match="503 after 3 attempts") as info:
        client_for(ls, max_retries=2).create_prediction(1, PREDICTION)
    assert info.value.retryable and info.value.status == 503 and len(ls.calls) == 3


def test_client_errors_are_not_retried(ls):
    ls.on("POST", "/api/projects/1/import/predictions", (400, {"detail": "task 99 not in project"}, {}))
    with pytest.raises(LabelStudioError, match="task 99 not in project") as info:
        client_for(ls).import_predictions(1, [{"task": 99, **PREDICTION}])
    assert info.value.status == 400 and not info.value.retryable and len(ls.calls) == 1


def test_unreachable_label_studio_is_retried_until_it_comes_back():
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))
    port = bound.getsockname()[1]
    state = FakeLabelStudio()
    state.on("POST", "/api/projects/1/import/predictions", (201, {"created": 1}, {}))
    servers: list[ThreadingHTTPServer] = []
    # Label Studio "restarts": its port refuses connections for ~0.4 s, then it answers.
    timer = threading.Timer(0.4, lambda: servers.append(start_server(state, bound)))
    timer.start()
    try:
        client = LabelStudioClient(f"http://127.0.0.1:{port}", "t", backoff_s=0.05, max_backoff_s=0.2, max_retries=20)
        started = time.monotonic()
        assert client.import_predictions(1, [{"task": 1, **PREDICTION}]) == {"created": 1}
        assert time.monotonic() - started >= 0.3
        assert len(state.calls) == 1  # refused connections never reached it, so nothing was doubled
    finally:
        timer.join()
        bound.close()
        for httpd in servers:
            httpd.shutdown()
            httpd.server_close()


def test_unreachable_label_studio_gives_a_clear_error():
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        client = LabelStudioClient(f"http://127.0.0.1:{bound.getsockname()[1]}", "t", backoff_s=0.01, max_retries=2)
        with pytest.raises(LabelStudioError, match="unreachable after 3 attempts") as info:
            client.create_prediction(1, PREDICTION)
    assert info.value.retryable


# ------------------------------------------------------------------------------------------ no doubles


class PredictionStore:
    """Server-side predictions of the fake Label Studio, so tests can count what really landed."""

    def __init__(self, ls: FakeLabelStudio) -> None:
        self.by_task: dict[int, list[dict]] = {}
        ls.routes[("GET", "/api/predictions/")] = lambda call: (
            200, self.by_task.get(int(call.query["task"][0]), []), {})

    def add(self, prediction: dict) -> None:
        self.by_task.setdefault(int(prediction["task"]), []).append(dict(prediction))


def test_import_after_a_lost_response_resends_only_what_did_not_land(ls):
    store = PredictionStore(ls)
    answers = iter([502, 201])

    def import_route(call: Call):
        status = next(answers)
        # First call: task 1 is stored, then the proxy loses the answer (502); second call stores the rest.
        for prediction in call.body[:1] if status == 502 else call.body:
            store.add(prediction)
        return status, {"created": len(call.body)}, {}

    ls.routes[("POST", "/api/projects/1/import/predictions")] = import_route
    predictions = [{"task": 1, **PREDICTION}, {"task": 2, **PREDICTION}]
    assert client_for(ls).import_predictions(1, predictions) == {"created": 2}
    posts = [c for c in ls.calls if c.method == "POST"]
    assert [len(c.body) for c in posts] == [2, 1] and posts[1].body[0]["task"] == 2
    assert {task: len(items) for task, items in store.by_task.items()} == {1: 1, 2: 1}


def test_create_after_a_read_timeout_finds_the_stored_prediction_instead_of_doubling_it(ls):
    store = PredictionStore(ls)

    def slow_create(call: Call):
        store.add(call.body)
        time.sleep(0.6)  # stored, but the answer comes after the client's timeout
        return 201, {"id": 1}, {}

    ls.routes[("POST", "/api/predictions/")] = slow_create
    stored = client_for(ls, timeout_s=0.2).create_prediction(7, PREDICTION)
    assert stored["task"] == 7 and stored["model_version"] == PREDICTION["model_version"]
    assert len(store.by_task[7]) == 1
    assert [c.method for c in ls.calls] == ["POST", "GET"]


def test_create_after_a_500_that_stored_nothing_is_resent(ls):
    store = PredictionStore(ls)
    answers = iter([500, 201])

    def create(call: Call):
        status = next(answers)
        if status == 201:
            store.add(call.body)
        return status, {"id": 3}, {}

    ls.routes[("POST", "/api/predictions/")] = create
    assert client_for(ls).create_prediction(7, PREDICTION) == {"id": 3}
    assert len(store.by_task[7]) == 1
    assert [c.method for c in ls.calls] == ["POST", "GET", "POST"]


def test_persistent_ambiguous_failures_give_up_with_a_retryable_error(ls):
    PredictionStore(ls)
    ls.on("POST", "/api/projects/1/import/predictions", (502, b"Bad Gateway", {}))
    with pytest.raises(LabelStudioError, match="failed 3 times") as info:
        client_for(ls, max_retries=2).import_predictions(1, [{"task": 1, **PREDICTION}])
    assert info.value.retryable
    assert [c.method for c in ls.calls] == ["POST", "GET", "POST", "GET", "POST"]
