"""Fixtures of the end-to-end suite: a real Label Studio and the real product, both on loopback.

Everything here is session-scoped: Label Studio starts once (a few seconds from the cached install
and migrated database) and the backend once; each test makes its own projects.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.e2e import harness
from tests.e2e.ls_rest import LabelStudioREST

E2E_DIR = Path(__file__).parent
REPO_ROOT = E2E_DIR.parents[1]
_timings: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/e2e with `e2e`."""
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Turn a skip inside tests/e2e into a failure: these tests must never be skipped silently."""
    report = yield
    if report.skipped and E2E_DIR in Path(str(item.path)).parents and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"e2e tests must not skip: {report.longrepr}"
    return report


def pytest_runtest_setup(item):
    if E2E_DIR in Path(str(item.path)).parents:
        _timings.setdefault("first_e2e_setup", time.monotonic())


def pytest_terminal_summary(terminalreporter):
    """Print the e2e suite's wall time and setup costs, so CI logs show where the time goes."""
    if "first_e2e_setup" not in _timings:
        return
    parts = [f"{k}={v:.1f}" for k, v in _timings.items() if k != "first_e2e_setup"]
    parts.append(f"e2e_wall_s={time.monotonic() - _timings['first_e2e_setup']:.1f}")
    terminalreporter.write_line("e2e timings: " + " ".join(parts))


@pytest.fixture(scope="session")
def label_studio_install() -> harness.LabelStudioInstall:
    """The cached Label Studio virtual environment (installed from PyPI on first use)."""
    started = time.monotonic()
    install = harness.ensure_label_studio()
    _timings["label_studio_install_s" if install.install_s is not None else "label_studio_cache_check_s"] = (
        time.monotonic() - started)
    return install


@pytest.fixture(scope="session")
def label_studio(label_studio_install, tmp_path_factory) -> harness.LabelStudio:
    """A running Label Studio 1.23.2 with a fresh database, a superuser, a legacy token and a personal access token."""
    server = harness.start_label_studio(label_studio_install, tmp_path_factory.mktemp("label-studio"))
    try:
        _timings["label_studio_start_s"] = server.startup_s
        with LabelStudioREST(server.url, token=server.legacy_token) as rest:
            server.personal_access_token = rest.call("POST", "/api/token/")["token"]
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls(label_studio) -> LabelStudioREST:
    """A REST client of the running Label Studio, authenticated with the legacy token."""
    with LabelStudioREST(label_studio.url, token=label_studio.legacy_token) as client:
        yield client


@pytest.fixture(scope="session")
def gem_backend(label_studio, tiny_vit_checkpoint, redis_url, tmp_path_factory) -> harness.Backend:
    """The product (`gem-labeler serve`: API plus one worker) with the tiny ViT, wired to Label Studio."""
    env = {
        "MODEL_NAME": tiny_vit_checkpoint["model_name"],
        "MODEL_CONFIG": tiny_vit_checkpoint["model_config"],
        "MODEL_PRETRAINED": tiny_vit_checkpoint["pretrained"],
        "DEVICE": "cpu",
        "REDIS_URL": redis_url,
        # A shared REDIS_URL may hold other runs' queues: this run gets its own names.
        "QUEUE_PREFIX": f"e2e-{uuid.uuid4().hex[:8]}",
        "RESULT_TTL_S": "3600",  # what a run leaves in a shared Redis expires within the hour
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.personal_access_token,
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.files_root),
        "PREDICT_WAIT_S": "20",
        # The random tiny ViT has no evidence of anything: these tests check the plumbing on every label's
        # regions. The presence step runs at its defaults in test_meaningful_masks.py, on the trained model.
        "PRESENCE": "none",
        "BACKGROUND_PROMPTS": "",
        # Holding a Label Studio key, the API runs protected, as a user must set it up: basic auth (given in
        # the model connection's auth fields) and a webhook secret (sent in the webhook's headers).
        **harness.secure_env(),
    }
    backend = harness.start_backend(env, tmp_path_factory.mktemp("backend"), repo_root=REPO_ROOT)
    try:
        _timings["backend_start_s"] = backend.startup_s
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def scenes_backend(gem_backend, tmp_path_factory) -> harness.Backend:
    """A second `gem-labeler serve` with the trained scenes model (bench/localization.py), sharing Label
    Studio and Redis, everything else at the product's defaults (presence included)."""
    from bench import localization

    assert localization.WEIGHTS.is_file(), f"the trained fixture {localization.WEIGHTS} is missing"
    env = {k: v for k, v in gem_backend.env.items() if k not in ("HOST", "PORT", "DATA_DIR", "PRESENCE", "BACKGROUND_PROMPTS")}
    env.update({"MODEL_NAME": localization.MODEL_NAME, "MODEL_CONFIG": str(localization.CONFIG),
                "MODEL_PRETRAINED": str(localization.WEIGHTS), "QUEUE_PREFIX": f"e2e-scenes-{uuid.uuid4().hex[:8]}"})
    backend = harness.start_backend(env, tmp_path_factory.mktemp("scenes-backend"), repo_root=REPO_ROOT)
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture()
def ls_workdir(tmp_path) -> Path:
    """A folder for one test's images."""
    return tmp_path
