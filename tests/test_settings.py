"""Settings: every variable parsed from the environment, defaults, and clear errors for bad values."""

from __future__ import annotations

import dataclasses

import pytest

from backend.settings import ENV_VARS, Settings, SettingsError, env_name


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings.redis_url == ""
    assert settings.model_name == "ViT-B-16"
    assert settings.model_pretrained == "openai"
    assert settings.method == "gem"
    # Loopback unless told otherwise (docker compose sets HOST=0.0.0.0): an open port is opt-in.
    assert settings.port == 9090 and settings.host == "127.0.0.1"
    assert settings.job_max_attempts == 3 and not settings.allow_unauthenticated and not settings.webhook_secret
    assert 0 < settings.predict_wait_s < 100  # Label Studio gives up after 100 s
    assert not settings.auth_enabled and not settings.can_push


def test_values_are_parsed_by_type():
    settings = Settings.from_env(
        {
            "PORT": "8080",
            "PREDICT_WAIT_S": "2.5",
            "ALLOWED_IMAGE_HOSTS": "a.example, b.example,,",
            "METHOD": "gradcam",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "p",
            "LABEL_STUDIO_URL": "http://ls:8080",
            "LABEL_STUDIO_API_KEY": "k",
        }
    )
    assert settings.port == 8080
    assert settings.predict_wait_s == 2.5
    assert settings.allowed_image_hosts == ("a.example", "b.example")
    assert settings.method == "gradcam"
    assert settings.auth_enabled and settings.can_push


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PORT": "http"}, "PORT='http' is not a valid int"),
        ({"PREDICT_WAIT_S": "soon"}, "PREDICT_WAIT_S"),
        ({"METHOD": "sam"}, "METHOD must be 'gem', 'gradcam', 'naclip', 'sclip' or 'clearclip'"),
        ({"REGION_MODE": "panoptic"}, "REGION_MODE"),
        ({"PRECISION": "int8"}, "PRECISION"),
        ({"BASIC_AUTH_USER": "only-user"}, "BASIC_AUTH_PASS"),
        ({"JOB_TIMEOUT_S": "0"}, "JOB_TIMEOUT_S must be positive"),
        ({"JOB_RETRIES": "-1"}, "JOB_RETRIES"),
        ({"JOB_MAX_ATTEMPTS": "0"}, "JOB_MAX_ATTEMPTS must be positive"),
        ({"CALIBRATION_MAX_BYTES": "0"}, "CALIBRATION_MAX_BYTES must be positive"),
        # QUEUE_PREFIX starts Redis keys and job ids: no colon, no space, bounded.
        ({"QUEUE_PREFIX": "a:b"}, "QUEUE_PREFIX must be 1 to 64 letters"),
        ({"QUEUE_PREFIX": "my queue"}, "QUEUE_PREFIX must be 1 to 64 letters"),
        ({"QUEUE_PREFIX": "q" * 65}, "QUEUE_PREFIX must be 1 to 64 letters"),
        ({"QUEUE_PREFIX": ""}, "QUEUE_PREFIX must be 1 to 64 letters"),
    ],
)
def test_bad_values_name_the_variable(environ, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(environ)


def test_every_field_has_a_documented_variable():
    names = [name for name, _, _ in ENV_VARS]
    assert len(names) == len(set(names)) == len(dataclasses.fields(Settings))
    for field in dataclasses.fields(Settings):
        assert field.metadata["meaning"].strip(), field.name
        assert env_name(field.name) == field.metadata["env"]
    for required in ("REDIS_URL", "MODEL_NAME", "MODEL_PRETRAINED", "MODEL_CONFIG", "MODEL_CACHE_DIR", "DEVICE",
                     "PRECISION", "METHOD", "PREDICT_WAIT_S", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY",
                     "LOCAL_FILES_DOCUMENT_ROOT", "ALLOWED_IMAGE_HOSTS", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                     "DATA_DIR", "RESULT_TTL_S", "JOB_TIMEOUT_S"):
        assert required in names


def test_readme_documents_every_variable():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    missing = [name for name, _, _ in ENV_VARS if name not in rows]
    assert not missing, f"README configuration table lacks {missing}"
    for name, default, _ in ENV_VARS:
        expected = "(empty)" if default == "" else f"`{default.lower() if default in ('True', 'False') else default}`"
        assert rows[name] == expected, f"README gives {name} the default {rows[name]}, settings {expected}"


BOOLEAN_VARIABLES = [(f.metadata["env"], f.name) for f in dataclasses.fields(Settings) if isinstance(f.default, bool)]


@pytest.mark.parametrize(("variable", "field_name"), BOOLEAN_VARIABLES)
@pytest.mark.parametrize(("raw", "value"), [
    ("1", True), ("0", False), ("true", True), ("false", False), ("yes", True), ("no", False), ("on", True),
    ("off", False), ("TRUE", True), ("False", False), ("Yes", True), ("NO", False), ("On", True), ("oFF", False),
    (" yes ", True), ("", False),
])
def test_every_boolean_variable_reads_the_usual_spellings(variable, field_name, raw, value):
    assert getattr(Settings.from_env({variable: raw}), field_name) is value


@pytest.mark.parametrize(("variable", "_field"), BOOLEAN_VARIABLES)
@pytest.mark.parametrize("raw", ["2", "y", "enabled", "truee", "-1", "nope"])
def test_an_invalid_boolean_is_a_configuration_error_naming_the_variable(variable, _field, raw):
    with pytest.raises(SettingsError, match=rf"^{variable}={raw!r} is not a valid bool$"):
        Settings.from_env({variable: raw})


def test_the_boolean_variables_are_the_documented_two():
    assert sorted(name for name, _ in BOOLEAN_VARIABLES) == ["ALLOW_PRIVATE_ADDRESSES", "ALLOW_UNAUTHENTICATED"]


def test_from_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("PORT", "8123")
    assert Settings.from_env().port == 8123


def test_option_variables_are_read_by_their_option_not_as_plain_text():
    # IMAGE_SIZE's default is the text "auto": read as plain text, "224" would stay a string.
    settings = Settings.from_env({"PAMR_ITERATIONS": "2", "IMAGE_SIZE": "224"})
    assert settings.pamr_iterations == 2 and settings.image_size == 224 and isinstance(settings.image_size, int)


def test_overrides_are_checked_like_the_environment():
    with pytest.raises(SettingsError, match="METHOD must be"):
        Settings.from_env({}, method="sam")
    with pytest.raises(SettingsError, match="^the per-project defaults: input_mode="):
        Settings.from_env({"METHOD": "gradcam", "INPUT_MODE": "aspect"})


@pytest.mark.parametrize("environ", [
    {"PRECISION": "fp16"}, {"PRECISION": "bf16"}, {"PREDICT_WAIT_S": "0"}, {"PREDICT_WAIT_S": "0.5"},
    {"JOB_RETRIES": "0"}, {"RESULT_TTL_S": "1"}, {"ERROR_TTL_S": "1"}, {"JOB_TIMEOUT_S": "1"},
    {"WORKER_BATCH_SIZE": "1"}, {"PORT": "1"}, {"MAX_REQUEST_BYTES": "1"}, {"PUSH_MAX_AGE_S": "1"},
    {"PUSH_BACKOFF_S": "0.5"}, {"JOB_MAX_ATTEMPTS": "1"},
])
def test_smallest_allowed_values_are_accepted(environ):
    [(name, raw)] = environ.items()
    settings = Settings.from_env(environ)
    value = getattr(settings, next(f.name for f in dataclasses.fields(Settings) if f.metadata["env"] == name))
    assert str(value) == raw or value == float(raw)


@pytest.mark.parametrize(("environ", "message"), [
    ({"BASIC_AUTH_PASS": "p"}, "^set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither$"),
    ({"PREDICT_WAIT_S": "-1"}, r"^PREDICT_WAIT_S must be >= 0, not -1.0$"),
    ({"JOB_RETRIES": "-1"}, "^JOB_RETRIES must be >= 0, not -1$"),
    ({"PRECISION": "FP16"}, "^PRECISION must be 'auto', 'fp32', 'bf16' or 'fp16', not 'FP16'$"),
    ({"PRECISION": "fp16", "DEVICE": "cpu"},
     "^the per-project defaults: PRECISION='fp16' runs on a GPU only, and DEVICE=cpu: use 'bf16', 'fp32' or 'auto'$"),
    ({"PUSH_BACKOFF_S": "0"}, "^PUSH_BACKOFF_S must be positive, not 0.0$"),
])
def test_error_messages_in_full(environ, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(environ)
