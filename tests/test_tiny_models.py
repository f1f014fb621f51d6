"""The tiny test models build fast, deterministically, and load back from a checkpoint."""

import time

import open_clip
import torch

from tests import tiny_models


def test_tiny_models_build_fast_and_deterministic():
    for name in (tiny_models.TINY_VIT, tiny_models.TINY_RN):
        start = time.perf_counter()
        first = tiny_models.build_tiny_model(name)
        elapsed = time.perf_counter() - start
        second = tiny_models.build_tiny_model(name)
        assert elapsed < 2.0, f"{name} took {elapsed:.2f}s"
        for (key, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
            assert torch.equal(a, b), key


def test_tiny_vit_forward_shapes(tiny_vit):
    image = torch.randn(2, 3, 96, 96)
    text = open_clip.get_tokenizer(tiny_models.TINY_VIT)(["a cat", "a dog"])
    with torch.no_grad():
        image_features = tiny_vit.encode_image(image)
        text_features = tiny_vit.encode_text(text)
    assert image_features.shape == (2, 32)
    assert text_features.shape == (2, 32)
    assert torch.isfinite(image_features).all()


def test_tiny_resnet_is_modified_resnet(tiny_resnet):
    assert type(tiny_resnet.visual).__name__ == "ModifiedResNet"
    with torch.no_grad():
        assert tiny_resnet.encode_image(torch.randn(1, 3, 96, 96)).shape == (1, 32)


def test_checkpoint_round_trip(tiny_vit, tiny_vit_checkpoint):
    tiny_models.register_tiny_configs()
    loaded = open_clip.create_model(tiny_models.TINY_VIT, pretrained=tiny_vit_checkpoint["pretrained"])
    for (key, a), (_, b) in zip(tiny_vit.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), key


def test_no_network_in_tests():
    import socket

    import pytest
    import pytest_socket

    with pytest.raises(pytest_socket.SocketConnectBlockedError):
        socket.create_connection(("203.0.113.1", 80), timeout=1)


def test_hugging_face_hub_is_offline():
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE, "conftest must set HF_HUB_OFFLINE before any import"
