"""`gem-labeler heatmap`: one overlay per label at the image's size, raw maps, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.cli import heatmap as heatmap_cli


@pytest.fixture()
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8)).save(path)
    return path


def model_args(checkpoint: dict[str, str]) -> list[str]:
    return [
        "--model", checkpoint["model_name"],
        "--model-config", checkpoint["model_config"],
        "--pretrained", checkpoint["pretrained"],
        "--device", "cpu",
    ]


def test_parse_labels_rejects_empty_and_duplicates():
    assert heatmap_cli.parse_labels(" cat , remote control ") == ["cat", "remote control"]
    for bad in ("", "cat,,dog", " , ", "cat,Cat"):
        with pytest.raises(heatmap_cli.HeatmapUsageError):
            heatmap_cli.parse_labels(bad)


def test_file_stems_are_safe_and_distinct():
    assert heatmap_cli.file_stems(["remote control", "../x", "a/b", "a b", "a_b"]) == [
        "remote_control", "x", "a_b", "a_b_3", "a_b_4",
    ]


@pytest.mark.parametrize("method", ["gem", "gradcam", "vv"])
def test_heatmap_writes_one_overlay_per_label_and_raw_maps(tmp_path, photo, tiny_vit_checkpoint, method, capsys):
    out = tmp_path / "out"
    argv = [str(photo), "--labels", "cat,remote control", "--method", method, "--out", str(out), "--raw",
            "--image-size", "96", *model_args(tiny_vit_checkpoint)]
    assert heatmap_cli.main(argv) == 0
    printed = capsys.readouterr().out.split()
    expected = [out / f"photo.{method}.{stem}.{ext}" for stem in ("cat", "remote_control") for ext in ("png", "npy")]
    assert [str(p) for p in expected] == printed
    for label_index in range(2):
        png, npy = expected[2 * label_index], expected[2 * label_index + 1]
        with Image.open(png) as overlay:
            assert overlay.size == (130, 90) and overlay.mode == "RGB"
            pixels = np.asarray(overlay)
        assert pixels.std() > 5  # a real colormap blend, not a blank canvas
        raw = np.load(npy)
        assert raw.dtype == np.float32 and raw.ndim == 2 and np.isfinite(raw).all()
    # Different labels give different raw maps (the text embedding reaches the map).
    assert not np.allclose(np.load(expected[1]), np.load(expected[3]))


def test_heatmap_bad_inputs_exit_2_with_a_message(tmp_path, photo, tiny_vit_checkpoint, capsys):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        ([str(corrupt), "--labels", "cat"], "broken.png: not a supported image"),
        ([str(tmp_path / "missing.jpg"), "--labels", "cat"], "cannot read"),
        ([str(photo), "--labels", "cat,cat"], "twice"),
        ([str(photo), "--labels", "cat", "--alpha", "2"], "--alpha"),
    ]
    for argv, needle in cases:
        assert heatmap_cli.main([*argv, "--out", str(tmp_path / "o"), *model_args(tiny_vit_checkpoint)]) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_heatmap_missing_weights_exit_3_naming_the_file(tmp_path, photo, tiny_vit_checkpoint, capsys):
    args = model_args(tiny_vit_checkpoint)
    args[args.index("--pretrained") + 1] = str(tmp_path / "nowhere.pt")
    assert heatmap_cli.main([str(photo), "--labels", "cat", "--out", str(tmp_path / "o"), *args]) == 3
    assert "nowhere.pt" in capsys.readouterr().err


def test_gem_on_a_resnet_is_a_clear_error(tmp_path, photo, tiny_resnet, capsys):
    from tests import tiny_models

    weights = tiny_models.save_checkpoint(tiny_resnet, tmp_path / "rn.pt")
    argv = [str(photo), "--labels", "cat", "--out", str(tmp_path / "o"), "--model", tiny_models.TINY_RN,
            "--model-config", str(tiny_models.config_path(tiny_models.TINY_RN)), "--pretrained", str(weights),
            "--device", "cpu"]
    assert heatmap_cli.main(argv) == 2
    assert "gradcam" in capsys.readouterr().err


def test_gem_labeler_heatmap_command_runs_as_a_process(tmp_path, photo, tiny_vit_checkpoint):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "backend.cli", "heatmap", str(photo), "--labels", "cat", "--method", "qk",
               "--out", str(out), "--image-size", "96", *model_args(tiny_vit_checkpoint)]
    done = subprocess.run(command, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(out / "photo.qk.cat.png")]
    with Image.open(out / "photo.qk.cat.png") as overlay:
        assert overlay.size == (130, 90)
