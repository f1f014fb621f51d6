"""The maps the GEM paper compares against: plain patch-text cosine and last-block q-k / v-v attention."""

from __future__ import annotations

import torch

from gem_engine.gem import StreamOutput, cosine_maps, patch_features

BASELINES = ("patch", "qk", "vv")


def patch_maps(streams: StreamOutput, text: torch.Tensor) -> torch.Tensor:
    """Return [B, P, rows, cols] cosine of the unmodified model's final patch tokens with each prompt."""
    return cosine_maps(patch_features(streams.original), text, streams.grid)


def anchor_attention_maps(streams: StreamOutput, text: torch.Tensor, kind: str) -> torch.Tensor:
    """Return [B, P, rows, cols] last-block attention (head mean) from each prompt's anchor patch.

    The anchor is the patch whose final feature is most similar to the prompt; kind "qk" reads the
    ordinary query-key attention of that patch, "vv" the value-value self-attention.
    """
    if kind not in ("qk", "vv"):
        raise ValueError(f"unknown attention baseline {kind!r}")
    q, k, v = streams.last_qkv  # [B, H, 1 + N, d]
    patch = patch_maps(streams, text)  # [B, P, rows, cols]
    batch, prompts = patch.shape[:2]
    anchors = patch.flatten(2).argmax(dim=-1) + 1  # token index, class token is 0
    queries, keys = (q, k) if kind == "qk" else (v, v)
    heads, dim = queries.shape[1], queries.shape[-1]
    index = anchors.view(batch, 1, prompts, 1).expand(batch, heads, prompts, dim)
    anchor_q = torch.gather(queries, 2, index)  # [B, H, P, d]
    attention = torch.softmax((anchor_q @ keys.transpose(-1, -2)).float() * dim**-0.5, dim=-1)
    maps = attention.mean(dim=1)[:, :, 1:]  # [B, P, N]: drop the class token column
    return maps.reshape(batch, prompts, streams.grid[0], streams.grid[1])
