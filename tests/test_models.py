"""load_model: local checkpoints with custom configs, tags offline, bad arguments, unsupported towers."""

import pytest
import torch

from gem_engine.engine import HeatmapEngine
from gem_engine.models import (
    LoadedModel,
    UnsupportedModelError,
    WeightsNotFoundError,
    load_model,
    resolve_device,
    wrap_model,
)
from tests import tiny_models


def test_loads_local_checkpoint_with_config(tiny_vit, tiny_vit_checkpoint):
    loaded = load_model(
        tiny_vit_checkpoint["model_name"],
        tiny_vit_checkpoint["pretrained"],
        config_path=tiny_vit_checkpoint["model_config"],
        device="auto",
    )
    assert isinstance(loaded, LoadedModel)
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert loaded.image_size == (96, 96)
    assert loaded.patch_size == (16, 16)
    assert loaded.is_vit
    assert not loaded.model.training
    for (key, a), (_, b) in zip(tiny_vit.state_dict().items(), loaded.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    tokens = loaded.tokenizer(["a cat"])
    assert tokens.shape == (1, 77)


def test_random_weights_when_pretrained_is_none(tiny_vit_checkpoint):
    loaded = load_model("tiny-vit", None, config_path=tiny_vit_checkpoint["model_config"], device="cpu")
    assert loaded.pretrained is None
    assert loaded.model.visual.conv1.weight.shape == (64, 3, 16, 16)


def test_missing_tag_weights_offline_name_the_cache_and_variables(tmp_path):
    cache = tmp_path / "empty-cache"
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("ViT-B-16", "openai", cache_dir=str(cache), device="cpu")
    message = str(info.value)
    assert str(cache) in message
    assert "MODEL_CACHE_DIR" in message and "HF_HOME" in message and "MODEL_PRETRAINED" in message
    assert "timm/vit_base_patch16_clip_224.openai" in message


def test_missing_checkpoint_file_is_named(tmp_path, tiny_vit_checkpoint):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        load_model("tiny-vit", str(missing), config_path=tiny_vit_checkpoint["model_config"], device="cpu")


def test_unknown_tag_lists_known_ones(tiny_vit_checkpoint):
    with pytest.raises(WeightsNotFoundError, match="openai"):
        load_model("ViT-B-16", "no-such-tag", device="cpu")


def test_bad_arguments_are_clear(tiny_vit_checkpoint, tmp_path):
    config = tiny_vit_checkpoint["model_config"]
    with pytest.raises(ValueError, match="precision"):
        load_model("tiny-vit", None, config_path=config, precision="fp8")
    with pytest.raises(ValueError, match="registers model 'tiny-vit'"):
        load_model("other", None, config_path=config)
    with pytest.raises(UnsupportedModelError, match="unknown open_clip model"):
        load_model("no-such-model", None)
    with pytest.raises(FileNotFoundError, match="MODEL_CONFIG"):
        load_model("x", None, config_path=tmp_path / "x.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model("bad", None, config_path=bad)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


def test_checkpoint_of_another_model_is_refused(tmp_path, tiny_vit_checkpoint):
    tiny_models.register_tiny_configs()
    with pytest.raises(Exception, match="tiny-vit.pt|size mismatch|Missing|Unexpected"):
        load_model("tiny-rn", tiny_vit_checkpoint["pretrained"], config_path=tiny_models.config_path("tiny-rn"))


def test_bf16_loads_and_casts(tiny_vit_checkpoint):
    loaded = load_model("tiny-vit", tiny_vit_checkpoint["pretrained"],
                        config_path=tiny_vit_checkpoint["model_config"], device="cpu", precision="bf16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.model.visual.conv1.weight.dtype == torch.bfloat16


def test_resnet_asked_for_gem_names_supported_methods(tiny_resnet):
    loaded = wrap_model(tiny_resnet, "tiny-rn")
    assert not loaded.is_vit and loaded.patch_size is None
    for method in ("gem", "patch", "qk", "vv"):
        with pytest.raises(UnsupportedModelError, match="gradcam"):
            HeatmapEngine(loaded, method=method)


def test_loads_safetensors_checkpoint(tiny_vit, tiny_vit_checkpoint, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny-vit.safetensors"
    save_file({key: value.contiguous() for key, value in tiny_vit.state_dict().items()}, str(path))
    loaded = load_model("tiny-vit", str(path), config_path=tiny_vit_checkpoint["model_config"], device="cpu")
    assert torch.equal(loaded.model.visual.proj, tiny_vit.visual.proj)
