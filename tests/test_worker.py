"""API + a real `gem-labeler worker` process with the tiny model, on real Redis.

A fake Label Studio (a real HTTP server on loopback) receives the predictions the worker pushes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.jobqueue import queues as rq_queue
from backend.jobqueue.digests import local_contents
from backend.jobqueue.jobs import make_payload
from backend.labelstudio.label_config import parse_label_config
from backend.options import ProjectOptions, model_version
from backend.settings import Settings
from gem_engine.rle import decode_rle
from tests.loopback_http import QuietHandler, start_server
from tests.test_api import free_port, serve
from tests.worker_processes import start_worker, worker_env

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="red square"/><Label value="blue disk"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="red square"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="blue disk"/></RectangleLabels>
  <TextArea name="prompt" toName="image"/>
</View>"""
ROOT = Path(__file__).parents[1]


class FakeLabelStudio:
    """Records POST /api/predictions/ bodies, as Label Studio would store them."""

    def __init__(self) -> None:
        self.predictions: list[dict] = []
        self.auth: list[str] = []
        owner = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.auth.append(self.headers.get("Authorization", ""))
                if self.path.rstrip("/") == "/api/predictions":
                    owner.predictions.append(body)
                    self.reply(201, {"id": len(owner.predictions), **body})
                else:
                    self.reply(404, b"{}")

        self.server = start_server(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def scene(path: Path, size: tuple[int, int] = (160, 120)) -> None:
    """Write a small PNG: a red square and a blue disk on grey."""
    width, height = size
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels[20:70, 15:65] = (220, 30, 30)
    yy, xx = np.mgrid[:height, :width]
    pixels[(yy - 70) ** 2 + (xx - 115) ** 2 < 30**2] = (30, 30, 220)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    scene(folder / "scene.png")
    scene(folder / "other.png", (128, 96))
    for i in range(4):
        scene(folder / f"s{i}.png", (96 + 16 * i, 96))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return folder


@pytest.fixture(scope="module")
def ls() -> Iterator[FakeLabelStudio]:
    fake = FakeLabelStudio()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def stack(redis_url, tiny_vit_checkpoint, files, ls, tmp_path_factory):
    """A running worker process and the settings the API must use with it."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    # The API here runs without auth while holding a Label Studio key: the explicit opt-out.
    extra = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": "test-token", "PREDICT_WAIT_S": "60",
             "JOB_RETRIES": "0", "ALLOW_UNAUTHENTICATED": "true"}
    env = worker_env(redis_url, prefix, tiny_vit_checkpoint, files, **extra)
    log_path = tmp_path_factory.mktemp("logs") / "worker.log"
    process = start_worker(env, log_path)
    settings = Settings.from_env(env)
    conn = rq_queue.connect(redis_url)
    deadline = time.monotonic() + 120
    while rq_queue.worker_count(conn, prefix) == 0:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {log_path.read_text()}")
        time.sleep(0.2)
    yield {"settings": settings, "log": log_path, "conn": conn}
    process.terminate()
    process.wait(30)


def local(name: str) -> str:
    return f"/data/local-files/?d={name}"


def test_batch_predict_good_and_bad_tasks(stack):
    settings = stack["settings"]
    with serve(settings) as client:
        version = client.post("/setup", json={"project": "1.0", "schema": CONFIG}).json()["model_version"]
        tasks = [
            {"id": 1, "data": {"image": local("scene.png")}},
            {"id": 2, "data": {"image": local("corrupt.png")}},
            {"id": 3, "data": {"image": "http://10.0.0.1/a.png"}},
            {"id": 4, "data": {"image": local("../../etc/passwd")}},
            {"id": 5, "data": {"text": "no image"}},
            {"id": 6, "data": {"image": local("other.png")}},
        ]
        reply = client.post("/predict", json={"tasks": tasks, "project": "1.0"})
        assert reply.status_code == 200
        results = reply.json()["results"]
    assert len(results) == len(tasks)
    for good in (results[0], results[5]):
        assert good["model_version"] == version
        # The prediction scores the mean of its regions; every region gives exactly one brush result (both
        # labels are BrushLabels), and its polygon / box results carry the same score as its brush.
        region_scores = [r["score"] for r in good["result"] if r["type"] == "brushlabels"]
        assert region_scores and good["score"] == pytest.approx(sum(region_scores) / len(region_scores), abs=1e-6)
        for r in good["result"]:
            label = r["value"].get("polygonlabels", r["value"].get("rectanglelabels", [None]))[0]
            if label is not None:
                same = [b["score"] for b in good["result"]
                        if b["type"] == "brushlabels" and b["value"]["brushlabels"] == [label]]
                assert r["score"] in same
        types = {(r["from_name"], r["type"]) for r in good["result"]}
        assert types <= {("brush", "brushlabels"), ("poly", "polygonlabels"), ("box", "rectanglelabels")}
        assert ("brush", "brushlabels") in types
        for r in good["result"]:
            assert r["to_name"] == "image" and r["original_width"] in (160, 128)
    brush = next(r for r in results[0]["result"] if r["type"] == "brushlabels")
    mask = decode_rle(brush["value"]["rle"], 120, 160)
    assert mask.any() and brush["value"]["brushlabels"][0] in ("red square", "blue disk")
    assert "not" in results[1]["error"] and "result" not in results[1]
    assert "10.0.0.1" in results[2]["error"]
    assert "result" not in results[3] and results[3]["error"]
    assert "no image under 'image'" in results[4]["error"]
    log = stack["log"].read_text()
    assert f"task 2 job {results[1]['job_id']}: failed" in log
    assert "task 1 job " in log and "stored" in log


def test_repeat_request_reuses_results(stack):
    settings, conn = stack["settings"], stack["conn"]
    tasks = [{"id": 11, "data": {"image": local("scene.png")}}]
    with serve(settings) as client:
        first = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()["results"]
        finished = [q.finished_job_registry.count for q in rq_queue.get_queues(conn, settings.queue_prefix)]
        started = time.monotonic()
        second = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()["results"]
        assert time.monotonic() - started < 2  # no engine run: the stored result
    assert second == first and "result" in first[0]
    assert [q.finished_job_registry.count for q in rq_queue.get_queues(conn, settings.queue_prefix)] == finished
    assert all(q.count == 0 for q in rq_queue.get_queues(conn, settings.queue_prefix))


def test_interactive_text_prompt(stack):
    settings = stack["settings"]
    context = {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                           "value": {"text": ["something round and blue"]}}]}
    with serve(settings) as client:
        reply = client.post("/predict", json={"tasks": [{"id": 21, "data": {"image": local("scene.png")}}],
                                              "label_config": CONFIG, "params": {"context": context}})
    assert reply.status_code == 200, reply.text
    (item,) = reply.json()["results"]
    assert "result" in item
    # Free text outside the vocabulary: each control's first label names the region.
    for r in item["result"]:
        label = r["value"][r["type"]][0]
        assert label == {"brush": "red square", "poly": "red square", "box": "blue disk"}[r["from_name"]]


def test_interactive_keypoint_selects_the_component_under_it(stack):
    settings = stack["settings"]
    with serve(settings) as client:
        full = client.post("/predict", json={"tasks": [{"id": 31, "data": {"image": local("scene.png")}}],
                                             "label_config": CONFIG}).json()["results"][0]
        brush = [r for r in full["result"] if r["type"] == "brushlabels"]
        assert brush, "the tiny model found nothing to click on"
        label = brush[0]["value"]["brushlabels"][0]
        mask = decode_rle(brush[0]["value"]["rle"], 120, 160)
        ys, xs = np.nonzero(mask)
        x, y = xs[len(xs) // 2], ys[len(ys) // 2]
        point = {"type": "keypointlabels", "is_positive": True, "original_width": 160, "original_height": 120,
                 "value": {"x": (x + 0.5) * 100 / 160, "y": (y + 0.5) * 100 / 120, "keypointlabels": [label]}}
        reply = client.post("/predict", json={"tasks": [{"id": 31, "data": {"image": local("scene.png")}}],
                                              "label_config": CONFIG, "params": {"context": {"result": [point]}}})
    assert reply.status_code == 200, reply.text
    picked = [r for r in reply.json()["results"][0]["result"] if r["type"] == "brushlabels"]
    assert len(picked) == 1 and picked[0]["value"]["brushlabels"] == [label]
    assert decode_rle(picked[0]["value"]["rle"], 120, 160)[y, x]


def test_interactive_rectangle_keeps_the_mask_inside(stack):
    settings = stack["settings"]
    rect = {"type": "rectanglelabels", "value": {"x": 50, "y": 25, "width": 50, "height": 75,
                                                 "rectanglelabels": ["blue disk"]}}
    with serve(settings) as client:
        reply = client.post("/predict", json={"tasks": [{"id": 41, "data": {"image": local("scene.png")}}],
                                              "label_config": CONFIG, "params": {"context": {"result": [rect]}}})
    assert reply.status_code == 200, reply.text
    for r in reply.json()["results"][0]["result"]:
        assert r["value"][r["type"]] == ["blue disk"]
        if r["type"] == "brushlabels":
            mask = decode_rle(r["value"]["rle"], 120, 160)
            assert not mask[:, :80].any() and not mask[:30].any()


def test_late_results_are_pushed_to_label_studio(stack, ls):
    from dataclasses import replace

    settings = replace(stack["settings"], predict_wait_s=0.0)
    with serve(settings) as client:
        reply = client.post("/predict", json={"tasks": [{"id": 51, "data": {"image": local("other.png")}}],
                                              "label_config": CONFIG})
    (item,) = reply.json()["results"]
    assert item["status"] == "pending" and "push it to Label Studio" in item["detail"]
    deadline = time.monotonic() + 60
    while not any(p.get("task") == 51 for p in ls.predictions):
        assert time.monotonic() < deadline, "the worker never pushed the late prediction"
        time.sleep(0.1)
    pushed = next(p for p in ls.predictions if p.get("task") == 51)
    assert pushed["result"] and pushed["model_version"].startswith("gem-labeler-gem-tiny-vit-")
    assert "test-token" in ls.auth[-1]


def test_webhook_prelabels_new_tasks(stack, ls):
    settings = stack["settings"]
    with serve(settings) as client:
        before = len(ls.predictions)
        client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 7, "label_config": CONFIG},
                                      "tasks": [{"id": 61, "data": {"image": local("scene.png")}}]})
        deadline = time.monotonic() + 60
        while not any(p.get("task") == 61 for p in ls.predictions[before:]):
            assert time.monotonic() < deadline, "webhook task was never pre-labeled and pushed"
            time.sleep(0.1)
        # The next /predict for that task returns the stored result at once.
        started = time.monotonic()
        results = client.post("/predict", json={"tasks": [{"id": 61, "data": {"image": local("scene.png")}}],
                                                "project": "7", "label_config": CONFIG}).json()["results"]
        assert time.monotonic() - started < 2 and "result" in results[0]


def test_worker_batches_waiting_jobs_and_stores_failures(redis_url, tiny_vit_checkpoint, files, tmp_path):
    """Jobs waiting together run as one engine batch; a broken job fails with a clear stored error."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    env = worker_env(redis_url, prefix, tiny_vit_checkpoint, files, WORKER_BATCH_SIZE="4", JOB_RETRIES="0",
                     ALLOWED_IMAGE_HOSTS="127.0.0.1", ALLOW_PRIVATE_ADDRESSES="true")
    settings = Settings.from_env(env)
    conn = rq_queue.connect(redis_url)
    vocabulary = parse_label_config(CONFIG)
    options = ProjectOptions.from_settings(settings)
    ids = []
    for i in range(4):
        payload = make_payload(job=f"{prefix}-b{i}", prefix=prefix, project="1", task={"id": 100 + i},
                               image_url=local(f"s{i}.png"), vocabulary=vocabulary, options=options,
                               version=model_version(options, local_contents(options)))
        rq_queue.enqueue(conn, settings, payload, interactive=False)
        ids.append(payload["job_id"])
    broken = {"job_id": f"{prefix}-broken", "prefix": prefix, "task_id": 200, "project": "1",
              "options": options.to_dict()}
    rq_queue.enqueue(conn, settings, broken, interactive=False)
    # A host that refuses connections: a transient error, retried by RQ, then stored by the failure callback.
    refused = make_payload(job=f"{prefix}-refused", prefix=prefix, project="1", task={"id": 201},
                           image_url=f"http://127.0.0.1:{free_port()}/a.png", vocabulary=vocabulary,
                           options=options, version=model_version(options, local_contents(options)))
    rq_queue.enqueue(conn, settings, refused, interactive=False)
    # Enqueued last, served first: the interactive queue comes before the batch queue.
    urgent = make_payload(job=f"{prefix}-urgent", prefix=prefix, project="1", task={"id": 300},
                          image_url=local("scene.png"), vocabulary=vocabulary, options=options,
                          version=model_version(options, local_contents(options)), context={"result": [{"type": "textarea",
                                                                               "value": {"text": ["red"]}}]})
    rq_queue.enqueue(conn, settings, urgent, interactive=True)
    process = start_worker(env, tmp_path / "burst.log", "--burst")
    assert process.wait(180) == 0, (tmp_path / "burst.log").read_text()
    fetched = {j: Job.fetch(j, connection=conn, serializer=JSONSerializer) for j in [*ids, urgent["job_id"]]}
    assert fetched[urgent["job_id"]].ended_at <= min(fetched[j].started_at for j in ids)
    assert "prediction" in rq_queue.read_results(conn, prefix, [urgent["job_id"]])[0]
    summaries = [fetched[j].return_value() for j in ids]
    assert summaries[0]["batch"] == 4
    assert all(s.get("batched") for s in summaries[1:])
    assert all("prediction" in r for r in rq_queue.read_results(conn, prefix, ids))
    seconds, images = rq_queue.engine_totals(conn, prefix)["gem"]
    assert images == 5 and seconds > 0  # the batch of 4 and the urgent one
    info = rq_queue.job_status(conn, prefix, broken["job_id"])
    assert info["status"] == "failed" and "malformed job payload" in info["error"] and "vocabulary" in info["error"]
    info = rq_queue.job_status(conn, prefix, refused["job_id"])
    assert info["status"] == "failed" and info["error"].startswith("RuntimeError: image:"), info
    assert "127.0.0.1" in info["error"]


def test_worker_without_weights_exits_with_a_clear_message(redis_url, tiny_vit_checkpoint, files, tmp_path):
    env = worker_env(redis_url, "tnoweights", tiny_vit_checkpoint, files, MODEL_PRETRAINED="/nowhere/w.pt")
    process = start_worker(env, tmp_path / "w.log", "--burst")
    assert process.wait(120) == 3
    text = (tmp_path / "w.log").read_text()
    assert "cannot load the model" in text and "/nowhere/w.pt" in text


def test_per_project_options_from_setup(stack):
    """A project's extra params switch the method and the output types; its model version says so."""
    settings = stack["settings"]
    with serve(settings) as client:
        setup = client.post("/setup", json={"project": "9.5", "schema": CONFIG,
                                            "extra_params": {"method": "gradcam", "outputs": "polygon,rectangle"}})
        version = setup.json()["model_version"]
        assert version.startswith("gem-labeler-gradcam-tiny-vit-")
        reply = client.post("/predict", json={"tasks": [{"id": 71, "data": {"image": local("scene.png")}}],
                                              "project": "9.5"})
    (item,) = reply.json()["results"]
    assert item["model_version"] == version
    assert item["result"] and {r["type"] for r in item["result"]} <= {"polygonlabels", "rectanglelabels"}
    seconds, images = rq_queue.engine_totals(stack["conn"], settings.queue_prefix)["gradcam"]
    assert images >= 1 and seconds > 0


def test_engine_cache_shares_a_model_between_methods_and_bounds_models(tiny_vit_checkpoint, files, tmp_path):
    import shutil

    from backend.labeling.pipeline import MAX_MODELS, EngineCache, predict_payloads

    settings = Settings.from_env(worker_env("", "tcache", tiny_vit_checkpoint, files))
    cache = EngineCache(settings)
    options = ProjectOptions.from_settings(settings)
    gem, gradcam = cache.get(options), cache.get(options.with_params({"method": "gradcam"}))
    assert gem.loaded is gradcam.loaded and gem.method == "gem" and gradcam.method == "gradcam"
    for i in range(MAX_MODELS + 1):  # the same architecture under distinct weight files
        copy = tmp_path / f"copy{i}.pt"
        shutil.copy(tiny_vit_checkpoint["pretrained"], copy)
        cache.get(options.with_params({"model_pretrained": str(copy)}))
    assert len(cache._models) == MAX_MODELS
    assert all(key[1].endswith((f"copy{MAX_MODELS - 1}.pt", f"copy{MAX_MODELS}.pt")) for key in cache._models)
    # A project naming a model nobody has: an error for its tasks, not a crash and not a retry.
    vocabulary = parse_label_config(CONFIG)
    bad = options.with_params({"model": "no-such-model", "model_config": ""})
    payload = make_payload(job="j", prefix="tcache", project="1", task={"id": 1}, image_url=local("scene.png"),
                           vocabulary=vocabulary, options=bad, version=model_version(bad, local_contents(bad)))
    (outcome,) = predict_payloads([payload], cache, settings)
    assert outcome.prediction is None and not outcome.retry and "no-such-model" in outcome.error


def test_weights_enter_the_model_version_by_their_content_which_workers_publish(stack, tiny_vit_checkpoint,
                                                                                 tmp_path):
    """Two checkpoints named model.pt get two versions; the same file in another folder keeps its version."""
    import hashlib
    import shutil

    from backend.jobqueue import digests

    settings, conn = stack["settings"], stack["conn"]
    default = tiny_vit_checkpoint["pretrained"]
    # The worker published its own weights' digest when it started.
    assert digests.published(conn, settings.queue_prefix, [default]) == {
        default: hashlib.sha256(Path(default).read_bytes()).hexdigest()}
    paths = {name: tmp_path / name / "model.pt" for name in ("a", "b", "c")}
    for path in paths.values():
        path.parent.mkdir()
        shutil.copy(default, path)
    with paths["b"].open("ab") as handle:
        handle.write(b"other weights")
    versions = {}
    with serve(settings) as client:
        for index, (name, path) in enumerate(paths.items()):
            reply = client.post("/setup", json={"project": f"6{index}", "schema": CONFIG,
                                                "extra_params": {"model_pretrained": str(path)}})
            assert reply.status_code == 200, reply.text
            versions[name] = reply.json()["model_version"]
    assert all("-model.pt-" in version for version in versions.values())
    assert versions["a"] != versions["b"], "different weights under one file name share no predictions"
    assert versions["a"] == versions["c"], "the same weights mounted elsewhere keep their version"
    # The API never read those files: it asked the worker, which published their digests.
    assert set(digests.published(conn, settings.queue_prefix, [str(p) for p in paths.values()])) == {
        str(p) for p in paths.values()}
    assert "digest of" in stack["log"].read_text()
