"""Helpers for tests that run real `gem-labeler worker` processes with the tiny model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

ROOT = Path(__file__).parents[1]


def worker_env(redis_url: str, prefix: str, checkpoint: dict, files: Path, **extra: str) -> dict[str, str]:
    """Return the environment of a worker (or API) process using the tiny model and local files."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "QUEUE_PREFIX": prefix,
        "MODEL_NAME": checkpoint["model_name"],
        "MODEL_CONFIG": checkpoint["model_config"],
        "MODEL_PRETRAINED": checkpoint["pretrained"],
        "DEVICE": "cpu",
        "LOCAL_FILES_DOCUMENT_ROOT": str(files),
        "PYTHONPATH": str(ROOT),
        "DATA_DIR": str(files.parent / "data"),
        # The random-weight tiny ViT has no evidence of anything being in an image: these tests check the
        # plumbing (jobs, results, pushes) on every label's regions, so they keep every label and no background
        # class. Presence and background are tested on the trained fixture model (tests/test_prelabel.py,
        # tests/e2e/test_meaningful_masks.py).
        "PRESENCE": "none",
        "BACKGROUND_PROMPTS": "",
        **extra,
    }


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """Start `gem-labeler worker` with its output in `log_path`."""
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", *args], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.05):
    """Return the first truthy value of `predicate()`; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


@contextmanager
def listening_worker(redis_url: str, prefix: str) -> Iterator[str]:
    """Yield the name of a worker that is registered and alive (its heartbeat beats) but takes no job: a
    worker busy elsewhere, as the API sees it. The API tests need one because /predict answers at once
    when no worker is alive."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from backend.jobqueue import queues as rq_queue
    from backend.jobqueue.reaper import Heartbeat

    conn = rq_queue.connect(redis_url)
    worker = SimpleWorker(rq_queue.get_queues(conn, prefix), connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    heartbeat = Heartbeat(conn, prefix, worker.name).start()
    try:
        yield worker.name
    finally:
        heartbeat.stop()
        worker.register_death()


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server on a loopback port with its own directory, persisting every write (AOF).

    `stop()` shuts it down the way an operator would (SHUTDOWN, AOF flushed); `start()` brings it back on
    the same port with the same data, so tests can take Redis away in the middle of a run.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        """Start the server and return self once it answers PING."""
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                   "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.folder / 'redis.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Shut the server down (its data stays on disk) and wait for the process to end."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)  # redis-server treats SIGTERM as SHUTDOWN
        self.process.wait(20)
        self.process = None

    def client(self) -> redis.Redis:
        """Return a client of this server."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)
