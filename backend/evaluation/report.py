"""The evaluation report for people: a text table, ``report.json`` and ``report.png``.

Pipeline: the dict of `evaluator.evaluate` -> `render_table` (stdout) -> `write_report` (OUT/report.json,
and OUT/report.png with per-label bars of IoU, boundary F, presence precision and recall, plus the pixel
confusion matrix, drawn with matplotlib's Agg backend: no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLUMNS = (("presence_precision", "P.prec"), ("presence_recall", "P.rec"), ("iou", "IoU"),
           ("boundary_f", "BF"), ("area_ratio", "area"), ("pixels_saved", "px saved"))


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render_table(report: dict, *, max_skipped: int = 10) -> str:
    """Return the per-label table, the overall figures, and what was skipped or went wrong."""
    width = max([len("label"), *(len(label) for label in report["labels"])])
    lines = ["label".ljust(width) + "  imgs " + " ".join(f"{title:>8}" for _, title in COLUMNS)]
    for label, figures in report["labels"].items():
        lines.append(label.ljust(width) + f"  {figures['images_annotated']:>4} "
                     + " ".join(f"{_fmt(figures[key]):>8}" for key, _ in COLUMNS))
    overall = report["overall"]
    lines += [
        "",
        f"images evaluated: {report['images']}   boundary tolerance: {report['tolerance_px']} px",
        f"mIoU with background: {_fmt(overall['miou_with_background'])}   "
        f"all-background baseline: {_fmt(overall['baseline_miou_all_background'])}",
        f"annotator pixel edits: {overall['edits_from_prelabel']} from the pre-labels vs "
        f"{overall['edits_from_nothing']} from nothing ({overall['pixels_saved']} saved)",
    ]
    if overall.get("ignored_pixels"):
        lines.append(f"ignored pixels (the masks' void region, in no figure): {overall['ignored_pixels']}")
    lines += [f"note: {message}" for message in report.get("messages", [])]
    skipped = report.get("skipped", {})
    if skipped:
        lines.append(f"skipped {len(skipped)}:")
        lines += [f"  {name}: {reason}" for name, reason in list(skipped.items())[:max_skipped]]
        if len(skipped) > max_skipped:
            lines.append(f"  ... and {len(skipped) - max_skipped} more (report.json)")
    problems = report.get("problems", {})
    if problems:
        lines.append(f"warnings on {len(problems)} evaluated image(s) (report.json lists them)")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> list[Path]:
    """Write OUT/report.json and OUT/report.png; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    png_path = out / "report.png"
    draw_png(report, png_path)
    return [json_path, png_path]


def draw_png(report: dict, path: Path) -> None:
    """Draw per-label bars and the row-normalised pixel confusion matrix into one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    from matplotlib import pyplot as plt

    labels = list(report["labels"])
    keys = ("iou", "boundary_f", "presence_precision", "presence_recall")
    classes = report["confusion"]["classes"]
    confusion = np.asarray(report["confusion"]["rows_annotated_cols_predicted"], dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, (bars, matrix) = plt.subplots(1, 2, figsize=(max(8.0, 0.5 * len(labels) * len(keys) / 2) + size, size))
    x = np.arange(len(labels))
    step = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [report["labels"][label][key] or 0.0 for label in labels]
        bars.bar(x + i * step - 0.4 + step / 2, values, step, label=key.replace("_", " "))
    bars.set_xticks(x, labels, rotation=45, ha="right")
    bars.set_ylim(0, 1.25)  # headroom: the legend sits above the bars, never on them
    bars.set_yticks(np.linspace(0, 1, 6))
    bars.legend(fontsize="small", loc="upper center", ncol=2)
    overall = report["overall"]
    bars.set_title(f"per label (mIoU+bg {_fmt(overall['miou_with_background'])}, "
                   f"baseline {_fmt(overall['baseline_miou_all_background'])})")
    matrix.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    matrix.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    matrix.set_yticks(range(len(classes)), classes)
    matrix.set_xlabel("predicted")
    matrix.set_ylabel("annotated")
    matrix.set_title("pixel confusion (row-normalised)")
    for (r, c), value in np.ndenumerate(normalised):
        if len(classes) <= 12 and rows[r, 0] > 0:
            matrix.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
