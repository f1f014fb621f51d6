"""Overlay rendering: colormap tables, outlines, captions, sizes and clear errors on bad input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from backend.labeling import overlays


@dataclass
class FakeRegion:
    label: str
    mask: np.ndarray
    box: tuple[float, float, float, float]


def test_colormap_tables_run_from_low_to_high_end():
    jet = overlays.colormap_table("jet")
    assert jet.shape == (256, 3) and jet.dtype == np.uint8
    assert tuple(jet[0]) == (0, 0, 128)
    assert tuple(jet[-1]) == (128, 0, 0)
    viridis = overlays.colormap_table("viridis")
    # Viridis grows brighter monotonically: the property that makes it readable in grayscale.
    luminance = viridis @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luminance) >= -0.5)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        overlays.colormap_table("nope")


def test_colorize_clips_and_maps_nan_to_low_end():
    values = np.array([[0.0, 0.5, 1.0], [np.nan, -3.0, 7.0]], dtype=np.float32)
    colours = overlays.colorize(values, "viridis")
    table = overlays.colormap_table("viridis")
    assert colours.shape == (2, 3, 3)
    assert tuple(colours[0, 0]) == tuple(table[0])
    assert tuple(colours[0, 1]) == tuple(table[128])
    assert tuple(colours[0, 2]) == tuple(table[255])
    assert tuple(colours[1, 0]) == tuple(table[0])
    assert tuple(colours[1, 1]) == tuple(table[0])
    assert tuple(colours[1, 2]) == tuple(table[255])
    with pytest.raises(ValueError, match="2-D"):
        overlays.colorize(np.zeros((2, 2, 2)))


def test_mask_outline_is_the_inner_ring():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:8, 3:9] = True
    ring = overlays.mask_outline(mask, 1)
    assert ring.sum() == 2 * 6 + 2 * 4
    assert not ring[4:6, 5:7].any()
    assert (ring <= mask).all()
    thick = overlays.mask_outline(mask, 2)
    assert thick.sum() == 6 * 6 - 2 * 2
    # A mask touching the border keeps its border pixels as outline.
    full = np.ones((5, 5), dtype=bool)
    assert overlays.mask_outline(full, 1).sum() == 16


def test_blend_heatmap_size_and_alpha():
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    heat = np.ones((30, 40), dtype=np.float32)
    out = overlays.blend_heatmap(image, heat, alpha=1.0, colormap="jet")
    assert out.size == (40, 30) and out.mode == "RGB"
    assert np.asarray(out)[0, 0].tolist() == [128, 0, 0]
    unchanged = overlays.blend_heatmap(image, heat, alpha=0.0)
    assert np.array_equal(np.asarray(unchanged), np.asarray(image))
    with pytest.raises(ValueError, match="does not match the image size"):
        overlays.blend_heatmap(image, np.ones((40, 30)))
    with pytest.raises(ValueError, match="alpha"):
        overlays.blend_heatmap(image, heat, alpha=1.5)


def test_render_label_overlay_draws_outline_and_caption():
    image = Image.new("RGB", (64, 48), (0, 0, 0))
    heat = np.zeros((48, 64), dtype=np.float32)
    mask = np.zeros((48, 64), dtype=bool)
    mask[20:40, 30:60] = True
    out = np.asarray(overlays.render_label_overlay(image, heat, "cat", masks=[mask], alpha=0.0))
    assert out.shape == (48, 64, 3)
    assert out[20, 45].tolist() == [255, 255, 255]  # outline
    assert out[30, 45].tolist() == [0, 0, 0]  # inside stays the image
    # The caption writes white text into the top-left corner.
    assert (out[:16, :30] > 200).any()
    with pytest.raises(ValueError, match="mask shape"):
        overlays.render_label_overlay(image, heat, "cat", masks=[np.ones((10, 10), bool)])


def test_render_overview_colours_each_label_and_names_regions():
    image = Image.new("RGB", (100, 80), (0, 0, 0))
    heat = np.zeros((80, 100), dtype=np.float32)
    a = np.zeros((80, 100), dtype=bool)
    a[40:70, 5:40] = True
    b = np.zeros((80, 100), dtype=bool)
    b[40:70, 60:95] = True
    regions = [
        FakeRegion("cat", a, (5.0, 50.0, 35.0, 37.5)),
        FakeRegion("dog", b, (60.0, 50.0, 35.0, 37.5)),
    ]
    out = np.asarray(overlays.render_overview(image, heat, ["cat", "dog"], regions, alpha=0.0))
    assert out.shape == (80, 100, 3)
    assert out[69, 20].tolist() == list(overlays.label_color(0))
    assert out[69, 80].tolist() == list(overlays.label_color(1))
    # Captions sit at the regions' top-left corners, in the label's colour (anti-aliased, so: near it).
    def near(block, colour):
        return (np.abs(block.astype(int) - colour).max(axis=-1) < 40).any()

    assert near(out[41:52, 61:90], overlays.label_color(1))
    assert not near(out[41:52, 7:30], overlays.label_color(1))
    assert near(out[41:52, 7:30], overlays.label_color(0))
