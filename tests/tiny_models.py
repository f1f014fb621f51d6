"""Tiny random-weight open_clip models for tests: registered from JSON configs, never downloaded."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

MODEL_DIR = Path(__file__).parent / "fixtures" / "models"
TINY_VIT = "tiny-vit"
TINY_RN = "tiny-rn"
SEED = 1234


def config_path(name: str) -> Path:
    """Return the JSON config file of a tiny model."""
    return MODEL_DIR / f"{name}.json"


def register_tiny_configs() -> None:
    """Make the tiny configs known to open_clip under their file names."""
    for name in (TINY_VIT, TINY_RN):
        open_clip.add_model_config(config_path(name))


def build_tiny_model(name: str, seed: int = SEED) -> torch.nn.Module:
    """Return a deterministic random-weight tiny CLIP in eval mode."""
    register_tiny_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    # Random init leaves the logit scale and some norms at values real checkpoints never have;
    # give every parameter a small seeded perturbation so that no map is exactly constant.
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return model.eval()


def save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Write a model's state dict where the product's local-checkpoint loader can read it."""
    torch.save(model.state_dict(), path)
    return path
