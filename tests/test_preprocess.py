"""Image preparation: the reference's transform exactly, aspect and sliding layouts, odd image modes."""

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision import transforms

from gem_engine.preprocess import aspect_size, prepare, to_rgb, window_starts

PATCH = (16, 16)


def photo(width=120, height=80, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def run(image, mode="square", size=448, **kwargs):
    return prepare(image, mode=mode, size=size, patch=PATCH, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD,
                   **kwargs)


def test_square_mode_is_the_reference_transform():
    image = photo(300, 200)
    reference = transforms.Compose([
        transforms.Resize(size=(448, 448), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
    ])(image)
    prepared = run(image)
    assert prepared.grid == (28, 28) and len(prepared.windows) == 1
    assert torch.equal(prepared.windows[0].pixels, reference)


def test_aspect_mode_keeps_aspect_on_patch_multiples():
    assert aspect_size(1000, 500, 448, PATCH) == (448, 224)
    assert aspect_size(30, 3000, 448, PATCH) == (16, 448)
    prepared = run(photo(1000, 500), mode="aspect")
    assert prepared.grid == (14, 28)
    assert prepared.windows[0].pixels.shape == (3, 224, 448)


def test_sliding_windows_cover_the_grid_with_overlap():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(11, 4, 3) == [0, 2, 5, 7]
    assert window_starts(3, 4, 2) == [0]
    prepared = run(photo(900, 300), mode="sliding", size=96, max_side=10_000)
    assert prepared.grid == (6, 18)
    covered = np.zeros(prepared.grid, dtype=int)
    for window in prepared.windows:
        assert window.pixels.shape == (3, 96, 96)
        covered[window.row : window.row + 6, window.col : window.col + 6] += 1
    assert covered.min() >= 1 and covered.max() >= 2


def test_huge_image_is_bounded():
    image = Image.new("RGB", (10_000, 10_000), (10, 200, 30))
    for mode in ("square", "aspect"):
        assert run(image, mode=mode).grid[0] <= 28
    sliding = run(image, mode="sliding", max_side=1344)
    assert sliding.grid == (28, 28) and len(sliding.windows) == 1
    wide = run(Image.new("L", (10_000, 2_000)), mode="sliding", max_side=1344)
    assert wide.grid[1] * 16 <= 1344 and len(wide.windows) == 5


def test_image_smaller_than_a_patch_is_upscaled():
    tiny = photo(5, 3)
    assert run(tiny).grid == (28, 28)
    assert run(tiny, mode="aspect").grid == (17, 28)
    assert run(Image.new("RGB", (1, 1)), mode="aspect").grid == (28, 28)


def test_modes_convert_to_rgb():
    gray = Image.new("L", (4, 4), 100)
    assert to_rgb(gray).getpixel((0, 0)) == (100, 100, 100)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)  # fully transparent -> white background
    opaque = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    assert to_rgb(opaque).getpixel((0, 0)) == (255, 0, 0)
    palette = Image.new("RGB", (4, 4), (0, 0, 255)).convert("P")
    assert to_rgb(palette).getpixel((0, 0)) == (0, 0, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    deep = np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16)
    converted = np.asarray(to_rgb(Image.fromarray(deep)))
    assert converted[0, 0, 0] == 0 and converted[1, 1, 0] == 255 and 0 < converted[0, 1, 0] < 255
    flat = to_rgb(Image.fromarray(np.full((3, 3), 7.5, dtype=np.float32)))
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (0, 0, 0)


def test_bad_inputs():
    with pytest.raises(TypeError, match="PIL"):
        to_rgb(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="input mode"):
        run(photo(), mode="zoom")
    with pytest.raises(ValueError, match="smaller than one patch"):
        run(photo(), size=8)
