"""GEM (Grounding Everything, CVPR 2024) as functions over an open_clip VisionTransformer's blocks.

Nothing is patched: the model's own modules are read and called, and a second "GEM stream" is
computed beside the original one in the last `gem_blocks` blocks.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock, VisionTransformer

from gem_engine import onednn
from gem_engine.models import UnsupportedModelError

DEFAULT_GEM_BLOCKS = 6  # the reference's gem_depth=7 modifies the last 6 blocks
# How position embeddings reach a grid other than the native one. "antialias": the GEM reference's
# bicubic resize to the exact grid with antialiasing. "dino": DINO's recipe, which the NACLIP, SCLIP and
# ClearCLIP code use: bicubic without antialiasing at scale factor (n + 0.1) / native per side.
POS_INTERPOLATIONS = ("antialias", "dino")


@dataclass(frozen=True)
class GemOptions:
    """GEM hyper-parameters: number of modified blocks, self-self iterations, fixed inverse temperature."""

    blocks: int = DEFAULT_GEM_BLOCKS
    iterations: int = 1
    temperature: float | None = None  # None: per image and block, from the mean token norm (reference)


@dataclass(frozen=True)
class BlockWeights:
    """The pieces of one attention block that the streams need."""

    ln_1: torch.nn.Module
    ls_1: torch.nn.Module
    in_weight: torch.Tensor
    in_bias: torch.Tensor | None
    out_proj: torch.nn.Linear
    heads: int


def check_vit(visual: torch.nn.Module) -> VisionTransformer:
    """Return the tower if token methods can run on it, else raise UnsupportedModelError."""
    if not isinstance(visual, VisionTransformer) or not hasattr(visual, "class_embedding"):
        raise UnsupportedModelError(
            f"{type(visual).__name__} is not an open_clip ViT with a class token; "
            "methods gem/patch/qk/vv need one, use method='gradcam' for this model"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError("ViTs with attentional pooling are not supported by gem/patch/qk/vv")
    return visual


def block_weights(block: torch.nn.Module) -> BlockWeights:
    """Return the attention weights of a block, refusing attention variants GEM is not defined for."""
    if isinstance(block, ResidualAttentionBlock):
        attn = block.attn
        if getattr(attn, "in_proj_weight", None) is None or not attn._qkv_same_embed_dim:
            raise UnsupportedModelError("attention without a packed q/k/v projection is not supported")
        return BlockWeights(block.ln_1, block.ls_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
                            attn.num_heads)
    if isinstance(block, CustomResidualAttentionBlock):
        attn = block.attn
        plain = (
            isinstance(attn.ln_q, torch.nn.Identity)
            and attn.logit_scale is None
            and attn.head_scale is None
            and isinstance(attn.ln_inner, torch.nn.Identity)
            and isinstance(block.ln_attn, torch.nn.Identity)
        )
        if not plain:
            raise UnsupportedModelError("GEM is not defined for qk-norm / scaled-cosine / sub-LN attention blocks")
        return BlockWeights(block.ln_1, block.ls_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
                            attn.num_heads)
    raise UnsupportedModelError(f"unsupported transformer block {type(block).__name__}")


def project_qkv(x: torch.Tensor, weights: BlockWeights) -> torch.Tensor:
    """Return q, k, v stacked as one [3, B, heads, N, head_dim] view of the block's in-projection."""
    batch, tokens, width = x.shape
    qkv = onednn.linear(x, weights.in_weight, weights.in_bias)
    return qkv.view(batch, tokens, 3, weights.heads, width // weights.heads).permute(2, 0, 3, 1, 4)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Return [B, N, C] from [B, heads, N, head_dim]."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


# visual module -> {(rows, cols, dtype, device): [1, 1 + rows*cols, C]}
_POS_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()
_POS_LOCK = threading.Lock()


def position_embedding(visual: VisionTransformer, grid: tuple[int, int], dtype: torch.dtype,
                       interpolation: str = "antialias") -> torch.Tensor:
    """Return [1, 1 + rows*cols, C] position embeddings for a patch grid, interpolated once and cached.

    From the square native grid, CLS position kept, with one of POS_INTERPOLATIONS ("antialias": as the
    GEM reference, bicubic, antialias, align_corners=False, to the exact grid size).
    """
    if interpolation not in POS_INTERPOLATIONS:
        raise ValueError(f"unknown position interpolation {interpolation!r}: use one of {', '.join(POS_INTERPOLATIONS)}")
    pos = visual.positional_embedding
    key = (grid[0], grid[1], dtype, pos.device, interpolation)
    with _POS_LOCK:
        cached = _POS_CACHE.setdefault(visual, {}).get(key)
    if cached is not None:
        return cached
    native = tuple(visual.grid_size)
    # A normal (not inference-mode) tensor, so that a cached entry also serves callers needing autograd.
    with torch.inference_mode(False), torch.no_grad():
        if tuple(grid) == native:
            result = pos.unsqueeze(0)
        else:
            prefix, patches = pos[:1], pos[1:]
            side = int(round((pos.shape[0] - 1) ** 0.5))
            patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
            if interpolation == "antialias":
                patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True, align_corners=False)
            else:
                # The 0.1 keeps floor(side * factor) at the grid size; the factor itself sets the sampling.
                factor = ((grid[0] + 0.1) / side, (grid[1] + 0.1) / side)
                patches = F.interpolate(patches, scale_factor=factor, mode="bicubic", align_corners=False,
                                        recompute_scale_factor=False)
            patches = patches.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
            result = torch.cat([prefix, patches]).unsqueeze(0)
        result = result.detach().to(dtype).clone()
    with _POS_LOCK:
        _POS_CACHE[visual][key] = result
    return result


def embed_tokens(visual: VisionTransformer, pixels: torch.Tensor,
                 interpolation: str = "antialias") -> tuple[torch.Tensor, tuple[int, int]]:
    """Return ([B, 1 + rows*cols, C] tokens after ln_pre, (rows, cols)) for any multiple-of-patch input."""
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1) + position_embedding(visual, grid, x.dtype, interpolation)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), grid


def residual_linear(x: torch.Tensor, linear: torch.nn.Linear, scale: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Return x + scale(linear(h)) as a new tensor, x left untouched.

    Without layer scale the residual is added inside the matrix product, instead of in another pass.
    """
    if not isinstance(scale, torch.nn.Identity):
        return x + scale(onednn.linear(h, linear.weight, linear.bias))
    return onednn.linear_add(h, linear.weight, linear.bias, x)


def mlp_residual(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return x + ls_2(mlp(ln_2(x))), with the activation and the residual fused into the two products."""
    mlp = block.mlp
    if not (isinstance(mlp, torch.nn.Sequential) and isinstance(mlp[-1], torch.nn.Linear)):
        return x + block.ls_2(mlp(block.ln_2(x)))
    if len(mlp) == 3 and isinstance(mlp[0], torch.nn.Linear):  # open_clip's c_fc, activation, c_proj
        hidden = onednn.linear(block.ln_2(x), mlp[0].weight, mlp[0].bias, mlp[1])
    else:
        hidden = mlp[:-1](block.ln_2(x))
    return residual_linear(x, mlp[-1], block.ls_2, hidden)


def original_block(block: torch.nn.Module, weights: BlockWeights, x: torch.Tensor, qkv: torch.Tensor, *,
                   mlp: bool = True) -> torch.Tensor:
    """Return the unmodified block's output, reusing the q/k/v already projected for GEM."""
    attended = merge_heads(F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]))
    x = residual_linear(x, weights.out_proj, weights.ls_1, attended)
    return mlp_residual(block, x) if mlp else x


def self_self_attention(qkv: torch.Tensor, normed: torch.Tensor, options: GemOptions) -> torch.Tensor:
    """Return the GEM branch outputs [3, B, heads, N, head_dim] before out_proj, one per p in q,k,v.

    For each p: Zn = normalize(p); n times Z = softmax(s Zn Zn^T) Zn; then softmax(s Zn Zn^T) @ v.
    The three streams run as one batched fused attention.
    """
    _, batch, heads, tokens, dim = qkv.shape
    q, v = qkv[0], qkv[2]
    if options.temperature is None:
        # Per image: mean over all tokens of the full-width norm of ln_1(x), times head_dim^-0.5.
        inv_temp = normed.float().norm(dim=-1).mean(dim=-1).to(q.dtype) * dim**-0.5
        inv_temp = inv_temp.view(1, batch, 1, 1, 1)
    else:
        inv_temp = torch.tensor(options.temperature, dtype=q.dtype, device=q.device)
    scale = None
    if inv_temp.numel() == 1 and not inv_temp.requires_grad and (
        options.temperature is not None or inv_temp.device.type == "cpu"
    ):
        # One temperature for the whole batch: SDPA applies it, saving a scaled copy of the queries
        # (not where gradients flow through it, nor where reading it would stall a GPU).
        scale = float(inv_temp)

    def attend(zn: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        queries = zn if scale is not None else zn * inv_temp
        return F.scaled_dot_product_attention(queries.flatten(0, 1), zn.flatten(0, 1), values.flatten(0, 1),
                                              scale=1.0 if scale is None else scale).view_as(zn)

    z = qkv
    for _ in range(options.iterations):
        zn = F.normalize(z, dim=-1)
        z = attend(zn, zn)
    return attend(F.normalize(z, dim=-1), v.unsqueeze(0).expand(3, -1, -1, -1, -1))


def gem_residual(gem_x: torch.Tensor, weights: BlockWeights, outs: torch.Tensor) -> torch.Tensor:
    """Return gem_x + ls_1(out_proj(mean of the three self-self outputs)), heads merged in the same pass."""
    streams, batch, heads, tokens, dim = outs.shape
    # At batch 1 SDPA's output keeps the queries' token-major layout, so the reshape is a view and the
    # mean is the one pass that both averages the streams and merges the heads.
    merged = outs.transpose(2, 3).reshape(streams, batch, tokens, heads * dim).mean(dim=0)
    return residual_linear(gem_x, weights.out_proj, weights.ls_1, merged)


def plain_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return an unmodified block's output, with fused attention where the block allows it."""
    try:
        weights = block_weights(block)
    except UnsupportedModelError:
        return block(x)
    return original_block(block, weights, x, project_qkv(weights.ln_1(x), weights))


@dataclass
class StreamOutput:
    """Token features after ln_post and proj: the GEM stream and, when asked, the original stream."""

    gem: torch.Tensor | None  # [B, 1 + N, D]
    original: torch.Tensor | None  # [B, 1 + N, D]
    last_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # last block's q, k, v
    grid: tuple[int, int]
    last_input: torch.Tensor | None = None  # [B, 1 + N, C] original-stream tokens entering the last block
    image: torch.Tensor | None = None  # [B, D] the unmodified model's image embedding (what encode_image gives)


def project(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Return ln_post(tokens) @ proj for all tokens."""
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens


def class_token_block(block: torch.nn.Module, weights: BlockWeights, x: torch.Tensor,
                      qkv: torch.Tensor) -> torch.Tensor:
    """Return the unmodified block's output for the class token alone [B, 1, C] (its query over all keys)."""
    attended = merge_heads(F.scaled_dot_product_attention(qkv[0][:, :, :1], qkv[1], qkv[2]))
    return mlp_residual(block, residual_linear(x[:, :1].contiguous(), weights.out_proj, weights.ls_1, attended))


def image_embedding(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Return [B, D] pooled and projected, as the tower's forward does, from its last block's output tokens."""
    pooled, _ = visual._pool(tokens)
    return pooled @ visual.proj if visual.proj is not None else pooled


def run_streams(visual: VisionTransformer, pixels: torch.Tensor, options: GemOptions | None, *,
                want_original: bool = False, want_last_qkv: bool = False, want_last_input: bool = False,
                want_image: bool = False, interpolation: str = "antialias") -> StreamOutput:
    """Return projected tokens of the GEM stream (options given) and/or of the unmodified model.

    want_last_qkv / want_last_input also return the last block's q, k, v and its input tokens, from
    which the last-block methods (gem_engine/last_block.py) finish in the same forward pass.
    want_image also returns the unmodified model's image embedding; with a class-token pool only the
    class token goes through the last block's original path, so the image score costs a few products.
    """
    check_vit(visual)
    blocks = list(visual.transformer.resblocks)
    if not visual.transformer.batch_first:
        raise UnsupportedModelError("sequence-first transformers (open_clip batch_first=False) are not supported")
    gem_blocks = 0 if options is None else options.blocks
    if options is not None and not 1 <= gem_blocks <= len(blocks):
        raise ValueError(f"gem blocks must be between 1 and {len(blocks)} for this model, got {gem_blocks}")
    if options is not None and options.iterations < 0:
        raise ValueError(f"GEM iterations must be >= 0, got {options.iterations}")

    x, grid = embed_tokens(visual, pixels, interpolation)
    class_pool = getattr(visual, "pool_type", "tok") == "tok"
    # Without a class-token pool the image embedding needs the whole original stream.
    run_original = want_original or (want_image and not class_pool)
    first_special = len(blocks) - max(gem_blocks, 1 if want_last_qkv or want_last_input or want_image else 0)
    for block in blocks[:first_special]:
        x = plain_block(block, x)
    gem_x = x if options is not None else None
    last_qkv = last_input = image = None
    for index in range(first_special, len(blocks)):
        block = blocks[index]
        weights = block_weights(block)
        normed = weights.ln_1(x)
        qkv = project_qkv(normed, weights)
        is_last = index == len(blocks) - 1
        if is_last and want_last_qkv:
            last_qkv = (qkv[0], qkv[1], qkv[2])
        if is_last and want_last_input:
            last_input = x
        if gem_x is not None and index >= len(blocks) - gem_blocks:
            gem_x = gem_residual(gem_x, weights, self_self_attention(qkv, normed, options))
        if is_last and want_image and not run_original:
            image = image_embedding(visual, class_token_block(block, weights, x, qkv))
        if not is_last or run_original:
            x = original_block(block, weights, x, qkv)
    if want_image and run_original:
        image = image_embedding(visual, x)
    return StreamOutput(
        gem=project(visual, gem_x) if gem_x is not None else None,
        original=project(visual, x) if want_original else None,
        last_qkv=last_qkv,
        grid=grid,
        last_input=last_input,
        image=image,
    )


def patch_features(tokens: torch.Tensor) -> torch.Tensor:
    """Return L2-normalized patch features [B, N, D] (class token dropped), as float32."""
    return F.normalize(tokens[:, 1:].float(), dim=-1)


def cosine_maps(features: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Return [B, L, rows, cols] cosine maps of normalized patch features and text embeddings."""
    sims = features @ text.to(features.dtype).T  # [B, N, L]
    return sims.transpose(1, 2).reshape(features.shape[0], text.shape[0], grid[0], grid[1])
