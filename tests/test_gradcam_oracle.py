"""Oracle: our batched Grad-CAM equals pytorch-grad-cam run its documented way (one image copy per target)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from gem_engine.gradcam import gradcam_maps

LABELS = 6


class ClipScores(torch.nn.Module):
    """CLIP as a classifier over a fixed vocabulary, as in pytorch-grad-cam's CLIP example."""

    def __init__(self, clip: torch.nn.Module, texts: torch.Tensor, target: str) -> None:
        super().__init__()
        self.clip, self.texts, self.target = clip, texts, target

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(self.clip.visual(pixels), dim=-1) @ F.normalize(self.texts, dim=-1).T
        if self.target == "softmax":
            return (self.clip.logit_scale.exp() * cosine).softmax(dim=-1)
        return cosine


class GridGradCAM(GradCAM):
    """pytorch-grad-cam's GradCAM, normalized but left at the activation grid instead of resized."""

    def get_target_width_height(self, input_tensor: torch.Tensor) -> None:
        return None


def _vit_reshape(tensor: torch.Tensor, rows: int = 6, cols: int = 6) -> torch.Tensor:
    return tensor[:, 1:, :].reshape(tensor.size(0), rows, cols, tensor.size(2)).permute(0, 3, 1, 2)


def _oracle(clip, layer, reshape, pixel: torch.Tensor, texts: torch.Tensor, target: str):
    """Return pytorch-grad-cam's (raw, normalized) maps [L, h, w] for one image [1, 3, H, W]."""
    cam = GridGradCAM(model=ClipScores(clip, texts, target), target_layers=[layer], reshape_transform=reshape)
    try:
        copies = pixel.repeat(texts.shape[0], 1, 1, 1)
        targets = [ClassifierOutputTarget(label) for label in range(texts.shape[0])]
        normalized = cam(input_tensor=copies, targets=targets)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(copies, layer, targets, activations, grads), 0)
    finally:
        cam.activations_and_grads.release()
    return raw, normalized


@pytest.mark.parametrize("precision", [torch.float32, torch.float64])
@pytest.mark.parametrize("target", ["cosine", "softmax"])
@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_same_maps_as_pytorch_grad_cam(family, target, precision, tiny_vit, tiny_resnet):
    # pytorch-grad-cam accumulates .grad in the weights; keep the shared fixtures clean.
    clip = copy.deepcopy(tiny_vit if family == "vit" else tiny_resnet).to(precision)
    if family == "vit":
        # Its hooks take a module's output; the previous block's output is the last block's ln_1 input.
        layer, reshape = clip.visual.transformer.resblocks[-2], _vit_reshape
    else:
        layer, reshape = clip.visual.layer4, None
    generator = torch.Generator().manual_seed(7)
    pixels = torch.randn(2, 3, 96, 96, generator=generator).to(precision)
    texts = F.normalize(torch.randn(LABELS, 32, generator=generator), dim=-1).to(precision)

    ours = gradcam_maps(clip, pixels, texts, target=target).numpy()
    assert ours.dtype == np.dtype(str(precision).removeprefix("torch."))
    for image in range(pixels.shape[0]):
        raw, normalized = _oracle(clip, layer, reshape, pixels[image : image + 1], texts, target)
        assert raw.shape == ours[image].shape
        assert raw.max() > 0, "an all-zero oracle would prove nothing"
        # Raw maps: equal up to float32 summation order.
        np.testing.assert_allclose(ours[image], raw, rtol=1e-5, atol=1e-6 * raw.max())
        # pytorch-grad-cam normalizes per layer and again after aggregating layers, so ours gets the
        # same two passes. The tiny random ResNet's maps vary by only ~1% of their value and min-max
        # scaling magnifies float32 rounding ~100x (to ~3e-5) there, so it is held to 1e-5 in float64.
        if precision == torch.float64 or family == "vit":
            ours_normalized = scale_cam_image(scale_cam_image(ours[image]))
            assert np.abs(ours_normalized - normalized).max() <= 1e-5
