"""Second derivations of NACLIP, SCLIP, ClearCLIP and PAMR, written from the papers' equations.

Deliberately unlike gem_engine: one image and one head at a time with explicit matrices, open_clip's
own block forward for the unmodified blocks, the Gaussian window and PAMR's neighbourhoods built in
plain loops, PAMR iterated as a dense row-stochastic matrix, and nothing imported from gem_engine.
The parity tests (tests/test_last_block.py, tests/test_pamr.py) and benches (bench/*_parity.py)
compare the product against these; a setting can be changed here (a kept residual, another window
width, one iteration fewer) to check that the comparison fails when it should.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("naclip", "sclip", "clearclip")
# What each paper's code does with the last block: (keeps the residual, keeps the FFN).
PUBLISHED_TAIL = {"naclip": (False, False), "sclip": (True, True), "clearclip": (False, False)}


def dino_position_embedding(pos: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Return [1 + rows*cols, C]: the native table, or DINO's bicubic resize at factor (n + 0.1) / side."""
    side = int(math.isqrt(pos.shape[0] - 1))
    if (rows, cols) == (side, side):
        return pos
    table = pos[1:].T.reshape(1, pos.shape[1], side, side)
    table = F.interpolate(table, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic",
                          align_corners=False, recompute_scale_factor=False)
    assert tuple(table.shape[-2:]) == (rows, cols)
    return torch.cat([pos[:1], table.reshape(pos.shape[1], rows * cols).T])


def gaussian_window(rows: int, cols: int, std: float) -> torch.Tensor:
    """Return the [1 + N, 1 + N] additive attention term of NACLIP, one entry at a time."""
    size = 1 + rows * cols
    table = [[0.0] * size for _ in range(size)]
    for query in range(rows * cols):
        qr, qc = divmod(query, cols)
        for key in range(rows * cols):
            kr, kc = divmod(key, cols)
            table[1 + query][1 + key] = math.exp(-((qr - kr) ** 2 + (qc - kc) ** 2) / (2.0 * std * std))
    return torch.tensor(table, dtype=torch.float64)


def _head_attention(method: str, q: torch.Tensor, k: torch.Tensor, window: torch.Tensor | None) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    if method == "naclip":
        return torch.softmax(k @ k.T * scale + window.to(k.dtype), dim=-1)
    if method == "clearclip":
        return torch.softmax(q @ q.T * scale, dim=-1)
    if method == "sclip":
        return torch.softmax(q @ q.T * scale, dim=-1) + torch.softmax(k @ k.T * scale, dim=-1)
    raise ValueError(method)


def last_block_features(model: torch.nn.Module, pixels: torch.Tensor, method: str, *, std: float = 5.0,
                        residual: bool | None = None, ffn: bool | None = None) -> tuple[torch.Tensor, tuple]:
    """Return (L2-normalized patch features [B, N, D], (rows, cols)) of a method's modified CLIP ViT."""
    keep_residual, keep_ffn = PUBLISHED_TAIL[method]
    keep_residual = keep_residual if residual is None else residual
    keep_ffn = keep_ffn if ffn is None else ffn
    visual = model.visual
    patch = visual.conv1.weight.shape[-1]
    embedded = F.conv2d(pixels, visual.conv1.weight, stride=patch)
    batch, width, rows, cols = embedded.shape
    tokens = embedded.reshape(batch, width, rows * cols).permute(0, 2, 1)
    cls = visual.class_embedding.reshape(1, 1, width).repeat(batch, 1, 1)
    x = torch.cat([cls, tokens], dim=1) + dino_position_embedding(visual.positional_embedding, rows, cols)
    x = visual.ln_pre(x)
    blocks = list(visual.transformer.resblocks)
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    heads = last.attn.num_heads
    dim = width // heads
    w_in, b_in = last.attn.in_proj_weight, last.attn.in_proj_bias
    window = gaussian_window(rows, cols, std) if method == "naclip" else None
    outputs = []
    for image in range(batch):
        h = last.ln_1(x[image])
        per_head = []
        for head in range(heads):
            start = head * dim
            q = h @ w_in[start : start + dim].T + b_in[start : start + dim]
            k = h @ w_in[width + start : width + start + dim].T + b_in[width + start : width + start + dim]
            v = h @ w_in[2 * width + start : 2 * width + start + dim].T + b_in[2 * width + start : 2 * width + start + dim]
            per_head.append(_head_attention(method, q, k, window) @ v)
        attended = torch.cat(per_head, dim=1) @ last.attn.out_proj.weight.T + last.attn.out_proj.bias
        y = last.ls_1(attended)
        if keep_residual:
            y = x[image] + y
        if keep_ffn:
            y = y + last.ls_2(last.mlp(last.ln_2(y)))
        outputs.append(y)
    features = visual.ln_post(torch.stack(outputs)) @ visual.proj
    features = features[:, 1:]
    return features / features.norm(dim=-1, keepdim=True), (rows, cols)


def last_block_maps(model: torch.nn.Module, pixels: torch.Tensor, text: torch.Tensor, method: str,
                    **changes) -> torch.Tensor:
    """Return [B, P, rows, cols] cosine maps of the method's patch features with each text embedding."""
    features, (rows, cols) = last_block_features(model, pixels, method, **changes)
    text = text / text.norm(dim=-1, keepdim=True)
    maps = torch.einsum("bnd,pd->bpn", features, text.to(features.dtype))
    return maps.reshape(features.shape[0], text.shape[0], rows, cols)


def pamr(image: np.ndarray, masks: np.ndarray, iterations: int = 10, dilations=(8, 16)) -> np.ndarray:
    """Return PAMR-refined masks [C, H, W] (float64) for an image [K, H, W] and masks at its size.

    Per pixel, in a plain loop: neighbours (8 per dilation, coordinates clamped to the image),
    the channel standard deviation over every 3 x 3 neighbourhood (centre once per dilation),
    the softmax affinities; then `iterations` products with the dense row-stochastic matrix.
    """
    image = np.asarray(image, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    channels, height, width = image.shape
    steps = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    flat = image.reshape(channels, height * width)
    matrix = np.zeros((height * width, height * width))
    for r in range(height):
        for c in range(width):
            neighbours, window = [], []
            for d in dilations:
                window.append(r * width + c)
                for dr, dc in steps:
                    index = min(max(r + dr * d, 0), height - 1) * width + min(max(c + dc * d, 0), width - 1)
                    neighbours.append(index)
                    window.append(index)
            sigma = flat[:, window].std(axis=1, ddof=1)  # [K]
            centre = flat[:, r * width + c][:, None]
            logits = (-np.abs(centre - flat[:, neighbours]) / (1e-8 + 0.1 * sigma[:, None])).mean(axis=0)
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            for index, weight in zip(neighbours, weights, strict=True):
                matrix[r * width + c, index] += weight
    values = masks.reshape(masks.shape[0], height * width)
    for _ in range(iterations):
        values = values @ matrix.T
    return values.reshape(masks.shape)
