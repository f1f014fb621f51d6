"""Deterministic synthetic scenes: colored shapes on textured backgrounds, with captions and masks.

Used to train a tiny CLIP that the test suite can check localization with (no pretrained weights can
be downloaded in tests). Everything here is plain numpy/PIL and depends only on the seed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 215, 35),
    "purple": (140, 45, 175),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
PROMPT_KINDS: tuple[str, ...] = ("full", "color", "shape")

# Object diameters as a fraction of the image side; small enough that the objects cover a small
# part of the image (so chance in the pointing game is low), large enough to span a few patches.
MIN_SIZE, MAX_SIZE = 0.22, 0.42
MIN_VISIBLE = 0.6  # an occluded object keeps at least this fraction of its own area

_SINGLE_TEMPLATES = (
    "{}",
    "a {}",
    "a photo of a {}.",
    "a picture of a {}",
    "there is a {} in the image",
    "a {} on a textured background",
    "an image showing a {}",
)
_MULTI_TEMPLATES = (
    "{}",
    "a photo of {}.",
    "a picture with {}",
    "an image showing {}",
    "there are {} in the image",
)


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene; ``mask`` is its visible part (later objects occlude earlier ones)."""

    shape: str
    color: str
    mask: np.ndarray  # bool [height, width]

    @property
    def name(self) -> str:
        """Return the full name, e.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"

    def prompt(self, kind: str = "full") -> str:
        """Return the label text for this object: full name, color only or shape only."""
        if kind == "full":
            return mention(self.color, self.shape)
        if kind == "color":
            return mention(self.color, None)
        if kind == "shape":
            return mention(None, self.shape)
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {PROMPT_KINDS}")


@dataclass(frozen=True)
class Scene:
    """An RGB image with the objects drawn on it, in drawing order."""

    image: Image.Image
    objects: tuple[SceneObject, ...]

    @property
    def size(self) -> tuple[int, int]:
        """Return (width, height)."""
        return self.image.size

    def absent(self, rng: np.random.Generator) -> tuple[str, str]:
        """Return a (color, shape) pair whose color and shape both appear nowhere in the scene."""
        colors = [c for c in COLORS if c not in {o.color for o in self.objects}]
        shapes = [s for s in SHAPES if s not in {o.shape for o in self.objects}]
        return str(rng.choice(colors)), str(rng.choice(shapes))


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Return the generator of scene ``index`` in the stream of ``seed`` (independent of other scenes)."""
    return np.random.default_rng([seed, index])


def make_scene(rng: np.random.Generator, size: int = 128, max_objects: int = 3) -> Scene:
    """Return a scene of one to ``max_objects`` distinct colored shapes on a textured background."""
    if size < 32:
        raise ValueError(f"scene size must be at least 32 px, got {size}")
    if not 1 <= max_objects <= min(len(COLORS), len(SHAPES)):
        raise ValueError(f"max_objects must be between 1 and {min(len(COLORS), len(SHAPES))}")
    canvas = _background(rng, size)
    count = int(rng.integers(1, max_objects + 1))
    # Distinct colors and distinct shapes, so that each full, color-only and shape-only prompt
    # names exactly one object.
    colors = rng.permutation(list(COLORS))[:count]
    shapes = rng.permutation(list(SHAPES))[:count]
    visible: list[np.ndarray] = []
    placed: list[tuple[str, str]] = []
    for color, shape in zip(colors, shapes, strict=True):
        for _ in range(50):
            mask = _shape_mask(rng, str(shape), size)
            trial = [v & ~mask for v in visible]
            if all(t.sum() >= MIN_VISIBLE * v.sum() for t, v in zip(trial, visible, strict=True)):
                visible = [*trial, mask]
                placed.append((str(color), str(shape)))
                _paint(canvas, mask, COLORS[str(color)], rng)
                break
    objects = tuple(
        SceneObject(shape=shape, color=color, mask=mask)
        for (color, shape), mask in zip(placed, visible, strict=True)
    )
    return Scene(image=Image.fromarray(canvas), objects=objects)


def scenes(seed: int, count: int, size: int = 128, max_objects: int = 3) -> Iterator[Scene]:
    """Yield ``count`` scenes of the stream ``seed``; scene i is the same whatever ``count`` is."""
    for index in range(count):
        yield make_scene(scene_rng(seed, index), size=size, max_objects=max_objects)


def mention(color: str | None, shape: str | None) -> str:
    """Return how a caption names an object: "red circle", "red object" (color only) or "circle" (shape only)."""
    if color and shape:
        return f"{color} {shape}"
    if color:
        return f"{color} object"
    if shape:
        return shape
    raise ValueError("an object mention needs a color, a shape or both")


def caption(objects: Sequence[SceneObject] | Sequence[str], rng: np.random.Generator) -> str:
    """Return a caption naming the given objects (SceneObjects or mention strings) in that order."""
    names = [o.name if isinstance(o, SceneObject) else str(o) for o in objects]
    if not names:
        raise ValueError("a caption needs at least one object")
    # Half the captions keep "a" before vowels, as prompt templates like "a photo of a {}." do.
    fix = _articles if rng.random() < 0.5 else str
    if len(names) == 1:
        return fix(str(rng.choice(_SINGLE_TEMPLATES)).format(names[0]))
    listed = [f"a {n}" for n in names]
    joined = ", ".join(listed[:-1]) + " and " + listed[-1]
    return fix(str(rng.choice(_MULTI_TEMPLATES)).format(joined))


def training_pair(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """Return (caption, hard negative) for a scene: the negative names the same layout with a wrong attribute.

    The caption mentions all objects in random order, or sometimes a subset; most mentions give color
    and shape, a few only one of them. The negative swaps colors between two objects, or replaces one
    object's color or shape with one absent from the scene, so that only an encoder that binds color
    to shape can tell the two apart.
    """
    order = list(rng.permutation(len(scene.objects)))
    if len(order) > 1 and rng.random() < 0.3:
        order = order[: int(rng.integers(1, len(order)))]
    chosen: list[tuple[str | None, str | None]] = []
    for i in order:
        color, shape = scene.objects[i].color, scene.objects[i].shape
        kind = rng.random()
        chosen.append((color, None) if kind < 0.1 else (None, shape) if kind < 0.2 else (color, shape))
    negative = list(chosen)
    used_colors = {o.color for o in scene.objects}
    used_shapes = {o.shape for o in scene.objects}
    full = [i for i, (c, s) in enumerate(chosen) if c and s]
    move = rng.random()
    if len(full) > 1 and move < 0.4:
        i, j = rng.choice(full, size=2, replace=False)
        negative[i], negative[j] = (chosen[j][0], chosen[i][1]), (chosen[i][0], chosen[j][1])
    else:
        i = int(rng.integers(len(chosen)))
        color, shape = chosen[i]
        if shape is None or (color is not None and move < 0.7):
            color = str(rng.choice([c for c in COLORS if c not in used_colors]))
        else:
            shape = str(rng.choice([s for s in SHAPES if s not in used_shapes]))
        negative[i] = (color, shape)
    # The same template draw for both, so the negative differs from the caption only in attributes.
    state = rng.bit_generator.state
    text = caption([mention(c, s) for c, s in chosen], rng)
    rng.bit_generator.state = state
    hard = caption([mention(c, s) for c, s in negative], rng)
    return text, hard


def _articles(text: str) -> str:
    """Return ``text`` with "a" before a vowel turned into "an"."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return a muted, textured uint8 [size, size, 3] background (never a saturated object color)."""
    base = rng.uniform(60, 190) + rng.uniform(-18, 18, size=3)
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # smooth blotches: upsampled low-resolution noise
        cells = int(rng.integers(3, 9))
        low = rng.normal(0, 22, size=(cells, cells)).astype(np.float32)
        field = np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.BICUBIC))
    elif kind == 1:  # stripes at a random angle
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(0.06, 0.25)
        field = 16 * np.sign(np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period))
    elif kind == 2:  # checkerboard
        cells = int(rng.integers(4, 12))
        field = 14 * (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 * 2 - 1).astype(np.float32)
    else:  # linear gradient
        angle = rng.uniform(0, 2 * math.pi)
        field = 35 * ((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle))
    noise = rng.normal(0, rng.uniform(4, 14), size=(size, size, 3))
    pixels = base[None, None, :] + field[..., None] + noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _paint(canvas: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], rng: np.random.Generator) -> None:
    """Fill ``mask`` on ``canvas`` with a jittered, slightly noisy version of ``rgb``."""
    color = np.asarray(rgb, dtype=np.float32) * rng.uniform(0.85, 1.1) + rng.uniform(-12, 12, size=3)
    shade = rng.normal(0, 6, size=(int(mask.sum()), 3))
    canvas[mask] = np.clip(color[None, :] + shade, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """Return a bool [size, size] mask of ``shape`` at a random size, position and rotation."""
    diameter = rng.uniform(MIN_SIZE, MAX_SIZE) * size
    radius = diameter / 2
    cx, cy = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        inner = radius * rng.uniform(0.45, 0.6)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "square":
        draw.polygon(_regular(cx, cy, radius, 4, angle), fill=255)
    elif shape == "triangle":
        draw.polygon(_regular(cx, cy, radius, 3, angle), fill=255)
    elif shape == "star":
        outer = _regular(cx, cy, radius, 5, angle)
        inner = _regular(cx, cy, radius * 0.42, 5, angle + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner, strict=True) for p in pair], fill=255)
    elif shape == "cross":
        arm = radius * rng.uniform(0.3, 0.4)
        corners = [(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm), (arm, arm),
                   (arm, radius), (-arm, radius), (-arm, arm), (-radius, arm), (-radius, -arm), (-arm, -arm)]
        cos, sin = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in corners], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.asarray(layer) > 127


def _regular(cx: float, cy: float, radius: float, sides: int, angle: float) -> list[tuple[float, float]]:
    """Return the vertices of a regular polygon."""
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * k / sides), cy + radius * math.sin(angle + 2 * math.pi * k / sides))
        for k in range(sides)
    ]
