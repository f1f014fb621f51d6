"""Which labels are in an image: a probability per label from absolute evidence, decided before any mask.

Pipeline: an ImageAnalysis (gem_engine.engine) holds the cosine of the unmodified model's image
embedding with each label's text and with each background prompt's text -> per label, a two-way softmax
at the model's own CLIP logit scale between the label and the background prompts (the label against
"nothing of the vocabulary is there") -> present where that probability reaches the label's threshold.

Each label is weighed against the background prompts alone, not against the other labels, so the
probability means the same in a vocabulary of one label as in one of a hundred, and two labels that
are both in the image do not take probability from each other. Evidence "map" uses the maps instead:
the mean of a label's top 5% patch cosines against the same statistic of the background prompts' maps
(pixelwise maximum), through the same two-way softmax. "image+map" averages the two probabilities.
Grad-CAM's maps are gradient-weighted activations, not cosines, so with Grad-CAM both fall back to "image".
"none" keeps every label (probability 1), the behaviour before this module existed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

EVIDENCE = ("image", "map", "image+map", "none")
DEFAULT_BACKGROUND_PROMPTS = ("background",)
TOP_FRACTION = 0.05  # "map" evidence: the share of a map's patches whose mean is the label's peak


@dataclass(frozen=True)
class PresenceOptions:
    """How labels are judged present; see README "Presence, background and scores"."""

    evidence: str = "image+map"
    threshold: float = 0.5  # a label is present when its probability reaches this
    label_thresholds: Mapping[str, float] = field(default_factory=dict)  # per label, overrides threshold
    background_prompts: Sequence[str] = DEFAULT_BACKGROUND_PROMPTS

    def __post_init__(self) -> None:
        if self.evidence not in EVIDENCE:
            raise ValueError(f"evidence must be one of {EVIDENCE}, got {self.evidence!r}")
        for name, value in (("threshold", self.threshold), *dict(self.label_thresholds).items()):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"presence threshold {name!r} must be a number in [0, 1], got {value!r}")
        if isinstance(self.background_prompts, str):
            raise ValueError("background_prompts must be a sequence of prompts, not one string")
        if self.evidence != "none" and not [p for p in self.background_prompts if str(p).strip()]:
            raise ValueError(f"evidence {self.evidence!r} needs at least one background prompt")


def presence_probability(
    label_scores: np.ndarray, background_scores: np.ndarray, logit_scale: float
) -> np.ndarray:
    """Return per label the two-way softmax probability [L] of the label against all background prompts.

    label_scores [L] and background_scores [B] are cosines; the background side is the log-sum-exp of
    its prompts, so more background prompts make a label's case harder, as in CLIP's own softmax.
    """
    label_scores = np.asarray(label_scores, dtype=np.float64)
    background_scores = np.asarray(background_scores, dtype=np.float64)
    if background_scores.size == 0:
        raise ValueError("presence needs at least one background prompt score")
    if not math.isfinite(logit_scale) or logit_scale <= 0:
        raise ValueError(f"logit_scale must be a positive finite number, got {logit_scale!r}")
    background = np.logaddexp.reduce(logit_scale * background_scores)
    return 1.0 / (1.0 + np.exp(background - logit_scale * label_scores))


def map_peaks(maps: np.ndarray) -> np.ndarray:
    """Return per map [K, h, w] the mean of its top TOP_FRACTION values [K] (non-finite values ignored)."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    count = max(1, int(round(flat.shape[1] * TOP_FRACTION)))
    top = -np.sort(-flat, axis=1)[:, :count]
    top = np.where(np.isfinite(top), top, np.nan)
    return np.nan_to_num(np.nanmean(top, axis=1), nan=-1.0) if top.size else np.zeros(len(flat))


def decide_presence(analysis, labels: Sequence[str], options: PresenceOptions) -> tuple[np.ndarray, np.ndarray]:
    """Return (present: bool [L], probability: float [L]) for an ImageAnalysis of `labels`."""
    count = len(labels)
    if options.evidence == "none":
        return np.ones(count, dtype=bool), np.ones(count)
    scale = float(analysis.logit_scale)
    evidence = options.evidence if analysis.maps_are_cosines else "image"
    probabilities = []
    if evidence in ("image", "image+map"):
        probabilities.append(presence_probability(analysis.label_scores, analysis.background_scores, scale))
    if evidence in ("map", "image+map"):
        background = np.max(analysis.background_maps, axis=0, keepdims=True)
        probabilities.append(presence_probability(map_peaks(analysis.maps), map_peaks(background), scale))
    probability = np.mean(probabilities, axis=0)
    thresholds = np.array([options.label_thresholds.get(label, options.threshold) for label in labels])
    return probability >= thresholds, probability
