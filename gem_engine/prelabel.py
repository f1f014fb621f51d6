"""An image's analysis to the regions a user receives: presence first, then masks, then scores.

Pipeline: ImageAnalysis (gem_engine.engine) -> presence per label (gem_engine.presence) -> the maps
of the present labels, plus one background map (pixelwise maximum of the background prompts' maps
and of the vocabulary's own background labels) -> gem_engine.regions (semantic: every pixel to the
best present label or to background; independent: each present label's own threshold) -> scores.

A label judged absent gets no region, whatever its map looks like. A region's score is the label's
presence probability times, in semantic mode, the mean probability of the region's pixels
(gem_engine.regions' softmax against the other present labels and background): high when the label
is surely there and its pixels are clearly its own. `recalibrate` maps scores through a fitted sigmoid
(Platt scaling: slope and offset on the score's logit), so that a project's scores can be made to match how
often its regions are right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from gem_engine.presence import PresenceOptions, decide_presence
from gem_engine.regions import Region, RegionOptions, extract_regions

BACKGROUND = "\x00background"  # the background class's name inside extract_regions; never a label's


def prelabel_regions(
    analysis,
    labels: Sequence[str],
    image_size: tuple[int, int],
    region_options: RegionOptions | None = None,
    presence_options: PresenceOptions | None = None,
) -> list[Region]:
    """Return the regions of the labels judged present in the image `analysis` describes, scored."""
    region_options = region_options or RegionOptions()
    presence_options = presence_options or PresenceOptions()
    labels = list(labels)
    if len(labels) != len(analysis.maps):
        raise ValueError(f"the analysis holds {len(analysis.maps)} label maps but {len(labels)} labels were given")
    named_background = {name.strip().casefold() for name in region_options.background_names}
    is_background = [label.strip().casefold() in named_background for label in labels]
    wanted = [i for i, background in enumerate(is_background) if not background]
    present, probability = decide_presence(
        _subset(analysis, wanted), [labels[i] for i in wanted], presence_options
    )
    chosen = [i for i, keep in zip(wanted, present, strict=True) if keep]
    if not chosen:
        return []
    chance = {labels[i]: p for i, p in zip(wanted, probability, strict=True)}
    maps = [analysis.maps[i] for i in chosen]
    names = [labels[i] for i in chosen]
    semantic = region_options.mode == "semantic"
    background = _background_map(analysis, [i for i, b in enumerate(is_background) if b]) if semantic else None
    if background is not None:
        maps.append(background)
        names.append(BACKGROUND)
    options = replace(region_options, background_names=(*region_options.background_names, BACKGROUND))
    found = extract_regions(np.stack(maps), names, image_size, options)
    return [
        replace(region, score=float(chance[region.label] * (region.score if semantic else 1.0))) for region in found
    ]


def _subset(analysis, keep: list[int]):
    return replace(analysis, maps=analysis.maps[keep], label_scores=analysis.label_scores[keep])


def _background_map(analysis, background_labels: list[int]) -> np.ndarray | None:
    """Return the pixelwise maximum of the background prompts' maps and the background labels' maps."""
    parts = [*analysis.background_maps, *(analysis.maps[i] for i in background_labels)]
    if not parts:
        return None
    return np.max(np.stack(parts), axis=0).astype(np.float32)


def recalibrate(score: float, slope: float = 1.0, offset: float = 0.0) -> float:
    """Return sigmoid(slope * logit(score) + offset); slope 1 and offset 0 return the score unchanged."""
    if slope == 1.0 and offset == 0.0:
        return score
    clipped = min(max(score, 1e-6), 1.0 - 1e-6)
    return 1.0 / (1.0 + math.exp(-(slope * math.log(clipped / (1.0 - clipped)) + offset)))
