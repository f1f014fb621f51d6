"""gem_engine: open_clip loading, GEM and baseline heatmaps, Grad-CAM, heatmaps to regions, brush RLE.

This package module imports nothing heavy: the API process imports `gem_engine.rle` and must not
pull in torch. The main names are loaded on first attribute access.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LoadedModel": "gem_engine.models",
    "load_model": "gem_engine.models",
    "WeightsNotFoundError": "gem_engine.models",
    "UnsupportedModelError": "gem_engine.models",
    "text_embeddings": "gem_engine.text",
    "HeatmapEngine": "gem_engine.engine",
    "METHODS": "gem_engine.engine",
    "upsample": "gem_engine.maps",
    "normalize": "gem_engine.maps",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Return an exported name, importing its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gem_engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
