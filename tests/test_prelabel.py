"""Presence first, then masks: a fixed vocabulary where most labels are absent gets regions only for what is there.

The probability is checked against a hand computation; the decisions and regions on the trained tiny CLIP
(tests/fixtures/models/scenes-vit.*) on held-out scenes, where the truth is known. The quality figures
(precision, recall, absent area, mIoU against predicting nothing) are bench/prelabel_quality.py's; the
thresholds here sit below what it measures, so that a regression to "every label gets a mask" fails.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from bench import localization
from gem_engine.engine import HeatmapEngine, ImageAnalysis
from gem_engine.prelabel import prelabel_regions
from gem_engine.presence import PresenceOptions, decide_presence, map_peaks, presence_probability
from gem_engine.regions import RegionOptions, extract_regions
from tests import scenes

COLORS = [scenes.mention(color, None) for color in scenes.COLORS]
SCENES = 40


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    return HeatmapEngine(localization.load_scenes_model(), method="gem")


@pytest.fixture(scope="module")
def held_out(engine):
    """Held-out scenes with their analyses under the fixed 6-colour vocabulary."""
    items = list(scenes.scenes(localization.HELD_OUT_SEED, SCENES))
    analyses = engine.analyze([s.image for s in items], [[c] for c in COLORS], ["background"])
    return list(zip(items, analyses, strict=True))


def _present(scene) -> set[str]:
    return {scenes.mention(o.color, None) for o in scene.objects}


def test_presence_probability_is_the_two_way_softmax_against_the_background_prompts():
    label, background, scale = np.array([0.3, 0.05]), np.array([0.2, 0.1]), 10.0
    expected = [math.exp(3.0) / (math.exp(3.0) + math.exp(2.0) + math.exp(1.0)),
                math.exp(0.5) / (math.exp(0.5) + math.exp(2.0) + math.exp(1.0))]
    assert presence_probability(label, background, scale) == pytest.approx(expected, abs=1e-12)
    # Each label is weighed alone: adding another label to the vocabulary changes nothing for the first.
    assert presence_probability(label[:1], background, scale)[0] == pytest.approx(expected[0], abs=1e-12)
    with pytest.raises(ValueError, match="background prompt"):
        presence_probability(label, np.array([]), scale)


def test_map_peaks_average_the_top_five_percent():
    maps = np.arange(200, dtype=np.float32).reshape(2, 10, 10)
    assert map_peaks(maps) == pytest.approx([np.mean([95, 96, 97, 98, 99]), np.mean([195, 196, 197, 198, 199])])


def test_thresholds_evidence_and_per_label_overrides():
    analysis = ImageAnalysis(
        maps=np.zeros((2, 4, 4), np.float32), background_maps=np.zeros((1, 4, 4), np.float32),
        label_scores=np.array([0.3, 0.1], np.float32), background_scores=np.array([0.2], np.float32),
        logit_scale=10.0,
    )
    present, probability = decide_presence(analysis, ["cat", "dog"], PresenceOptions(evidence="image"))
    assert present.tolist() == [True, False]
    assert probability == pytest.approx([1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(1.0))], abs=1e-6)
    lowered = PresenceOptions(evidence="image", label_thresholds={"dog": 0.2})
    assert decide_presence(analysis, ["cat", "dog"], lowered)[0].tolist() == [True, True]
    assert decide_presence(analysis, ["cat", "dog"], PresenceOptions(evidence="image", threshold=0.9))[0].tolist() == [
        False, False]
    # Map evidence: the top-5% mean of each map against the background map's, through the same softmax.
    with_maps = replace(analysis, maps=np.stack([np.full((4, 4), 0.1), np.full((4, 4), 0.4)]).astype(np.float32))
    by_map = decide_presence(with_maps, ["cat", "dog"], PresenceOptions(evidence="map"))[1]
    assert by_map == pytest.approx([1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(-4.0))], abs=1e-6)
    # Grad-CAM's maps are not cosines: map evidence falls back to the image's.
    gradcam = replace(with_maps, maps_are_cosines=False)
    assert decide_presence(gradcam, ["cat", "dog"], PresenceOptions(evidence="image+map"))[1] == pytest.approx(
        probability, abs=1e-6)
    everything = decide_presence(analysis, ["cat", "dog"], PresenceOptions(evidence="none"))
    assert everything[0].tolist() == [True, True] and everything[1].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="background prompt"):
        PresenceOptions(evidence="image", background_prompts=())
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        PresenceOptions(label_thresholds={"cat": 1.5})


@pytest.mark.parametrize("method", ["gem", "naclip", "patch", "gradcam"])
def test_image_scores_are_the_unmodified_models_image_embedding(engine, held_out, method):
    from gem_engine.text import text_embeddings

    scene = held_out[0][0]
    loaded = engine.loaded
    native = HeatmapEngine(loaded, method=method, image_size=128)  # open_clip's encode_image needs its own size
    analysis = native.analyze([scene.image], [[c] for c in COLORS], ["background", "nothing"])[0]
    pixels = native._prepare(scene.image).windows[0].pixels[None]
    with torch.inference_mode():
        image = torch.nn.functional.normalize(loaded.model.encode_image(pixels).float(), dim=-1)[0]
    text = text_embeddings(loaded, [[c] for c in COLORS] + [["background"], ["nothing"]])
    expected = (text @ image).numpy()
    got = np.concatenate([analysis.label_scores, analysis.background_scores])
    assert got == pytest.approx(expected, abs=1e-5)
    assert analysis.logit_scale == pytest.approx(float(loaded.model.logit_scale.detach().exp()))
    assert analysis.maps.shape[0] == len(COLORS) and analysis.background_maps.shape[0] == 2
    # The label maps are what heatmaps() gives (to float rounding: more text rows change the product's blocking).
    assert np.allclose(native.heatmaps([scene.image], [[c] for c in COLORS])[0], analysis.maps, rtol=0, atol=1e-6)


def test_with_a_fixed_vocabulary_absent_labels_get_no_region(held_out):
    predicted = correct = truths = 0
    absent_area, old_absent_area = [], []
    for scene, analysis in held_out:
        truth = _present(scene)
        regions = prelabel_regions(analysis, COLORS, scene.size)
        labels = {r.label for r in regions}
        predicted, correct, truths = predicted + len(labels), correct + len(labels & truth), truths + len(truth)
        absent_area.append(np.mean(np.any([r.mask for r in regions if r.label not in truth] or [np.zeros((1, 1))], 0)))
        old = extract_regions(analysis.maps, COLORS, scene.size, RegionOptions())
        old_absent_area.append(np.mean(np.any([r.mask for r in old if r.label not in truth] or [np.zeros((1, 1))], 0)))
    # bench/prelabel_quality.py (held-out scenes): precision 0.94, recall 1.0, absent area 0.08 against 0.63 before;
    # here 40 scenes: 0.12 against 0.60 (two scenes where a wrongly present "blue" takes most of the background).
    assert correct / predicted >= 0.85 and correct / truths >= 0.85, (correct, predicted, truths)
    assert np.mean(absent_area) <= 0.15 and np.mean(old_absent_area) >= 0.4, (np.mean(absent_area), np.mean(old_absent_area))


def test_a_one_label_vocabulary_gets_a_region_only_where_the_object_is(engine, held_out):
    kept = dropped = 0
    for scene, _ in held_out[:20]:
        for label in ("red object", "blue object"):
            analysis = engine.analyze([scene.image], [[label]], ["background"])[0]
            regions = prelabel_regions(analysis, [label], scene.size)
            if label in _present(scene):
                kept += bool(regions)
                assert all(r.label == label for r in regions)
            else:
                dropped += not regions
    absent_cases = sum(label not in _present(s) for s, _ in held_out[:20] for label in ("red object", "blue object"))
    present_cases = 40 - absent_cases
    # Measured: 23 of 26 absent cases dropped, 14 of 14 present kept; before presence none was dropped.
    assert dropped >= 0.8 * absent_cases and kept >= 0.8 * present_cases, (dropped, absent_cases, kept, present_cases)


def test_scores_rank_present_labels_above_absent_ones(held_out):
    present_scores, absent_scores = [], []
    for scene, analysis in held_out:
        best = {r.label: r.score for r in prelabel_regions(analysis, COLORS, scene.size)}
        for label in COLORS:
            (present_scores if label in _present(scene) else absent_scores).append(best.get(label, 0.0))
    pairs = np.array(present_scores)[:, None] > np.array(absent_scores)[None, :]
    assert pairs.mean() >= 0.9, pairs.mean()
    assert all(0.0 <= s <= 1.0 for s in present_scores + absent_scores)


def test_background_labels_of_the_config_join_the_background_class_and_get_no_region(held_out):
    scene, analysis = next((s, a) for s, a in held_out if len(s.objects) == 1)
    labels = [*COLORS[:-1], "background"]  # the config's own background label in place of one colour
    regions = prelabel_regions(analysis, labels, scene.size, RegionOptions(background_names=("background",)),
                               PresenceOptions(evidence="none"))
    assert regions and all(r.label != "background" for r in regions)
    covered = np.any([r.mask for r in regions], axis=0).mean()
    with_every_label = extract_regions(analysis.maps, COLORS, scene.size, RegionOptions(background_names=()))
    assert covered < np.any([r.mask for r in with_every_label], axis=0).mean()


def test_an_analysis_for_other_labels_is_refused(held_out):
    scene, analysis = held_out[0]
    with pytest.raises(ValueError, match="6 label maps but 2 labels"):
        prelabel_regions(analysis, COLORS[:2], scene.size)
