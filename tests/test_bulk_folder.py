"""Folder mode end to end with the tiny model: import file, overlays, resume, failure report, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from backend.bulk import folder as bulk_folder
from backend.cli import prelabel as bulk

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="cat"/><Label value="remote control"/><Label value="background"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="cat"/><Label value="remote control"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="cat"/><Label value="remote control"/></RectangleLabels>
</View>
"""
REPO = Path(__file__).resolve().parents[1]


def _save(path: Path, size: tuple[int, int], seed: int, **kwargs) -> None:
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (250, 30, 30)  # some structure to find
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)


@pytest.fixture()
def dataset(tmp_path):
    """A folder with JPEG, PNG, an EXIF-rotated JPEG, a subfolder, a corrupt file and a non-image."""
    folder = tmp_path / "images"
    _save(folder / "a.jpg", (120, 80), 1)
    _save(folder / "b.png", (64, 96), 2)
    _save(folder / "sub dir" / "c.jpg", (100, 100), 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: natural size becomes 50x140
    _save(folder / "rotated.jpg", (140, 50), 4, exif=exif)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / "notes.txt").write_text("not an image")
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    return folder, config


def model_args(checkpoint: dict[str, str]) -> list[str]:
    # The random tiny ViT has no evidence of anything: its presence probabilities sit at 0.5, where thread
    # counts flip them. These tests check folder plumbing on every label's regions (tests/worker_processes.py).
    return ["--model", checkpoint["model_name"], "--model-config", checkpoint["model_config"],
            "--pretrained", checkpoint["pretrained"], "--presence", "none", "--background-prompts", ""]


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)


def run_main(argv: list[str], capsys) -> tuple[int, dict, str]:
    code = bulk.main([*argv, "--json", "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]), "\n".join(out[:-1])


def test_folder_mode_end_to_end_then_resume(tmp_path, dataset, tiny_vit_checkpoint, capsys):
    folder, config = dataset
    out = tmp_path / "out"
    argv = ["--images", str(folder), "--config", str(config), "--out", str(out), *model_args(tiny_vit_checkpoint)]
    code, summary, text = run_main(argv, capsys)

    assert code == 1, "a failed image makes the exit status non-zero"
    assert (summary["total"], summary["done"], summary["skipped"], summary["failed"]) == (5, 4, 0, 1)
    assert summary["failures"][0]["item"] == "broken.jpg"
    assert "broken.jpg" in text and "corrupt or truncated" in text  # the failure table says why

    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=a.jpg", "/data/local-files/?d=b.png",
        "/data/local-files/?d=rotated.jpg", "/data/local-files/?d=sub%20dir/c.jpg",
    ]
    interface = LabelInterface(CONFIG)
    kinds = set()
    for task in tasks:
        (prediction,) = task["predictions"]
        assert interface.validate_prediction(prediction, return_errors=True) == []
        assert prediction["model_version"].startswith("gem-labeler-gem-tiny-vit-")
        kinds |= {r["type"] for r in prediction["result"]}
    assert kinds == {"brushlabels", "polygonlabels", "rectanglelabels"}, "validation must not be vacuous"
    # Brush masks are at each image's natural, EXIF-corrected size.
    sizes = {t["data"]["image"].split("=")[1]: {(r["original_width"], r["original_height"])
                                                for r in t["predictions"][0]["result"]} for t in tasks}
    assert sizes["rotated.jpg"] == {(50, 140)}
    assert sizes["a.jpg"] == {(120, 80)}

    expected_sizes = {"a.jpg": (120, 80), "b.png": (64, 96), "rotated.jpg": (50, 140), "sub dir/c.jpg": (100, 100)}
    for relpath, size in expected_sizes.items():
        with Image.open(out / "overlays" / f"{relpath}.png") as overlay:
            assert overlay.format == "PNG" and overlay.size == size
    assert not (out / "overlays" / "broken.jpg.png").exists()
    assert json.loads((out / "failures.json").read_text())[0]["image"] == "broken.jpg"

    # A second run computes nothing: same import file, overlays untouched, the known failure reported again.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "overlays").rglob("*.png")}
    state_lines = (out / "state.jsonl").read_text().count("\n")
    code, summary, _ = run_main(argv, capsys)
    assert code == 1
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 4, 1)
    assert json.loads((out / "tasks.json").read_text()) == tasks
    assert {p: p.stat().st_mtime_ns for p in (out / "overlays").rglob("*.png")} == mtimes
    assert (out / "state.jsonl").read_text().count("\n") == state_lines

    # Fixing the broken file and changing one image redoes exactly those two.
    _save(folder / "broken.jpg", (70, 70), 5)
    _save(folder / "b.png", (64, 96), 6)
    code, summary, _ = run_main(argv, capsys)
    assert code == 0
    assert (summary["done"], summary["skipped"], summary["failed"]) == (2, 3, 0)
    assert len(json.loads((out / "tasks.json").read_text())) == 5
    assert json.loads((out / "failures.json").read_text()) == []


def test_dry_run_and_limit_compute_nothing(tmp_path, dataset, tiny_vit_checkpoint, capsys):
    folder, config = dataset
    out = tmp_path / "out"
    # Weights that do not exist prove that a dry run never loads the model.
    argv = ["--images", str(folder), "--config", str(config), "--out", str(out),
            "--pretrained", str(tmp_path / "missing.pt"), "--model", "tiny-vit",
            "--model-config", tiny_vit_checkpoint["model_config"]]
    code, summary, text = run_main([*argv, "--dry-run"], capsys)
    assert code == 0 and summary["done"] == 5 and summary["dry_run"]
    assert "would pre-label 5" in text
    assert not out.exists()

    good = ["--images", str(folder), "--config", str(config), "--out", str(out), *model_args(tiny_vit_checkpoint)]
    code, summary, _ = run_main([*good, "--limit", "2"], capsys)
    assert code == 0 and (summary["total"], summary["done"]) == (2, 2)
    code, summary, _ = run_main([*good, "--dry-run"], capsys)
    assert (summary["done"], summary["skipped"]) == (3, 2)


def test_usage_errors_are_clear_and_write_nothing(tmp_path, dataset, capsys):
    folder, config = dataset
    out = tmp_path / "out"
    bad_config = tmp_path / "bad.xml"
    bad_config.write_text("<View><Text name='t' value='$text'/></View>")
    cases = [
        (["--images", str(folder), "--out", str(out)], "needs --config"),
        (["--images", str(folder), "--config", str(bad_config), "--out", str(out)], "no <Image>"),
        (["--images", str(folder), "--config", str(tmp_path / "nope.xml"), "--out", str(out)], "cannot read"),
        (["--images", str(tmp_path / "nowhere"), "--config", str(config), "--out", str(out)], "does not exist"),
        (["--images", str(folder), "--config", str(config), "--out", str(out), "--method", "gem",
          "--document-root", str(tmp_path / "elsewhere")], "not under the local-files document root"),
        (["--images", str(folder), "--config", str(config), "--out", str(out), "--limit", "-1"], "--limit"),
    ]
    for argv, needle in cases:
        assert bulk.main(argv) == 2, argv
        assert needle in capsys.readouterr().err
    assert not out.exists()


def test_url_styles():
    folder = Path("/data/photos")
    assert bulk_folder.UrlStyle().url(folder, "x/a b+c.jpg") == "/data/local-files/?d=x/a%20b%2Bc.jpg"
    style = bulk_folder.UrlStyle(document_root=Path("/data"))
    assert style.url(folder, "a.jpg") == "/data/local-files/?d=photos/a.jpg"
    assert bulk_folder.UrlStyle(as_given=True).url(Path("photos"), "a.jpg") == "photos/a.jpg"
    assert bulk_folder.UrlStyle(prefix="s3://bucket/", document_root=folder).url(folder, "a.jpg") == "s3://bucket/a.jpg"
    with pytest.raises(ValueError, match="document root"):
        bulk_folder.UrlStyle(document_root=Path("/elsewhere")).url(folder, "a.jpg")


def test_state_file_survives_a_torn_line(tmp_path):
    state = bulk_folder.StateFile(tmp_path / "state.jsonl")
    state.append([{"image": "a.jpg", "status": "done"}])
    with state.path.open("a") as handle:
        handle.write('{"image": "b.jpg", "sta')  # a run killed mid-write
    state.append([{"image": "c.jpg", "status": "failed"}, {"image": "a.jpg", "status": "failed"}])
    assert state.load() == {"a.jpg": {"image": "a.jpg", "status": "failed"},
                            "c.jpg": {"image": "c.jpg", "status": "failed"}}


def test_two_workers_give_the_same_predictions(tmp_path, dataset, tiny_vit_checkpoint, capsys):
    folder, config = dataset
    (folder / "broken.jpg").unlink()
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        argv = ["--images", str(folder), "--config", str(config), "--out", str(out), "--batch-size", "1",
                "--workers", str(workers), *model_args(tiny_vit_checkpoint)]
        code, summary, _ = run_main(argv, capsys)
        assert code == 0 and summary["done"] == 4
        results[workers] = json.loads((out / "tasks.json").read_text())
        assert len(list((out / "overlays").rglob("*.png"))) == 4

    def strip_ids(tasks):
        return [[{k: v for k, v in r.items() if k != "id"} for r in t["predictions"][0]["result"]] for t in tasks]

    assert strip_ids(results[1]) == strip_ids(results[2])


def test_ctrl_c_stops_writes_the_import_file_and_a_rerun_continues(tmp_path, tiny_vit_checkpoint):
    folder = tmp_path / "many"
    count = 40
    for index in range(count):
        _save(folder / f"img{index:03d}.png", (48, 40), index)
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "backend.cli", "prelabel", "--images", str(folder), "--config", str(config),
               "--out", str(out), "--batch-size", "1", "--json", *model_args(tiny_vit_checkpoint)]
    env = {**os.environ, "DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out / "state.jsonl"
    deadline = time.monotonic() + 120
    while not (state.exists() and state.read_text().count("\n") >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no image finished in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopping" in stderr
    assert "interrupted" in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["interrupted"] and 2 <= summary["done"] < count
    assert summary["pending"] == count - summary["done"]
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == summary["done"]
    first = summary["done"]

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["skipped"], summary["done"]) == (first, count - first)
    assert len(json.loads((out / "tasks.json").read_text())) == count


class DyingLabeler:
    """A labeler whose process dies mid-batch, as one killed for memory would."""

    run_key = "dying"
    labels = ("cat",)

    def label(self, jobs):
        os._exit(3)


class DyingFactory:
    def __call__(self):
        return DyingLabeler()


def test_a_dead_worker_process_is_reported_and_the_import_file_still_written(tmp_path, dataset):
    from backend.labelstudio.label_config import parse_label_config

    folder, _ = dataset
    out = tmp_path / "out"
    run = bulk_folder.FolderRun(folder=folder, out=out, vocabulary=parse_label_config(CONFIG), workers=2,
                                batch_size=1, progress=False)
    summary = bulk_folder.run_folder(run, DyingFactory(), run_key="dying")
    assert summary.exit_code == 1 and summary.done == 0 and summary.pending == 5
    assert any(f.item == "(worker process)" and "died" in f.reason for f in summary.failed)
    assert json.loads((out / "tasks.json").read_text()) == []
    assert json.loads((out / "failures.json").read_text())[-1]["image"] == "(worker process)"
