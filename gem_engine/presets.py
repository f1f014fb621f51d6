"""Evaluation protocols of the training-free CLIP papers, as this product's engine and region options.

Each preset is what a method's published code does on COCO-Object (80 object classes plus
background), the benchmark closest to a labeling project's vocabulary, from its configs at the
commit named in `source`:

- input: shorter side resized to `image_size` (long side capped at 2048), windows of `window_size`
  moved by half a window (224 / 112 px for NACLIP and SCLIP at 336, 448 / 224 for ClearCLIP at
  448), the 80 ImageNet prompt templates averaged per label;
- the method, with position embeddings interpolated DINO's way (the engine's default for these
  methods), and PAMR where the paper's main results use it (NACLIP);
- regions: a softmax over the labels' raw maps at `logit_scale`, a pixel whose winning probability
  is below `background_threshold` is background (the papers' `prob_thd`);
- `background_prompts`: the names the papers' class files give the background class.

Differences that remain, by design of the engine: windows are spread evenly with the last one flush
with the image edge (the papers place them every stride and move the last one flush), window maps
are averaged on the patch grid before upsampling (the papers average upsampled logits), image sides
are rounded to the patch size (the papers let the patch embedding drop the remainder), and the
image is resized with PIL bicubic (theirs: OpenCV bilinear). A label's synonyms are combined by the
engine's `combine`, not as separate queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# SCLIP's names for the background class, reused by NACLIP (configs/cls_coco_object.txt, first line).
STUFF_BACKGROUND = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
    "building", "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair",
    "floor", "hill", "rail", "fence",
)


@dataclass(frozen=True)
class Preset:
    """A published evaluation protocol: HeatmapEngine options (method included) and RegionOptions fields."""

    engine: Mapping[str, object]
    regions: Mapping[str, object]
    background_prompts: tuple[str, ...] = ("background",)
    source: str = ""


_SHORT_336_WINDOWS_224 = {"input_mode": "sliding", "image_size": 336, "window_size": 224, "window_stride": 0.5,
                          "max_side": 2048, "templates": "ensemble"}

PRESETS: dict[str, Preset] = {
    "naclip": Preset(
        engine={"method": "naclip", **_SHORT_336_WINDOWS_224, "naclip_std": 5.0, "pamr_iterations": 10,
                "pamr_dilations": (8, 16)},
        regions={"mode": "semantic", "logit_scale": 40.0, "background_threshold": 0.1},
        background_prompts=STUFF_BACKGROUND,
        source="sinahmr/NACLIP@0cac3a6: naclip.py defaults, configs/cfg_coco_object.py, README (PAMR on)",
    ),
    "sclip": Preset(
        engine={"method": "sclip", **_SHORT_336_WINDOWS_224},
        regions={"mode": "semantic", "logit_scale": 50.0, "background_threshold": 0.1},
        background_prompts=STUFF_BACKGROUND,
        source="wangf3014/SCLIP@b56bd30: clip_segmentor.py defaults (PAMR off), configs/cfg_coco_object.py",
    ),
    "clearclip": Preset(
        engine={"method": "clearclip", "input_mode": "sliding", "image_size": 448, "window_size": 448,
                "window_stride": 0.5, "max_side": 2048, "templates": "ensemble"},
        regions={"mode": "semantic", "logit_scale": 50.0, "background_threshold": 0.4},
        source="mc-lan/ClearCLIP@ad68a40: clearclip_segmentor.py defaults, configs/cfg_coco_object.py",
    ),
}


def get_preset(name: str) -> Preset:
    """Return the named evaluation-protocol preset, or raise ValueError naming the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}") from None
