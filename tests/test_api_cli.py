"""The `gem-labeler` command line: subcommands, delegation, and configuration errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**base, "PYTHONPATH": str(ROOT), **env})


def test_help_lists_every_subcommand():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("serve", "api", "worker", "prelabel", "heatmap"):
        assert command in out.stdout


def test_delegated_subcommands_parse_their_own_arguments():
    out = cli("heatmap", "--help")
    assert out.returncode == 0 and "usage:" in out.stdout and "heatmap" in out.stdout


def test_configuration_errors_name_the_variable():
    out = cli("api", PORT="ninety")
    assert out.returncode == 2 and "PORT='ninety' is not a valid int" in out.stderr


def test_api_and_worker_need_redis_url():
    out = cli("api")
    assert out.returncode == 2 and "set REDIS_URL" in out.stderr
    out = cli("worker")
    assert out.returncode == 2 and "REDIS_URL is not set" in out.stderr
