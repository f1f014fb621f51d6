"""Precision: "auto" decided per device from the CPU's bf16 support alone (no timing: every worker of a
deployment decides alike), fp16 refused on CPU, and a CPU bf16 model that computes its vision tower in bf16 while text
embeddings and cosine maps stay fp32, with maps close to fp32's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from gem_engine import precision as precision_module
from gem_engine.engine import HeatmapEngine
from gem_engine.models import load_model, wrap_model
from gem_engine.precision import cast_to_precision, decide, resolve_precision
from gem_engine.text import clear_cache, text_embeddings

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_takes_bf16_exactly_where_the_processor_has_it(native, expected):
    assert decide("cpu", "auto", native_bf16=native) == expected
    assert resolve_precision("auto", CPU, native=lambda: native) == expected


def test_auto_never_times_anything(monkeypatch):
    """Two workers of one deployment must resolve "auto" alike whatever the load: no timing decides it."""
    import time

    import gem_engine.precision as precision

    def no_timing(*_args, **_kwargs):
        raise AssertionError("resolving a precision timed something")

    for clock in ("perf_counter", "perf_counter_ns", "monotonic", "time"):
        monkeypatch.setattr(time, clock, no_timing)
    assert resolve_precision("auto", CPU) == ("bf16" if precision.cpu_has_native_bf16() else "fp32")


def test_explicit_precisions_are_kept_and_never_look_at_the_cpu():
    def must_not_run():
        raise AssertionError("looked at the CPU for an explicit precision")

    for requested in ("fp32", "bf16"):
        assert resolve_precision(requested, CPU, native=must_not_run) == requested
    for requested in ("fp32", "fp16", "bf16"):
        assert resolve_precision(requested, torch.device("cuda"), native=must_not_run) == requested


def test_auto_on_a_gpu_is_fp32_as_before():
    assert decide("cuda", "auto", native_bf16=True) == "fp32"


def test_fp16_on_cpu_is_refused_naming_the_variable():
    with pytest.raises(ValueError, match="fp16 runs on a GPU only; on CPU use PRECISION=bf16, fp32 or auto"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", CPU)


def test_load_model_refuses_fp16_on_cpu(tiny_vit_checkpoint):
    with pytest.raises(ValueError, match="GPU only"):
        load_model("tiny-vit", tiny_vit_checkpoint["pretrained"], config_path=tiny_vit_checkpoint["model_config"],
                   device="cpu", precision="fp16")


def test_load_model_resolves_auto(tiny_vit_checkpoint, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    loaded = load_model("tiny-vit", tiny_vit_checkpoint["pretrained"], config_path=tiny_vit_checkpoint["model_config"],
                        device="cpu", precision="auto")
    assert loaded.dtype == torch.float32 and loaded.model.visual.conv1.weight.dtype == torch.float32


def test_cpu_bf16_casts_the_vision_tower_only(tiny_vit_checkpoint):
    loaded = load_model("tiny-vit", tiny_vit_checkpoint["pretrained"], config_path=tiny_vit_checkpoint["model_config"],
                        device="cpu", precision="bf16")
    model = loaded.model
    assert loaded.dtype == torch.bfloat16
    block = model.visual.transformer.resblocks[0]
    assert block.attn.in_proj_weight.dtype == block.mlp.c_fc.weight.dtype == model.visual.proj.dtype == torch.bfloat16
    text_weights = {p.dtype for name, p in model.named_parameters() if not name.startswith("visual.")}
    assert text_weights == {torch.float32}


def _maps(model, images, labels):
    clear_cache()
    engine = HeatmapEngine(wrap_model(model, "tiny-vit"), image_size=96)
    return engine, engine.analyze(images, labels, ["background"])


def test_bf16_maps_are_close_to_fp32_and_text_and_cosine_stay_fp32(tiny_vit, monkeypatch):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (80, 112, 3), dtype=np.uint8)) for _ in range(2)]
    labels = [["cat"], ["dog"], ["remote control"]]
    low = cast_to_precision(copy.deepcopy(tiny_vit), "bf16", CPU)
    engine32, fp32 = _maps(tiny_vit, images, labels)
    engine16, bf16 = _maps(low, images, labels)
    assert engine16.loaded.dtype == torch.bfloat16
    # The text tower was not cast: the label embeddings are fp32's (to float32 rounding, not bf16's 4e-3).
    text16, text32 = text_embeddings(engine16.loaded, labels), text_embeddings(engine32.loaded, labels)
    assert text16.dtype == torch.float32
    torch.testing.assert_close(text16, text32, atol=1e-6, rtol=0)
    seen = []
    real_cosine = __import__("gem_engine.engine", fromlist=["cosine_maps"]).cosine_maps

    def spy(features, text, grid):
        seen.append((features.dtype, text.dtype))
        return real_cosine(features, text, grid)

    monkeypatch.setattr("gem_engine.engine.cosine_maps", spy)
    engine16.heatmaps(images[:1], labels)
    assert seen == [(torch.float32, torch.float32)]
    spread = max(float(np.ptp(a.maps)) for a in fp32)
    for a, b in zip(fp32, bf16, strict=True):
        assert a.maps.dtype == b.maps.dtype == np.float32
        # bf16 keeps 8 bits of mantissa: maps differ by a few hundredths of their range, not more.
        assert np.abs(a.maps - b.maps).max() <= 0.05 * spread
        assert np.abs(a.maps - b.maps).mean() <= 0.01 * spread
        np.testing.assert_allclose(a.label_scores, b.label_scores, atol=0.05)
        assert np.corrcoef(a.maps.ravel(), b.maps.ravel())[0, 1] > 0.99


def test_gradcam_on_a_cpu_bf16_model_computes_in_fp32_from_the_rounded_weights(tiny_vit):
    from gem_engine.gradcam import gradcam_maps

    # The cast leaves the class and position embeddings fp32: Grad-CAM must still see a bf16 tower.
    low = cast_to_precision(copy.deepcopy(tiny_vit), "bf16", CPU)
    rounded = copy.deepcopy(low).float()
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    texts = torch.nn.functional.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    maps = gradcam_maps(low, pixels.bfloat16(), texts)
    expected = gradcam_maps(rounded, pixels.bfloat16().float(), texts)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-7)
