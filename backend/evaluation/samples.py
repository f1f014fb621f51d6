"""What every source hands the evaluator: one image's predicted and annotated masks, or why it has none.

Pipeline: a source (`folder_source`, `project_source`) -> `Sample` per image or task -> `evaluator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One evaluated image: masks per label at `shape` (missing label = empty), or `skipped` with the reason."""

    name: str
    shape: tuple[int, int] | None = None
    predicted: dict[str, np.ndarray] = field(default_factory=dict)
    annotated: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the sample still counts; these are warnings
    skipped: str | None = None  # the sample does not count, and this says why
    model_version: str | None = None  # of the prediction judged, when the source knows it
    ignore: np.ndarray | None = None  # [h, w] bool: pixels no metric counts (a mask's "void"); None = none
