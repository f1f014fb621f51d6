"""NACLIP, SCLIP and ClearCLIP against an independent derivation (tests/independent_methods.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gem_engine import text
from gem_engine.engine import HeatmapEngine
from gem_engine.gem import GemOptions, cosine_maps, patch_features, position_embedding, run_streams
from gem_engine.last_block import LAST_BLOCK_METHODS, LastBlockOptions, last_block_tokens, neighbourhood_bias
from gem_engine.models import UnsupportedModelError, wrap_model
from gem_engine.preprocess import prepare
from tests import independent_methods as independent

TOLERANCE = 2e-5  # fp32 on CPU; the bench's ViT-B/16 target is 1e-4


def product_maps(model, pixels, embeddings, method, **options):
    with torch.inference_mode():
        streams = run_streams(model.visual, pixels, None, want_last_qkv=True, want_last_input=True,
                              interpolation="dino")
        tokens = last_block_tokens(model.visual, streams, LastBlockOptions(method, **options))
        return cosine_maps(patch_features(tokens), embeddings, streams.grid)


def random_text(count=4, width=32, seed=0):
    return F.normalize(torch.randn(count, width, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("method", LAST_BLOCK_METHODS)
@pytest.mark.parametrize("size, batch", [((96, 96), 2), ((80, 128), 1), ((64, 112), 2)])
def test_matches_independent_derivation(tiny_vit, method, size, batch):
    pixels = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    embeddings = random_text()
    ours = product_maps(tiny_vit, pixels, embeddings, method)
    with torch.no_grad():
        expected = independent.last_block_maps(tiny_vit, pixels, embeddings, method)
    assert ours.shape == (batch, 4, size[0] // 16, size[1] // 16)
    assert float((ours - expected).abs().max()) <= TOLERANCE
    assert float(ours.std()) > 0.05  # the maps are not flat, so agreement means something


@pytest.mark.parametrize("method, change", [
    ("naclip", {"std": 3.0}),
    ("naclip", {"residual": True}),
    ("sclip", {"residual": False}),
    ("sclip", {"ffn": False}),
    ("clearclip", {"residual": True}),
])
def test_comparison_detects_a_changed_setting(tiny_vit, method, change):
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    embeddings = random_text()
    ours = product_maps(tiny_vit, pixels, embeddings, method)
    with torch.no_grad():
        changed = independent.last_block_maps(tiny_vit, pixels, embeddings, method, **change)
    assert float((ours - changed).abs().max()) > 100 * TOLERANCE


def test_naclip_window_width_is_an_option(tiny_vit):
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    embeddings = random_text()
    ours = product_maps(tiny_vit, pixels, embeddings, "naclip", gaussian_std=2.5)
    with torch.no_grad():
        expected = independent.last_block_maps(tiny_vit, pixels, embeddings, "naclip", std=2.5)
    assert float((ours - expected).abs().max()) <= TOLERANCE


def test_neighbourhood_bias_is_the_gaussian_of_grid_distances():
    bias = neighbourhood_bias((3, 5), 5.0, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(bias, independent.gaussian_window(3, 5, 5.0), atol=1e-12, rtol=0)
    assert bias[0].abs().max() == 0 and bias[:, 0].abs().max() == 0
    assert neighbourhood_bias((3, 5), 5.0, torch.float64, torch.device("cpu")) is bias


def test_dino_position_embedding_follows_the_published_recipe(tiny_vit):
    visual = tiny_vit.visual
    pos = visual.positional_embedding.detach()
    for grid in [(5, 9), (12, 12), (4, 4)]:
        ours = position_embedding(visual, grid, torch.float32, "dino")[0]
        torch.testing.assert_close(ours, independent.dino_position_embedding(pos, *grid), atol=1e-6, rtol=0)
    # The GEM reference's antialiased resize is another function, kept in its own cache entry.
    assert not torch.allclose(position_embedding(visual, (12, 12), torch.float32, "antialias"),
                              position_embedding(visual, (12, 12), torch.float32, "dino"), atol=1e-4)
    assert torch.equal(position_embedding(visual, (6, 6), torch.float32, "dino")[0], pos)


def test_one_forward_pass_serves_gem_and_the_last_block_methods(tiny_vit):
    # GEM's stream and the last-block methods read the same original stream: one run_streams call
    # gives both, equal to separate calls (same position-embedding interpolation).
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    embeddings = random_text()
    with torch.inference_mode():
        shared = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=2), want_last_qkv=True,
                             want_last_input=True, interpolation="dino")
        gem_alone = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=2), interpolation="dino")
        for method in LAST_BLOCK_METHODS:
            tokens = last_block_tokens(tiny_vit.visual, shared, LastBlockOptions(method))
            together = cosine_maps(patch_features(tokens), embeddings, shared.grid)
            torch.testing.assert_close(together, product_maps(tiny_vit, pixels, embeddings, method),
                                       atol=1e-6, rtol=0)
    torch.testing.assert_close(shared.gem, gem_alone.gem, atol=1e-6, rtol=0)


def test_methods_differ_from_each_other_and_from_gem(tiny_vit):
    loaded = wrap_model(tiny_vit, "tiny-vit")
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    maps = {m: HeatmapEngine(loaded, method=m, image_size=96).heatmaps([image], [["cat"], ["dog"]])[0]
            for m in ("gem", *LAST_BLOCK_METHODS)}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(maps[a] - maps[b]).max() > 1e-3, (a, b)


@pytest.mark.parametrize("method", LAST_BLOCK_METHODS)
def test_engine_maps_from_pil_images(tiny_vit, method):
    # Square, non-square and grayscale images through the whole engine (aspect mode), against the
    # independent derivation on the same prepared pixels and text embeddings.
    loaded = wrap_model(tiny_vit, "tiny-vit")
    rng = np.random.default_rng(6)
    images = [
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (130, 70), dtype=np.uint8), mode="L"),
    ]
    labels = [["cat"], ["remote control"], ["traffic light"], ["sky"]]
    engine = HeatmapEngine(loaded, method=method, input_mode="aspect", image_size=128)
    maps = engine.heatmaps(images, labels)
    embeddings = text.text_embeddings(loaded, labels)
    for image, ours in zip(images, maps, strict=True):
        pixels = prepare(image, mode="aspect", size=128, patch=(16, 16), mean=loaded.mean, std=loaded.std)
        with torch.no_grad():
            expected = independent.last_block_maps(tiny_vit, pixels.windows[0].pixels[None], embeddings, method)
        assert ours.shape == expected.shape[1:]
        np.testing.assert_allclose(ours, expected[0].numpy(), atol=TOLERANCE, rtol=0)


def test_bad_settings_are_refused(tiny_vit, tiny_resnet):
    loaded = wrap_model(tiny_vit, "tiny-vit")
    with pytest.raises(ValueError, match="naclip_std"):
        HeatmapEngine(loaded, method="naclip", naclip_std=0)
    with pytest.raises(ValueError, match="pos_interpolation"):
        HeatmapEngine(loaded, method="sclip", pos_interpolation="nearest")
    with pytest.raises(ValueError, match="unknown last-block method"):
        LastBlockOptions("gem")
    with pytest.raises(UnsupportedModelError, match="gradcam"):
        HeatmapEngine(wrap_model(tiny_resnet, "tiny-rn"), method="clearclip")
    with torch.inference_mode():
        streams = run_streams(tiny_vit.visual, torch.randn(1, 3, 96, 96), None, want_original=True)
    with pytest.raises(ValueError, match="want_last_input"):
        last_block_tokens(tiny_vit.visual, streams, LastBlockOptions("naclip"))
