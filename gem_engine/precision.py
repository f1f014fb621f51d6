"""Which precision a model runs in: "auto" resolved per device, and the casts each precision means.

`resolve_precision` turns a requested precision (CHOICES) into one of `models.PRECISIONS` for a device:
- CUDA: "auto" is fp32, what the GPU path ran by default before "auto" existed; fp16 and bf16 are taken
  as asked (the README's GPU table shows what they are worth).
- CPU: fp16 is refused (no fast fp16 kernels on CPU); "auto" is bf16 only where the processor computes
  bf16 natively (AVX512-BF16 or AMX-BF16: elsewhere oneDNN emulates it, slower than fp32) AND a start-up
  probe finds a bf16 product of ViT-B/16's MLP shape at least BF16_MIN_SPEEDUP times faster than the
  fp32 one on the route fp32 takes (gem_engine.onednn); else fp32. The probe runs once per process.

On CPU bf16 covers the vision tower only (its linear layers, attention and GEM's self-self attention);
the text tower stays fp32, so text embeddings, and the cosine maps computed from them in fp32, do not
lose precision. On CUDA the whole model is cast, as open_clip's own "fp16"/"bf16" do.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gem_engine import onednn

CHOICES = ("auto", "fp32", "fp16", "bf16")
# bf16 must win the probe by this much: below it the gain is within the noise of a shared machine and
# not worth a second, slightly different set of maps.
BF16_MIN_SPEEDUP = 1.2
# ViT-B/16 at 448 px: 785 tokens through the MLP's first layer (768 -> 3072), the model's largest product.
PROBE_SHAPE = (785, 768, 3072)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16() -> bool:
    """Return whether the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), as torch or /proc/cpuinfo says."""
    cpu = getattr(torch, "cpu", None)
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(cpu, check, None)
        if probe is not None and probe():
            return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def best_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """Return the fastest of `repeats` timed calls of `run`, after one untimed call (oneDNN builds its kernel)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def probe_bf16_speedup(repeats: int = 3) -> float:
    """Return how many times faster a bf16 product of PROBE_SHAPE runs than the fp32 one (best of `repeats`)."""
    tokens, width, hidden = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, width, generator=generator)
    weight = torch.randn(hidden, width, generator=generator) * width**-0.5
    bias = torch.zeros(hidden)
    seconds = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            args = (x.to(dtype), weight.to(dtype), bias.to(dtype))
            seconds[dtype] = best_seconds(lambda args=args: onednn.linear(*args), repeats)
    return seconds[torch.float32] / seconds[torch.bfloat16]


@functools.cache
def _measured_cpu_speedup() -> float:
    return probe_bf16_speedup()


def decide(device_type: str, requested: str, *, native_bf16: bool, bf16_speedup: float | None) -> str:
    """Return the precision to run for `requested` on a device type; `bf16_speedup` is the probe's result.

    Raises ValueError for fp16 on CPU. `bf16_speedup` is only read for "auto" on a CPU with native bf16.
    """
    if requested not in CHOICES:
        raise ValueError(f"unknown precision {requested!r}: use one of {', '.join(CHOICES)} (PRECISION)")
    if device_type != "cpu":
        return "fp32" if requested == "auto" else requested
    if requested == "fp16":
        raise ValueError("precision fp16 runs on a GPU only; on CPU use PRECISION=bf16, fp32 or auto")
    if requested != "auto":
        return requested
    if not native_bf16 or bf16_speedup is None:
        return "fp32"
    return "bf16" if bf16_speedup >= BF16_MIN_SPEEDUP else "fp32"


def resolve_precision(requested: str, device: torch.device, *, probe: Callable[[], float] | None = None,
                      native: Callable[[], bool] | None = None) -> str:
    """Return the precision (fp32, fp16 or bf16) a model on `device` runs in when `requested` is asked.

    The CPU check (`native`, default `cpu_has_native_bf16`) and the probe (`probe`, default: the timed one,
    once per process) run only for "auto" on CPU, the probe only where bf16 is native.
    """
    if requested != "auto" or device.type != "cpu":
        return decide(device.type, requested, native_bf16=False, bf16_speedup=None)
    has_bf16 = (native or cpu_has_native_bf16)()
    speedup = (probe or _measured_cpu_speedup)() if has_bf16 else None
    return decide("cpu", requested, native_bf16=has_bf16, bf16_speedup=speedup)


def cast_to_precision(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """Return `model` (fp32, on `device`) cast in place for a resolved precision (see the module docstring)."""
    from open_clip.model import convert_weights_to_lp

    if precision == "fp32":
        return model
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    # open_clip's own low-precision cast: linear, conv and attention weights and the projections; norms,
    # class and position embeddings stay fp32 (the code casts their outputs).
    convert_weights_to_lp(model.visual if device.type == "cpu" else model, dtype)
    return model
