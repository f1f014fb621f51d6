"""Helpers for tests that run real `gem-labeler worker` processes with the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

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
