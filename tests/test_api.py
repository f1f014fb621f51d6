"""The HTTP API over real HTTP on loopback with real Redis; no worker runs here (see test_worker.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis
import uvicorn
from rq import Queue
from rq.serializers import JSONSerializer

from backend.jobqueue import queues as rq_queue
from backend.service.app import create_app
from backend.settings import Settings
from tests.worker_processes import listening_worker

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Cat"/></PolygonLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(settings: Settings) -> Iterator[httpx.Client]:
    """Yield an HTTP client to the app served by uvicorn on a loopback port."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


def make_settings(redis_url: str, **overrides) -> Settings:
    """Settings isolated by a fresh queue prefix, so tests never touch each other's keys."""
    base = {"REDIS_URL": redis_url, "QUEUE_PREFIX": f"t{uuid.uuid4().hex[:10]}", "PREDICT_WAIT_S": "0.3"}
    return Settings.from_env({**base, **{k.upper(): str(v) for k, v in overrides.items()}})


def task(task_id: int, url: str = "/data/local-files/?d=a.png") -> dict:
    return {"id": task_id, "data": {"image": url}}


@pytest.fixture
def settings(redis_url) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
def client(settings) -> Iterator[httpx.Client]:
    """A client of the API, with a worker alive (registered, beating) that takes no job."""
    with listening_worker(settings.redis_url, settings.queue_prefix), serve(settings) as c:
        yield c


def test_health_and_setup(client, settings):
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["redis"] == "ok" and health["workers"] == 1
    body = {"project": "3.1700000000", "schema": CONFIG, "extra_params": '{"method": "gradcam"}'}
    started = time.monotonic()
    reply = client.post("/setup", json=body)
    assert reply.status_code == 200 and time.monotonic() - started < 1
    version = reply.json()["model_version"]
    assert version.startswith("gem-labeler-gradcam-ViT-B-16-openai-")
    assert client.post("/setup", json={**body, "extra_params": {}}).json()["model_version"] != version
    stored = rq_queue.load_project(rq_queue.connect(settings.redis_url), settings.queue_prefix, "3")
    assert stored == {"label_config": CONFIG, "extra_params": {}}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"schema": "<View></View>"}, 400, "no <Image>"),
        ({"schema": CONFIG, "extra_params": {"method": "sam"}}, 400, "method must be"),
        ({"schema": CONFIG, "extra_params": "{not json"}, 400, "not valid JSON"),
        ({"schema": '<View><Image name="i" value="$i"/></View>'}, 400, "no BrushLabels, PolygonLabels"),
    ],
)
def test_setup_rejects_bad_input(client, body, status, message):
    reply = client.post("/setup", json=body)
    assert reply.status_code == status and message in reply.json()["detail"]


def test_predict_rejects_bad_label_config_and_tasks(client):
    reply = client.post("/predict", json={"tasks": [task(1)], "label_config": "<View><Image"})
    assert reply.status_code == 400 and "not valid XML" in reply.json()["detail"]
    reply = client.post("/predict", json={"tasks": [task(1)], "project": "99"})
    assert reply.status_code == 400 and "label config is empty" in reply.json()["detail"]
    reply = client.post("/predict", json={"tasks": "all", "label_config": CONFIG})
    assert reply.status_code == 400 and "'tasks' must be a list" in reply.json()["detail"]


def test_predict_uses_config_stored_by_setup_and_enqueues_once(client, settings):
    conn = rq_queue.connect(settings.redis_url)
    client.post("/setup", json={"project": "5.1", "schema": CONFIG})
    tasks = [task(1), {"id": 2, "data": {}}, task(3, "/data/local-files/?d=b.png")]
    first = client.post("/predict", json={"tasks": tasks, "project": "5.1"}).json()["results"]
    assert len(first) == 3
    assert "no image under 'image'" in first[1]["error"]
    assert first[0]["status"] == "pending" and "ask again" in first[0]["detail"]
    batch = Queue(rq_queue.queue_name(settings.queue_prefix, "batch"), connection=conn, serializer=JSONSerializer)
    assert batch.count == 2
    second = client.post("/predict", json={"tasks": tasks, "project": "5.1"}).json()["results"]
    assert batch.count == 2, "the same tasks must not be queued twice"
    assert [r.get("job_id") for r in second] == [r.get("job_id") for r in first]
    info = client.get(f"/jobs/{first[0]['job_id']}").json()
    assert info["status"] == "queued" and info["queue"].endswith("-batch")
    assert client.get("/jobs/nope").status_code == 404


def test_stored_results_come_back_in_task_order(client, settings):
    conn = rq_queue.connect(settings.redis_url)
    tasks = [task(i, f"/data/local-files/?d={i}.png") for i in range(5)]
    pending = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()["results"]
    for i, item in enumerate(pending):
        if i == 2:
            rq_queue.store_result(conn, settings.queue_prefix, item["job_id"], {"task_id": i, "error": "bad"}, 60)
        else:
            prediction = {"result": [], "score": i / 10, "model_version": "v"}
            rq_queue.store_result(conn, settings.queue_prefix, item["job_id"],
                                  {"task_id": i, "prediction": prediction}, 60)
    results = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()["results"]
    assert [r.get("score") for r in results] == [0.0, 0.1, None, 0.3, 0.4]
    assert results[2]["error"] == "bad" and "result" not in results[2]
    assert client.get(f"/jobs/{pending[2]['job_id']}").json()["error"] == "bad"


def test_push_handshake_is_exactly_once(settings):
    conn = rq_queue.connect(settings.redis_url)
    prefix = settings.queue_prefix
    # API gives up first: the worker is told to push.
    assert rq_queue.request_push(conn, prefix, "j1", 60) is None
    assert rq_queue.store_result(conn, prefix, "j1", {"prediction": {}}, 60) is True
    # Worker finishes first: the API gets the result and the worker was not asked to push.
    assert rq_queue.store_result(conn, prefix, "j2", {"prediction": {"score": 1}}, 60) is False
    assert rq_queue.request_push(conn, prefix, "j2", 60).parsed() == {"prediction": {"score": 1}}
    assert not conn.exists(rq_queue.key(prefix, "push", "j2"))


def test_interactive_goes_to_its_own_queue_and_times_out_clearly(client, settings):
    context = {"result": [{"type": "textarea", "value": {"text": ["a red ball"]}}]}
    started = time.monotonic()
    reply = client.post("/predict", json={"tasks": [task(1)], "label_config": CONFIG, "params": {"context": context}})
    assert reply.status_code == 504 and "PREDICT_WAIT_S" in reply.json()["detail"]
    assert time.monotonic() - started < 3
    conn = rq_queue.connect(settings.redis_url)
    interactive = Queue(rq_queue.queue_name(settings.queue_prefix, "interactive"), connection=conn,
                        serializer=JSONSerializer)
    assert interactive.count == 1
    assert rq_queue.get_queues(conn, settings.queue_prefix)[0].name == interactive.name


def test_webhook_events(client, settings):
    conn = rq_queue.connect(settings.redis_url)
    project = {"id": 8, "label_config": CONFIG}
    created = client.post("/webhook", json={"action": "TASKS_CREATED", "project": project,
                                            "tasks": [task(10), task(11, "/data/local-files/?d=z.png")]})
    assert created.status_code == 200 and created.json()["tasks"] == 2
    batch = Queue(rq_queue.queue_name(settings.queue_prefix, "batch"), connection=conn, serializer=JSONSerializer)
    deadline = time.monotonic() + 10  # the webhook answers first and enqueues right after
    while batch.count < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert batch.count == 2
    payload = batch.jobs[0].args[0]
    assert payload["project"] == "8" and payload["task_id"] == 10 and payload["image_url"].endswith("a.png")
    annotation = {"action": "ANNOTATION_CREATED", "project": project, "annotation": {"id": 1, "result": []},
                  "task": {"id": 10}}
    for action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        reply = client.post("/webhook", json={**annotation, "action": action})
        assert reply.status_code == 200 and reply.json() == {"status": "acknowledged", "action": action}
    # Annotation events are acknowledged, not stored: calibration reads annotations from Label Studio.
    assert list(conn.scan_iter(match=f"{settings.queue_prefix}:annotations*")) == []
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).json()["status"] == "ignored"


def test_metrics_exposition(client):
    client.post("/predict", json={"tasks": [task(1)], "label_config": CONFIG})
    text = client.get("/metrics").text
    assert 'gem_labeler_predict_seconds_count{mode="batch"} 1.0' in text
    assert 'gem_labeler_jobs{queue="batch",state="queued"} 1.0' in text
    assert 'gem_labeler_predict_tasks_total{outcome="pending"} 1.0' in text
    assert "gem_labeler_redis_up 1.0" in text
    assert "gem_labeler_outbox_pending 0.0" in text


def test_metrics_count_pushes_waiting_in_the_outbox(client, settings):
    from backend.jobqueue import outbox

    conn = rq_queue.connect(settings.redis_url)
    for task_id in (1, 2):
        outbox.add(conn, settings, f"job-{task_id}", task_id, delay_s=60)
    assert "gem_labeler_outbox_pending 2.0" in client.get("/metrics").text


def test_basic_auth(redis_url):
    settings = make_settings(redis_url, basic_auth_user="ann", basic_auth_pass="s3cret")
    with serve(settings) as client:
        for path in ("/health", "/metrics", "/jobs/x"):
            reply = client.get(path)
            assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Basic")
        assert client.get("/health", auth=("ann", "wrong")).status_code == 401
        assert client.get("/health", auth=("bob", "s3cret")).status_code == 401
        assert client.post("/setup", json={"schema": CONFIG}).status_code == 401
        assert client.get("/health", auth=("ann", "s3cret")).json()["redis"] == "ok"


def test_an_api_holding_a_label_studio_key_refuses_to_run_open(redis_url):
    """Anyone reaching an open API could make its workers write into Label Studio: it must not start so."""
    from backend.settings import SettingsError

    key = {"label_studio_url": "http://ls.invalid:8080", "label_studio_api_key": "token"}
    with pytest.raises(SettingsError, match="BASIC_AUTH_USER.*WEBHOOK_SECRET.*ALLOW_UNAUTHENTICATED"):
        create_app(make_settings(redis_url, **key))
    for protection in ({"basic_auth_user": "u", "basic_auth_pass": "p"}, {"webhook_secret": "s"},
                       {"allow_unauthenticated": "true"}):
        create_app(make_settings(redis_url, **key, **protection))
    create_app(make_settings(redis_url))  # no key: nothing to protect
    from tests.test_api_cli import cli

    out = cli("api", REDIS_URL=redis_url, LABEL_STUDIO_URL="http://ls.invalid:8080", LABEL_STUDIO_API_KEY="token")
    assert out.returncode == 2 and "refusing to start" in out.stderr and "WEBHOOK_SECRET" in out.stderr


def test_webhook_secret_guards_the_webhook_and_open_predict_never_pushes(redis_url):
    settings = make_settings(redis_url, webhook_secret="hook-s3cret", label_studio_url="http://ls.invalid:8080",
                             label_studio_api_key="token")
    conn = rq_queue.connect(redis_url)
    event = {"action": "TASKS_CREATED", "project": {"id": 4, "label_config": CONFIG}, "tasks": [task(40)]}
    with listening_worker(redis_url, settings.queue_prefix), serve(settings) as client:
        assert client.post("/webhook", json=event).status_code == 401
        assert client.post("/webhook", json=event, headers={"X-Webhook-Secret": "wrong"}).status_code == 401
        reply = client.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook-s3cret"})
        assert reply.status_code == 200 and reply.json()["tasks"] == 1
        # /predict stays open to Label Studio's model connection, but an unauthenticated caller cannot make
        # the workers write into Label Studio: a task not finished in time is not pushed.
        pending = client.post("/predict", json={"tasks": [task(41)], "label_config": CONFIG}).json()["results"][0]
        assert pending["status"] == "pending" and "ask again" in pending["detail"]
        assert not conn.exists(rq_queue.key(settings.queue_prefix, "push", pending["job_id"]))
    both = make_settings(redis_url, webhook_secret="hook-s3cret", basic_auth_user="ann", basic_auth_pass="pw",
                         label_studio_url="http://ls.invalid:8080", label_studio_api_key="token")
    with listening_worker(redis_url, both.queue_prefix), serve(both) as client:
        assert client.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook-s3cret"}).status_code == 200
        assert client.post("/webhook", json=event, auth=("ann", "pw")).status_code == 200
        assert client.post("/webhook", json=event).status_code == 401
        assert client.post("/predict", json={"tasks": [task(42)], "label_config": CONFIG},
                           headers={"X-Webhook-Secret": "hook-s3cret"}).status_code == 401
        pending = client.post("/predict", json={"tasks": [task(43)], "label_config": CONFIG},
                              auth=("ann", "pw")).json()["results"][0]
        assert "push it to Label Studio" in pending["detail"]
        assert conn.exists(rq_queue.key(both.queue_prefix, "push", pending["job_id"]))


def test_redis_down_gives_503_and_health_stays_fast():
    # A port nothing listens on: connection refused, as when Redis is stopped.
    settings = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    with serve(settings) as client:
        started = time.monotonic()
        health = client.get("/health")
        assert time.monotonic() - started < 1
        assert health.status_code == 200 and health.json()["status"] == "DEGRADED"
        assert "unreachable" in health.json()["redis"] and health.json()["reason"] == health.json()["redis"]
        for path, body in (("/predict", {"tasks": [task(1)], "label_config": CONFIG}),
                           ("/setup", {"schema": CONFIG})):
            reply = client.post(path, json=body)
            assert reply.status_code == 503, reply.text
            assert "Redis at redis://127.0.0.1" in reply.json()["detail"] and "unreachable" in reply.json()["detail"]
        assert "gem_labeler_redis_up 0.0" in client.get("/metrics").text


def test_api_process_never_imports_torch(redis_url):
    """Run the app in a fresh interpreter, exercise every route, and check torch never got imported."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    script = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from backend.service.app import create_app
        from backend.settings import Settings
        app = create_app(Settings.from_env({{"REDIS_URL": {redis_url!r}, "QUEUE_PREFIX": {prefix!r},
                                             "PREDICT_WAIT_S": "0"}}))
        c = TestClient(app)
        config = {CONFIG!r}
        assert c.get("/health").status_code == 200
        assert c.post("/setup", json={{"schema": config, "project": "1"}}).status_code == 200
        r = c.post("/predict", json={{"tasks": [{{"id": 1, "data": {{"image": "http://x/a.png"}}}}],
                                      "label_config": config}})
        assert r.status_code == 200, r.text
        assert c.post("/webhook", json={{"action": "TASKS_CREATED", "project": {{"id": 1, "label_config": config}},
                                         "tasks": [{{"id": 2, "data": {{"image": "http://x/b.png"}}}}]}}).status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/jobs/" + r.json()["results"][0]["job_id"]).status_code == 200
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision", "skimage"))
        print("HEAVY", heavy)
    """)
    with listening_worker(redis_url, prefix):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


def test_enqueue_recovers_a_dead_job_without_result(settings):
    conn = rq_queue.connect(settings.redis_url)
    payload = {"job_id": f"{settings.queue_prefix}-dead", "prefix": settings.queue_prefix, "task_id": 1,
               "project": "1", "options": {}}
    assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "enqueued"
    assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "exists"
    job = Queue(rq_queue.queue_name(settings.queue_prefix, "batch"), connection=conn,
                serializer=JSONSerializer).jobs[0]
    job.set_status("failed")
    assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "enqueued"
    rq_queue.store_result(conn, settings.queue_prefix, payload["job_id"], {"prediction": {}}, 60)
    assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "done"
    # A finished job whose stored error expired (ERROR_TTL_S < RESULT_TTL_S) is computed again.
    conn.delete(rq_queue.key(settings.queue_prefix, "result", payload["job_id"]))
    job.set_status("finished")
    assert rq_queue.enqueue(conn, settings, payload, interactive=False) == "enqueued"


def test_redis_errors_are_described_without_password():
    message = rq_queue.describe_error("redis://user:pw@db:6379/0", redis.ConnectionError("refused"))
    assert "pw" not in message and "redis://db:6379/0" in message


def test_stored_results_round_trip_and_splice_verbatim(settings):
    conn = rq_queue.connect(settings.redis_url)
    prefix = settings.queue_prefix
    prediction = {"result": [{"value": {"text": ["line one\nline two"], "rle": [1, 2, 3]}}], "score": 0.25,
                  "model_version": "v\n2"}
    rq_queue.store_result(conn, prefix, "ok", {"task_id": 4, "prediction": prediction}, 60)
    rq_queue.store_result(conn, prefix, "bad", {"task_id": 5, "error": "image: broken\nreally"}, 60)
    ok, bad, none = rq_queue.read_stored(conn, prefix, ["ok", "bad", "none"])
    assert json.loads(ok.prediction_json) == prediction and ok.header == {"task_id": 4}
    assert bad.prediction_json is None and bad.error == "image: broken\nreally" and none is None
    assert rq_queue.read_results(conn, prefix, ["ok", "bad"]) == [
        {"task_id": 4, "prediction": prediction}, {"task_id": 5, "error": "image: broken\nreally"}]


def test_without_a_live_worker_health_is_degraded_and_predict_answers_at_once(redis_url):
    from rq import SimpleWorker

    settings = make_settings(redis_url, predict_wait_s=30)
    conn = rq_queue.connect(redis_url)
    # A worker RQ still lists but whose heartbeat stopped (killed): it does not count.
    ghost = SimpleWorker(rq_queue.get_queues(conn, settings.queue_prefix), connection=conn,
                         serializer=JSONSerializer)
    ghost.register_birth()
    try:
        with serve(settings) as client:
            health = client.get("/health").json()
            assert health["status"] == "DEGRADED" and health["workers"] == 0
            assert "no worker is alive" in health["reason"] and "gem-labeler worker" in health["reason"]
            started = time.monotonic()
            reply = client.post("/predict", json={"tasks": [task(1), task(2, "/data/local-files/?d=b.png")],
                                                  "label_config": CONFIG})
            assert time.monotonic() - started < 3, "answered at once, not after PREDICT_WAIT_S"
            assert reply.status_code == 503 and "no worker is alive" in reply.json()["detail"]
            # The batch jobs wait in the queue for a worker; what is stored still comes back at once.
            batch = Queue(rq_queue.queue_name(settings.queue_prefix, "batch"), connection=conn,
                          serializer=JSONSerializer)
            assert batch.count == 2
            rq_queue.store_result(conn, settings.queue_prefix, batch.job_ids[0],
                                  {"task_id": 1, "prediction": {"result": [], "model_version": "v"}}, 60)
            results = client.post("/predict", json={"tasks": [task(1), task(2, "/data/local-files/?d=b.png")],
                                                    "label_config": CONFIG}).json()["results"]
            assert results[0] == {"result": [], "model_version": "v"}
            assert "no worker is alive" in results[1]["error"] and "queued" in results[1]["error"]
            with listening_worker(redis_url, settings.queue_prefix):
                assert client.get("/health").json()["status"] == "UP"
            assert client.get("/health").json()["status"] == "DEGRADED"
    finally:
        ghost.register_death()


def test_bad_setup_and_predict_answers_are_logged_with_their_reason(client, caplog):
    with caplog.at_level("WARNING", logger="gem_labeler.api"):
        assert client.post("/setup", json={"schema": "<View></View>"}).status_code == 400
        assert client.post("/setup", json={"schema": CONFIG, "extra_params": {"method": "sam"}}).status_code == 400
        assert client.post("/predict", json={"tasks": "all", "label_config": CONFIG}).status_code == 400
    messages = [r.getMessage() for r in caplog.records if r.name == "gem_labeler.api"]
    assert any(m.startswith("POST /setup answered 400: label config: ") and "no <Image>" in m for m in messages)
    assert any("POST /setup answered 400: extra_params: method must be" in m for m in messages), messages
    assert any("POST /predict answered 400: 'tasks' must be a list" in m for m in messages), messages


def test_project_ids_that_are_not_plain_words_are_refused(client):
    for project in ("1:2", "a b", "x" * 65):
        reply = client.post("/setup", json={"project": project, "schema": CONFIG})
        assert reply.status_code == 400 and "not a plain id" in reply.json()["detail"]
        reply = client.post("/predict", json={"project": project, "tasks": [task(1)], "label_config": CONFIG})
        assert reply.status_code == 400


def test_retry_failed_and_a_settings_change_drop_stored_errors(client, settings):
    conn = rq_queue.connect(settings.redis_url)
    prefix = settings.queue_prefix
    body = {"project": "9.1", "tasks": [task(1)]}
    assert client.post("/setup", json={"project": "9.1", "schema": CONFIG}).status_code == 200
    [pending] = client.post("/predict", json=body).json()["results"]
    ident = pending["job_id"]

    def fail() -> None:  # what a worker stores when the task failed
        rq_queue.store_result(conn, prefix, ident, {"task_id": 1, "error": "image: host down"}, 600, project="9")

    fail()
    assert client.post("/predict", json=body).json()["results"][0]["error"] == "image: host down"
    # The cause is fixed: a request flag computes it again now instead of after ERROR_TTL_S.
    [again] = client.post("/predict?retry_failed=true", json=body).json()["results"]
    assert again["status"] == "pending" and again["job_id"] == ident
    assert client.get(f"/jobs/{ident}").json()["status"] == "queued"
    # Other settings and back: the error stored under the first ones must not come back.
    fail()
    for extra in ({"method": "gradcam"}, {}):
        assert client.post("/setup", json={"project": "9.1", "schema": CONFIG, "extra_params": extra}).status_code == 200
    assert client.post("/predict", json=body).json()["results"][0]["status"] == "pending"
    assert rq_queue.read_stored(conn, prefix, [ident]) == [None]


def test_a_weights_file_nobody_published_gives_a_clear_503_until_a_worker_does(redis_url, tmp_path):
    from backend.jobqueue import digests

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    settings = make_settings(redis_url, model_pretrained=str(weights))
    with serve(settings) as client:
        reply = client.post("/setup", json={"schema": CONFIG})
        assert reply.status_code == 503
        assert "content digest of" in reply.json()["detail"] and "no worker is alive" in reply.json()["detail"]
        # What a worker does when it loads the file: the version is known from then on.
        digests.publish(rq_queue.connect(redis_url), settings.queue_prefix, [str(weights)])
        reply = client.post("/setup", json={"schema": CONFIG})
        assert reply.status_code == 200 and "-model.pt-" in reply.json()["model_version"]
