"""Every environment variable the backend reads, with its default and meaning, in one place.

A setting is one dataclass field whose metadata names the variable and says what it means; the defaults of
the per-project options (`backend.options.OPTIONS`) are fields too, added from that table, each read and
checked by its option. The README's configuration table and the docker-compose test are checked against
`ENV_VARS`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend.options import Option, OptionsError, ProjectOptions, option_fields, spell
from backend.presets import with_preset


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


# Queue names, Redis keys (`<prefix>:<kind>:<id>`) and RQ job ids (`<prefix>-<hash>`, RQ allows [A-Za-z0-9_-])
# all start with it: no colon (it would overlap another deployment's keys), no space, bounded.
QUEUE_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _env(name: str, default: Any, meaning: str) -> Any:
    return field(default=default, metadata={"env": name, "meaning": meaning})


@dataclass(frozen=True)
@option_fields  # the defaults of the per-project options, one field each (METHOD, MODEL_NAME, THRESHOLD, ...)
class Settings:
    """Backend configuration, read from the environment by `Settings.from_env`."""

    # Redis and queues
    redis_url: str = _env("REDIS_URL", "", "Redis URL shared by the API and workers (`redis://host:6379/0`, "
                          "`unix:///path.sock`); empty: `gem-labeler serve` starts an embedded Redis in DATA_DIR")
    queue_prefix: str = _env("QUEUE_PREFIX", "gem-labeler",
                             "prefix of queue names and Redis keys, so several deployments can share one Redis "
                             "(1 to 64 letters, digits, `-` or `_`)")
    result_ttl_s: int = _env("RESULT_TTL_S", 86400, "seconds a finished prediction is kept in Redis")
    error_ttl_s: int = _env("ERROR_TTL_S", 600,
                            "seconds a failed task's error is kept; a request after that computes it again (so "
                            "does `retry_failed`, and a change of the project's label config or model version "
                            "drops it)")
    job_timeout_s: int = _env("JOB_TIMEOUT_S", 300, "seconds one job may run before the worker stops it")
    job_retries: int = _env("JOB_RETRIES", 2, "retries (with backoff) of a job that failed for a transient reason")
    job_max_attempts: int = _env("JOB_MAX_ATTEMPTS", 3,
                                 "times a job may start in a worker process that then dies (out of memory, a crash, "
                                 "a kill) before its task gets an error instead of another attempt")
    worker_batch_size: int = _env("WORKER_BATCH_SIZE", 8,
                                  "images a worker runs through the engine together when several jobs wait")
    # Model (which model, method and region options: the per-project options, fields added by @option_fields)
    model_cache_dir: str = _env("MODEL_CACHE_DIR", "",
                                "where open_clip / Hugging Face weights are cached or mounted (empty: their default)")
    device: str = _env("DEVICE", "auto", "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`")
    # HTTP API
    host: str = _env("HOST", "127.0.0.1",
                     "address the API listens on (`0.0.0.0`: every interface; docker compose sets that)")
    port: int = _env("PORT", 9090, "port the API listens on")
    predict_wait_s: float = _env("PREDICT_WAIT_S", 30.0,
                                 "seconds /predict waits for results (Label Studio gives up after 100 s)")
    max_request_bytes: int = _env("MAX_REQUEST_BYTES", 16 * 1024 * 1024,
                                  "largest request body the API reads, in bytes (larger: 413)")
    basic_auth_user: str = _env("BASIC_AUTH_USER", "", "with BASIC_AUTH_PASS: HTTP basic auth on every route")
    basic_auth_pass: str = _env("BASIC_AUTH_PASS", "", "password for BASIC_AUTH_USER")
    webhook_secret: str = _env("WEBHOOK_SECRET", "",
                               "secret every `/webhook` call must carry in its `X-Webhook-Secret` header (set it "
                               "in Label Studio's webhook headers)")
    allow_unauthenticated: bool = _env("ALLOW_UNAUTHENTICATED", False,
                                       "let the API start with LABEL_STUDIO_API_KEY but neither basic auth nor "
                                       "WEBHOOK_SECRET (anyone who reaches it can then make it write predictions "
                                       "into Label Studio)")
    # Label Studio and images
    label_studio_url: str = _env("LABEL_STUDIO_URL", "",
                                 "Label Studio base URL, for uploads, presigned cloud URLs and pushing late predictions")
    label_studio_api_key: str = _env("LABEL_STUDIO_API_KEY", "",
                                     "Label Studio legacy token or personal access token")
    push_max_age_s: int = _env("PUSH_MAX_AGE_S", 86400,
                               "seconds a failed push to Label Studio is retried from the Redis outbox before it is "
                               "dropped (logged; the prediction stays in Redis)")
    push_backoff_s: float = _env("PUSH_BACKOFF_S", 30.0,
                                 "seconds before the first outbox retry of a failed push; doubles up to an hour")
    local_files_document_root: str = _env("LOCAL_FILES_DOCUMENT_ROOT", "",
                                          "folder served as `/data/local-files/?d=...` (same as Label Studio's)")
    allowed_image_hosts: tuple[str, ...] = _env("ALLOWED_IMAGE_HOSTS", (),
                                                "comma list of extra hosts images may be fetched from")
    allow_private_addresses: bool = _env("ALLOW_PRIVATE_ADDRESSES", False,
                                         "allow image hosts that resolve to loopback/private addresses "
                                         "(link-local such as 169.254.169.254 stays refused; Label Studio itself is always allowed)")
    image_max_bytes: int = _env("IMAGE_MAX_BYTES", 50 * 1024 * 1024, "largest image file accepted, in bytes")
    image_max_pixels: int = _env("IMAGE_MAX_PIXELS", 50_000_000,
                                 "largest image accepted, in pixels (width x height; decompression-bomb guard)")
    fetch_connect_timeout_s: float = _env("FETCH_CONNECT_TIMEOUT_S", 5.0, "seconds to connect to an image host")
    fetch_read_timeout_s: float = _env("FETCH_READ_TIMEOUT_S", 30.0,
                                       "seconds an image host may stay silent while sending")
    fetch_total_timeout_s: float = _env("FETCH_TOTAL_TIMEOUT_S", 120.0, "seconds one image download may take in all")
    # Calibration
    calibration_max_bytes: int = _env("CALIBRATION_MAX_BYTES", 4 * 1024**3,
                                      "bytes of maps and masks a calibration holds at once (the maps cost about "
                                      "4 bytes x (labels + background prompts) x 320 x 240 a task); past it the "
                                      "most recently annotated tasks are fitted and the report says how many older "
                                      "ones were left out")
    # Process
    data_dir: str = _env("DATA_DIR", "data", "folder for the embedded Redis and other local state")
    log_level: str = _env("LOG_LEVEL", "INFO", "Python logging level")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Return settings read from `environ` (default `os.environ`), then `overrides` applied."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if name in environ:
                option = f.metadata.get("option")
                values[f.name] = _read_option(option, environ[name]) if option else _parse(name, environ[name], f.default)
        values.update(overrides)
        # PRESET fills the option defaults it names, except those given as variables (or overrides) beside it.
        settings = cls(**with_preset(values))
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise SettingsError naming the first variable whose value cannot work."""
        for f in dataclasses.fields(self):  # values given as overrides are checked like the environment's
            if "option" in f.metadata:
                _read_option(f.metadata["option"], getattr(self, f.name))
        try:
            ProjectOptions.from_settings(self)
        except OptionsError as exc:  # two defaults that cannot work together
            raise SettingsError(f"the per-project defaults: {exc}") from None
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if not QUEUE_PREFIX_PATTERN.fullmatch(self.queue_prefix):
            raise SettingsError(f"QUEUE_PREFIX must be 1 to 64 letters, digits, '-' or '_' (it starts Redis keys "
                                f"and job ids), not {self.queue_prefix!r}")
        for name in ("result_ttl_s", "error_ttl_s", "job_timeout_s", "worker_batch_size", "port", "max_request_bytes",
                     "push_max_age_s", "push_backoff_s", "job_max_attempts", "calibration_max_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be positive, not {getattr(self, name)}")
        if self.predict_wait_s < 0:
            raise SettingsError(f"PREDICT_WAIT_S must be >= 0, not {self.predict_wait_s}")
        if self.job_retries < 0:
            raise SettingsError(f"JOB_RETRIES must be >= 0, not {self.job_retries}")

    @property
    def auth_enabled(self) -> bool:
        """Return whether basic auth is required."""
        return bool(self.basic_auth_user)

    @property
    def api_protected(self) -> bool:
        """Return whether callers of the API must prove who they are (basic auth, or the webhook secret)."""
        return bool(self.basic_auth_user or self.webhook_secret)

    @property
    def can_push(self) -> bool:
        """Return whether predictions can be pushed to Label Studio through its REST API."""
        return bool(self.label_studio_url and self.label_studio_api_key)


def _parse(name: str, raw: str, default: Any) -> Any:
    raw = raw.strip()
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off", ""):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError:
        kind = type(default).__name__
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw


def _read_option(option: Option, raw: Any) -> Any:
    try:
        return option.read(raw, option.env)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def env_name(field_name: str) -> str:
    """Return the environment variable behind a Settings field."""
    return next(f.metadata["env"] for f in dataclasses.fields(Settings) if f.name == field_name)


# (variable, default as the environment would spell it, meaning), in declaration order.
ENV_VARS: list[tuple[str, str, str]] = [
    (
        f.metadata["env"],
        spell(f.default),
        f.metadata["meaning"],
    )
    for f in dataclasses.fields(Settings)
]
