"""PAMR against an independent dense-matrix derivation, its invariances, and PAMR in the engine."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gem_engine.engine import HeatmapEngine
from gem_engine.models import wrap_model
from gem_engine.pamr import check_pamr, neighbour_offsets, refine, refine_maps
from tests import independent_methods as independent

TOLERANCE = 1e-5


def random_pair(channels=3, masks=4, size=(24, 30), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(channels, *size, generator=generator), torch.randn(masks, *size, generator=generator)


@pytest.mark.parametrize("iterations, dilations, size", [
    (10, (8, 16), (24, 30)),
    (10, (1, 2, 4, 8, 12, 24), (21, 17)),
    (3, (1,), (9, 13)),
    (5, (40,), (10, 12)),  # dilation beyond the image: every neighbour is a replicated border pixel
])
def test_matches_independent_derivation(iterations, dilations, size):
    image, masks = random_pair(size=size)
    ours = refine(image, masks, iterations, dilations)
    expected = independent.pamr(image.numpy(), masks.numpy(), iterations, dilations)
    assert float(np.abs(ours.numpy() - expected).max()) <= TOLERANCE


def test_comparison_detects_one_iteration_less():
    image, masks = random_pair()
    ours = refine(image, masks, 10, (8, 16))
    fewer = independent.pamr(image.numpy(), masks.numpy(), 9, (8, 16))
    assert float(np.abs(ours.numpy() - fewer).max()) > 100 * TOLERANCE


def test_image_normalization_does_not_change_the_result():
    image, masks = random_pair(seed=1)
    mean = torch.tensor([0.48, 0.46, 0.41]).view(3, 1, 1)
    std = torch.tensor([0.27, 0.26, 0.28]).view(3, 1, 1)
    torch.testing.assert_close(refine(image, masks), refine((image - mean) / std, masks), atol=1e-5, rtol=0)


def test_constant_maps_stay_constant_and_zero_iterations_only_resize():
    image, _ = random_pair(seed=2)
    constant = torch.full((2, 24, 30), 0.25)
    torch.testing.assert_close(refine(image, constant), constant, atol=1e-6, rtol=0)
    small = torch.randn(2, 6, 8)
    expected = F.interpolate(small[None], size=(24, 30), mode="bilinear", align_corners=True)[0]
    torch.testing.assert_close(refine(image, small, 0), expected)


def test_refine_maps_upsamples_like_the_segmentors_first():
    image, _ = random_pair(seed=3)
    grid = torch.randn(3, 3, 4)
    up = F.interpolate(grid[None], size=(24, 30), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(refine_maps(grid, image, 4, (2,)), refine(image, up, 4, (2,)))


def test_neighbours_are_eight_per_dilation():
    offsets = neighbour_offsets((8, 16))
    assert len(offsets) == 16 and len(set(offsets)) == 16
    assert (0, 0) not in offsets and (-16, 16) in offsets


@pytest.mark.parametrize("iterations, dilations", [(-1, (8,)), (1.5, (8,)), (True, (8,)), (10, ()), (10, (0,)),
                                                   (10, "8"), (10, (2.0,))])
def test_bad_parameters_are_refused(iterations, dilations):
    with pytest.raises(ValueError, match="pamr_"):
        check_pamr(iterations, dilations)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="image"):
        refine(torch.randn(1, 3, 8, 8), torch.randn(2, 8, 8))


def photo(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))


@pytest.mark.parametrize("method, options", [
    ("gem", {"input_mode": "aspect", "image_size": 128}),
    ("naclip", {"input_mode": "sliding", "image_size": 96, "window_size": 64, "window_stride": 0.5}),
    ("gradcam", {}),
])
def test_engine_refines_every_method_at_the_model_input_resolution(tiny_vit, method, options):
    loaded = wrap_model(tiny_vit, "tiny-vit")
    labels = [["cat"], ["dog"], ["car"]]
    plain = HeatmapEngine(loaded, method=method, **options)
    refined = HeatmapEngine(loaded, method=method, pamr_iterations=10, **options)
    image = photo()
    [raw] = plain.heatmaps([image], labels)
    [maps] = refined.heatmaps([image], labels)
    prepared = plain._prepare(image)
    assert maps.shape == (3, *prepared.pixels.shape[-2:]) and maps.dtype == np.float32
    expected = refine_maps(torch.from_numpy(raw), prepared.pixels, 10, (8, 16))
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-6, rtol=0)
    assert np.abs(maps - F.interpolate(torch.from_numpy(raw)[None], size=maps.shape[-2:], mode="bilinear")[0]
                  .numpy()).max() > 1e-4


def test_engine_refuses_bad_pamr_settings(tiny_vit):
    loaded = wrap_model(tiny_vit, "tiny-vit")
    with pytest.raises(ValueError, match="pamr_iterations"):
        HeatmapEngine(loaded, pamr_iterations=-1)
    with pytest.raises(ValueError, match="pamr_dilations"):
        HeatmapEngine(loaded, pamr_iterations=10, pamr_dilations=[])


def test_pamr_runs_on_one_thread_and_restores_the_thread_count():
    from gem_engine import pamr

    before = torch.get_num_threads()
    seen = []
    original = pamr._iterate

    def spy(*args):
        seen.append(torch.get_num_threads())
        return original(*args)

    torch.set_num_threads(2)
    try:
        pamr._iterate = spy
        image, maps = torch.rand(3, 24, 20), torch.rand(2, 6, 5)
        refined = pamr.refine(image, maps, iterations=3)
        assert seen == [1] and torch.get_num_threads() == 2
        with pamr.one_thread():
            assert torch.get_num_threads() == 1
            again = original(image, pamr.F.interpolate(maps[None], size=(24, 20), mode="bilinear",
                                                        align_corners=True)[0], 3, (8, 16), (24, 20))
        assert torch.equal(refined, again) and torch.get_num_threads() == 2
    finally:
        pamr._iterate = original
        torch.set_num_threads(before)
