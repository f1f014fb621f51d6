"""Real servers for the end-to-end suite: a cached Label Studio install, Label Studio itself, the backend.

Every server runs in its own process group on 127.0.0.1 with a fresh data directory, dies with the
test process (PR_SET_PDEATHSIG) and is stopped by `stop()` in fixture teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

LABEL_STUDIO_VERSION = "1.23.2"
INSTALL_TIMEOUT_S = 1200.0
START_TIMEOUT_S = 180.0
_PR_SET_PDEATHSIG = 1


class HarnessError(RuntimeError):
    """A server of the end-to-end suite could not be installed, started or reached."""


def label_studio_cache_dir() -> Path:
    """Return the folder of the cached Label Studio virtual environment (outside the repository)."""
    override = os.environ.get("E2E_LABEL_STUDIO_VENV")
    if override:
        return Path(override).expanduser().resolve()
    cache_root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_root / "gem-labeler" / f"label-studio-{LABEL_STUDIO_VERSION}"


@dataclass(frozen=True)
class LabelStudioInstall:
    """A complete Label Studio install: its venv and a migrated empty database to copy per run."""

    venv: Path
    template_db: Path
    install_s: float | None  # seconds this call spent installing; None when the cache was used

    @property
    def executable(self) -> Path:
        """Return the `label-studio` command of this install."""
        return self.venv / "bin" / "label-studio"


def _stamp_wanted() -> dict[str, str]:
    return {"label_studio": LABEL_STUDIO_VERSION, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def _read_stamp(stamp: Path) -> dict | None:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def ensure_label_studio(venv: Path | None = None) -> LabelStudioInstall:
    """Return the cached Label Studio install, installing it from PyPI first when missing or incomplete.

    A stamp file written last marks a complete install; a lock file serializes parallel test runs, and
    an incomplete folder (no or stale stamp) is removed and built again.
    """
    venv = venv or label_studio_cache_dir()
    stamp = venv / ".gem-labeler-complete.json"
    template_db = venv / "template-data" / "label_studio.sqlite3"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _read_stamp(stamp)
        if found and all(found.get(k) == v for k, v in _stamp_wanted().items()) and template_db.is_file():
            return LabelStudioInstall(venv, template_db, None)
        started = time.monotonic()
        if venv.exists():
            shutil.rmtree(venv)
        log = venv.parent / f"{venv.name}.install.log"
        with open(log, "w") as out:
            _run_logged([sys.executable, "-m", "venv", str(venv)], out, log)
            _run_logged(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input",
                 f"label-studio=={LABEL_STUDIO_VERSION}"],
                out, log,
            )
            # `label-studio version` applies the migrations before printing; later runs copy this
            # migrated database instead of migrating again (about a minute on two cores).
            template_dir = template_db.parent
            template_dir.mkdir()
            env = label_studio_env(template_dir, port=0)
            _run_logged([str(venv / "bin" / "label-studio"), "version", "--data-dir", str(template_dir)],
                        out, log, env=env)
        if not template_db.is_file():
            raise HarnessError(f"Label Studio migrations did not create {template_db}; see {log}")
        install_s = time.monotonic() - started
        stamp.write_text(json.dumps({**_stamp_wanted(), "install_s": round(install_s, 1)}))
        return LabelStudioInstall(venv, template_db, install_s)


def _run_logged(cmd: list[str], out, log: Path, env: Mapping[str, str] | None = None) -> None:
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    try:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=INSTALL_TIMEOUT_S,
                       env=dict(env) if env is not None else None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise HarnessError(f"installing Label Studio {LABEL_STUDIO_VERSION} failed ({exc}); "
                           f"last lines of {log}:\n{_tail(log)}") from exc


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child before exec: a SIGKILLed pytest must not leave servers behind.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def label_studio_env(data_dir: Path, *, port: int, files_root: Path | None = None) -> dict[str, str]:
    """Return the environment a Label Studio process of this suite runs with.

    Label Studio also reads unprefixed names (HOST, PORT, USERNAME, DEBUG, ...), so it gets a
    minimal environment rather than the test process's.
    """
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(data_dir)),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # tests read its log while it runs
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # The ML backend and webhooks live on 127.0.0.1, which both SSRF guards refuse by default.
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        # No phoning home: the suite runs offline.
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_LOG_LEVEL": "INFO",
    }
    if port:
        env["LABEL_STUDIO_HOST"] = f"http://127.0.0.1:{port}"
    if files_root is not None:
        env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] = "true"
        env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(files_root)
    return env


@dataclass
class ManagedProcess:
    """A server process started in its own process group, with its log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        """Return the last lines of the process's log."""
        return _tail(self.log, lines)

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate the whole process group, then kill what is left after `grace_s`."""
        if self.proc.poll() is not None:
            _killpg(self.proc.pid, signal.SIGKILL)  # children of a dead leader may live on
            return
        _killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        _killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def start_process(name: str, cmd: list[str], *, env: Mapping[str, str], log: Path,
                  cwd: Path | None = None) -> ManagedProcess:
    """Return a started process (own session, dies with this one) writing stdout and stderr to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env), cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
    return ManagedProcess(name, proc, log)


def wait_healthy(process: ManagedProcess, url: str, *, timeout_s: float = START_TIMEOUT_S,
                 ok: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
                 headers: Mapping[str, str] | None = None) -> float:
    """Return seconds until `url` answered `ok`; raise HarnessError with the log tail if the process died or timed out."""
    started = time.monotonic()
    last = "no answer yet"
    with httpx.Client(timeout=2.0, headers=dict(headers or {})) as client:
        while time.monotonic() - started < timeout_s:
            if not process.alive():
                raise HarnessError(f"{process.name} exited with code {process.proc.returncode} before it was "
                                   f"healthy; last lines of {process.log}:\n{process.log_tail()}")
            try:
                response = client.get(url)
                if ok(response):
                    return time.monotonic() - started
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.25)
    raise HarnessError(f"{process.name} not healthy at {url} after {timeout_s:.0f} s ({last}); "
                       f"last lines of {process.log}:\n{process.log_tail()}")


@dataclass
class LabelStudio:
    """A running Label Studio with one superuser, its legacy token and a personal access token."""

    url: str
    email: str
    password: str
    legacy_token: str
    data_dir: Path
    files_root: Path
    process: ManagedProcess
    startup_s: float
    personal_access_token: str = ""

    def stop(self) -> None:
        """Stop the server and everything it started."""
        self.process.stop()


def start_command(executable: Path, *, port: int, data_dir: Path, email: str, password: str, token: str) -> list[str]:
    """Return the `label-studio start` command line for a fresh server with one user and token.

    Values go in `--option=value` form: token_urlsafe starts with "-" about once in 64 draws, and
    `--password -abc` would be read as an unknown option (exit code 2, every e2e test failing).
    """
    return [str(executable), "start", "--no-browser", "--internal-host=127.0.0.1", f"--port={port}",
            f"--data-dir={data_dir}", f"--username={email}", f"--password={password}", f"--user-token={token}",
            "--enable-legacy-api-token"]


def start_label_studio(install: LabelStudioInstall, data_dir: Path) -> LabelStudio:
    """Return a healthy Label Studio on a free loopback port, with a fresh copy of the migrated database.

    The user is created by `label-studio start --username/--password/--user-token`, and
    `--enable-legacy-api-token` turns on legacy `Token` auth for the organization it creates
    (1.23 disables legacy tokens for new organizations unless told otherwise).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    files_root = data_dir / "files"
    files_root.mkdir(exist_ok=True)
    shutil.copyfile(install.template_db, data_dir / "label_studio.sqlite3")
    port = free_port()
    email, password, token = "e2e@example.com", secrets.token_urlsafe(12), secrets.token_hex(20)
    cmd = start_command(install.executable, port=port, data_dir=data_dir, email=email, password=password,
                        token=token)
    process = start_process("label-studio", cmd, env=label_studio_env(data_dir, port=port, files_root=files_root),
                            log=data_dir / "label-studio.log", cwd=data_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        startup_s = wait_healthy(process, f"{url}/health")
        # Health answers before the user exists on a slow start; wait until the token works too.
        wait_healthy(process, f"{url}/api/current-user/whoami", timeout_s=60,
                     headers={"Authorization": f"Token {token}"})
    except BaseException:
        process.stop()
        raise
    return LabelStudio(url, email, password, token, data_dir, files_root, process, startup_s)


@dataclass
class Backend:
    """The running product: `gem-labeler serve` (API plus one worker)."""

    url: str
    env: dict[str, str]
    process: ManagedProcess
    startup_s: float

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """Return the (user, password) the API requires, or None when it runs without basic auth."""
        user, password = self.env.get("BASIC_AUTH_USER"), self.env.get("BASIC_AUTH_PASS")
        return (user, password) if user and password else None

    @property
    def webhook_headers(self) -> dict[str, str]:
        """Return the headers a Label Studio webhook must carry to reach the API's /webhook."""
        secret = self.env.get("WEBHOOK_SECRET")
        return {"X-Webhook-Secret": secret} if secret else {}

    def stop(self) -> None:
        """Stop the API and its worker."""
        self.process.stop()


def secure_env() -> dict[str, str]:
    """Return what a user sets so that an API holding a Label Studio key is protected: basic auth (for the
    model connection) and a webhook secret (for the webhook's headers), both random."""
    return {"BASIC_AUTH_USER": "labeler", "BASIC_AUTH_PASS": secrets.token_urlsafe(16),
            "WEBHOOK_SECRET": secrets.token_urlsafe(24)}


def backend_command() -> list[str]:
    """Return the command that starts the product's API and one worker."""
    exe = Path(sys.executable).with_name("gem-labeler")
    if exe.exists():
        return [str(exe), "serve"]
    return [sys.executable, "-m", "backend.cli", "serve"]


def start_backend(env_overrides: Mapping[str, str], data_dir: Path, *, repo_root: Path,
                  timeout_s: float = START_TIMEOUT_S) -> Backend:
    """Return a healthy `gem-labeler serve` on a free loopback port, configured by `env_overrides`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "PYTEST_"))}
    env.update({"HOST": "127.0.0.1", "PORT": str(port), "DATA_DIR": str(data_dir), "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(env_overrides)
    process = start_process("gem-labeler serve", backend_command(), env=env, log=data_dir / "backend.log",
                            cwd=repo_root)
    backend = Backend(f"http://127.0.0.1:{port}", env, process, 0.0)
    auth = backend.basic_auth
    headers = {"Authorization": httpx.BasicAuth(*auth)._auth_header} if auth else None
    try:
        # Healthy means the API is up and its worker is listening, so no test races the worker's start.
        backend.startup_s = wait_healthy(process, f"{backend.url}/health", timeout_s=timeout_s, headers=headers,
                                         ok=lambda r: r.status_code == 200 and r.json().get("status") == "UP"
                                         and (r.json().get("workers") or 0) >= 1)
    except BaseException:
        process.stop()
        raise
    return backend
