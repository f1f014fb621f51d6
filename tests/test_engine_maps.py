"""upsample and normalize."""

import numpy as np
import pytest

from gem_engine.maps import normalize, upsample


def test_upsample_size_is_width_height_and_bilinear():
    maps = np.stack([np.full((2, 3), 5.0), np.arange(6, dtype=np.float32).reshape(2, 3)])
    out = upsample(maps, (30, 20))
    assert out.shape == (2, 20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 5.0)
    assert out[1].min() >= 0 and out[1].max() <= 5 + 1e-5
    assert out[1, 0, 0] == 0.0 and out[1, -1, -1] == pytest.approx(5.0)
    assert np.all(np.diff(out[1, 0]) >= -1e-6)  # increases left to right, as the input does
    assert upsample(np.zeros((0, 2, 2)), (4, 3)).shape == (0, 3, 4)
    with pytest.raises(ValueError, match="labels, h, w"):
        upsample(np.zeros((2, 2)), (4, 4))
    with pytest.raises(ValueError, match="positive"):
        upsample(np.zeros((1, 2, 2)), (0, 4))


def test_normalize_per_label_nan_safe():
    maps = np.array([
        [[1.0, 3.0], [2.0, np.nan]],
        [[4.0, 4.0], [4.0, 4.0]],
        [[np.nan, np.nan], [np.nan, np.nan]],
        [[-1.0, np.inf], [0.0, 1.0]],
    ], dtype=np.float32)
    out = normalize(maps)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out[0], [[0.0, 1.0], [0.5, 0.0]])
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[2], 0.0)
    np.testing.assert_allclose(out[3], [[0.0, 0.0], [0.5, 1.0]])
