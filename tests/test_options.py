"""The per-project option table: every option reads the same from its variable, its extra param and its flag,
a bad value names the key it came under, the model version and engine keys follow the table, and the README
documents every option as declared."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.cli import prelabel
from backend.options import (
    AUTO_PAMR_ITERATIONS,
    OPTIONS,
    ContentUnknown,
    OptionsError,
    ProjectOptions,
    content_files,
    model_version,
    spell,
)
from backend.service.app import create_app
from backend.settings import ENV_VARS, Settings, SettingsError

ROOT = Path(__file__).parents[1]
DEFAULTS = Settings.from_env({})
CONFIG = '<View><Image name="i" value="$image"/><BrushLabels name="b" toName="i"><Label value="cat"/></BrushLabels></View>'
# A value other than the default, as text, for options whose effect the tests below check; an option not
# listed here is checked with its default spelled as text.
EXAMPLES = {
    "method": "gradcam",
    "model_name": "ViT-B-32",
    "model_pretrained": "/weights/a/tiny.pt",
    "region_mode": "independent",
    "threshold": "0.4",
    "min_area": "0.01",
    "score_threshold": "0.2",
    "outputs": "polygon, rectangle",
    "model_config": "/configs/tiny-vit.json",
    "image_size": "336",
    "input_mode": "aspect",
    "templates": "ensemble",
    "gem_blocks": "4",
    "pamr_iterations": "2",
    "presence": "image",
    "presence_threshold": "0.7",
    "label_presence_thresholds": "cat=0.3,remote control=0.6",
    "background_prompts": "background, wall, floor",
    "background_threshold": "0.4",
    "logit_scale": "50",
    "precision": "bf16",
    "score_slope": "0.5",
    "score_offset": "-1.25",
    "window_size": "224",
    "window_stride": "0.5",
    "max_side": "2048",
    "preset": "naclip",
}
BAD = {
    "method": "sam",
    "region_mode": "panoptic",
    "threshold": "high",
    "min_area": "big",
    "score_threshold": "nan",
    "outputs": "masks",
    "image_size": "8",
    "input_mode": "crop",
    "templates": "all",
    "gem_blocks": "1.5",
    "pamr_iterations": "-1",
    "presence": "maybe",
    "presence_threshold": "1.5",
    "label_presence_thresholds": "cat:0.3",
    "background_threshold": "-0.1",
    "logit_scale": "0",
    "precision": "fp8",
    "score_slope": "0",
    "score_offset": "101",
    "window_size": "8",
    "window_stride": "1.5",
    "max_side": "8",
    "preset": "maskclip",
}
VERSION_CELL = {"spelled": "in its name", "hashed": "in its hash", "none": "no"}


def _text(option) -> str:
    return EXAMPLES.get(option.name, spell(option.default))


def _from_flag(option, text: str) -> ProjectOptions:
    args = prelabel.build_parser().parse_args(["--images", "photos", option.flag, text])
    return ProjectOptions.from_settings(DEFAULTS, prelabel.flag_params(args))


def test_keys_variables_and_flags_are_unique_and_known():
    for attribute in ("key", "env", "flag", "name"):
        values = [getattr(o, attribute) for o in OPTIONS]
        assert len(values) == len(set(values)), attribute
    variables = {name for name, _, _ in ENV_VARS}
    assert {o.env for o in OPTIONS} <= variables


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_variable_extra_param_and_flag_give_the_same_value(option):
    text = _text(option)
    from_env = ProjectOptions.from_settings(Settings.from_env({option.env: text}))
    from_params = ProjectOptions.from_settings(DEFAULTS, {option.key: text})
    assert from_env == from_params == _from_flag(option, text)
    assert ProjectOptions.from_dict(from_env.to_dict()) == from_env
    if option.name in EXAMPLES:
        assert getattr(from_env, option.name) != option.default


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_names_its_key_wherever_it_comes_from(name, tmp_path, capsys):
    option = next(o for o in OPTIONS if o.name == name)
    bad = BAD[name]
    with pytest.raises(SettingsError, match=f"^{option.env}[ =]"):
        Settings.from_env({option.env: bad})
    with pytest.raises(OptionsError, match=f"^{option.key}[ =]"):
        ProjectOptions.from_settings(DEFAULTS, {option.key: bad})
    reply = TestClient(create_app(DEFAULTS)).post("/setup", json={"schema": CONFIG, "extra_params": {option.key: bad}})
    assert reply.status_code == 400 and reply.json()["detail"].startswith(f"extra_params: {option.key}")
    out = tmp_path / "out"
    assert prelabel.main(["--images", str(tmp_path), "--config", "x.xml", "--out", str(out), option.flag, bad]) == 2
    assert f"gem-labeler prelabel: {option.flag}" in capsys.readouterr().err
    assert not out.exists()


def test_wrong_types_in_extra_params_are_named():
    for params, message in [({"min_area": [1]}, "min_area=[1] has the wrong type: a number needed"),
                            ({"method": 5}, "method=5 has the wrong type: text needed"),
                            ({"outputs": [1]}, "outputs=[1] has the wrong type"),
                            ({"threshold": True}, "threshold must be 'otsu' or a number in [0, 1], not True")]:
        with pytest.raises(OptionsError) as caught:
            ProjectOptions.from_settings(DEFAULTS, params)
        assert str(caught.value).startswith(message), caught.value


def test_the_model_version_changes_only_on_purpose():
    # Pinned so that a reordered table or a changed fingerprint shows here. Adding an option changes every version
    # (its value enters the digest), which is intended: a release with new options makes different predictions,
    # and Label Studio must not mix them with the old ones. Update the pin in the commit that adds the option.
    assert model_version(ProjectOptions.from_settings(DEFAULTS)) == "gem-labeler-gem-ViT-B-16-openai-41caa05d"
    explicit = ProjectOptions.from_settings(DEFAULTS, {o.key: spell(o.default) for o in OPTIONS})
    assert model_version(explicit) == model_version(ProjectOptions.from_settings(DEFAULTS))
    custom = ProjectOptions.from_settings(DEFAULTS, {
        "method": "gradcam", "model": "tiny-vit", "model_pretrained": "/w/a/tiny.pt", "model_config": "/x/tiny-vit.json",
        "threshold": 0.4, "min_area": "0.01", "score_threshold": 0.2, "outputs": ["polygon", "brush"],
        "region_mode": "independent"})
    # Files enter by their content too (since issue 16): a version needs their digests.
    with pytest.raises(ContentUnknown, match="/w/a/tiny.pt, /x/tiny-vit.json"):
        model_version(custom)
    version = model_version(custom, {"/w/a/tiny.pt": "aa", "/x/tiny-vit.json": "bb"})
    assert version.startswith("gem-labeler-gradcam-tiny-vit-tiny.pt-")


def _digests(options: ProjectOptions) -> dict[str, str]:
    """Made-up content digests, one per file path."""
    return {path: f"digest-of-{path}" for path in content_files(options)}


def test_two_checkpoints_with_one_file_name_get_two_versions_and_one_file_moved_keeps_its_version():
    first = ProjectOptions.from_settings(DEFAULTS, {"model_pretrained": "/weights/a/model.pt"})
    second = ProjectOptions.from_settings(DEFAULTS, {"model_pretrained": "/weights/b/model.pt"})
    assert content_files(first) == ["/weights/a/model.pt"]
    different = model_version(first, {"/weights/a/model.pt": "1111"}), model_version(second, {"/weights/b/model.pt": "2222"})
    assert different[0] != different[1], "the content decides, not the file name"
    moved = model_version(second, {"/weights/b/model.pt": "1111"})
    assert moved == different[0], "the same file mounted elsewhere keeps its version"
    assert content_files(ProjectOptions.from_settings(DEFAULTS)) == []  # a tag has no file


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.name in EXAMPLES], ids=lambda o: o.name)
def test_the_model_version_and_engine_keys_follow_the_table(option):
    # PAMR held at a number: "auto" follows the region mode (its own test below).
    base = ProjectOptions.from_settings(DEFAULTS, {} if option.name == "pamr_iterations" else {"pamr_iterations": 10})
    changed = base.with_params({option.key: EXAMPLES[option.name]})
    assert (model_version(changed, _digests(changed)) != model_version(base)) == (option.version != "none")
    assert (changed.model_key() != base.model_key()) == (option.stage == "model")
    assert (changed.engine_key() != base.engine_key()) == (option.stage in ("model", "engine"))


def test_a_payload_without_a_newer_option_takes_its_default():
    options = ProjectOptions.from_settings(DEFAULTS, {"threshold": "0.3"})
    older = {k: v for k, v in options.to_dict().items() if k != "outputs"}
    assert ProjectOptions.from_dict(older) == options


def test_readme_documents_every_option_as_declared():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    assert list(rows) == [o.key for o in OPTIONS], "README's per-project options table lists other keys"
    for option in OPTIONS:
        default = spell(option.default)
        expected = [f"`{option.env}`", f"`{option.flag}`", f"`{default}`" if default else "(empty)",
                    VERSION_CELL[option.version], option.meaning]
        assert rows[option.key] == expected, option.key


def test_the_engine_choices_are_the_engines_own():
    from backend import options
    from gem_engine.engine import METHODS
    from gem_engine.precision import CHOICES
    from gem_engine.preprocess import INPUT_MODES
    from gem_engine.text import TEMPLATE_SETS

    assert set(options.METHOD_CHOICES) <= set(METHODS)
    assert options.INPUT_MODES == INPUT_MODES and options.TEMPLATE_SETS == TEMPLATE_SETS
    assert set(options.PRECISIONS) == set(CHOICES)


def test_options_that_cannot_work_together_are_refused_where_they_are_given():
    with pytest.raises(OptionsError, match="^input_mode='sliding' does not work with method='gradcam'"):
        ProjectOptions.from_settings(DEFAULTS, {"method": "gradcam", "input_mode": "sliding"})
    with pytest.raises(SettingsError, match="per-project defaults: input_mode='aspect' does not work"):
        Settings.from_env({"METHOD": "gradcam", "INPUT_MODE": "aspect"})
    gradcam = Settings.from_env({"METHOD": "gradcam"})
    with pytest.raises(OptionsError, match="does not work with method='gradcam'"):
        ProjectOptions.from_settings(gradcam, {"input_mode": "aspect"})
    assert ProjectOptions.from_settings(gradcam, {"method": "gem", "input_mode": "aspect"}).input_mode == "aspect"


def test_whole_number_options_read_auto_and_refuse_fractions():
    options = ProjectOptions.from_settings(DEFAULTS, {"image_size": "AUTO", "gem_blocks": 3, "pamr_iterations": 10.0})
    assert (options.image_size, options.gem_blocks, options.pamr_iterations) == ("auto", 3, 10)
    assert ProjectOptions.from_settings(DEFAULTS, {"pamr_iterations": " Auto"}).pamr_iterations == "auto"
    for params, message in [({"max_side": "auto"}, "max_side='auto' has the wrong type: a whole number needed"),
                            ({"pamr_iterations": "ten"}, "pamr_iterations='ten' has the wrong type: a whole number "
                                                         "or 'auto' needed"),
                            ({"image_size": 2049}, "image_size must be auto or a whole number in [16, 2048]"),
                            ({"gem_blocks": True}, "gem_blocks=True has the wrong type")]:
        with pytest.raises(OptionsError) as caught:
            ProjectOptions.from_settings(DEFAULTS, params)
        assert str(caught.value).startswith(message), caught.value


def test_auto_pamr_follows_the_region_mode_and_a_number_given_wins():
    assert AUTO_PAMR_ITERATIONS == {"semantic": 10, "independent": 0}  # README, "Which method, measured"
    for params, runs in [({}, 10), ({"region_mode": "independent"}, 0), ({"pamr_iterations": 0}, 0),
                         ({"region_mode": "independent", "pamr_iterations": 5}, 5)]:
        options = ProjectOptions.from_settings(DEFAULTS, params)
        assert options.resolved("pamr_iterations") == runs, params
        assert options.pamr_iterations == params.get("pamr_iterations", "auto")
    assert ProjectOptions.from_settings(Settings.from_env({"PAMR_ITERATIONS": "3"})).resolved("pamr_iterations") == 3


def test_the_model_version_and_engine_key_hold_the_pamr_iterations_that_run():
    def version_and_key(params):
        options = ProjectOptions.from_settings(DEFAULTS, params)
        return model_version(options), options.engine_key()

    assert version_and_key({}) == version_and_key({"pamr_iterations": 10})
    assert version_and_key({}) != version_and_key({"pamr_iterations": 0})
    independent = {"region_mode": "independent"}
    assert version_and_key(independent) == version_and_key({**independent, "pamr_iterations": 0})
    assert version_and_key(independent)[1] != version_and_key({})[1], "two region modes, two engines"


def test_every_engine_option_reaches_the_engine_the_workers_and_folders_use(tiny_vit_checkpoint):
    from backend.labeling.pipeline import EngineCache

    settings = Settings.from_env({"DEVICE": "cpu", "MODEL_NAME": tiny_vit_checkpoint["model_name"],
                                  "MODEL_CONFIG": tiny_vit_checkpoint["model_config"],
                                  "MODEL_PRETRAINED": tiny_vit_checkpoint["pretrained"]})
    cache = EngineCache(settings)
    default = cache.get(ProjectOptions.from_settings(settings))
    assert (default.size, default.options.input_mode, default.options.templates, default.options.pamr_iterations) == (
        448, "square", "single", 10)
    chosen = cache.get(ProjectOptions.from_settings(settings, {
        "image_size": 96, "input_mode": "sliding", "templates": "ensemble", "gem_blocks": 1, "pamr_iterations": 2,
        "method": "naclip", "window_size": 64, "window_stride": 0.5, "max_side": 160}))
    assert chosen is not default and chosen.method == "naclip"
    assert (chosen.size, chosen.options.input_mode, chosen.options.templates, chosen.options.pamr_iterations) == (
        96, "sliding", "ensemble", 2)
    assert (chosen.options.window_size, chosen.options.window_stride, chosen.options.max_side) == (64, 0.5, 160)
    assert (default.options.window_size, default.options.window_stride, default.options.max_side) == (None, 2 / 3, 1344)
    independent = cache.get(ProjectOptions.from_settings(settings, {"region_mode": "independent"}))
    assert independent is not default and independent.options.pamr_iterations == 0
    gem = cache.get(ProjectOptions.from_settings(settings, {"gem_blocks": 1}))
    assert gem.gem_options.blocks == 1 and default.gem_options.blocks != 1


def test_precision_reaches_the_loaded_model_and_fp16_is_refused_on_a_cpu_deployment(tiny_vit_checkpoint):
    import torch

    from backend.labeling.pipeline import EngineCache

    settings = Settings.from_env({"DEVICE": "cpu", "MODEL_NAME": tiny_vit_checkpoint["model_name"],
                                  "MODEL_CONFIG": tiny_vit_checkpoint["model_config"],
                                  "MODEL_PRETRAINED": tiny_vit_checkpoint["pretrained"], "PRECISION": "fp32"})
    cache = EngineCache(settings)
    fp32 = cache.get(ProjectOptions.from_settings(settings))
    bf16 = cache.get(ProjectOptions.from_settings(settings, {"precision": "bf16"}))
    assert fp32.loaded.dtype == torch.float32 and bf16.loaded.dtype == torch.bfloat16
    assert bf16.loaded.model is not fp32.loaded.model
    with pytest.raises(OptionsError, match="^precision='fp16' runs on a GPU only, and DEVICE=cpu"):
        ProjectOptions.from_settings(settings, {"precision": "fp16"})
    # DEVICE=auto may find a GPU: the API accepts fp16, and a CPU-only worker refuses it when it loads the model.
    assert ProjectOptions.from_settings(DEFAULTS, {"precision": "fp16"}).precision == "fp16"


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16", "fp16"])
def test_precision_reads_the_same_from_variable_extra_param_and_flag(value):
    option = next(o for o in OPTIONS if o.name == "precision")
    assert option.default == "auto"
    from_env = ProjectOptions.from_settings(Settings.from_env({"PRECISION": value}))
    from_params = ProjectOptions.from_settings(DEFAULTS, {"precision": value})
    assert from_env.precision == from_params.precision == _from_flag(option, value).precision == value
