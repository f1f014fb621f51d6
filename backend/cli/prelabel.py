"""`gem-labeler prelabel`: a whole Label Studio project (through the queue and workers) or a folder of images.

The flags pick the mode; the work is done by `backend.bulk.project` and `backend.bulk.folder`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from backend.bulk.common import EXIT_INTERRUPTED, Summary, UsageError, describe_options
from backend.options import OptionsError, ProjectOptions, add_flags, flag_params


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `gem-labeler prelabel`."""
    parser = argparse.ArgumentParser(
        prog="gem-labeler prelabel",
        description="Pre-label a whole Label Studio project (through the queue and workers) or a folder of images.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", type=int, help="Label Studio project id")
    source.add_argument("--images", type=Path, help="folder of images (folder mode: no Label Studio needed)")
    add_flags(parser.add_argument_group(
        "per-project options (default: the environment's settings; in project mode they win over the project's "
        "extra params)"))
    run = parser.add_argument_group("run")
    run.add_argument("--limit", type=int, help="consider only the first N tasks or images")
    run.add_argument("--dry-run", action="store_true", help="count what would be done; compute nothing")
    run.add_argument("--workers", type=int, default=0,
                     help="start N local worker processes for this run (project mode default 0: use running "
                          "workers; folder mode: 0 or 1 label in this process)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON line after the table")
    run.add_argument("--retry-failed", action="store_true",
                     help="compute failed tasks or images again now (stored errors are otherwise kept for "
                          "ERROR_TTL_S in project mode, and permanent-looking image failures until the file changes)")
    project = parser.add_argument_group("project mode")
    project.add_argument("--url", help="Label Studio URL (default: LABEL_STUDIO_URL)")
    project.add_argument("--api-key", help="legacy token or personal access token (default: LABEL_STUDIO_API_KEY)")
    project.add_argument("--include-annotated", action="store_true", help="also pre-label tasks with annotations")
    project.add_argument("--page-size", type=int, default=100, help="tasks per page read from Label Studio")
    project.add_argument("--push-batch", type=int, default=50, help="predictions per import request (default 50)")
    folder = parser.add_argument_group("folder mode")
    folder.add_argument("--config", type=Path, help="Label Studio label config XML file (required with --images)")
    folder.add_argument("--out", type=Path, help="output folder: tasks.json, overlays/, failures.json, state.jsonl")
    folder.add_argument("--url-prefix", default=None,
                        help='prefix of image URLs in tasks.json (default "/data/local-files/?d=")')
    folder.add_argument("--document-root", type=Path,
                        help="local-files paths are relative to it (default: LOCAL_FILES_DOCUMENT_ROOT, else --images)")
    folder.add_argument("--url-as-given", action="store_true", help="store image paths as given instead of URLs")
    folder.add_argument("--no-overlays", action="store_true", help="do not write overlay PNGs")
    folder.add_argument("--batch-size", type=int, default=4, help="images per engine call in folder mode")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gem-labeler prelabel`; return the exit status (0 ok, 1 failures, 2 usage, 130 interrupted)."""
    from backend.labelstudio.label_config import LabelConfigError
    from backend.settings import Settings, SettingsError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.limit is not None and args.limit < 0:
            raise UsageError("--limit must be >= 0")
        if args.workers < 0:
            raise UsageError("--workers must be >= 0")
        try:
            params = flag_params(args)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        settings = Settings.from_env()
        if args.images is not None:
            summary = _run_folder_mode(args, settings, ProjectOptions.from_settings(settings, params))
            what = "images"
        else:
            from backend.bulk.project import run_project_mode

            summary = run_project_mode(args, settings, params)
            what = "tasks"
    except (UsageError, SettingsError, OptionsError, LabelConfigError, FileNotFoundError) as exc:
        print(f"gem-labeler prelabel: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the labeling loop (listing tasks, loading): state on disk stays valid
        print("gem-labeler prelabel: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.render(what=what))
    if args.json:
        print(json.dumps(summary.to_dict()))
    return summary.exit_code


def _run_folder_mode(args: argparse.Namespace, settings, options) -> Summary:
    from backend.bulk.folder import (
        LOCAL_FILES_PREFIX,
        FolderRun,
        PipelineLabelerSpec,
        UrlStyle,
        find_images,
        run_folder,
    )
    from backend.labelstudio.label_config import parse_label_config

    if args.config is None or args.out is None:
        raise UsageError("folder mode needs --config (label config XML) and --out (output folder)")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    try:
        config = args.config.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the label config {args.config}: {exc.strerror or exc}") from None
    vocabulary = parse_label_config(config)
    root = args.document_root or (Path(settings.local_files_document_root) if settings.local_files_document_root
                                  else None)
    style = UrlStyle(prefix=args.url_prefix if args.url_prefix is not None else LOCAL_FILES_PREFIX,
                     document_root=root, as_given=args.url_as_given)
    run = FolderRun(
        folder=args.images, out=args.out, vocabulary=vocabulary, url_style=style, overlays=not args.no_overlays,
        limit=args.limit, dry_run=args.dry_run, workers=max(1, args.workers), batch_size=args.batch_size,
        progress=not args.no_progress, retry_failed=args.retry_failed,
    )
    spec = PipelineLabelerSpec(settings=settings, options=options, vocabulary=vocabulary, folder=str(args.images))
    print(describe_options(options, spec.version, flags=flag_params(args)), file=sys.stderr, flush=True)
    # Fail on URL settings before any model work, not after an hour of labeling.
    for relpath in find_images(args.images)[:1]:
        try:
            style.url(args.images, relpath)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return run_folder(run, spec, run_key=spec.run_key)
