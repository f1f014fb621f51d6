"""The training script's pieces: learning-rate schedule, contrastive loss with hard negatives, fp16 export."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from scripts import train_tiny_clip as train


def test_learning_rate_warms_up_then_decays_to_a_floor():
    rates = [train.learning_rate(step, 100, 1e-3, 10) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] < 0.05 * 1e-3


def _batch(texts, negatives):
    import open_clip

    from tests.tiny_models import TINY_VIT

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(len(texts), 3, 96, 96, generator=generator)
    tokens = open_clip.get_tokenizer(TINY_VIT)(texts + negatives)
    return pixels, tokens


def test_contrastive_loss_trains_both_towers_and_ignores_duplicate_captions(tiny_vit):
    model = copy.deepcopy(tiny_vit).train()
    texts = ["a red circle", "a red circle", "a blue star", "a green ring"]
    negatives = ["a blue circle", "a green circle", "a red star", "a green cross"]
    pixels, tokens = _batch(texts, negatives)
    loss, accuracy = train.contrastive_loss(model, pixels, tokens, texts, negatives)
    assert torch.isfinite(loss) and 0.0 <= accuracy <= 1.0
    loss.backward()
    assert model.visual.conv1.weight.grad.abs().sum() > 0
    assert model.token_embedding.weight.grad.abs().sum() > 0

    # Same tokens, but strings that no longer compare equal: caption 1 (identical to caption 0)
    # becomes a negative for image 0 and vice versa, which must raise the loss.
    relabeled = [texts[0], texts[1] + " ", *texts[2:]]
    with torch.no_grad():
        masked, _ = train.contrastive_loss(model, pixels, tokens, texts, negatives)
        unmasked, _ = train.contrastive_loss(model, pixels, tokens, relabeled, negatives)
    assert masked.item() < unmasked.item() - 1e-4


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_vit):
    model = copy.deepcopy(tiny_vit).train()
    texts = ["a red circle", "a blue star", "a green ring", "a yellow square"]
    negatives = ["a blue circle", "a red star", "a green cross", "a purple square"]
    pixels, tokens = _batch(texts, negatives)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss, _ = train.contrastive_loss(model, pixels, tokens, texts, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_saved_weights_are_fp16_and_load_back_into_the_model(tiny_vit, tmp_path):
    path = tmp_path / "w.safetensors"
    train.save_weights(tiny_vit, path, "tiny-vit")
    state = load_file(str(path))
    assert all(t.dtype == torch.float16 for t in state.values())
    assert set(state) == set(tiny_vit.state_dict())
    clone = copy.deepcopy(tiny_vit)
    clone.load_state_dict(state)
    assert next(clone.parameters()).dtype == torch.float32
    assert not path.with_suffix(".partial").exists()
