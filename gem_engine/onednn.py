"""Linear layers through oneDNN for fp32 and bf16 inference on CPU, with the usual ops elsewhere.

PyTorch sends fp32 ``F.linear`` and ``addmm`` to its BLAS, which on some x86 CPUs (AMD's among
them) runs at half the speed oneDNN reaches on the same cores (``bench/gem_speed.py`` measures the
end-to-end effect). oneDNN computes in fp32 too, so maps agree with the BLAS path to float32
rounding. In bf16 (gem_engine/precision.py) the same op fuses the GELU and the residual sum into the
product, which PyTorch's bf16 ``F.linear`` (oneDNN too) does in separate passes. These helpers take the
oneDNN route only where it applies: a CPU float32 or bfloat16 tensor, no autograd recording (Grad-CAM
differentiates through the model, and the oneDNN op has no backward), and a PyTorch build that has the
op. Everywhere else they call the standard op, so CUDA and fp16 are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Tests and benches switch this off to compare against the standard ops.
enabled = True


def _linear_op():
    """Return oneDNN's linear op (the one torch.compile's CPU backend uses), or None in builds without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


_LINEAR = _linear_op()


def applies(x: torch.Tensor) -> bool:
    """Return whether ``x`` takes the oneDNN route: CPU float32 or bfloat16, gradients off, op present."""
    return (
        enabled
        and _LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.is_grad_enabled()
    )


def _gelu_approximation(activation: torch.nn.Module | None) -> str | None:
    """Return "none"/"tanh" for an nn.GELU oneDNN can fuse, None for anything else (e.g. QuickGELU)."""
    if type(activation) is torch.nn.GELU and activation.approximate in ("none", "tanh"):
        return activation.approximate
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           activation: torch.nn.Module | None = None) -> torch.Tensor:
    """Return activation(x @ weight.T + bias); an exact or tanh GELU is fused into the product."""
    if not applies(x):
        out = F.linear(x, weight, bias)
        return activation(out) if activation is not None else out
    approximation = _gelu_approximation(activation)
    if approximation is not None:
        return _LINEAR(x, weight, bias, "gelu", [], approximation)
    out = _LINEAR(x, weight, bias, "none", [], "")
    return activation(out) if activation is not None else out


def linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               residual: torch.Tensor) -> torch.Tensor:
    """Return residual + x @ weight.T + bias as a new tensor, the sum fused into the product."""
    if not applies(x):
        out = residual + bias if bias is not None else residual.clone()
        out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), weight.t())
        return out
    return _LINEAR.binary(x, residual, weight, bias, "add")
