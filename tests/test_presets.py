"""Evaluation-protocol presets: they build a working engine and region options, with the papers' windows."""

import numpy as np
import pytest
from PIL import Image

from gem_engine.engine import HeatmapEngine
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
