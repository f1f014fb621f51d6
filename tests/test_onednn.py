"""The oneDNN route for CPU fp32 and bf16 inference: same numbers as the standard ops, and only where it applies."""

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from gem_engine import onednn
from gem_engine.gem import GemOptions, run_streams


def test_this_build_has_the_onednn_route():
    # The pinned torch has the op; losing it on an upgrade would halve CPU speed without failing anything.
    assert onednn._LINEAR is not None
    with torch.inference_mode():
        assert onednn.applies(torch.zeros(2, 3))
    assert not onednn.applies(torch.zeros(2, 3))  # gradients on
    with torch.no_grad():
        assert onednn.applies(torch.zeros(2, 3))
        assert not onednn.applies(torch.zeros(2, 3, dtype=torch.float64))
        assert not onednn.applies(torch.zeros(2, 3, dtype=torch.float16))
        assert onednn.applies(torch.zeros(2, 3, dtype=torch.bfloat16))


@pytest.mark.parametrize("activation", [None, torch.nn.GELU(), torch.nn.GELU(approximate="tanh"), QuickGELU()])
@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_the_standard_op(activation, shape, with_bias):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(shape), torch.randn(40, 24), torch.randn(40) if with_bias else None
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    if activation is not None:
        expected = activation(expected)
    with torch.inference_mode():
        out = onednn.linear(x, weight, bias, activation)
    assert out.shape == (*shape[:-1], 40) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_linear_add_matches_and_leaves_the_residual_alone():
    torch.manual_seed(0)
    x, weight, bias, residual = torch.randn(2, 5, 24), torch.randn(16, 24), torch.randn(16), torch.randn(2, 5, 16)
    before = residual.clone()
    with torch.inference_mode():
        out = onednn.linear_add(x, weight, bias, residual)
        no_bias = onednn.linear_add(x, weight, None, residual)
    torch.testing.assert_close(out, residual + F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(no_bias, residual + F.linear(x, weight), atol=1e-5, rtol=1e-5)
    assert torch.equal(residual, before)


def test_gradients_flow_through_the_standard_route():
    x = torch.randn(3, 8, requires_grad=True)
    weight = torch.randn(4, 8)
    out = onednn.linear_add(x, weight, torch.zeros(4), torch.zeros(3, 4)) + onednn.linear(x, weight, None)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, 2 * weight.sum(0).expand(3, 8))


def test_gem_stream_is_the_same_on_both_routes(tiny_vit, monkeypatch):
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        fast = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=2), want_original=True)
        monkeypatch.setattr(onednn, "enabled", False)
        standard = run_streams(tiny_vit.visual, pixels, GemOptions(blocks=2), want_original=True)
    torch.testing.assert_close(fast.gem, standard.gem, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.original, standard.original, atol=1e-5, rtol=0)


@pytest.mark.parametrize("activation", [None, torch.nn.GELU(), QuickGELU()])
def test_bf16_products_and_sums_match_the_standard_bf16_ops(activation):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 5, 64), torch.randn(48, 64) * 0.1, torch.randn(48)
    residual = torch.randn(2, 5, 48)
    x, weight, bias, residual = (t.bfloat16() for t in (x, weight, bias, residual))
    with torch.inference_mode():
        out = onednn.linear(x, weight, bias, activation)
        summed = onednn.linear_add(x, weight, bias, residual)
        expected = F.linear(x.float(), weight.float(), bias.float())
    assert out.dtype == summed.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: both routes round the fp32 result once, to within a few bf16 steps.
    if activation is not None:
        expected_activated = activation(expected)
    else:
        expected_activated = expected
    torch.testing.assert_close(out.float(), expected_activated, atol=0.05, rtol=0.02)
    torch.testing.assert_close(summed.float(), residual.float() + expected, atol=0.05, rtol=0.02)
