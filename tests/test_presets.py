"""Evaluation-protocol presets: they build a working engine and region options, with the papers' windows; the
per-project option `preset` fills the same knobs, and a knob given beside it wins."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from backend.cli import prelabel
from backend.labeling.pipeline import engine_options, region_options
from backend.options import BY_KEY, OptionsError, ProjectOptions, model_version
from backend.presets import PRESET_CHOICES
from backend.presets import PRESETS as OPTION_PRESETS
from backend.settings import Settings, SettingsError
from gem_engine.engine import EngineOptions, HeatmapEngine
from gem_engine.models import wrap_model
from gem_engine.preprocess import prepare
from gem_engine.presets import PRESETS, get_preset
from gem_engine.regions import RegionOptions, extract_regions


def photo(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_short_side_336_windows_224_stride_112():
    # A 500 x 375 VOC-sized photo: 448 x 336 at the short side 336, windows at 0/112/224 px across
    # and 0/112 px down, as the papers' sliding inference places them.
    prepared = prepare(photo(500, 375), mode="sliding", size=336, window=224, stride=0.5, max_side=2048,
                       patch=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert prepared.grid == (21, 28)
    assert [(w.row * 16, w.col * 16) for w in prepared.windows] == [
        (0, 0), (0, 112), (0, 224), (112, 0), (112, 112), (112, 224)]
    assert all(tuple(w.pixels.shape) == (3, 224, 224) for w in prepared.windows)
    assert tuple(prepared.pixels.shape) == (3, 336, 448)


def test_a_window_larger_than_the_image_is_the_whole_image():
    prepared = prepare(photo(500, 375), mode="sliding", size=336, window=2048, max_side=2048,
                       patch=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(prepared.windows) == 1 and tuple(prepared.windows[0].pixels.shape) == (3, 336, 448)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_runs_end_to_end(tiny_vit, name):
    preset = get_preset(name)
    engine = HeatmapEngine(wrap_model(tiny_vit, "tiny-vit"), **preset.engine)
    labels = ["cat", "dog", *preset.background_prompts[:2]]
    image = photo(300, 200)
    [maps] = engine.heatmaps([image], [[label] for label in labels])
    assert maps.shape[0] == len(labels) and np.isfinite(maps).all()
    regions = extract_regions(maps, labels, image.size, RegionOptions(**preset.regions))
    assert all(region.mask.shape == (200, 300) for region in regions)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="naclip"):
        get_preset("maskclip")


def test_a_window_smaller_than_a_patch_is_refused(tiny_vit):
    with pytest.raises(ValueError, match="window_size 8"):
        HeatmapEngine(wrap_model(tiny_vit, "tiny-vit"), input_mode="sliding", window_size=8)
    with pytest.raises(ValueError, match="window size 8"):
        prepare(photo(50, 40), mode="sliding", size=96, window=8, patch=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)


DEFAULTS = Settings.from_env({})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_preset_option_runs_the_engines_preset(name):
    # backend/presets.py spells gem_engine/presets.py as options (backend.options may not import the engine):
    # a project with the preset gets the same engine options, region options and background prompts.
    assert sorted(OPTION_PRESETS) == sorted(PRESETS)
    preset = get_preset(name)
    options = ProjectOptions.from_settings(DEFAULTS, {"preset": name})
    engine = dict(preset.engine)
    assert options.method == engine.pop("method")
    assert EngineOptions(**engine_options(options)) == EngineOptions(**engine)
    regions = region_options(options)
    assert {field: getattr(regions, field) for field in preset.regions} == dict(preset.regions)
    assert options.background_prompts == preset.background_prompts
    for key, value in OPTION_PRESETS[name].items():  # each value as its option reads it (payloads read it again)
        assert BY_KEY[key].read(value, key) == value, key


def _from_flags(*flags: str) -> ProjectOptions:
    args = prelabel.build_parser().parse_args(["--images", "photos", *flags])
    return ProjectOptions.from_settings(DEFAULTS, prelabel.flag_params(args))


def test_a_preset_sets_its_knobs_and_a_knob_given_beside_it_wins():
    plain = ProjectOptions.from_settings(DEFAULTS)
    naclip = ProjectOptions.from_settings(DEFAULTS, {"preset": "naclip"})
    knobs = OPTION_PRESETS["naclip"]
    assert {name: getattr(naclip, name) for name in knobs} == knobs
    assert {name for name in knobs if getattr(plain, name) != knobs[name]} == set(knobs) - {"region_mode"}
    assert naclip == dataclasses.replace(plain, preset="naclip", **knobs)  # nothing else moves

    # Beside it: in the extra params, the variables or the flags; a value equal to the option's default too.
    given = ProjectOptions.from_settings(DEFAULTS, {"preset": "naclip", "logit_scale": "60", "background_threshold": 0})
    assert (given.logit_scale, given.background_threshold) == (60.0, 0.0)
    assert given == dataclasses.replace(naclip, logit_scale=60.0, background_threshold=0.0)
    variables = Settings.from_env({"PRESET": "naclip", "LOGIT_SCALE": "60", "BACKGROUND_THRESHOLD": "0"})
    assert ProjectOptions.from_settings(variables) == given
    assert _from_flags("--preset", "naclip", "--logit-scale", "60", "--background-threshold", "0") == given
    # A payload keeps what was chosen: reading it back applies no preset again.
    assert ProjectOptions.from_dict(given.to_dict()) == given

    # Across layers: a project's preset over a deployment's variable, a project's knob over a deployment's preset.
    assert ProjectOptions.from_settings(Settings.from_env({"LOGIT_SCALE": "60"}), {"preset": "naclip"}) == naclip
    deployment = Settings.from_env({"PRESET": "naclip"})
    assert ProjectOptions.from_settings(deployment) == naclip
    assert ProjectOptions.from_settings(deployment, {"logit_scale": 60}) == dataclasses.replace(naclip, logit_scale=60.0)
    # `none` names no protocol: it sets nothing, so the deployment's preset values stay.
    assert ProjectOptions.from_settings(deployment, {"preset": "none"}) == dataclasses.replace(naclip, preset="none")


def test_an_unknown_preset_is_refused_naming_the_choices():
    message = "preset must be 'none', 'naclip', 'sclip' or 'clearclip', not 'maskclip'"
    assert PRESET_CHOICES == ("none", "naclip", "sclip", "clearclip")
    with pytest.raises(OptionsError, match=f"^{message}$"):
        ProjectOptions.from_settings(DEFAULTS, {"preset": "maskclip"})
    with pytest.raises(SettingsError, match=f"^PRESET {message[len('preset '):]}$"):
        Settings.from_env({"PRESET": "maskclip"})
    with pytest.raises(ValueError, match=f"^--preset {message[len('preset '):]}$"):
        _from_flags("--preset", "maskclip")


def test_the_model_version_tells_the_presets_apart():
    versions = {name: model_version(ProjectOptions.from_settings(DEFAULTS, {"preset": name})) for name in PRESET_CHOICES}
    assert len(set(versions.values())) == len(PRESET_CHOICES)
    assert versions["none"] == model_version(ProjectOptions.from_settings(DEFAULTS))
    # The preset's name is in the version too, not only the knobs it set.
    by_hand = ProjectOptions.from_settings(DEFAULTS, OPTION_PRESETS["naclip"])
    assert model_version(by_hand) != versions["naclip"]
    assert model_version(dataclasses.replace(by_hand, preset="naclip")) == versions["naclip"]
