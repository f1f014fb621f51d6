"""The synthetic scene generator: deterministic, masks that match the pixels, captions that name objects."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import dilation

from tests import scenes


def test_same_seed_same_scene_and_streams_differ():
    first = list(scenes.scenes(seed=7, count=5))
    again = list(scenes.scenes(seed=7, count=3))
    other = next(scenes.scenes(seed=8, count=1))
    for a, b in zip(first, again, strict=False):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert [o.name for o in a.objects] == [o.name for o in b.objects]
        for oa, ob in zip(a.objects, b.objects, strict=True):
            assert np.array_equal(oa.mask, ob.mask)
    assert not np.array_equal(np.asarray(first[0].image), np.asarray(other.image))


def test_objects_are_distinct_visible_and_disjoint():
    counts = set()
    for scene in scenes.scenes(seed=3, count=150):
        assert scene.image.mode == "RGB" and scene.size == (128, 128)
        assert 1 <= len(scene.objects) <= 3
        counts.add(len(scene.objects))
        assert len({o.color for o in scene.objects}) == len(scene.objects)
        assert len({o.shape for o in scene.objects}) == len(scene.objects)
        total = np.zeros((128, 128), dtype=int)
        for obj in scene.objects:
            assert obj.mask.shape == (128, 128) and obj.mask.dtype == bool
            assert obj.mask.sum() > 100
            total += obj.mask
        assert total.max() <= 1, "visible masks must not overlap: occluded pixels belong to the top object"
    assert counts == {1, 2, 3}


def test_some_objects_overlap():
    touching = 0
    for scene in scenes.scenes(seed=4, count=200):
        for i, obj in enumerate(scene.objects):
            grown = dilation(obj.mask, footprint=np.ones((3, 3), bool))
            touching += any((later.mask & grown).any() for later in scene.objects[i + 1 :])
    assert touching >= 10, "some scenes must have an object partly hidden behind a later one"


def test_masks_match_the_painted_colors():
    for scene in scenes.scenes(seed=5, count=40):
        pixels = np.asarray(scene.image).astype(float)
        for obj in scene.objects:
            inside = pixels[obj.mask].mean(axis=0)
            target = np.asarray(scenes.COLORS[obj.color], dtype=float)
            distances = {
                name: np.linalg.norm(inside - np.asarray(rgb, dtype=float)) for name, rgb in scenes.COLORS.items()
            }
            assert min(distances, key=distances.get) == obj.color, (obj.name, inside, target)


def test_background_is_muted():
    scene = next(scenes.scenes(seed=6, count=1))
    pixels = np.asarray(scene.image).astype(float)
    background = ~np.any([o.mask for o in scene.objects], axis=0)
    saturation = pixels[background].max(axis=1) - pixels[background].min(axis=1)
    assert np.median(saturation) < 70


def test_captions_name_objects_and_negatives_differ_in_attributes_only():
    rng = np.random.default_rng(0)
    swapped = 0
    for scene in scenes.scenes(seed=9, count=200):
        text, negative = scenes.training_pair(scene, rng)
        assert text != negative
        assert len(text.split()) == len(negative.split())
        differing = [(a, b) for a, b in zip(text.split(), negative.split(), strict=True) if a != b]
        vocabulary = set(scenes.COLORS) | set(scenes.SHAPES) | {"a", "an"}
        assert all(a.strip(".,") in vocabulary and b.strip(".,") in vocabulary for a, b in differing)
        named = [w.strip(".,") for w in text.split()]
        assert any(o.color in named or o.shape in named for o in scene.objects)
        swapped += len([a for a, _ in differing if a.strip(".,") in scenes.COLORS]) >= 2
    assert swapped > 10, "color swaps between two objects are the hard negatives that bind color to shape"


def test_prompts_and_absent_objects():
    scene = next(s for s in scenes.scenes(seed=2, count=50) if len(s.objects) == 3)
    obj = scene.objects[0]
    assert obj.prompt("full") == f"{obj.color} {obj.shape}"
    assert obj.prompt("color") == f"{obj.color} object"
    assert obj.prompt("shape") == obj.shape
    color, shape = scene.absent(np.random.default_rng(1))
    assert color not in {o.color for o in scene.objects} and shape not in {o.shape for o in scene.objects}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scenes.make_scene(np.random.default_rng(0), size=16), "at least 32"),
        (lambda: scenes.make_scene(np.random.default_rng(0), max_objects=0), "max_objects"),
        (lambda: scenes.caption([], np.random.default_rng(0)), "at least one object"),
        (lambda: scenes.mention(None, None), "color, a shape"),
        (lambda: scenes._shape_mask(np.random.default_rng(0), "hexagon", 64), "unknown shape"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_unknown_prompt_kind():
    obj = next(scenes.scenes(seed=1, count=1)).objects[0]
    with pytest.raises(ValueError, match="prompt kind"):
        obj.prompt("texture")
