"""GEM stream against a straightforward re-derivation of the reference's arithmetic, and its invariants."""

import copy

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerScale

from gem_engine.gem import GemOptions, patch_features, position_embedding, run_streams


def reference_position_embedding(pos, grid):
    side = int((pos.shape[0] - 1) ** 0.5)
    patches = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", antialias=True)
    return torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)]).unsqueeze(0)


def slow_gem(visual, pixels, blocks, iterations=1, temperature=None):
    """Sequence-by-sequence transcription of the paper/reference: explicit matrices, no fusion."""
    x = visual.conv1(pixels)
    grid = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1)
    x = visual.ln_pre(x + reference_position_embedding(visual.positional_embedding, tuple(grid)))
    resblocks = list(visual.transformer.resblocks)
    for block in resblocks[: len(resblocks) - blocks]:
        x = block(x)
    gem = x
    for block in resblocks[len(resblocks) - blocks :]:
        attn = block.attn
        h = block.ln_1(x)
        batch, tokens, width = h.shape
        heads = attn.num_heads
        qkv = (h @ attn.in_proj_weight.T + attn.in_proj_bias).reshape(batch, tokens, 3, heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        scale = q.shape[-1] ** -0.5
        original = ((q @ k.transpose(-2, -1)) * scale).softmax(-1) @ v
        original = attn.out_proj(original.transpose(1, 2).reshape(batch, tokens, width))
        if temperature is None:
            inv_temp = h.norm(dim=-1).mean(dim=-1).view(batch, 1, 1, 1) * scale
        else:
            inv_temp = temperature
        outputs = []
        for z in (q, k, v):
            for _ in range(iterations):
                z = F.normalize(z, dim=-1)
                z = ((z @ z.transpose(-2, -1)) * inv_temp).softmax(-1) @ z
            z = F.normalize(z, dim=-1)
            outputs.append(((z @ z.transpose(-2, -1)) * inv_temp).softmax(-1) @ v)
        mean = (outputs[0] + outputs[1] + outputs[2]) / 3
        gem = gem + block.ls_1(attn.out_proj(mean.transpose(1, 2).reshape(batch, tokens, width)))
        x = x + block.ls_1(original)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    gem = visual.ln_post(gem) @ visual.proj
    return F.normalize(gem[:, 1:], dim=-1), tuple(grid)


@pytest.mark.parametrize(
    "size, blocks, iterations, temperature, batch",
    [
        ((96, 96), 3, 1, None, 2),
        ((80, 128), 2, 1, None, 2),
        ((112, 112), 1, 3, None, 2),
        ((64, 96), 3, 0, 2.5, 2),
        # batch 1: the temperature is one number and SDPA applies it as its scale
        ((96, 96), 3, 1, None, 1),
        ((80, 128), 2, 2, 1.5, 1),
    ],
)
def test_gem_matches_straightforward_derivation(tiny_vit, size, blocks, iterations, temperature, batch):
    torch.manual_seed(0)
    pixels = torch.randn(batch, 3, *size)
    options = GemOptions(blocks=blocks, iterations=iterations, temperature=temperature)
    with torch.inference_mode():
        ours = run_streams(tiny_vit.visual, pixels, options)
        expected, grid = slow_gem(tiny_vit.visual, pixels, blocks, iterations, temperature)
    assert ours.grid == grid == (size[0] // 16, size[1] // 16)
    torch.testing.assert_close(patch_features(ours.gem), expected, atol=2e-5, rtol=0)


def test_original_stream_is_open_clip_forward(tiny_vit):
    pixels = torch.randn(2, 3, 96, 96)
    visual = tiny_vit.visual
    with torch.inference_mode():
        ours = run_streams(visual, pixels, GemOptions(blocks=2), want_original=True)
        tokens = visual.transformer(visual._embeds(pixels))
        expected = visual.ln_post(tokens) @ visual.proj
        pooled = visual(pixels)
    torch.testing.assert_close(ours.original, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.original[:, 0], pooled, atol=1e-5, rtol=0)
    assert not torch.allclose(ours.gem, ours.original, atol=1e-3)


def test_layer_scale_blocks_follow_open_clip(tiny_vit):
    # The residual projections accumulate in place only without layer scale; with it they must
    # still give open_clip's forward and the derivation's GEM stream.
    model = copy.deepcopy(tiny_vit)
    visual = model.visual
    for block in visual.transformer.resblocks:
        block.ls_1 = LayerScale(visual.transformer.width, 0.5)
        block.ls_2 = LayerScale(visual.transformer.width, 2.0)
    pixels = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        ours = run_streams(visual, pixels, GemOptions(blocks=2), want_original=True)
        expected_original = visual.ln_post(visual.transformer(visual._embeds(pixels))) @ visual.proj
        expected_gem, _ = slow_gem(visual, pixels, 2)
        plain = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=2))
    torch.testing.assert_close(ours.original, expected_original, atol=1e-5, rtol=0)
    torch.testing.assert_close(patch_features(ours.gem), expected_gem, atol=2e-5, rtol=0)
    assert not torch.allclose(ours.gem, plain.gem, atol=1e-3)


def test_gem_stream_depends_on_the_number_of_modified_blocks(tiny_vit):
    pixels = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        one = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=1)).gem
        three = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=3)).gem
    assert not torch.allclose(one, three, atol=1e-4)
    with pytest.raises(ValueError, match="between 1 and 3"):
        run_streams(tiny_vit.visual, pixels, GemOptions(blocks=4))


def test_position_embedding_interpolated_once_per_grid(tiny_vit):
    visual = tiny_vit.visual
    native = position_embedding(visual, (6, 6), torch.float32)
    assert torch.equal(native[0], visual.positional_embedding)
    first = position_embedding(visual, (5, 9), torch.float32)
    assert position_embedding(visual, (5, 9), torch.float32) is first
    expected = reference_position_embedding(visual.positional_embedding.detach(), (5, 9))
    torch.testing.assert_close(first, expected)
    assert first.shape == (1, 46, 64)


def test_each_image_is_independent_of_its_batch(tiny_vit):
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        batched = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=3)).gem
        alone = run_streams(tiny_vit.visual, pixels[1:2], GemOptions(blocks=3)).gem
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=0)


def test_cached_position_embedding_serves_autograd_callers(tiny_vit):
    visual = tiny_vit.visual
    with torch.inference_mode():
        run_streams(visual, torch.randn(1, 3, 48, 80), GemOptions(blocks=2))
    pixels = torch.randn(1, 3, 48, 80, requires_grad=True)
    out = run_streams(visual, pixels, GemOptions(blocks=2))
    # autograd.grad, not backward(): the session fixture's weights must not collect .grad.
    (grad,) = torch.autograd.grad(out.gem[:, 1:].sum(), pixels)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
