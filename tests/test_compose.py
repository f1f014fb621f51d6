"""docker-compose.yml and Dockerfile checked against the settings module (Docker cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from backend.settings import ENV_VARS, Settings

ROOT = Path(__file__).parents[1]
SETTING_NAMES = {name for name, _, _ in ENV_VARS}
# Variables read by libraries rather than by backend.settings.
LIBRARY_VARS = {"HF_HUB_OFFLINE", "HF_HOME"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_profiles(compose):
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "label-studio"}
    assert services["label-studio"]["profiles"] == ["label-studio"]
    for name in ("redis", "api", "worker", "label-studio"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    assert services["api"]["command"] == ["api"] and services["worker"]["command"] == ["worker"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_is_internal_only(compose):
    redis = compose["services"]["redis"]
    assert "ports" not in redis, "Redis must not be published on the host (Label Studio would pick it up)"
    for network in redis["networks"]:
        assert compose["networks"][network].get("internal") is True
    assert "label-studio" not in [s for s, spec in compose["services"].items()
                                  if set(spec.get("networks", [])) & set(redis["networks"])]


def test_worker_scales_and_reserves_a_gpu(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # `--scale worker=N` needs both absent
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert worker["image"] == compose["services"]["api"]["image"]


def test_environment_matches_settings(compose):
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        unknown = set(env) - SETTING_NAMES - LIBRARY_VARS
        assert not unknown, f"{name} sets variables backend.settings does not read: {unknown}"
        assert env["REDIS_URL"].startswith("redis://redis:")
        # Every value must parse with the settings module (compose defaults substituted).
        resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items() if k in SETTING_NAMES}
        Settings.from_env(resolved)
    api = compose["services"]["api"]
    port = api["environment"]["PORT"]
    assert any(str(p).endswith(f":{port}") for p in api["ports"])
    assert port == str(Settings.from_env({}).port)


def test_the_api_listens_on_all_interfaces_only_because_compose_says_so_and_is_protected(compose):
    from backend.service.auth import check_protection
    from backend.settings import SettingsError

    api = compose["services"]["api"]["environment"]
    assert api["HOST"] == "0.0.0.0" and Settings.from_env({}).host == "127.0.0.1"
    # Every way to protect the API reaches it from .env, and none is switched off by default.
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "WEBHOOK_SECRET", "ALLOW_UNAUTHENTICATED"):
        assert name in api, name
    resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in api.items() if k in SETTING_NAMES}
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET"):
        check_protection(Settings.from_env({**resolved, "LABEL_STUDIO_API_KEY": "token"}))
    check_protection(Settings.from_env({**resolved, "LABEL_STUDIO_API_KEY": "token", "WEBHOOK_SECRET": "s"}))


def test_model_volume_holds_the_cache(compose):
    assert {"models", "redis-data", "label-studio-data"} <= set(compose["volumes"])
    worker = compose["services"]["worker"]
    # "source:target[:mode]", where the source may be "${VAR:-default}" (which holds a colon itself).
    mounts = {}
    for volume in worker["volumes"]:
        source, target = re.match(r"^(\$\{[^}]*\}|[^:]+):([^:]+)", volume).groups()
        mounts[target] = source
    assert mounts["/models"] == "models"
    assert worker["environment"]["MODEL_CACHE_DIR"].startswith("/models/")
    assert worker["environment"]["LOCAL_FILES_DOCUMENT_ROOT"] in mounts


def test_dockerfile_runs_the_cli():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["gem-labeler"]' in text
    assert f"EXPOSE {Settings.from_env({}).port}" in text
    assert "requirements.txt" in text and "HEALTHCHECK" in text
    for name in re.findall(r"^\s+([A-Z_]+)=", text, flags=re.M):
        assert name in SETTING_NAMES | LIBRARY_VARS | {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                                                       "PIP_DISABLE_PIP_VERSION_CHECK"}, name


def test_cpu_override_drops_the_gpu_reservation_and_sets_cpu_settings(compose):
    class ComposeLoader(yaml.SafeLoader):
        """YAML loader that knows compose's `!reset` merge tag."""

    ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")
    override = yaml.load((ROOT / "docker-compose.cpu.yml").read_text(), Loader=ComposeLoader)
    assert set(override["services"]) <= set(compose["services"])
    worker = override["services"]["worker"]
    assert worker["deploy"] == "!reset"
    settings = Settings.from_env({k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v))
                                  for k, v in worker["environment"].items()})
    # fp16 on a CPU is refused: the override must not inherit the GPU file's fp16 default.
    assert (settings.device, settings.precision) == ("cpu", "auto")
