"""At most one pushed prediction per (task, model version), whoever pushes and however often it is retried.

Three paths write predictions into Label Studio: a worker right after computing (`worker._push`), the
outbox retrying a failed push (`outbox.deliver`) and `gem-labeler prelabel` importing batches. Before
pushing, each takes the marker `<QUEUE_PREFIX>:pushed:<task id>:<version digest>` with one SET NX:
"pushing:<holder>" for a lease while it pushes, "done" once Label Studio took the prediction. A caller
that finds "done" skips its push, one that finds another holder leaves the push to it (that holder queues
its own retry when it fails), and a failed push releases the marker so a retry can take it again. A
holder that died mid-push loses it when the lease runs out, or at once to a pusher on the same machine:
the lease names its holder's process (host, pid namespace, pid, start time), so a pusher that can see that
process's table and finds it gone takes the marker over (a killed `prelabel` rerun on the same machine
need not wait out the lease).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Literal

import redis

from backend.jobqueue import queues as rq_queue
from backend.settings import Settings

DONE = "done"
# Longer than one push attempt with all of the client's retries (about 15 s, 30 s per request at most).
LEASE_S = 300
# Deletes the marker only if this holder still owns it (the lease may have passed to another pusher).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# Passes a dead holder's lease to a new one, only if the dead one still owns it.
_TAKE_OVER = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end "
    "return false"
)

Verdict = Literal["go", "done", "busy"]


def keep_s(settings: Settings) -> int:
    """Return how long a "done" marker is kept: as long as a push of the same prediction may still come."""
    return max(settings.result_ttl_s, settings.push_max_age_s) + LEASE_S


def marker_key(prefix: str, task_id: Any, version: str) -> str:
    """Return the marker key of one task and model version (the version hashed, so keys stay short)."""
    digest = hashlib.sha256(str(version).encode()).hexdigest()[:16]
    return rq_queue.key(prefix, "pushed", f"{int(task_id)}:{digest}")


def begin(conn: redis.Redis, prefix: str, task_id: Any, version: str) -> tuple[Verdict, str]:
    """Take the marker before pushing; return "go" (push now), "done" (already in Label Studio) or "busy"
    (another pusher holds it), and the token `finish` needs."""
    name = marker_key(prefix, task_id, version)
    token = f"pushing:{_this_process()}:{uuid.uuid4().hex}"
    for _ in range(2):
        if conn.set(name, token, nx=True, ex=LEASE_S):
            return "go", token
        current = conn.get(name)
        if current is None:
            continue  # released between the two calls: try once more
        holder = current.decode()
        if holder == DONE:
            return "done", token
        if holder_is_dead(holder) and conn.eval(_TAKE_OVER, 1, name, holder, token, LEASE_S):
            return "go", token
        return "busy", token
    return "busy", token


def _process_name(pid: int | str) -> str | None:
    """Return "<host>.<pid namespace>.<pid>.<start time>" of a process this one can see, else None."""
    try:
        namespace = os.stat(f"/proc/{pid}/ns/pid").st_ino
        # The start time (field 22) tells a reused pid from the process that held it; fields count after "(comm)".
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{socket.gethostname()}.{namespace}.{pid}.{started}"


def _this_process() -> str:
    """Return this process's name for its leases ("unknown" where /proc cannot tell: those wait for the lease)."""
    return _process_name(os.getpid()) or "unknown"


def holder_is_dead(holder: str) -> bool:
    """Return whether the lease `holder` (a marker's value) belongs to a process of this machine that is gone.

    Only a holder on this host and in this pid namespace can be judged; any other counts as alive until its
    lease runs out.
    """
    parts = holder.split(":")
    if len(parts) != 3 or parts[0] != "pushing" or parts[1].count(".") < 3:
        return False
    host, namespace, pid, started = parts[1].rsplit(".", 3)
    mine = _process_name(os.getpid())
    if mine is None or mine.rsplit(".", 2)[0] != f"{host}.{namespace}" or not pid.isdigit():
        return False
    return _process_name(pid) != parts[1]


def finish(conn: redis.Redis, settings: Settings, task_id: Any, version: str, token: str, *, pushed: bool) -> None:
    """Mark the push done (kept `keep_s`), or release the marker after a failed push."""
    name = marker_key(settings.queue_prefix, task_id, version)
    if pushed:
        conn.set(name, DONE, ex=keep_s(settings))
    else:
        conn.eval(_RELEASE, 1, name, token)
