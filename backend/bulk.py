"""What folder mode and project mode share: the run summary, its failure table, and the progress bar."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


@dataclass(frozen=True)
class Failure:
    """One item (task id or image path) that could not be pre-labeled, and why."""

    item: str
    reason: str


@dataclass
class Summary:
    """Counts of one bulk run, and the failures with their reasons."""

    total: int = 0  # items found (tasks listed, images found), after --limit
    skipped: int = 0  # already done or not wanted (predicted by this version, annotated, resumed)
    done: int = 0  # pre-labeled in this run
    failed: list[Failure] = field(default_factory=list)
    pending: int = 0  # queued but not finished when the run ended (interrupted, or timed out)
    interrupted: bool = False
    dry_run: bool = False
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """Return the process exit status: 130 when interrupted, 1 when anything failed or is pending, else 0."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed or self.pending else EXIT_OK

    def to_dict(self) -> dict:
        """Return a JSON-ready form (for `--json` and tests)."""
        return {
            "total": self.total,
            "skipped": self.skipped,
            "done": self.done,
            "failed": len(self.failed),
            "pending": self.pending,
            "interrupted": self.interrupted,
            "dry_run": self.dry_run,
            "elapsed_s": round(self.elapsed_s, 3),
            "failures": [{"item": f.item, "reason": f.reason} for f in self.failed],
        }

    def render(self, *, what: str = "items", max_rows: int = 50) -> str:
        """Return the human summary: one line of counts, then a table of failures with their reasons."""
        verb = "would pre-label" if self.dry_run else "pre-labeled"
        parts = [
            f"{self.total} {what}",
            f"{verb} {self.done}",
            f"skipped {self.skipped}",
            f"failed {len(self.failed)}",
        ]
        if self.pending:
            parts.append(f"unfinished {self.pending}")
        line = ", ".join(parts) + f" in {self.elapsed_s:.1f} s"
        if self.interrupted:
            line = "interrupted: " + line + "; run the same command again to continue"
        lines = [line]
        if self.failed:
            rows = self.failed[:max_rows]
            width = min(60, max(len("item"), *(len(f.item) for f in rows)))
            lines.append("")
            lines.append(f"{'item':<{width}}  reason")
            lines.append(f"{'-' * width}  {'-' * 6}")
            for failure in rows:
                reason = " ".join(failure.reason.split())  # one row per failure, whatever the message holds
                lines.append(f"{failure.item:<{width}}  {reason}")
            if len(self.failed) > max_rows:
                lines.append(f"... and {len(self.failed) - max_rows} more")
        return "\n".join(lines)


class Progress:
    """A tqdm bar counting finished items, with failures, rate and ETA; silent when disabled."""

    def __init__(self, total: int, *, desc: str, enabled: bool = True, stream: TextIO | None = None) -> None:
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="img",
            disable=not enabled,
            file=stream or sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
        )
        self.done = 0
        self.failed = 0
        self._started = time.monotonic()

    def advance(self, *, done: int = 0, failed: int = 0) -> None:
        """Count newly finished items."""
        if not done and not failed:
            return
        self.done += done
        self.failed += failed
        self._bar.set_postfix(done=self.done, failed=self.failed, refresh=False)
        self._bar.update(done + failed)

    def close(self) -> None:
        """Finish the bar's line."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StopRequest:
    """Turns the first Ctrl-C into a request to stop (checked between items); a second one aborts at once."""

    def __init__(self, *, message: str = "stopping: finishing running work (Ctrl-C again to abort)") -> None:
        self.requested = False
        self._message = message
        self._previous: object = None
        self._installed = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self._message}", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere Ctrl-C keeps its default.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False


# --------------------------------------------------------------------------------------------------
# `gem-labeler prelabel`


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `gem-labeler prelabel`."""
    parser = argparse.ArgumentParser(
        prog="gem-labeler prelabel",
        description="Pre-label a whole Label Studio project (through the queue and workers) or a folder of images.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", type=int, help="Label Studio project id")
    source.add_argument("--images", type=Path, help="folder of images (folder mode: no Label Studio needed)")
    engine = parser.add_argument_group("model and method (default: the environment's settings)")
    engine.add_argument("--method", choices=("gem", "gradcam"), help="heatmap method (default: METHOD)")
    engine.add_argument("--model", help="open_clip model name (default: MODEL_NAME)")
    engine.add_argument("--pretrained", help="open_clip tag or checkpoint file (default: MODEL_PRETRAINED)")
    engine.add_argument("--model-config", help="JSON open_clip config of a custom model (default: MODEL_CONFIG)")
    run = parser.add_argument_group("run")
    run.add_argument("--limit", type=int, help="consider only the first N tasks or images")
    run.add_argument("--dry-run", action="store_true", help="count what would be done; compute nothing")
    run.add_argument("--workers", type=int, default=0,
                     help="start N local worker processes for this run (project mode default 0: use running "
                          "workers; folder mode: 0 or 1 label in this process)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON line after the table")
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


class UsageError(ValueError):
    """The run cannot start or go on as asked (bad flag, unreadable file, unreachable service); says what to fix."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gem-labeler prelabel`; return the exit status (0 ok, 1 failures, 2 usage, 130 interrupted)."""
    from backend.jobqueue.jobs import OptionsError, ProjectOptions
    from backend.labelstudio.label_config import LabelConfigError
    from backend.settings import Settings, SettingsError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.limit is not None and args.limit < 0:
            raise UsageError("--limit must be >= 0")
        if args.workers < 0:
            raise UsageError("--workers must be >= 0")
        settings = Settings.from_env()
        params = {
            name: value
            for name, value in (
                ("method", args.method),
                ("model", args.model),
                ("model_pretrained", args.pretrained),
                ("model_config", args.model_config),
            )
            if value is not None
        }
        if args.images is not None:
            summary = _run_folder_mode(args, settings, ProjectOptions.from_settings(settings, params))
            what = "images"
        else:
            from backend.bulk_project import run_project_mode

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
    from backend.bulk_folder import (
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
        progress=not args.no_progress,
    )
    spec = PipelineLabelerSpec(settings=settings, options=options, vocabulary=vocabulary, folder=str(args.images))
    # Fail on URL settings before any model work, not after an hour of labeling.
    for relpath in find_images(args.images)[:1]:
        try:
            style.url(args.images, relpath)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return run_folder(run, spec, run_key=spec.run_key)
