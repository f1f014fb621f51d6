"""`gem-labeler evaluate`: how good are the pre-labels against human masks?

Pipeline: the flags pick a source (`--folder`: the folder pipeline predicts, PNG masks are the truth;
`--project`: a Label Studio project's predictions against its annotations) -> `backend.evaluation`
evaluates -> the table on stdout, ``OUT/report.json`` and ``OUT/report.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from backend.options import OptionsError, ProjectOptions, add_flags, flag_params


class _Usage(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `gem-labeler evaluate`."""
    parser = argparse.ArgumentParser(
        prog="gem-labeler evaluate",
        description="Compare pre-labels with human masks: per-label presence, IoU, boundary F, area ratio; "
                    "mIoU with background against the all-background baseline; annotator pixel edits saved.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path,
                        help="FOLDER/images/* with FOLDER/masks/<stem>.png (pixel value = label index) and "
                             "FOLDER/labels.txt or labels.json, or with FOLDER/annotations.json (COCO instances); "
                             "pre-labels come from the folder pipeline")
    source.add_argument("--project", type=int, help="Label Studio project id: its predictions against its annotations")
    parser.add_argument("--out", type=Path, required=True, help="output folder: report.json, report.png "
                        "(folder mode also prelabel/, the pipeline's state, reused by a rerun)")
    parser.add_argument("--tolerance", type=float, default=2.0,
                        help="boundary F-score tolerance in pixels (default 2)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line after the table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    folder = parser.add_argument_group("folder mode")
    folder.add_argument("--config", type=Path, help="Label Studio label config XML (required with --folder)")
    folder.add_argument("--limit", type=int, help="evaluate only the first N images")
    folder.add_argument("--batch-size", type=int, default=4, help="images per engine call (default 4)")
    add_flags(parser.add_argument_group("per-project options for folder mode (default: the environment's settings)"))
    project = parser.add_argument_group("project mode")
    project.add_argument("--url", help="Label Studio URL (default: LABEL_STUDIO_URL)")
    project.add_argument("--api-key", help="legacy token or personal access token (default: LABEL_STUDIO_API_KEY)")
    project.add_argument("--model-version", help="judge the predictions of this model version (default: each "
                                                 "task's latest prediction)")
    project.add_argument("--page-size", type=int, default=100, help="tasks per page read from Label Studio")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gem-labeler evaluate`; return 0 when something was evaluated, 1 when nothing was, 2 on usage."""
    from backend.evaluation.coco import CocoError
    from backend.evaluation.evaluator import evaluate
    from backend.evaluation.folder_source import FolderLayoutError
    from backend.evaluation.report import render_table, write_report
    from backend.labelstudio.client import LabelStudioError
    from backend.labelstudio.label_config import LabelConfigError
    from backend.settings import Settings, SettingsError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.tolerance < 0:
            raise _Usage("--tolerance must be >= 0")
        settings = Settings.from_env()
        if args.folder is not None:
            labels, source_problems, samples = _folder(args, settings)
        else:
            labels, source_problems, samples = _project(args, settings)
        report = evaluate(samples, labels, tolerance=args.tolerance, source_problems=source_problems)
    except (_Usage, SettingsError, OptionsError, LabelConfigError, FolderLayoutError, CocoError, FileNotFoundError,
            LabelStudioError) as exc:
        print(f"gem-labeler evaluate: {exc}", file=sys.stderr)
        return 2
    written = write_report(report, args.out)
    print(render_table(report))
    print("wrote " + ", ".join(str(p) for p in written))
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0 if report["images"] else 1


def _folder(args: argparse.Namespace, settings):
    from backend.evaluation.folder_source import folder_samples
    from backend.labelstudio.label_config import parse_label_config

    if args.config is None:
        raise _Usage("folder mode needs --config (the label config XML naming the labels and their prompts)")
    if args.batch_size < 1:
        raise _Usage("--batch-size must be >= 1")
    try:
        vocabulary = parse_label_config(args.config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _Usage(f"cannot read the label config {args.config}: {exc.strerror or exc}") from None
    try:
        params = flag_params(args)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    options = ProjectOptions.from_settings(settings, params)
    labels = vocabulary.foreground
    problems, samples = folder_samples(args.folder, args.out / "prelabel", settings, options, vocabulary, labels,
                                       batch_size=args.batch_size, progress=not args.no_progress, limit=args.limit)
    return labels, problems, samples


def _project(args: argparse.Namespace, settings):
    from backend.evaluation.project_source import project_samples, project_vocabulary
    from backend.labelstudio.client import LabelStudioClient

    url = args.url or settings.label_studio_url
    api_key = args.api_key or settings.label_studio_api_key
    if not url or not api_key:
        raise _Usage("project mode needs --url and --api-key (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    try:
        client = LabelStudioClient(url, api_key)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    with client:
        vocabulary = project_vocabulary(client, args.project)
        labels = vocabulary.foreground
        # Read every task now, while the client is open (evaluate consumes the list afterwards).
        samples = list(project_samples(client, args.project, labels, vocabulary.background,
                                       model_version=args.model_version, page_size=args.page_size))
    return labels, [], samples
