"""`gem-labeler`, every entry point: serve (API + workers), api and worker here; `prelabel` (bulk
pre-labeling) and `heatmap` (per-label heatmaps of an image) in their own modules of this package.

The top of the import graph: it may import every other backend package. The API process must never import
torch, so this module imports nothing heavy at the top: each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from backend.settings import Settings, SettingsError

log = logging.getLogger("gem_labeler.cli")
# Subcommands owned by other modules: each exposes main(argv) -> int and parses its own arguments.
DELEGATED = {
    "prelabel": ("backend.cli.prelabel", "pre-label a whole Label Studio project or a folder of images"),
    "heatmap": ("backend.cli.heatmap", "write per-label heatmaps of images (debugging, figures)"),
    "evaluate": ("backend.cli.evaluate", "compare pre-labels with human masks (a folder or a Label Studio project)"),
    "calibrate": ("backend.cli.calibrate", "fit a project's thresholds to its annotations; versions, rollback"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gem-labeler", description="Zero-shot mask pre-labeling for Label Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="API plus worker(s); embedded Redis in DATA_DIR when REDIS_URL is unset")
    serve.add_argument("--host", help="listen address (default: HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: PORT, 9090)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes to start beside the API (default 1)")
    api = sub.add_parser("api", help="the HTTP API only (needs REDIS_URL and separate workers)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    worker = sub.add_parser("worker", help="an RQ worker: loads the model once, serves interactive before batch")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"gem-labeler: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    if args.command == "worker":
        if not settings.redis_url:  # say so before paying for the torch import
            print("gem-labeler worker: REDIS_URL is not set: a worker needs the Redis the API uses", file=sys.stderr)
            return 2
        from backend.jobqueue import worker

        return worker.main(settings, burst=args.burst)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = replace(settings, **overrides)
    from backend.service.auth import check_protection

    try:
        check_protection(settings)
    except SettingsError as exc:
        print(f"gem-labeler {args.command}: refusing to start: {exc}", file=sys.stderr)
        return 2
    if args.command == "api":
        if not settings.redis_url:
            print("gem-labeler api: set REDIS_URL (or use `gem-labeler serve` for an embedded Redis)", file=sys.stderr)
            return 2
        return _run_api(settings)
    return _serve(settings, workers=args.workers)


def _run_api(settings: Settings) -> int:
    import uvicorn

    from backend.service.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def _serve(settings: Settings, *, workers: int) -> int:
    """Run the API in this process and `workers` worker processes beside it."""
    if settings.redis_url:
        return _serve_with(settings, workers=workers)
    from backend.jobqueue.embedded import embedded_redis

    with embedded_redis(settings.data_dir, private=False) as url:
        return _serve_with(replace(settings, redis_url=url), workers=workers)


def _serve_with(settings: Settings, *, workers: int) -> int:
    env = {**os.environ, "REDIS_URL": settings.redis_url}
    children = [
        subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], env=env) for _ in range(max(0, workers))
    ]
    try:
        return _run_api(settings)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
