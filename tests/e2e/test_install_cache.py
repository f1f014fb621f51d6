"""The install cache's bookkeeping: stamp last, partial installs rebuilt, failures reported, parallel runs serialized.

pip and Label Studio are replaced by a recorder here (installing for real takes minutes and is what the
session fixture does); the lock, stamp and folder handling are the real code.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.e2e import harness

pytestmark = pytest.mark.e2e


class FakeInstaller:
    """Stands in for `_run_logged`: records commands, makes the template database, can fail or dawdle."""

    def __init__(self, *, fail_on: str | None = None, delay_s: float = 0.0):
        self.commands: list[list[str]] = []
        self.fail_on = fail_on
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, cmd, out, log, env=None):
        with self.lock:
            self.commands.append(cmd)
        time.sleep(self.delay_s)
        if self.fail_on and self.fail_on in cmd:
            out.write("ERROR: No matching distribution found for label-studio==1.23.2\n")
            out.flush()
            raise harness.HarnessError(f"installing failed; last lines of {log}:\n{harness._tail(log)}")
        if cmd[1:3] == ["-m", "venv"]:
            Path(cmd[3]).mkdir(parents=True)
        if "version" in cmd:
            data_dir = Path(cmd[cmd.index("--data-dir") + 1])
            (data_dir / "label_studio.sqlite3").write_bytes(b"SQLite format 3\x00")


@pytest.fixture()
def fake(monkeypatch):
    installer = FakeInstaller()
    monkeypatch.setattr(harness, "_run_logged", installer)
    return installer


def test_install_writes_the_stamp_last_and_reuses_it(tmp_path, fake):
    venv = tmp_path / "ls-venv"
    first = harness.ensure_label_studio(venv)
    assert first.install_s is not None and first.template_db.is_file()
    assert (venv / ".gem-labeler-complete.json").is_file()
    assert [c[-1] if "pip" in c else c[1] for c in fake.commands] == ["-m", "label-studio==1.23.2", "version"]
    second = harness.ensure_label_studio(venv)
    assert second.install_s is None and second.venv == venv
    assert len(fake.commands) == 3  # nothing run again


def test_a_partial_install_is_removed_and_rebuilt(tmp_path, fake):
    venv = tmp_path / "ls-venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "lib" / "half-written.py").write_text("")
    install = harness.ensure_label_studio(venv)
    assert install.install_s is not None
    assert not (venv / "lib" / "half-written.py").exists()


def test_a_stamp_for_another_version_triggers_a_rebuild(tmp_path, fake):
    venv = tmp_path / "ls-venv"
    harness.ensure_label_studio(venv)
    (venv / ".gem-labeler-complete.json").write_text('{"label_studio": "1.22.0", "python": "3.11"}')
    assert harness.ensure_label_studio(venv).install_s is not None
    assert len(fake.commands) == 6


def test_a_failed_install_is_an_error_with_pip_output_and_no_stamp(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "_run_logged", FakeInstaller(fail_on="label-studio==1.23.2"))
    venv = tmp_path / "ls-venv"
    with pytest.raises(harness.HarnessError, match="No matching distribution"):
        harness.ensure_label_studio(venv)
    assert not (venv / ".gem-labeler-complete.json").exists()


def test_parallel_runs_install_once(tmp_path, monkeypatch):
    installer = FakeInstaller(delay_s=0.3)
    monkeypatch.setattr(harness, "_run_logged", installer)
    venv = tmp_path / "ls-venv"
    results: list[harness.LabelStudioInstall] = []
    threads = [threading.Thread(target=lambda: results.append(harness.ensure_label_studio(venv))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 3
    assert sum(r.install_s is not None for r in results) == 1
    assert len(installer.commands) == 3


def test_the_cache_lives_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("E2E_LABEL_STUDIO_VENV", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert harness.label_studio_cache_dir() == tmp_path / "gem-labeler" / "label-studio-1.23.2"
    monkeypatch.setenv("E2E_LABEL_STUDIO_VENV", str(tmp_path / "elsewhere"))
    assert harness.label_studio_cache_dir() == tmp_path / "elsewhere"
