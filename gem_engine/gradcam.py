"""Grad-CAM heatmaps for open_clip CLIP models: every label of a vocabulary from one forward pass.

The target for label c is the cosine similarity of the image embedding and the text embedding of c
(or, with ``target="softmax"``, the probability of c in a softmax over the vocabulary scaled by the
model's logit scale). Activations are taken where they still reach the image embedding: for a
vision transformer the tokens entering the last block (its ``ln_1`` input; CLS dropped, patches
row-major on the grid), for a ModifiedResNet the output of ``layer4``. All labels come from one
forward pass and a vectorized backward (``is_grads_batched``) in chunks of ``chunk_size`` labels;
only the part of the network after the activations is recorded by autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

TARGETS = ("cosine", "softmax")
Capture = Literal["input", "output"]


def gradcam_maps(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    text_embeddings: torch.Tensor,
    *,
    layer: torch.nn.Module | None = None,
    target: str = "cosine",
    chunk_size: int = 64,
    capture: Capture | None = None,
) -> torch.Tensor:
    """Return raw ReLU'd Grad-CAM maps [B, L, h, w] at the activation grid (float32; float64 for a float64 model).

    ``model`` is an open_clip CLIP (anything with a ``.visual`` tower); ``pixels`` [B, 3, H, W] are
    already normalized; ``text_embeddings`` [L, D] hold one row per label. ``layer`` overrides the
    default activation site; ``capture`` says whether its input (as that module receives it: use it
    on whole blocks) or its output is taken (default: output for an explicit layer, as pytorch-grad-cam
    does). The model is never modified: no hook stays
    registered, no gradient is accumulated in its parameters, its train/eval mode is untouched.
    Low-precision weights on CPU are computed with temporary float32 copies of the weights.
    """
    visual = _visual_tower(model)
    _check_arguments(visual, pixels, text_embeddings, target, chunk_size)
    layer, capture = _activation_site(visual, layer, capture)
    device = next(visual.parameters()).device
    # open_clip's low-precision casts leave norms and embeddings in float32: the tower computes in the
    # low precision of its other weights, and its first parameter does not tell.
    weights_dtype = _compute_dtype(visual)
    upcast = device.type == "cpu" and weights_dtype in (torch.float16, torch.bfloat16)
    dtype = torch.float32 if upcast else weights_dtype

    # The caller may hold the model under inference_mode/no_grad (the GEM path does); gradients are
    # local to this call, and clones turn inference tensors into ones autograd may save.
    with torch.inference_mode(False), torch.enable_grad():
        x = pixels.detach().to(device=device, dtype=dtype).clone()
        texts = text_embeddings.detach().to(device=device, dtype=dtype).clone()
        features, activations = _forward_capturing(visual, x, layer, capture, upcast)
        scores = F.normalize(features, dim=-1) @ F.normalize(texts, dim=-1).T
        if target == "softmax":
            scores = (_logit_scale(model).to(device=device, dtype=dtype) * scores).softmax(dim=-1)
        to_grid = _grid_layout(visual, activations, x.shape[0], x.shape[-2:])
        maps = cam_from_scores(scores, activations, to_grid=to_grid, chunk_size=chunk_size)
    return maps


def _compute_dtype(visual: torch.nn.Module) -> torch.dtype:
    """Return the tower's compute dtype: a half precision any of its weights has, else its weights' dtype."""
    dtypes = {param.dtype for param in visual.parameters()}
    low = [dtype for dtype in (torch.float16, torch.bfloat16) if dtype in dtypes]
    return low[0] if low else next(visual.parameters()).dtype


def cam_from_scores(
    scores: torch.Tensor,
    activations: torch.Tensor,
    *,
    to_grid: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Return ReLU'd Grad-CAM maps [B, L, h, w] (at least float32) of scores [B, L] w.r.t. activations in their graph.

    ``to_grid`` maps a tensor shaped like ``activations`` (with any leading dimensions) to
    [..., B, C, h, w]; by default activations already are [B, C, h, w]. Labels are differentiated
    ``chunk_size`` at a time in one batched backward each, so memory grows with the chunk, not the
    vocabulary.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [batch, labels], got shape {tuple(scores.shape)}")
    to_grid = to_grid or (lambda tensor: tensor)
    # Maps are at least float32 (fp16 sums over channels would lose labels' contrast); float64 stays.
    dtype = torch.promote_types(activations.dtype, torch.float32)
    grid = to_grid(activations.detach()).to(dtype)
    batch, labels = scores.shape
    chunks = []
    for start in range(0, labels, chunk_size):
        stop = min(start + chunk_size, labels)
        count = stop - start
        # One one-hot seed per label of the chunk: row k selects score column start+k of every image.
        seeds = torch.zeros((count, batch, labels), dtype=scores.dtype, device=scores.device)
        seeds[torch.arange(count), :, torch.arange(start, stop)] = 1
        (grads,) = torch.autograd.grad(
            scores, activations, seeds, retain_graph=stop < labels, is_grads_batched=True, allow_unused=True
        )
        if grads is None:
            raise ValueError("the scores do not depend on the Grad-CAM layer's activations")
        channel_weights = to_grid(grads).to(dtype).mean(dim=(-2, -1))  # [K, B, C]
        chunks.append(torch.relu(torch.einsum("kbc,bchw->bkhw", channel_weights, grid)))
    return torch.cat(chunks, dim=1).detach()


def default_layer(model: torch.nn.Module) -> tuple[torch.nn.Module, Capture]:
    """Return the default activation site of a CLIP image tower and whether its input or output is taken."""
    return _activation_site(_visual_tower(model), None, None)


def _visual_tower(model: torch.nn.Module) -> torch.nn.Module:
    visual = getattr(model, "visual", None)
    if not isinstance(visual, torch.nn.Module):
        raise TypeError(f"expected an open_clip CLIP model with a .visual tower, got {type(model).__name__}")
    return visual


def _check_arguments(
    visual: torch.nn.Module,
    pixels: torch.Tensor,
    text_embeddings: torch.Tensor,
    target: str,
    chunk_size: int,
) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown Grad-CAM target {target!r}; expected one of {TARGETS}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if visual.training:
        raise ValueError(
            "the model is in training mode (dropout, batch-norm updates); call model.eval() first"
        )
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"pixels must be a [batch, 3, height, width] tensor, got {shape}")
    if pixels.shape[1] != 3:
        raise ValueError(
            f"pixels must have 3 (RGB) channels, got {pixels.shape[1]}; "
            "convert grayscale/RGBA images to RGB before preprocessing"
        )
    if pixels.shape[0] == 0:
        raise ValueError("pixels hold no image (batch size 0)")
    if not pixels.is_floating_point():
        raise ValueError(f"pixels must be normalized floating-point values, got dtype {pixels.dtype}")
    if not torch.isfinite(pixels).all():
        raise ValueError("pixels contain NaN or infinite values")
    if not isinstance(text_embeddings, torch.Tensor) or text_embeddings.ndim != 2:
        shape = tuple(text_embeddings.shape) if isinstance(text_embeddings, torch.Tensor) else None
        raise ValueError(f"text_embeddings must be a [labels, dim] tensor, got {shape}")
    if text_embeddings.shape[0] == 0:
        raise ValueError("text_embeddings is empty: Grad-CAM needs at least one label")
    dim = getattr(visual, "output_dim", None)
    if dim is not None and text_embeddings.shape[1] != dim:
        raise ValueError(
            f"text embeddings have dimension {text_embeddings.shape[1]} but the image embedding has {dim}; "
            "they must come from the same model"
        )
    if not torch.isfinite(text_embeddings).all():
        raise ValueError("text_embeddings contain NaN or infinite values")
    patch = getattr(visual, "patch_size", None)
    positions = getattr(visual, "positional_embedding", None)
    if patch is not None and isinstance(positions, torch.Tensor):
        height, width = pixels.shape[-2:]
        tokens = (height // patch[0]) * (width // patch[1]) + 1
        if height % patch[0] or width % patch[1] or tokens != positions.shape[0]:
            raise ValueError(
                f"pixels are {height}x{width} but the model was built for {tuple(visual.image_size)} "
                f"(patch {tuple(patch)}); resize the image to the model's input size"
            )


def _activation_site(
    visual: torch.nn.Module, layer: torch.nn.Module | None, capture: Capture | None
) -> tuple[torch.nn.Module, Capture]:
    if capture not in (None, "input", "output"):
        raise ValueError(f"capture must be 'input' or 'output', got {capture!r}")
    if layer is not None:
        if not any(module is layer for module in visual.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a module of the model's image tower")
        return layer, capture or "output"
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):
        # After the last block the patch tokens no longer reach the CLS output (zero gradients), so
        # take them where they enter it: the block's input, which is its ln_1 input and residual.
        return transformer.resblocks[-1], capture or "input"
    if hasattr(visual, "layer4"):
        return visual.layer4, capture or "output"
    raise ValueError(
        f"no default Grad-CAM layer for image tower {type(visual).__name__}; pass layer= explicitly"
    )


def _forward_capturing(
    visual: torch.nn.Module, x: torch.Tensor, layer: torch.nn.Module, capture: Capture, upcast: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the tower, returning its embedding and the activations at the site as a graph leaf.

    Everything before the site runs without a graph (no saved tensors, like inference); the hook
    swaps the site's tensor for a leaf and switches autograd on, so only the head after the site is
    recorded and differentiated.
    """
    captured: list[torch.Tensor] = []

    def leaf_for(tensor: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)
        leaf = tensor.detach().requires_grad_(True)
        captured.append(leaf)
        # A clone, so that an in-place op downstream cannot hit the leaf itself.
        return leaf.clone()

    def on_input(module: torch.nn.Module, args: tuple) -> tuple:
        return (leaf_for(args[0]), *args[1:])

    def on_output(module: torch.nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (leaf_for(output[0]), *output[1:])
        return leaf_for(output)

    handle = (
        layer.register_forward_pre_hook(on_input)
        if capture == "input"
        else layer.register_forward_hook(on_output)
    )
    try:
        with torch.no_grad():
            if upcast:
                state = {
                    name: tensor.detach().float() if tensor.is_floating_point() else tensor
                    for name, tensor in [*visual.named_parameters(), *visual.named_buffers()]
                }
                features = torch.func.functional_call(visual, state, (x,))
            else:
                features = visual(x)
    finally:
        handle.remove()
    if isinstance(features, tuple):  # towers built with output_tokens return (pooled, tokens)
        features = features[0]
    if len(captured) != 1:
        raise ValueError(f"the Grad-CAM layer ran {len(captured)} times in one forward pass; expected once")
    if not features.requires_grad:
        raise ValueError("the image embedding does not depend on the Grad-CAM layer's activations")
    return features, captured[0]


def _grid_layout(
    visual: torch.nn.Module, activations: torch.Tensor, batch: int, image_hw: torch.Size
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a function mapping [..., *activations.shape] to [..., B, C, h, w]."""
    if activations.ndim == 4:
        return lambda tensor: tensor
    if activations.ndim != 3:
        raise ValueError(f"cannot lay out activations of shape {tuple(activations.shape)} on a grid")
    transformer = getattr(visual, "transformer", None)
    batch_first = getattr(transformer, "batch_first", True)
    tokens = activations.shape[1] if batch_first else activations.shape[0]
    patch = getattr(visual, "patch_size", None)
    if patch is None:
        raise ValueError("token activations need a model with a patch_size to find the grid")
    rows, cols = image_hw[0] // patch[0], image_hw[1] // patch[1]
    prefix = tokens - rows * cols
    if prefix < 0 or (activations.shape[0] if batch_first else activations.shape[1]) != batch:
        raise ValueError(f"activations {tuple(activations.shape)} do not match a {rows}x{cols} patch grid")

    def to_grid(tensor: torch.Tensor) -> torch.Tensor:
        if not batch_first:
            tensor = tensor.transpose(-3, -2)
        patches = tensor[..., prefix:, :]  # drop CLS (and any other prefix tokens)
        lead = patches.shape[:-2]
        return patches.reshape(*lead, rows, cols, patches.shape[-1]).movedim(-1, -3)

    return to_grid


def _logit_scale(model: torch.nn.Module) -> torch.Tensor:
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, torch.Tensor):
        raise ValueError("target='softmax' needs a model with a logit_scale")
    return scale.detach().exp()
