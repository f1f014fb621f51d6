"""Samples to one report dict: the figures of `metrics` plus what was skipped and why.

Pipeline: `Sample`s from a source -> `metrics.Accumulator.add` per evaluated sample -> `evaluate` returns
the summary with ``skipped`` (image -> reason) and ``problems`` (warnings that did not stop an image).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from backend.evaluation.metrics import DEFAULT_TOLERANCE, Accumulator
from backend.evaluation.samples import Sample


def evaluate(samples: Iterable[Sample], labels: Sequence[str], *, tolerance: float = DEFAULT_TOLERANCE,
             source_problems: Sequence[str] = ()) -> dict:
    """Return the report dict; `messages` says plainly when nothing could be evaluated."""
    acc = Accumulator(list(labels), tolerance=tolerance)
    skipped: dict[str, str] = {}
    problems: dict[str, list[str]] = {}
    versions: dict[str, int] = {}  # predictions judged per model version: a mix is worth knowing
    for sample in samples:
        if sample.skipped is not None or sample.shape is None:
            skipped[sample.name] = sample.skipped or "no image size"
            continue
        try:
            acc.add(sample.predicted, sample.annotated, sample.shape, sample.ignore)
        except ValueError as exc:  # a mask of the wrong size: that image only
            skipped[sample.name] = str(exc)
            continue
        if sample.model_version is not None:
            versions[sample.model_version] = versions.get(sample.model_version, 0) + 1
        if sample.problems:
            problems[sample.name] = list(sample.problems)
    report = acc.summary()
    messages = list(source_problems)
    if not labels:
        messages.append("the label config has no foreground label to evaluate")
    if acc.images == 0:
        messages.append(f"nothing evaluated: no image or task had both a human mask and a pre-label "
                        f"({len(skipped)} skipped, reasons below)")
    if len(versions) > 1:
        messages.append(f"predictions of {len(versions)} model versions were judged together "
                        f"({versions}); pass --model-version to judge one")
    report.update(skipped=skipped, problems=problems, messages=messages, model_versions=versions)
    return report
