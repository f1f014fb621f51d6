"""Content digests of weights and model-config files, which enter the model version (`backend.options`).

Workers compute: the files they load are the ones that matter, and in docker compose the API may not even
mount them. So a worker hashes a file (SHA-256, once per path, size and mtime: the Redis entry remembers
all three, so a restarted worker does not read an unchanged file again) and publishes the digest in the
hash `<QUEUE_PREFIX>:file-digests` (path -> {"sha256", "size", "mtime_ns"}): at start for its default
model, and on request. Everyone else reads it there:
- the API and `prelabel` look a file up by the path the options name; a file nobody has published yet
  (a project's own checkpoint) is asked of the workers with a small job on the interactive queue
  (`publish_job`), which they answer within seconds; with no live worker that is an error saying so;
- processes that compute in-process (`prelabel --images`, `prelabel --workers N`) hash the file
  themselves (`local_contents`) and publish it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence

import redis
import redis.asyncio
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.serializers import JSONSerializer

from backend.jobqueue import queues as rq_queue
from backend.options import ProjectOptions, content_files

PUBLISH_FUNCTION = "backend.jobqueue.worker.publish_digests"
CHUNK_BYTES = 8 * 1024 * 1024
POLL_S = 0.1

_cache: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256, per process
_cache_lock = threading.Lock()


class DigestUnavailable(RuntimeError):
    """The content digest of a file the model version needs cannot be had now; the message says why.

    `asked`: live workers were asked to publish it, so waiting (`wait_published`) may help."""

    def __init__(self, message: str, *, paths: Sequence[str], asked: bool) -> None:
        super().__init__(message)
        self.paths, self.asked = list(paths), asked


def digests_key(prefix: str) -> str:
    """Return the Redis hash of published digests."""
    return f"{prefix}:file-digests"


def _stat(path: str) -> tuple[str, int, int]:
    real = os.path.realpath(path)
    status = os.stat(real)
    return real, status.st_size, status.st_mtime_ns


def file_digest(path: str, *, known: dict | None = None) -> str:
    """Return the SHA-256 of a file's content, read once per (path, size, mtime); `known` is a published
    entry that is reused when size and mtime still match."""
    real, size, mtime = _stat(path)
    if known and known.get("size") == size and known.get("mtime_ns") == mtime and known.get("sha256"):
        return str(known["sha256"])
    with _cache_lock:
        cached = _cache.get((real, size, mtime))
    if cached:
        return cached
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    value = digest.hexdigest()
    with _cache_lock:
        _cache[(real, size, mtime)] = value
    return value


def _parse(raw: bytes | None) -> dict | None:
    try:
        entry = json.loads(raw) if raw else None
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def published(conn: redis.Redis, prefix: str, paths: Sequence[str]) -> dict[str, str]:
    """Return the published digest of each path that has one."""
    if not paths:
        return {}
    entries = [_parse(raw) for raw in conn.hmget(digests_key(prefix), list(paths))]
    return {path: str(e["sha256"]) for path, e in zip(paths, entries, strict=True) if e and e.get("sha256")}


def publish(conn: redis.Redis, prefix: str, paths: Iterable[str]) -> dict[str, str]:
    """Return the digests of files readable here, after publishing them; unreadable files are left out."""
    paths = list(dict.fromkeys(paths))
    if not paths:
        return {}
    entries = [_parse(raw) for raw in conn.hmget(digests_key(prefix), paths)]
    found: dict[str, str] = {}
    updates: dict[str, str] = {}
    for path, entry in zip(paths, entries, strict=True):
        try:
            digest = file_digest(path, known=entry)
            _, size, mtime = _stat(path)
        except OSError:
            continue
        found[path] = digest
        if not entry or entry.get("sha256") != digest or entry.get("mtime_ns") != mtime:
            updates[path] = json.dumps({"sha256": digest, "size": size, "mtime_ns": mtime})
    if updates:
        conn.hset(digests_key(prefix), mapping=updates)
    return found


def local_contents(options: ProjectOptions) -> dict[str, str]:
    """Return the digest of every content file of `options`, read here; a file that cannot be read gets
    "unreadable" (loading it fails with a clear error, so no prediction carries that version)."""
    found = {}
    for path in content_files(options):
        try:
            found[path] = file_digest(path)
        except OSError:
            found[path] = "unreadable"
    return found


def request(conn: redis.Redis, prefix: str, paths: Sequence[str]) -> None:
    """Ask the workers to publish the digests of `paths` (one job, on the interactive queue)."""
    ident = f"{prefix}-digest-{hashlib.sha256(json.dumps(sorted(paths)).encode()).hexdigest()[:24]}"
    queue = Queue(rq_queue.queue_name(prefix, rq_queue.INTERACTIVE), connection=conn, serializer=JSONSerializer)
    try:
        queue.enqueue_call(PUBLISH_FUNCTION, args=(prefix, sorted(paths)), job_id=ident, result_ttl=60,
                           failure_ttl=60, timeout=600, description=f"digest of {', '.join(paths)}", unique=True)
    except DuplicateJobError:
        pass  # already asked: one answer serves every waiting caller


def _unavailable(paths: Sequence[str], workers: int) -> DigestUnavailable:
    files = ", ".join(paths)
    if not workers:
        return DigestUnavailable(
            f"the model version needs the content digest of {files}, which workers publish, and no worker is "
            "alive: start `gem-labeler worker` (with the same REDIS_URL and QUEUE_PREFIX) where the file is",
            paths=paths, asked=False)
    return DigestUnavailable(
        f"no worker has published the content digest of {files} yet (it does when it can read the file): check "
        "that the workers see that path, then try again", paths=paths, asked=True)


def resolve(conn: redis.Redis, prefix: str, options: ProjectOptions, *, wait_s: float,
            local: bool = False) -> dict[str, str]:
    """Return the digests the model version of `options` needs: published ones, those hashed here when
    `local` (this process computes with its own files), else asked of the workers and waited for up to
    `wait_s`; raise DigestUnavailable when some are still missing."""
    paths = content_files(options)
    found = published(conn, prefix, paths)
    if local:
        found.update(publish(conn, prefix, [p for p in paths if p not in found]))
    missing = [p for p in paths if p not in found]
    if not missing:
        return found
    workers = rq_queue.worker_count(conn, prefix)
    if workers:
        request(conn, prefix, missing)
        deadline = time.monotonic() + wait_s
        while missing and time.monotonic() < deadline:
            time.sleep(POLL_S)
            found.update(published(conn, prefix, missing))
            missing = [p for p in paths if p not in found]
    if missing:
        raise _unavailable(missing, workers)
    return found


async def wait_published(aconn: redis.asyncio.Redis, prefix: str, paths: Sequence[str], wait_s: float) -> None:
    """Return once every path has a published digest, or after `wait_s` (without waiting in a thread)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        raw = await aconn.hmget(digests_key(prefix), list(paths))
        if all(_parse(r) for r in raw):
            return
        await asyncio.sleep(POLL_S)
