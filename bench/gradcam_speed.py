"""Grad-CAM speed: ours (one forward, batched backward) against pytorch-grad-cam (one image copy per label).

One image, K labels, CPU. Models: open_clip ViT-B-16 with random weights at 224 px, and the tests' tiny
ModifiedResNet CLIP. pytorch-grad-cam runs its documented way for several targets: the image
replicated K times with one ClassifierOutputTarget per copy. Both sides end with per-label min-max
normalized maps at the image size, and the bench checks that they agree before timing anything.

    .venv/bin/python bench/gradcam_speed.py [--labels 20] [--repeats 3] [--threads 1]

Each side is timed by wall clock and by process CPU time (medians, runs alternating, after a warm-up
that also checks agreement); the last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gem_engine.gradcam import gradcam_maps  # noqa: E402
from tests import tiny_models  # noqa: E402


class ClipScores(torch.nn.Module):
    """CLIP as a classifier over a fixed vocabulary (cosine scores), the peer's view of the model."""

    def __init__(self, clip: torch.nn.Module, texts: torch.Tensor) -> None:
        super().__init__()
        self.clip, self.texts = clip, texts

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.visual(pixels), dim=-1) @ F.normalize(self.texts, dim=-1).T


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Return maps [..., H, W] scaled per map to [0, 1] the way pytorch-grad-cam does (epsilon 1e-7)."""
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (1e-7 + maps.amax(dim=(-2, -1), keepdim=True))


def ours(clip: torch.nn.Module, pixel: torch.Tensor, texts: torch.Tensor) -> np.ndarray:
    """Return our maps [K, H, W] at the image size, post-processed like the peer's output."""
    maps = _min_max(gradcam_maps(clip, pixel, texts))
    # The peer scales at the grid, resizes (bilinear, half-pixel centres) and scales again.
    resized = F.interpolate(maps, size=pixel.shape[-2:], mode="bilinear", align_corners=False)
    return _min_max(resized)[0].numpy()


def peer(model: torch.nn.Module, layer, reshape, pixel: torch.Tensor, labels: int) -> np.ndarray:
    """Return pytorch-grad-cam's maps [K, H, W] for one image, one replicated copy per label."""
    # Its documented context-manager use; the hooks must be gone before ours runs on the same model.
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        copies = pixel.repeat(labels, 1, 1, 1)
        return cam(input_tensor=copies, targets=[ClassifierOutputTarget(k) for k in range(labels)])


def timed_pair(first: Callable[[], object], second: Callable[[], object], repeats: int) -> list[tuple]:
    """Return (wall_s, cpu_s) medians of first() and second(), run alternately so load drifts hit both."""
    samples: list[list[tuple[float, float]]] = [[], []]
    for _ in range(repeats):
        for index, run in enumerate((first, second)):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            samples[index].append((time.perf_counter() - wall, time.process_time() - cpu))
    return [tuple(statistics.median(column) for column in zip(*runs, strict=True)) for runs in samples]


def vit_reshape(rows: int, cols: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return pytorch-grad-cam's reshape transform for ViT tokens: drop CLS, row-major grid, channels first."""
    return lambda tensor: (
        tensor[:, 1:, :].reshape(tensor.size(0), rows, cols, tensor.size(2)).permute(0, 3, 1, 2)
    )


def compare(name: str, clip: torch.nn.Module, layer, reshape, size: int, labels: int, repeats: int) -> dict:
    """Return timings of ours and the peer on one model, after checking that their maps agree."""
    generator = torch.Generator().manual_seed(0)
    pixel = torch.randn(1, 3, size, size, generator=generator)
    texts = F.normalize(torch.randn(labels, clip.visual.output_dim, generator=generator), dim=-1)
    # The peer's target layer is a module output: for the ViT, the block before the last, whose output
    # is the last block's ln_1 input that ours uses by default.
    scores = ClipScores(clip, texts)
    try:
        ours_maps, peer_maps = ours(clip, pixel, texts), peer(scores, layer, reshape, pixel, labels)
        agreement = float(np.abs(ours_maps - peer_maps).max())
        if agreement > 1e-3:  # float32 noise on low-contrast random-weight maps stays near 1e-4
            raise SystemExit(f"{name}: ours and pytorch-grad-cam disagree by {agreement:.2e}; timing is moot")
        # The agreement run above was the warm-up of both.
        (ours_s, ours_cpu), (peer_s, peer_cpu) = timed_pair(
            lambda: ours(clip, pixel, texts), lambda: peer(scores, layer, reshape, pixel, labels), repeats
        )
    finally:
        clip.zero_grad(set_to_none=True)
    print(
        f"{name}: {labels} labels, {size}px: ours {ours_s * 1000:.1f} ms wall / {ours_cpu * 1000:.1f} ms CPU, "
        f"pytorch-grad-cam {peer_s * 1000:.1f} ms wall / {peer_cpu * 1000:.1f} ms CPU; speedup "
        f"{peer_s / ours_s:.2f}x wall, {peer_cpu / ours_cpu:.2f}x CPU (max |ours - peer|: {agreement:.2e})"
    )
    return {
        "ours_s": round(ours_s, 4),
        "peer_s": round(peer_s, 4),
        "speedup": round(peer_s / ours_s, 2),
        "ours_cpu_s": round(ours_cpu, 4),
        "peer_cpu_s": round(peer_cpu, 4),
        "cpu_speedup": round(peer_cpu / ours_cpu, 2),
        "max_abs_diff": agreement,
    }


def main() -> None:
    """Run both comparisons and print the figures, JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for both (1: stable on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    vit = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    rows, cols = vit.visual.grid_size
    vit_figures = compare(
        "ViT-B-16",
        vit,
        vit.visual.transformer.resblocks[-2],
        vit_reshape(rows, cols),
        224,
        args.labels,
        args.repeats,
    )
    del vit
    resnet = tiny_models.build_tiny_model(tiny_models.TINY_RN)
    rn_figures = compare(
        "tiny ResNet", resnet, resnet.visual.layer4, None, resnet.visual.image_size, args.labels, args.repeats
    )
    figures = {"labels": args.labels, "threads": torch.get_num_threads()}
    figures.update({f"vit_b16_{key}": value for key, value in vit_figures.items()})
    figures.update({f"tiny_rn_{key}": value for key, value in rn_figures.items()})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
