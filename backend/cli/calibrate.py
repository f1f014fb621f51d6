"""`gem-labeler calibrate`: fit a project's thresholds to its annotations, show them, export them, roll back.

Pipeline: --project ID -> `jobqueue.calibrations.enqueue` (the workers run `calibration.job`, the same job
Label Studio's "Start Training" starts) -> a progress bar from the fit's status in Redis -> the report:
held-out quality before and after, adopted or not and why, the params, the new version. --status shows
the fit in progress or the last one and every version; --rollback makes the previous version (or --to N)
active; --export writes the project's versions as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

POLL_S = 0.5


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `gem-labeler calibrate`."""
    parser = argparse.ArgumentParser(
        prog="gem-labeler calibrate",
        description="Fit a Label Studio project's presence and background thresholds to its annotated tasks "
                    "(cross-validated; adopted only when held-out quality improves), or manage its versions.",
    )
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--status", action="store_true", help="show the running or last fit and every version")
    action.add_argument("--rollback", action="store_true",
                        help="make the version before the active one active (with --to N: version N; 0 = none)")
    action.add_argument("--export", type=Path, help="write the project's calibration versions to this JSON file")
    parser.add_argument("--to", type=int, help="with --rollback: the version to make active (0: no calibration)")
    parser.add_argument("--min-examples", type=int, default=None,
                        help="annotated images a label needs for its own presence threshold (default 5)")
    parser.add_argument("--no-wait", action="store_true", help="queue the fit and return")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds to wait for the fit (default 3 h)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line at the end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `gem-labeler calibrate`; 0: done (a fit adopted, or the action done), 1: fit not adopted or
    failed, 2: usage or configuration error."""
    import redis

    from backend.jobqueue import calibrations
    from backend.jobqueue import queues as rq_queue
    from backend.settings import Settings, SettingsError

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return _fail(f"configuration error: {exc}")
    if args.to is not None and not args.rollback:
        return _fail("--to goes with --rollback")
    if args.min_examples is not None and args.min_examples < 1:
        return _fail("--min-examples must be at least 1")
    if not settings.redis_url:
        return _fail("REDIS_URL is not set: calibration runs on the workers of the Redis the API uses")
    project = str(args.project)
    prefix = settings.queue_prefix
    conn = rq_queue.connect(settings.redis_url, timeout_s=10)
    try:
        if args.status:
            print(json.dumps({"status": calibrations.status(conn, prefix, project),
                              **calibrations.history(conn, prefix, project)}, indent=2))
            return 0
        if args.export:
            args.export.write_text(json.dumps({"project": project, **calibrations.history(conn, prefix, project)},
                                              indent=2))
            print(f"wrote {args.export}")
            return 0
        if args.rollback:
            try:
                active = calibrations.rollback(conn, prefix, project, args.to)
            except ValueError as exc:
                return _fail(str(exc))
            print(f"project {project}: calibration version {active} is active" if active else
                  f"project {project}: no calibration is active (the project's own options apply)")
            return 0
        if not settings.can_push:
            return _fail("calibration reads the project's annotations from Label Studio: set LABEL_STUDIO_URL and "
                         "LABEL_STUDIO_API_KEY (for the workers too)")
        if not rq_queue.worker_count(conn, prefix):
            print("gem-labeler calibrate: no worker is alive yet; the fit waits in the queue until one starts",
                  file=sys.stderr)
        try:
            job_id = calibrations.enqueue(conn, settings, project, min_examples=args.min_examples)
        except calibrations.CalibrationRunning as exc:
            return _fail(str(exc))
        print(f"project {project}: calibration queued (job {job_id})", file=sys.stderr)
        if args.no_wait:
            return 0
        status = _wait(conn, prefix, project, job_id, args.timeout, progress=not args.no_progress)
    except redis.RedisError as exc:
        return _fail(rq_queue.describe_error(settings.redis_url, exc))
    return _show(status, as_json=args.json)


def _wait(conn, prefix: str, project: str, job_id: str, timeout_s: float, *, progress: bool) -> dict:
    """Return the fit's final status, showing its progress meanwhile."""
    from tqdm import tqdm

    from backend.jobqueue import calibrations

    bar = tqdm(total=0, unit="task", disable=not progress, file=sys.stderr, desc="calibrating")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            status = calibrations.status(conn, prefix, project) or {}
            if status.get("job_id") == job_id:
                bar.total = status.get("total") or bar.total
                bar.n = status.get("done") or 0
                bar.set_postfix_str(status.get("step") or "", refresh=True)
                if status.get("state") in ("done", "failed", "refused"):
                    return status
            if time.monotonic() > deadline:
                return {"state": "failed", "message": f"no result within {timeout_s:.0f} s; the fit goes on: "
                                                      f"`gem-labeler calibrate --project {project} --status`"}
            time.sleep(POLL_S)
    finally:
        bar.close()


def _show(status: dict, *, as_json: bool) -> int:
    report = status.get("report") or {}
    if status.get("state") != "done":
        print(f"gem-labeler calibrate: {status.get('state')}: {status.get('message')}", file=sys.stderr)
        return 1
    held = report.get("held_out") or {}
    for name in ("current", "fitted"):
        q = held.get(name)
        if q:
            print(f"held-out with the {name} params: mIoU {q['miou']:.3f}, presence F1 {q['presence_f1']:.3f}, "
                  f"score ECE {q['score_ece'] if q['score_ece'] is None else round(q['score_ece'], 3)}")
    print(f"{report.get('used', 0)} of {report.get('annotated_tasks', 0)} annotated task(s) used")
    for name, why in (report.get("skipped") or {}).items():
        print(f"  skipped {name}: {why}")
    for name, found in (report.get("problems") or {}).items():
        for problem in found:
            print(f"  {name}: {problem}")
    if report.get("default_labels"):
        print(f"labels without a presence threshold of their own (too few examples: global threshold kept): {', '.join(report['default_labels'])}")
    print(report.get("reason", ""))
    if report.get("adopted"):
        print(f"adopted as version {report.get('version')}: {json.dumps(report.get('params'))}")
    if as_json:
        print(json.dumps(report, separators=(",", ":")))
    return 0 if report.get("adopted") else 1


def _fail(message: str) -> int:
    print(f"gem-labeler calibrate: {message}", file=sys.stderr)
    return 2
