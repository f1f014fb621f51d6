"""Training-free CLIP methods that replace the last block's attention: NACLIP, SCLIP and ClearCLIP.

All three run the vision tower unchanged up to the last block, take that block's q, k, v from
``ln_1`` of its input x (per head, scale s = head_dim^-0.5), and replace its attention:

- ``naclip`` (Hajimiri et al., WACV 2025): A = softmax(s K K^T + G), G[p, p'] =
  exp(-|pos(p) - pos(p')|^2 / (2 std^2)) over patch-grid positions (std 5 by default), 0 in the
  CLS row and column. Output ls_1(out_proj(A V)): no residual, no FFN.
- ``sclip`` (Wang et al., ECCV 2024), correlative self-attention: A = softmax(s Q Q^T) +
  softmax(s K K^T) (a sum, not a mean). Output x + ls_1(out_proj(A V)), then the block's own
  FFN with its residual.
- ``clearclip`` (Lan et al., ECCV 2024): A = softmax(s Q Q^T). Output ls_1(out_proj(A V)): no
  residual, no FFN.

The tokens then go through ``ln_post`` and ``proj``; the map is the cosine of each patch token with
each label's text embedding, as for GEM. The tokens entering the last block and its q/k/v come
from ``run_streams`` (gem_engine/gem.py), so these methods can finish the same forward pass that
serves GEM and the plain model. The published code interpolates position embeddings DINO's way
(``interpolation="dino"``), which the engine uses for these methods unless told otherwise.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer

from gem_engine import onednn
from gem_engine.gem import StreamOutput, block_weights, merge_heads, mlp_residual, project, residual_linear

LAST_BLOCK_METHODS = ("naclip", "sclip", "clearclip")
DEFAULT_NACLIP_STD = 5.0  # the published default (NACLIP's gaussian_std)
# Which methods keep the last block's residual connection and FFN (SCLIP's code keeps both).
_KEEPS_RESIDUAL = {"naclip": False, "sclip": True, "clearclip": False}


@dataclass(frozen=True)
class LastBlockOptions:
    """Which last-block method, and NACLIP's Gaussian window width in patches."""

    method: str
    gaussian_std: float = DEFAULT_NACLIP_STD

    def __post_init__(self) -> None:
        if self.method not in LAST_BLOCK_METHODS:
            raise ValueError(f"unknown last-block method {self.method!r}: use one of {', '.join(LAST_BLOCK_METHODS)}")
        if not (self.gaussian_std > 0 and self.gaussian_std < float("inf")):
            raise ValueError(f"naclip_std must be a positive finite number, got {self.gaussian_std!r}")


# (rows, cols, std, dtype, device) -> [1 + N, 1 + N] additive attention bias
_BIAS_CACHE: dict[tuple, torch.Tensor] = {}
_BIAS_LOCK = threading.Lock()
_BIAS_CACHE_SIZE = 16


def neighbourhood_bias(grid: tuple[int, int], std: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Return NACLIP's additive attention bias [1 + N, 1 + N] for a patch grid, cached per grid.

    Entry (p, p') is exp(-d^2 / (2 std^2)) for the distance d between patches p and p' on the grid
    (row-major token order); the CLS token's row and column are 0.
    """
    key = (grid[0], grid[1], float(std), dtype, device)
    with _BIAS_LOCK:
        cached = _BIAS_CACHE.get(key)
    if cached is not None:
        return cached
    # A normal (not inference-mode) tensor, so that a cached entry also serves callers needing autograd.
    with torch.inference_mode(False), torch.no_grad():
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        rows, cols = rows.flatten().double(), cols.flatten().double()
        squared = (rows[:, None] - rows[None, :]).square() + (cols[:, None] - cols[None, :]).square()
        bias = torch.zeros(squared.shape[0] + 1, squared.shape[1] + 1, dtype=torch.float64)
        bias[1:, 1:] = torch.exp(-squared / (2 * std**2))
        bias = bias.to(device=device, dtype=dtype)
    with _BIAS_LOCK:
        if len(_BIAS_CACHE) >= _BIAS_CACHE_SIZE:
            _BIAS_CACHE.pop(next(iter(_BIAS_CACHE)))
        _BIAS_CACHE[key] = bias
    return bias


def last_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int],
                         options: LastBlockOptions) -> torch.Tensor:
    """Return the method's attention output A V, [B, heads, 1 + N, head_dim], from per-head q, k, v."""
    if options.method == "naclip":
        bias = neighbourhood_bias(grid, options.gaussian_std, k.dtype, k.device)
        return F.scaled_dot_product_attention(k, k, v, attn_mask=bias)
    if options.method == "clearclip":
        return F.scaled_dot_product_attention(q, q, v)
    # SCLIP: (softmax(s QQ^T) + softmax(s KK^T)) V as one batched call over the two self-attentions.
    pairs = torch.stack([q, k]).flatten(0, 1)
    values = v.unsqueeze(0).expand(2, -1, -1, -1, -1).flatten(0, 1)
    return F.scaled_dot_product_attention(pairs, pairs, values).view(2, *v.shape).sum(dim=0)


def last_block_tokens(visual: VisionTransformer, streams: StreamOutput, options: LastBlockOptions) -> torch.Tensor:
    """Return [B, 1 + N, D] tokens after the method's last block, ln_post and proj.

    `streams` must come from run_streams(..., want_last_qkv=True, want_last_input=True).
    """
    if streams.last_qkv is None or streams.last_input is None:
        raise ValueError("last-block methods need run_streams(..., want_last_qkv=True, want_last_input=True)")
    block = visual.transformer.resblocks[-1]
    weights = block_weights(block)
    attended = last_block_attention(*streams.last_qkv, streams.grid, options)
    merged = merge_heads(attended)
    if _KEEPS_RESIDUAL[options.method]:
        x = residual_linear(streams.last_input, weights.out_proj, weights.ls_1, merged)
        x = mlp_residual(block, x)
    else:
        x = weights.ls_1(onednn.linear(merged, weights.out_proj.weight, weights.out_proj.bias))
    return project(visual, x)
