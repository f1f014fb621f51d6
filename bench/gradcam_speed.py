"""Grad-CAM speed: ours (one forward, batched backward) against pytorch-grad-cam (one image copy per label).

One image, K labels, CPU. Models: open_clip ViT-B-16 with random weights at 224 px, and the tests' tiny
ModifiedResNet CLIP. pytorch-grad-cam runs its documented way for several targets: the image
replicated K times with one ClassifierOutputTarget per copy. Both sides end with per-label min-max
normalized maps at the image size, and the bench checks that they agree before timing anything.

    .venv/bin/python bench/gradcam_speed.py [--labels 20] [--repeats 3]

The last line printed is one JSON object with the timings and speedups.
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


def ours(clip: torch.nn.Module, pixel: torch.Tensor, texts: torch.Tensor) -> np.ndarray:
    """Return our maps [K, H, W], normalized per label and resized to the image like the peer's."""
    maps = gradcam_maps(clip, pixel, texts)[0]
    low = maps.amin(dim=(-2, -1), keepdim=True)
    maps = maps - low
    maps = maps / (1e-7 + maps.amax(dim=(-2, -1), keepdim=True))
    resized = F.interpolate(maps[None], size=pixel.shape[-2:], mode="bilinear", align_corners=False)
    return resized[0].numpy()


def peer(model: torch.nn.Module, layer, reshape, pixel: torch.Tensor, labels: int) -> np.ndarray:
    """Return pytorch-grad-cam's maps [K, H, W] for one image, one replicated copy per label."""
    # Its documented context-manager use; the hooks must be gone before ours runs on the same model.
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        copies = pixel.repeat(labels, 1, 1, 1)
        return cam(input_tensor=copies, targets=[ClassifierOutputTarget(k) for k in range(labels)])


def timed(run: Callable[[], object], repeats: int) -> float:
    """Return the median wall time of run() in seconds, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
        ours_s = timed(lambda: ours(clip, pixel, texts), repeats)
        peer_s = timed(lambda: peer(scores, layer, reshape, pixel, labels), repeats)
    finally:
        clip.zero_grad(set_to_none=True)
    print(
        f"{name}: {labels} labels, {size}px, ours {ours_s * 1000:.1f} ms, pytorch-grad-cam {peer_s * 1000:.1f} ms, "
        f"speedup {peer_s / ours_s:.2f}x (max |ours - peer| after normalize+resize: {agreement:.2e})"
    )
    return {
        "ours_s": round(ours_s, 4),
        "peer_s": round(peer_s, 4),
        "speedup": round(peer_s / ours_s, 2),
        "max_abs_diff": agreement,
    }


def main() -> None:
    """Run both comparisons and print the figures, JSON last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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
