"""Which precision a model runs in: "auto" resolved per device, and the casts each precision means.

`resolve_precision` turns a requested precision (CHOICES) into one of `models.PRECISIONS` for a device:
- CUDA: "auto" is fp32, what the GPU path ran by default before "auto" existed; fp16 and bf16 are taken
  as asked (the README's GPU table shows what they are worth).
- CPU: fp16 is refused (no fast fp16 kernels on CPU); "auto" is bf16 where the processor computes bf16
  natively (AVX512-BF16 or AMX-BF16: elsewhere oneDNN emulates it, slower than fp32), else fp32. The
  decision reads the processor's flags only, never a timing: a start-up probe decided it first, and under
  load two workers of one deployment (or the two runs of one test) came to different answers, so the same
  model version gave different maps. That bf16 is faster where it is native is `bench/gem_speed.py`'s and
  `bench/bulk_throughput.py`'s to show (README "Precision on CPU").

On CPU bf16 covers the vision tower only (its linear layers, attention and GEM's self-self attention);
the text tower stays fp32, so text embeddings, and the cosine maps computed from them in fp32, do not
lose precision. On CUDA the whole model is cast, as open_clip's own "fp16"/"bf16" do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

CHOICES = ("auto", "fp32", "fp16", "bf16")
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


def decide(device_type: str, requested: str, *, native_bf16: bool) -> str:
    """Return the precision to run for `requested` on a device type; raise ValueError for fp16 on CPU."""
    if requested not in CHOICES:
        raise ValueError(f"unknown precision {requested!r}: use one of {', '.join(CHOICES)} (PRECISION)")
    if device_type != "cpu":
        return "fp32" if requested == "auto" else requested
    if requested == "fp16":
        raise ValueError("precision fp16 runs on a GPU only; on CPU use PRECISION=bf16, fp32 or auto")
    if requested != "auto":
        return requested
    return "bf16" if native_bf16 else "fp32"


def resolve_precision(requested: str, device: torch.device, *, native: Callable[[], bool] | None = None) -> str:
    """Return the precision (fp32, fp16 or bf16) a model on `device` runs in when `requested` is asked.

    The CPU check (`native`, default `cpu_has_native_bf16`) runs only for "auto" on CPU.
    """
    if requested != "auto" or device.type != "cpu":
        return decide(device.type, requested, native_bf16=False)
    return decide("cpu", requested, native_bf16=(native or cpu_has_native_bf16)())


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
