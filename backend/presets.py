"""Evaluation-protocol presets as per-project option values: what the option `preset` fills in.

The protocols are the engine's (gem_engine/presets.py, which names each paper's code and config), spelled
here as this product's options because the options may not import the engine; tests/test_presets.py checks
that a project with a preset runs exactly the engine's preset: the same engine options, region options and
background prompts. Knobs a preset leaves out that are not options (NACLIP's window std, PAMR's dilations)
are at the engine's defaults, which are the papers' values. Each preset names `pamr_iterations` and
`region_mode`, so the product's own choices ("auto" PAMR, a deployment's region mode) never leak into a
protocol.

Standard library only: the HTTP service imports this module through backend.options.
"""

from __future__ import annotations

from typing import Any

NO_PRESET = "none"

# SCLIP's names for the background class, which NACLIP reuses (their COCO-Object class file, first line).
STUFF_BACKGROUND = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
    "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair",
    "floor", "hill", "rail", "fence",
)

# Shorter side 336 (longer side capped at 2048), 224 px windows moved by half a window (112 px), CLIP's 80
# ImageNet templates, a softmax over the labels' raw maps with background where the winner stays below
# `background_threshold` (the papers' prob_thd).
_SHORT_336_WINDOWS_224: dict[str, Any] = {
    "input_mode": "sliding", "image_size": 336, "window_size": 224, "window_stride": 0.5, "max_side": 2048,
    "templates": "ensemble", "region_mode": "semantic",
}

# Preset name -> option name -> value (as the option reads it).
PRESETS: dict[str, dict[str, Any]] = {
    "naclip": {"method": "naclip", **_SHORT_336_WINDOWS_224, "pamr_iterations": 10, "logit_scale": 40.0,
               "background_threshold": 0.1, "background_prompts": STUFF_BACKGROUND},
    "sclip": {"method": "sclip", **_SHORT_336_WINDOWS_224, "pamr_iterations": 0, "logit_scale": 50.0,
              "background_threshold": 0.1, "background_prompts": STUFF_BACKGROUND},
    "clearclip": {"method": "clearclip", "input_mode": "sliding", "image_size": 448, "window_size": 448,
                  "window_stride": 0.5, "max_side": 2048, "templates": "ensemble", "region_mode": "semantic",
                  "pamr_iterations": 0, "logit_scale": 50.0, "background_threshold": 0.4,
                  "background_prompts": ("background",)},
}
PRESET_CHOICES = (NO_PRESET, *PRESETS)


def with_preset(values: dict[str, Any]) -> dict[str, Any]:
    """Return option values (by option name) with the knobs of the preset they name added where not given."""
    return {**PRESETS.get(values.get("preset", NO_PRESET), {}), **values}
