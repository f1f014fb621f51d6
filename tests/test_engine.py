"""HeatmapEngine: shapes, one forward pass for all labels, methods, synonyms, duplicates, bad input."""

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from gem_engine import text
from gem_engine.engine import METHODS, HeatmapEngine
from gem_engine.gem import GemOptions, cosine_maps, patch_features, run_streams
from gem_engine.models import load_model, wrap_model
from gem_engine.preprocess import prepare


@pytest.fixture
def loaded(tiny_vit):
    return wrap_model(tiny_vit, "tiny-vit")


def photo(width=120, height=90, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


LABELS = [["cat"], ["dog"], ["car"]]


def test_gem_maps_equal_direct_computation(loaded):
    engine = HeatmapEngine(loaded, image_size=96)
    image = photo()
    [maps] = engine.heatmaps([image], LABELS)
    assert maps.shape == (3, 6, 6) and maps.dtype == np.float32
    pixels = prepare(image, mode="square", size=96, patch=(16, 16), mean=loaded.mean, std=loaded.std)
    with torch.inference_mode():
        streams = run_streams(loaded.model.visual, pixels.windows[0].pixels[None], GemOptions(blocks=3))
        expected = cosine_maps(patch_features(streams.gem), text.text_embeddings(loaded, LABELS), streams.grid)
    np.testing.assert_allclose(maps, expected[0].numpy(), atol=1e-6)
    assert np.abs(maps).max() <= 1.0 + 1e-6


def test_loaded_from_checkpoint_gives_same_maps(loaded, tiny_vit_checkpoint):
    from_disk = load_model("tiny-vit", tiny_vit_checkpoint["pretrained"],
                           config_path=tiny_vit_checkpoint["model_config"], device="cpu")
    image = photo()
    a = HeatmapEngine(loaded, image_size=96).heatmaps([image], LABELS)[0]
    b = HeatmapEngine(from_disk, image_size=96).heatmaps([image], LABELS)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_one_forward_pass_per_image_whatever_the_vocabulary(loaded):
    calls = []
    hook = loaded.model.visual.conv1.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    try:
        engine = HeatmapEngine(loaded, image_size=96, batch_size=8)
        few = engine.heatmaps([photo(seed=1), photo(seed=2)], [["cat"]])
        assert calls == [2]
        many = engine.heatmaps([photo(seed=1), photo(seed=2)], [[f"thing {i}"] for i in range(40)] + [["cat"]])
        assert calls == [2, 2]
    finally:
        hook.remove()
    assert many[0].shape == (41, 6, 6)
    np.testing.assert_allclose(many[0][-1], few[0][0], atol=1e-6)


def test_cpu_default_is_one_image_per_forward_pass_with_the_same_maps(loaded):
    calls = []
    hook = loaded.model.visual.conv1.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    images = [photo(seed=1), photo(seed=2), photo(seed=3)]
    try:
        default = HeatmapEngine(loaded, image_size=96).heatmaps(images, [["cat"], ["dog"]])
        assert calls == [1, 1, 1]
        batched = HeatmapEngine(loaded, image_size=96, batch_size=3).heatmaps(images, [["cat"], ["dog"]])
        assert calls == [1, 1, 1, 3]
    finally:
        hook.remove()
    for a, b in zip(default, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        HeatmapEngine(loaded, batch_size=0)


@pytest.mark.parametrize("method", ["gem", "patch", "qk", "vv"])
@pytest.mark.parametrize("mode", ["square", "aspect", "sliding"])
def test_methods_and_modes_shapes(loaded, method, mode):
    engine = HeatmapEngine(loaded, method=method, input_mode=mode, image_size=96)
    out = engine.heatmaps([photo(200, 100), photo(60, 90, mode="L")], LABELS)
    expected = {"square": [(6, 6), (6, 6)], "aspect": [(3, 6), (6, 4)], "sliding": [(6, 12), (9, 6)]}[mode]
    assert [m.shape[1:] for m in out] == expected
    for maps in out:
        assert maps.shape[0] == 3 and np.isfinite(maps).all()
        if method in ("qk", "vv"):
            assert maps.min() >= 0 and maps.max() <= 1


def test_methods_differ(loaded):
    image = photo()
    maps = {m: HeatmapEngine(loaded, method=m, image_size=96).heatmaps([image], LABELS)[0]
            for m in ("gem", "patch", "qk", "vv")}
    assert not np.allclose(maps["gem"], maps["patch"], atol=1e-3)
    assert not np.allclose(maps["qk"], maps["vv"], atol=1e-4)


def test_anchor_attention_sums_to_at_most_one(loaded):
    [maps] = HeatmapEngine(loaded, method="qk", image_size=96).heatmaps([photo()], LABELS)
    assert np.all(maps.reshape(3, -1).sum(axis=1) <= 1 + 1e-5)


def test_sliding_average_of_one_window_equals_square(loaded):
    image = photo(96, 96)
    square = HeatmapEngine(loaded, image_size=96).heatmaps([image], LABELS)[0]
    sliding = HeatmapEngine(loaded, image_size=96, input_mode="sliding").heatmaps([image], LABELS)[0]
    np.testing.assert_allclose(square, sliding, atol=1e-6)


def test_duplicates_and_synonyms(loaded):
    image = photo()
    engine = HeatmapEngine(loaded, image_size=96, combine="max")
    [maps] = engine.heatmaps([image], [["cat", "kitten"], ["cat"], ["kitten"], ["cat"]])
    np.testing.assert_allclose(maps[0], np.maximum(maps[1], maps[2]), atol=1e-6)
    np.testing.assert_allclose(maps[1], maps[3], atol=1e-6)
    [mean] = HeatmapEngine(loaded, image_size=96).heatmaps([image], [["cat", "kitten"], ["cat"]])
    assert not np.allclose(mean[0], mean[1], atol=1e-4)


def test_bad_input(loaded):
    engine = HeatmapEngine(loaded, image_size=96)
    assert engine.heatmaps([], LABELS) == []
    with pytest.raises(ValueError, match="no labels"):
        engine.heatmaps([photo()], [])
    with pytest.raises(ValueError, match="label 1"):
        engine.heatmaps([photo()], [["cat"], [""]])
    with pytest.raises(TypeError, match="sequence of PIL"):
        engine.heatmaps(photo(), LABELS)
    with pytest.raises(TypeError, match="PIL"):
        engine.heatmaps([np.zeros((4, 4, 3))], LABELS)
    with pytest.raises(ValueError, match="unknown method"):
        HeatmapEngine(loaded, method="magic")
    with pytest.raises(TypeError, match="options are"):
        HeatmapEngine(loaded, colour="red")
    with pytest.raises(ValueError, match="input_mode"):
        HeatmapEngine(loaded, input_mode="zoom")
    with pytest.raises(ValueError, match="gem_blocks"):
        HeatmapEngine(loaded, gem_blocks=0)
    with pytest.raises(ValueError, match="smaller than one patch"):
        HeatmapEngine(loaded, image_size=8)


def test_odd_images_all_give_maps(loaded):
    engine = HeatmapEngine(loaded, image_size=96, input_mode="aspect")
    images = [
        photo(mode="L"), photo(mode="RGBA"), photo(mode="P"), photo(mode="CMYK"),
        Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000),
        photo(3, 2), Image.new("RGB", (10_000, 10))
    ]
    out = engine.heatmaps(images, LABELS)
    assert all(np.isfinite(maps).all() and maps.shape[0] == 3 for maps in out)
    assert out[-1].shape == (3, 1, 6)


def test_gradcam_dispatch_passes_pixels_and_text(loaded, monkeypatch):
    seen = {}

    def fake_gradcam(model, pixels, text_embeddings, **kwargs):
        seen.update(model=model, shape=tuple(pixels.shape), text=text_embeddings.shape, kwargs=kwargs)
        return torch.ones(pixels.shape[0], text_embeddings.shape[0], 6, 6)

    module = sys.modules.get("gem_engine.gradcam") or types.ModuleType("gem_engine.gradcam")
    monkeypatch.setitem(sys.modules, "gem_engine.gradcam", module)
    monkeypatch.setattr(module, "gradcam_maps", fake_gradcam, raising=False)
    out = HeatmapEngine(loaded, method="gradcam", gradcam_chunk_size=4, batch_size=2).heatmaps([photo(), photo(seed=3)], LABELS)
    assert seen["model"] is loaded.model and seen["shape"] == (2, 3, 96, 96) and seen["text"] == (3, 32)
    assert seen["kwargs"] == {"target": "cosine", "chunk_size": 4}
    assert [m.shape for m in out] == [(3, 6, 6)] * 2
    assert "gradcam" in METHODS
    with pytest.raises(ValueError, match="square"):
        HeatmapEngine(loaded, method="gradcam", input_mode="aspect")


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_resnet"])
def test_gradcam_through_the_engine_equals_gradcam_maps(fixture, request):
    from gem_engine.gradcam import gradcam_maps

    model = request.getfixturevalue(fixture)
    loaded = wrap_model(model, fixture.replace("_", "-").replace("resnet", "rn"))
    image = photo(150, 100)
    [maps] = HeatmapEngine(loaded, method="gradcam").heatmaps([image], LABELS)
    pixels = prepare(image, mode="square", size=96, patch=loaded.patch_size or (1, 1), mean=loaded.mean,
                     std=loaded.std).windows[0].pixels[None]
    expected = gradcam_maps(model, pixels, text.text_embeddings(loaded, LABELS))[0]
    assert maps.shape[0] == 3 and maps.shape == tuple(expected.shape)
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-6)
    assert maps.min() >= 0 and maps.max() > 0


def test_bf16_maps_are_close_to_fp32(tiny_vit_checkpoint):
    common = dict(config_path=tiny_vit_checkpoint["model_config"], device="cpu")
    fp32 = load_model("tiny-vit", tiny_vit_checkpoint["pretrained"], **common)
    bf16 = load_model("tiny-vit", tiny_vit_checkpoint["pretrained"], precision="bf16", **common)
    image = photo()
    a = HeatmapEngine(fp32, image_size=96).heatmaps([image], LABELS)[0]
    b = HeatmapEngine(bf16, image_size=96).heatmaps([image], LABELS)[0]
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 0.05
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
