"""Project mode against a recording Label Studio stand-in on loopback, real Redis and real worker processes.

The real Label Studio is driven by the end-to-end suite; here the point is the paging, skipping, resume,
batching and summary logic, so the stand-in records every call it gets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
import redis
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from backend.cli import prelabel as bulk
from backend.jobqueue import queues as rq_queue
from backend.jobqueue.digests import local_contents
from backend.options import ProjectOptions, model_version
from backend.settings import Settings
from tests.loopback_http import QuietHandler, start_server

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="cat"/><Label value="remote control"/></BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="cat"/><Label value="remote control"/></RectangleLabels>
</View>
"""
TOKEN = "legacy-token-123"
PROJECT = 7
REPO = Path(__file__).resolve().parents[1]


class FakeLabelStudio:
    """The few Label Studio endpoints prelabel uses, answering like Label Studio 1.x and recording calls."""

    def __init__(self, tasks: list[dict]) -> None:
        self.tasks = tasks
        self.uploads: dict[str, bytes] = {}  # path -> file, served like Label Studio's /data/upload/
        self.predictions: dict[int, list[dict]] = defaultdict(list)
        self.calls: list[tuple[str, str, dict, object]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(QuietHandler):
            def _handle(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    fake.calls.append((method, parts.path, query, body))
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self.reply(401, {"detail": "Authentication credentials were not provided."})
                status, answer = fake.route(method, parts.path, query, body)
                self.reply(status, answer)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = start_server(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, method: str, path: str, query: dict, body: object) -> tuple[int, object]:
        with self.lock:
            if method == "GET" and path in self.uploads:
                return 200, self.uploads[path]
            if method == "GET" and path == f"/api/projects/{PROJECT}/":
                return 200, {"id": PROJECT, "title": "test", "label_config": CONFIG}
            if method == "GET" and path == "/api/tasks/":
                assert query["project"] == str(PROJECT) and query["fields"] == "task_only"
                page, size = int(query["page"]), int(query["page_size"])
                chunk = self.tasks[(page - 1) * size : page * size]
                if not chunk and page > 1:
                    return 404, {"detail": "Invalid page."}
                # task_only: counts, no embedded annotations or predictions
                listed = [{"id": t["id"], "data": t["data"], "total_annotations": t.get("total_annotations", 0),
                           "total_predictions": len(self.predictions[t["id"]])} for t in chunk]
                return 200, {"tasks": listed, "total": len(self.tasks)}
            if method == "GET" and path == "/api/predictions/":
                return 200, list(self.predictions[int(query["task"])])
            if method == "POST" and path == f"/api/projects/{PROJECT}/import/predictions":
                for prediction in body:
                    self.predictions[int(prediction["task"])].append(prediction)
                return 201, {"created": len(body)}
        return 404, {"detail": f"no route {method} {path}"}

    def posts(self) -> list[list[dict]]:
        return [body for method, _, _, body in self.calls if method == "POST"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def project_env(tmp_path, redis_url, tiny_vit_checkpoint, monkeypatch):
    """Images, a Label Studio stand-in with 11 tasks of every kind, and the environment pointing at both."""
    root = tmp_path / "files"
    for index in range(1, 10):
        _image(root / f"img{index}.jpg", index)
    prefix = f"test-bulk-{uuid.uuid4().hex[:8]}"  # isolates this test's queues and keys on a shared Redis
    env = {
        "REDIS_URL": redis_url, "QUEUE_PREFIX": prefix, "LOCAL_FILES_DOCUMENT_ROOT": str(root), "DEVICE": "cpu",
        "DATA_DIR": str(tmp_path / "data"), "JOB_RETRIES": "0", "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "",
        "MODEL_NAME": tiny_vit_checkpoint["model_name"], "MODEL_CONFIG": tiny_vit_checkpoint["model_config"],
        "MODEL_PRETRAINED": tiny_vit_checkpoint["pretrained"], "WORKER_BATCH_SIZE": "4",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    defaults = ProjectOptions.from_settings(Settings.from_env())
    version = model_version(defaults, local_contents(defaults))

    def task(ident: int, image: str | None, **extra) -> dict:
        data = {"image": f"/data/local-files/?d={image}"} if image else {"caption": "no image here"}
        return {"id": ident, "data": data, **extra}

    tasks = [task(i, f"img{i}.jpg") for i in range(1, 7)]
    tasks += [
        task(7, "img7.jpg", total_annotations=1),  # annotated: skipped unless --include-annotated
        task(8, "img8.jpg"),  # already predicted by this version: skipped
        task(9, "img9.jpg"),  # predicted by another version: done
        task(10, "missing.jpg"),  # the worker cannot read it: failed with the reason
        task(11, None),  # no image at all: failed before enqueueing
    ]
    fake = FakeLabelStudio(tasks)
    fake.predictions[8].append({"task": 8, "model_version": version, "result": []})
    fake.predictions[9].append({"task": 9, "model_version": "someone-else-v1", "result": []})
    yield {"fake": fake, "prefix": prefix, "redis_url": redis_url, "version": version, "root": root}
    fake.close()
    conn = redis.Redis.from_url(redis_url)
    keys = list(conn.scan_iter(f"*{prefix}*"))
    if keys:
        conn.delete(*keys)


def prelabel(env: dict, *extra: str, capsys) -> tuple[int, dict, str]:
    argv = ["--project", str(PROJECT), "--url", env["fake"].url, "--api-key", TOKEN, "--page-size", "4",
            "--json", "--no-progress", *extra]
    code = bulk.main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]), "\n".join(out[:-1])


def test_dry_run_pages_and_skips_without_writing(project_env, capsys):
    fake = project_env["fake"]
    code, summary, text = prelabel(project_env, "--dry-run", capsys=capsys)
    assert code == 1  # the task without an image is already a failure
    assert (summary["total"], summary["done"], summary["skipped"], summary["failed"]) == (11, 8, 2, 1)
    assert "would pre-label 8" in text and "11" in text and "no image under 'image'" in text
    pages = [int(q["page"]) for m, p, q, _ in fake.calls if p == "/api/tasks/"]
    assert pages == [1, 2, 3]
    assert all(m == "GET" for m, *_ in fake.calls)
    # Only tasks whose listing says they hold predictions are asked about them.
    asked = sorted(int(q["task"]) for m, p, q, _ in fake.calls if p == "/api/predictions/")
    assert asked == [8, 9]
    conn = redis.Redis.from_url(project_env["redis_url"])
    assert conn.llen(f"rq:queue:{rq_queue.queue_name(project_env['prefix'], 'batch')}") == 0

    code, summary, _ = prelabel(project_env, "--dry-run", "--limit", "3", "--include-annotated", capsys=capsys)
    assert (summary["total"], summary["done"]) == (3, 3)
    code, summary, _ = prelabel(project_env, "--dry-run", "--include-annotated", capsys=capsys)
    assert (summary["done"], summary["skipped"]) == (9, 1)


def test_run_pushes_in_batches_then_a_rerun_does_nothing(project_env, capsys):
    fake = project_env["fake"]
    code, summary, text = prelabel(project_env, "--workers", "1", "--push-batch", "3", capsys=capsys)
    assert code == 1, text
    assert (summary["total"], summary["done"], summary["skipped"], summary["failed"]) == (11, 7, 2, 2)
    failures = {f["item"]: f["reason"] for f in summary["failures"]}
    assert set(failures) == {"10", "11"}
    assert "missing.jpg" in failures["10"] or "not found" in failures["10"].lower()
    assert "10" in text and "11" in text  # the failure table

    posts = fake.posts()
    assert posts and all(1 <= len(batch) <= 3 for batch in posts)
    pushed = sorted(p["task"] for batch in posts for p in batch)
    assert pushed == [1, 2, 3, 4, 5, 6, 9], "each task exactly once, none skipped or failed"
    interface = LabelInterface(CONFIG)
    for batch in posts:
        for prediction in batch:
            assert prediction["model_version"] == project_env["version"]
            body = {k: v for k, v in prediction.items() if k != "task"}
            assert interface.validate_prediction(body, return_errors=True) == []

    fake.calls.clear()
    code, summary, _ = prelabel(project_env, capsys=capsys)  # no local workers: nothing may need computing
    assert code == 1
    assert (summary["done"], summary["skipped"], summary["failed"], summary["pending"]) == (0, 9, 2, 0)
    assert fake.posts() == [], "nothing is stored twice"


def test_bad_credentials_and_missing_redis_are_clear(project_env, capsys, monkeypatch):
    argv = ["--project", str(PROJECT), "--url", project_env["fake"].url, "--api-key", "wrong", "--dry-run"]
    assert bulk.main(argv) == 2
    assert "401" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_URL", "")
    assert bulk.main(["--project", "1"]) == 2
    assert "LABEL_STUDIO_URL" in capsys.readouterr().err
    monkeypatch.setenv("REDIS_URL", "")
    assert bulk.main(["--project", str(PROJECT), "--url", project_env["fake"].url, "--api-key", TOKEN]) == 2
    assert "REDIS_URL" in capsys.readouterr().err
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert bulk.main(["--project", str(PROJECT), "--url", project_env["fake"].url, "--api-key", TOKEN]) == 2
    assert "unreachable" in capsys.readouterr().err


def test_ctrl_c_leaves_jobs_queued_and_a_rerun_finishes_them(project_env):
    fake = project_env["fake"]
    command = [sys.executable, "-m", "backend.cli", "prelabel", "--project", str(PROJECT), "--url", fake.url,
               "--api-key", TOKEN, "--json", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # No worker listens on this test's queue, so the jobs stay queued until Ctrl-C.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn = redis.Redis.from_url(project_env["redis_url"])
    queue_key = f"rq:queue:{rq_queue.queue_name(project_env['prefix'], 'batch')}"
    deadline = time.monotonic() + 120
    while conn.llen(queue_key) < 8:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "jobs were not enqueued in time"
        time.sleep(0.05)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert time.monotonic() - started < 8, "nothing was running, so there is nothing to wait for"
    assert "interrupted" in stdout and "run the same command again" in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["pending"], summary["failed"]) == (0, 8, 1)
    assert fake.posts() == []
    job_ids = conn.lrange(queue_key, 0, -1)

    rerun = subprocess.run([*command, "--workers", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 1, rerun.stderr  # task 10 (missing file) and 11 (no image) fail
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"], summary["pending"]) == (7, 2, 0)
    assert sorted(p["task"] for batch in fake.posts() for p in batch) == [1, 2, 3, 4, 5, 6, 9]
    # The rerun reused the queued jobs (same deterministic ids) instead of enqueueing new ones.
    finished = {rq_queue.key(project_env["prefix"], "result", j.decode()) for j in job_ids}
    assert all(conn.exists(k) for k in finished)


def test_local_run_without_redis_url_uses_a_private_embedded_redis(project_env, capsys, monkeypatch, tmp_path):
    from backend.jobqueue.embedded import running_socket

    monkeypatch.setenv("REDIS_URL", "")
    code, summary, text = prelabel(project_env, "--workers", "1", "--limit", "3", capsys=capsys)
    assert code == 0, text
    assert (summary["total"], summary["done"], summary["failed"]) == (3, 3, 0)
    assert sorted(p["task"] for batch in project_env["fake"].posts() for p in batch) == [1, 2, 3]
    # Its private server is gone with it, and it never took DATA_DIR's own (a `gem-labeler serve`'s).
    data = tmp_path / "data"
    assert running_socket(data) is None and not list(data.glob("prelabel-redis-*"))


def test_prelabel_beside_a_running_serve_never_stops_its_embedded_redis(project_env, capsys, monkeypatch, tmp_path):
    """`make run` (serve, embedded Redis in DATA_DIR) and a prelabel without REDIS_URL in the same folder."""
    from backend.jobqueue.embedded import running_socket
    from tests.test_api import free_port

    data = tmp_path / "data"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DATA_DIR": str(data), "REDIS_URL": ""}
    serve = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--workers", "0", "--port", str(port)],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None and time.monotonic() < deadline, serve.stderr.read() if serve.poll() else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["redis"] == "ok":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        queue = redis.Redis(unix_socket_path=running_socket(data))
        queue.set("serve-was-here", "1")
        monkeypatch.setenv("REDIS_URL", "")
        for extra in (["--dry-run"], ["--workers", "1", "--limit", "2"]):
            code, summary, text = prelabel(project_env, *extra, capsys=capsys)
            assert code in (0, 1) and summary["total"] >= 2, text
            # The running server was attached to, used and left running, with its data.
            assert serve.poll() is None and running_socket(data) is not None
            assert queue.get("serve-was-here") == b"1"
            health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
            assert health["redis"] == "ok", health
        assert sorted(p["task"] for batch in project_env["fake"].posts() for p in batch) == [1, 2]
        assert queue.keys(f"{project_env['prefix']}:result:*"), "the run used the server's Redis"
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(30)
    assert running_socket(data) is None, "serve stops the server it started"


def test_lost_jobs_are_reported_instead_of_waited_on_forever(project_env, capsys):
    from rq.job import Job
    from rq.serializers import JSONSerializer

    conn = redis.Redis.from_url(project_env["redis_url"])
    queue_key = f"rq:queue:{rq_queue.queue_name(project_env['prefix'], 'batch')}"
    outcome: dict = {}
    # No worker listens; in a thread (no signal handler there) the command waits for its 8 jobs.
    runner = threading.Thread(target=lambda: outcome.update(code=bulk.main(
        ["--project", str(PROJECT), "--url", project_env["fake"].url, "--api-key", TOKEN, "--json", "--no-progress"])))
    runner.start()
    deadline = time.monotonic() + 60
    while conn.llen(queue_key) < 8:
        assert time.monotonic() < deadline and runner.is_alive(), "jobs were not enqueued"
        time.sleep(0.05)
    for ident in conn.lrange(queue_key, 0, -1):
        Job.fetch(ident.decode(), connection=conn, serializer=JSONSerializer).delete()  # lost, say by a FLUSHDB
    runner.join(timeout=60)
    assert not runner.is_alive(), "the command kept waiting for jobs that no longer exist"
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert outcome["code"] == 1
    assert (summary["failed"], summary["pending"], summary["done"]) == (9, 0, 0)
    assert sum("disappeared" in f["reason"] for f in summary["failures"]) == 8


def test_local_workers_use_the_url_and_key_given_on_the_command_line(project_env, capsys, tmp_path):
    """--url/--api-key reach the --workers processes: they read Label Studio uploads with them."""
    fake = project_env["fake"]
    for index in (1, 2):
        fake.uploads[f"/data/upload/{PROJECT}/up{index}.jpg"] = (project_env["root"] / f"img{index}.jpg").read_bytes()
    fake.tasks[:] = [{"id": 500 + i, "data": {"image": f"/data/upload/{PROJECT}/up{i}.jpg"}} for i in (1, 2)]
    assert os.environ["LABEL_STUDIO_URL"] == "" and os.environ["LABEL_STUDIO_API_KEY"] == ""
    code, summary, text = prelabel(project_env, "--workers", "1", capsys=capsys)
    assert code == 0, text
    assert (summary["done"], summary["failed"]) == (2, 0)
    fetched = [path for method, path, _, _ in fake.calls if path.startswith("/data/upload/")]
    assert sorted(set(fetched)) == sorted(fake.uploads)


def test_retry_failed_computes_a_failed_task_again_now(project_env, capsys):
    fake = project_env["fake"]
    fake.tasks[:] = [t for t in fake.tasks if t["id"] == 10]  # its image, missing.jpg, does not exist
    code, summary, _ = prelabel(project_env, "--workers", "1", capsys=capsys)
    assert (code, summary["failed"]) == (1, 1) and "missing.jpg" in summary["failures"][0]["reason"]
    _image(project_env["root"] / "missing.jpg", 10)  # the cause is fixed
    code, summary, _ = prelabel(project_env, capsys=capsys)  # no worker: the stored error answers
    assert (code, summary["failed"], summary["done"]) == (1, 1, 0)
    code, summary, text = prelabel(project_env, "--workers", "1", "--retry-failed", capsys=capsys)
    assert (code, summary["failed"], summary["done"]) == (0, 0, 1), text
    assert [p["task"] for batch in fake.posts() for p in batch] == [10]


def test_the_progress_bar_counts_each_task_as_its_result_arrives(project_env):
    """Not in steps of a push batch: each computed task moves the bar before anything is pushed."""
    import io

    from backend.bulk.common import Progress, Summary
    from backend.bulk.project import _collect

    conn = redis.Redis.from_url(project_env["redis_url"])
    prefix = project_env["prefix"]
    outstanding = {f"{prefix}-job{i}": 600 + i for i in range(5)}
    to_push: list[dict] = []
    summary = Summary()
    with Progress(5, desc="project", stream=io.StringIO()) as bar:
        for index, ident in enumerate(list(outstanding)):
            result = {"task_id": 600 + index, "prediction": {"result": [], "model_version": "v"}}
            if index == 3:
                result = {"task_id": 603, "error": "image: broken"}
            rq_queue.store_result(conn, prefix, ident, result, 60)
            assert _collect(conn, prefix, outstanding, to_push, summary, bar) == 1
            assert bar.done + bar.failed == index + 1
    assert (bar.done, bar.failed, len(to_push)) == (4, 1, 4)


def test_prelabel_says_which_model_settings_it_uses(project_env, capsys):
    assert bulk.main(["--project", str(PROJECT), "--url", project_env["fake"].url, "--api-key", TOKEN, "--dry-run",
                      "--no-progress", "--threshold", "0.4"]) == 1
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("model settings: "))
    assert "method=gem model=tiny-vit" in line and "pretrained=" in line and "threshold=0.4" in line
    assert "pamr_iterations=auto(10)" in line  # "auto" and the number it runs as in semantic mode
    assert f"model version {project_env['version']}" not in line  # the flag changed the version
    assert "this shell's environment (METHOD, MODEL_NAME, MODEL_PRETRAINED" in line and "the flags" in line
