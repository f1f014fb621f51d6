"""Localization on the trained tiny CLIP: pointing game and mask IoU per method and per GEM depth.

Held-out scenes (a seed the training never saw) are scored for every method of the engine: does the
maximum of a label's heatmap fall inside the named object (pointing game), against chance (the
fraction of the image the object covers); does a prompt for an absent object point at a present one;
and how well the product's own heatmap-to-mask step (gem_engine.regions) recovers the object.

    .venv/bin/python bench/localization.py --scenes 500 --overlays docs/localization.png

Prints a table for people, then the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gem_engine.engine import HeatmapEngine  # noqa: E402
from gem_engine.maps import normalize, upsample  # noqa: E402
from gem_engine.models import LoadedModel, load_model  # noqa: E402
from gem_engine.regions import RegionOptions, extract_regions  # noqa: E402
from tests import scenes  # noqa: E402

MODEL_NAME = "scenes-vit"
MODEL_DIR = ROOT / "tests" / "fixtures" / "models"
CONFIG = MODEL_DIR / f"{MODEL_NAME}.json"
WEIGHTS = MODEL_DIR / f"{MODEL_NAME}.safetensors"
HELD_OUT_SEED = 20240617  # training draws scenes from seed 1
KINDS = scenes.PROMPT_KINDS
FULL_VOCABULARY = [scenes.mention(c, s) for c in scenes.COLORS for s in scenes.SHAPES]
VOCABULARY = (
    FULL_VOCABULARY
    + [scenes.mention(c, None) for c in scenes.COLORS]
    + [scenes.mention(None, s) for s in scenes.SHAPES]
)


@dataclass(frozen=True)
class Variant:
    """A way to make heatmaps: an engine method with options, optionally minus the mean over all full prompts."""

    name: str
    method: str
    options: dict = field(default_factory=dict)
    centered: bool = False
    iou: bool = True


def load_scenes_model(weights: Path = WEIGHTS) -> LoadedModel:
    """Return the trained tiny CLIP through the product's local checkpoint + model config path, on CPU."""
    return load_model(MODEL_NAME, pretrained=str(weights), config_path=CONFIG, device="cpu")


def standard_variants(depth: int) -> list[Variant]:
    """Return the variants the bench reports: baselines, GEM per depth and iteration count, Grad-CAM.

    "gem" is the engine's default (the reference's settings: every block of a model this shallow,
    one self-self iteration); "gem-it0" skips the iteration (the reference's ss_attn_iter=0).
    Depth sweeps skip the mask IoU to keep the bench short.
    """
    own = {"image_size": 128}  # the tiny model's own input size (the engine's default is GEM's 448)
    variants = [Variant("patch", "patch", own), Variant("gem", "gem", own)]
    variants += [Variant("gem-it0", "gem", {**own, "gem_iterations": 0})]
    variants += [Variant("gem-centered", "gem", own, centered=True)]
    variants += [Variant("gem-it0-centered", "gem", {**own, "gem_iterations": 0}, centered=True)]
    variants += [Variant("gradcam", "gradcam", {})]
    variants += [Variant("qk", "qk", own, iou=False), Variant("vv", "vv", own, iou=False)]
    for iterations, prefix in ((1, "gem"), (0, "gem-it0")):
        variants += [
            Variant(f"{prefix}-d{blocks}", "gem", {**own, "gem_blocks": blocks, "gem_iterations": iterations}, iou=False)
            for blocks in range(1, depth + 1)
        ]
    return variants


def held_out_scenes(count: int, seed: int = HELD_OUT_SEED) -> list[scenes.Scene]:
    """Return ``count`` scenes the model was not trained on."""
    return list(scenes.scenes(seed, count))


def scene_prompts(scene: scenes.Scene, rng: np.random.Generator) -> tuple[list[str], str]:
    """Return (every object's prompt of every kind, one full prompt for an object not in the scene)."""
    color, shape = scene.absent(rng)
    return [obj.prompt(kind) for obj in scene.objects for kind in KINDS], scenes.mention(color, shape)


def scene_maps(loaded: LoadedModel, variant: Variant, scene_list: Sequence[scenes.Scene]) -> list[dict[str, np.ndarray]]:
    """Return per scene {prompt: raw [h, w] map} for every prompt that scene is scored on."""
    engine = HeatmapEngine(loaded, method=variant.method, **variant.options)
    rng = np.random.default_rng(HELD_OUT_SEED)
    wanted = [scene_prompts(scene, rng) for scene in scene_list]
    if variant.method == "gradcam":
        # Grad-CAM pays one backward pass per label: score only the prompts each scene needs.
        result = []
        for scene, (present, absent) in zip(scene_list, wanted, strict=True):
            labels = [*present, absent]
            maps = engine.heatmaps([scene.image], [[p] for p in labels])[0]
            result.append(dict(zip(labels, maps, strict=True)))
        return result
    # Token methods cost one forward pass whatever the vocabulary: score the whole vocabulary at once.
    index = {prompt: i for i, prompt in enumerate(VOCABULARY)}
    result = []
    for start in range(0, len(scene_list), 64):
        images = [scene.image for scene in scene_list[start : start + 64]]
        for maps in engine.heatmaps(images, [[p] for p in VOCABULARY]):
            if variant.centered:
                maps = maps - maps[: len(FULL_VOCABULARY)].mean(axis=0, keepdims=True)
            result.append({prompt: maps[i] for prompt, i in index.items()})
    return [{p: maps[p] for p in [*present, absent]} for maps, (present, absent) in zip(result, wanted, strict=True)]


def pointing(heat: np.ndarray, mask: np.ndarray) -> bool:
    """Return whether the maximum of a raw map, upsampled to the mask's size, lies inside the mask."""
    up = upsample(heat[None], (mask.shape[1], mask.shape[0]))[0]
    row, col = np.unravel_index(int(np.argmax(np.nan_to_num(up, nan=-np.inf))), up.shape)
    return bool(mask[row, col])


def mask_iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Return the intersection over union of two bool masks (0 when both are empty)."""
    union = np.logical_or(prediction, truth).sum()
    return float(np.logical_and(prediction, truth).sum() / union) if union else 0.0


def evaluate(
    loaded: LoadedModel, variant: Variant, scene_list: Sequence[scenes.Scene], *, with_iou: bool = True
) -> dict[str, float]:
    """Return pointing-game rates per prompt kind with their chance levels, absent-prompt hits and mask IoU.

    Keys: full/color/shape (hit rates), chance (mean object area fraction), absent (how often the map of
    an absent object points at a present one), absent_chance (mean area fraction of all objects), and
    with IoU: iou (mean per object, semantic regions over the present labels plus the absent one) and
    absent_area (fraction of the present objects' pixels that the absent label's regions take) against
    absent_area_chance (its share if every label were equally likely: 1 / number of labels), and
    absent_image_area (fraction of the whole image the absent label's regions take: background included,
    where an absent label's mask costs an annotator as much as on an object). These regions come from the
    maps alone, without the presence step (bench/prelabel_quality.py measures the product's path).
    """
    with_iou = with_iou and variant.iou
    all_maps = scene_maps(loaded, variant, scene_list)
    rng = np.random.default_rng(HELD_OUT_SEED)
    hits = {kind: [] for kind in KINDS}
    areas: list[float] = []
    absent_hits, covered, ious, absent_areas, absent_image_areas, shares = [], [], [], [], [], []
    for scene, maps in zip(scene_list, all_maps, strict=True):
        _, absent = scene_prompts(scene, rng)
        union = np.any([obj.mask for obj in scene.objects], axis=0)
        for obj in scene.objects:
            areas.append(float(obj.mask.mean()))
            for kind in KINDS:
                hits[kind].append(pointing(maps[obj.prompt(kind)], obj.mask))
        absent_hits.append(pointing(maps[absent], union))
        covered.append(float(union.mean()))
        if with_iou:
            labels = [obj.prompt("full") for obj in scene.objects] + [absent]
            regions = extract_regions(np.stack([maps[p] for p in labels]), labels, scene.size, RegionOptions())
            for obj in scene.objects:
                predicted = np.zeros_like(obj.mask)
                for region in regions:
                    if region.label == obj.prompt("full"):
                        predicted |= region.mask
                ious.append(mask_iou(predicted, obj.mask))
            taken = np.zeros_like(union)
            for region in regions:
                if region.label == absent:
                    taken |= region.mask
            absent_areas.append(float((taken & union).sum() / union.sum()))
            absent_image_areas.append(float(taken.mean()))
            shares.append(1 / len(labels))
    result = {kind: float(np.mean(hits[kind])) for kind in KINDS}
    result["chance"] = float(np.mean(areas))
    result["absent"] = float(np.mean(absent_hits))
    result["absent_chance"] = float(np.mean(covered))
    if with_iou:
        result["iou"] = float(np.mean(ious))
        result["absent_area"] = float(np.mean(absent_areas))
        result["absent_image_area"] = float(np.mean(absent_image_areas))
        result["absent_area_chance"] = float(np.mean(shares))
    return result


def render_overlays(loaded: LoadedModel, variants: Sequence[Variant], scene_list: Sequence[scenes.Scene], path: Path) -> None:
    """Write a PNG grid: per scene, the image with the target outlined, then each variant's map for it."""
    from PIL import Image, ImageDraw

    from backend.labeling.overlays import blend_heatmap, mask_outline

    tile, head = 128, 14
    columns = 1 + len(variants)
    sheet = Image.new("RGB", (columns * tile, head + len(scene_list) * (tile + head)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(["scene", *[v.name for v in variants]]):
        draw.text((c * tile + 4, 1), name, fill="black")
    per_variant = [scene_maps(loaded, v, scene_list) for v in variants]
    for r, scene in enumerate(scene_list):
        target = scene.objects[-1]  # the top object is never occluded
        top = head + r * (tile + head)
        draw.text((4, top + 1), f'prompt: "{target.prompt("full")}"', fill="black")
        picture = np.asarray(scene.image).copy()
        picture[mask_outline(target.mask, 2)] = (255, 255, 255)
        sheet.paste(Image.fromarray(picture), (0, top + head))
        for c, maps in enumerate(per_variant, start=1):
            heat = normalize(upsample(maps[r][target.prompt("full")][None], scene.size))[0]
            sheet.paste(blend_heatmap(scene.image, heat, alpha=0.6), (c * tile, top + head))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A 256-colour palette keeps the README's PNG small; octree keeps the object colours.
    sheet.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=500)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--overlays", type=Path, default=ROOT / "bench" / "out" / "localization.png")
    parser.add_argument("--no-iou", action="store_true", help="skip the mask IoU")
    # One intra-op thread: the model is tiny, and on a shared CPU two threads wait on each other
    # (measured 20x slower per scene under load).
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_scenes_model(args.weights)
    depth = len(loaded.model.visual.transformer.resblocks)
    scene_list = held_out_scenes(args.scenes)
    figures: dict[str, dict[str, float]] = {}
    print(f"{args.scenes} held-out scenes, {sum(len(s.objects) for s in scene_list)} objects, {depth}-block ViT")
    print(f"{'variant':<18}{'full':>7}{'color':>7}{'shape':>7}{'chance':>8}{'full/ch':>9}"
          f"{'absent':>8}{'abs.ch':>8}{'IoU':>7}{'abs.area':>9}{'abs.img':>8}{'s':>7}")
    for variant in standard_variants(depth):
        began = time.perf_counter()
        result = evaluate(loaded, variant, scene_list, with_iou=not args.no_iou)
        result.setdefault("iou", float("nan"))
        result["seconds"] = time.perf_counter() - began
        figures[variant.name] = result
        print(
            f"{variant.name:<18}{result['full']:>7.3f}{result['color']:>7.3f}{result['shape']:>7.3f}"
            f"{result['chance']:>8.3f}{result['full'] / result['chance']:>9.2f}{result['absent']:>8.3f}"
            f"{result['absent_chance']:>8.3f}{result['iou']:>7.3f}"
            f"{result.get('absent_area', float('nan')):>9.3f}{result.get('absent_image_area', float('nan')):>8.3f}"
            f"{result['seconds']:>7.1f}",
            flush=True,
        )
    overlay_variants = [v for v in standard_variants(depth) if v.name in ("patch", "gem", "gem-it0", "gradcam")]
    render_overlays(loaded, overlay_variants, held_out_scenes(6, seed=HELD_OUT_SEED + 1), args.overlays)
    print(f"overlays: {args.overlays}")
    summary = {
        "scenes": args.scenes,
        "gem_over_patch": figures["gem"]["full"] / max(figures["patch"]["full"], 1e-9),
        "gem_over_chance": figures["gem"]["full"] / figures["gem"]["chance"],
        "gem_it0_over_patch": figures["gem-it0"]["full"] / max(figures["patch"]["full"], 1e-9),
        "gem_it0_over_chance": figures["gem-it0"]["full"] / figures["gem-it0"]["chance"],
        "gradcam_over_chance": figures["gradcam"]["full"] / figures["gradcam"]["chance"],
        "variants": {
            name: {k: round(v, 4) for k, v in r.items() if v == v} for name, r in figures.items()  # drop NaN
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
