"""Loading open_clip models (tags, local checkpoints, custom configs) into a `LoadedModel`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from gem_engine.precision import CHOICES, cast_to_precision, resolve_precision

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The environment variables the backend reads; named in errors so that a user knows what to set.
ENV_HINT = (
    "set MODEL_PRETRAINED to a local checkpoint file (.pt/.bin/.safetensors), "
    "or MODEL_CACHE_DIR (or HF_HOME) to a directory that already holds the weights"
)


class WeightsNotFoundError(RuntimeError):
    """The requested weights are neither on disk nor downloadable (offline, missing file)."""


class UnsupportedModelError(ValueError):
    """The model cannot run the requested method (e.g. GEM on a ResNet CLIP)."""


@dataclass(frozen=True)
class LoadedModel:
    """An open_clip CLIP model ready for inference, with what is needed to feed it."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str
    pretrained: str | None
    device: torch.device
    dtype: torch.dtype
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def is_vit(self) -> bool:
        """Return True when the vision tower is an open_clip VisionTransformer with a class token."""
        return is_cls_vit(self.model)

    @property
    def patch_size(self) -> tuple[int, int] | None:
        """Return the (height, width) patch size of a ViT, None for other towers."""
        if not self.is_vit:
            return None
        return tuple(self.model.visual.patch_size)


def is_cls_vit(model: torch.nn.Module) -> bool:
    """Return True when `model.visual` is an open_clip VisionTransformer with a class token."""
    visual = getattr(model, "visual", None)
    return isinstance(visual, open_clip.transformer.VisionTransformer) and hasattr(visual, "class_embedding")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for "auto" (CUDA when present), or the one named."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


def register_config(config_path: str | os.PathLike) -> str:
    """Register a JSON open_clip model config under its file stem and return that name."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} does not exist (MODEL_CONFIG)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"model config {path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or "vision_cfg" not in config.get("model_cfg", config):
        raise ValueError(f"model config {path} has no 'vision_cfg': not an open_clip model config")
    open_clip.add_model_config(path)
    return path.stem


def _default_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return cache_dir
    from huggingface_hub.constants import HF_HUB_CACHE

    return HF_HUB_CACHE


def _offline() -> bool:
    """Return True when Hugging Face downloads are switched off (read now, not at import time)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def _cached_tag_file(cfg: dict, cache_dir: str | None) -> str | None:
    """Return the already-downloaded checkpoint of a tag, looking only at local caches."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        candidates = [filename]
        if filename == HF_WEIGHTS_NAME:
            candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo, candidate, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.get("url"):
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if local.is_file():
            return str(local)
    return None


def _resolve_tag(name: str, tag: str, cache_dir: str | None) -> tuple[str, dict]:
    """Return the local checkpoint path of an open_clip pretrained tag and its config, downloading if allowed."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise WeightsNotFoundError(
            f"pretrained={tag!r} is neither a known open_clip tag for {name!r} (known: {known}) "
            f"nor an existing checkpoint file; {ENV_HINT}"
        )
    cached = _cached_tag_file(cfg, cache_dir)
    if cached:
        return cached, cfg
    where = cfg.get("hf_hub") or cfg.get("url") or "?"
    missing = (
        f"weights for {name} ({tag}) are not in the cache {_default_cache_dir(cache_dir)}"
    )
    advice = f"Provide them: put the Hugging Face repo {where} into that cache, or {ENV_HINT}."
    if _offline():
        raise WeightsNotFoundError(f"{missing} and downloads are off (HF_HUB_OFFLINE). {advice}")
    try:
        path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as error:  # no network, blocked socket, HTTP error: all mean "not available here"
        raise WeightsNotFoundError(
            f"{missing} and could not be downloaded ({type(error).__name__}: {error}). {advice}"
        ) from error
    if not path or not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights for {name} ({tag}) resolved to {path!r}, which is not a file; {ENV_HINT}")
    return path, cfg


def load_model(
    name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    *,
    config_path: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",  # one of gem_engine.precision.CHOICES; "auto" is resolved for the device
    cache_dir: str | None = None,
    force_quick_gelu: bool | None = None,
) -> LoadedModel:
    """Return a `LoadedModel` in eval mode on the resolved device and precision.

    `pretrained` is an open_clip tag, a local checkpoint path, or None (random weights).
    `force_quick_gelu=None` follows the tag (OpenAI weights were trained with QuickGELU).
    On CPU, bf16 casts the vision tower only and fp16 is refused (gem_engine/precision.py).
    """
    if precision not in CHOICES:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(CHOICES)}")
    resolved_device = resolve_device(device)
    precision = resolve_precision(precision, resolved_device)
    if config_path is not None:
        registered = register_config(config_path)
        if registered != name:
            raise ValueError(f"config file {config_path} registers model {registered!r}, but name={name!r}")
    if name not in open_clip.list_models():
        raise UnsupportedModelError(
            f"unknown open_clip model {name!r}: use a built-in name or give its JSON config (MODEL_CONFIG)"
        )

    checkpoint: str | None = None
    tag_cfg: dict = {}
    if pretrained:
        as_path = Path(pretrained).expanduser()
        looks_like_path = as_path.suffix in CHECKPOINT_SUFFIXES or os.sep in str(pretrained)
        if as_path.is_file():
            checkpoint = str(as_path)
        elif looks_like_path:
            raise WeightsNotFoundError(f"checkpoint file {as_path} does not exist; {ENV_HINT}")
        else:
            checkpoint, tag_cfg = _resolve_tag(name, pretrained, cache_dir)
    quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if force_quick_gelu is None else force_quick_gelu

    try:
        model = open_clip.create_model(
            name,
            pretrained=checkpoint,
            # On CUDA open_clip casts the whole model; on CPU only the vision tower is cast, below.
            precision=precision if resolved_device.type != "cpu" else "fp32",
            device=resolved_device,
            force_quick_gelu=quick_gelu,
            cache_dir=cache_dir,
        )
    except RuntimeError as error:
        if checkpoint and ("state_dict" in str(error) or "size mismatch" in str(error)):
            raise UnsupportedModelError(f"checkpoint {checkpoint} does not fit model {name!r}: {error}") from error
        raise
    if resolved_device.type == "cpu":
        cast_to_precision(model, precision, resolved_device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(tag_cfg.get("mean") or preprocess.get("mean") or OPENAI_DATASET_MEAN)
    std = tuple(tag_cfg.get("std") or preprocess.get("std") or OPENAI_DATASET_STD)
    image_size = getattr(model.visual, "image_size", None) or preprocess.get("size", 224)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        pretrained=pretrained,
        device=resolved_device,
        dtype=PRECISIONS[precision],
        image_size=(int(image_size[0]), int(image_size[1])),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
    )


def wrap_model(
    model: torch.nn.Module,
    name: str,
    *,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN,
    std: tuple[float, float, float] = OPENAI_DATASET_STD,
) -> LoadedModel:
    """Return a `LoadedModel` around an already built open_clip model (tests, benchmarks).

    Its dtype is the vision tower's compute dtype: the low precision of any of its weights (a CPU bf16
    model casts only the vision tower, and leaves its norms and embeddings fp32).
    """
    param = next(model.parameters())
    visual_dtypes = {p.dtype for p in model.visual.parameters()}
    low = [dtype for dtype in (torch.bfloat16, torch.float16) if dtype in visual_dtypes]
    image_size = getattr(model.visual, "image_size", 224)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    return LoadedModel(
        model=model.eval(),
        tokenizer=tokenizer or open_clip.get_tokenizer(name),
        name=name,
        pretrained=None,
        device=param.device,
        dtype=low[0] if low else param.dtype,
        image_size=(int(image_size[0]), int(image_size[1])),
        mean=tuple(mean),  # type: ignore[arg-type]
        std=tuple(std),  # type: ignore[arg-type]
    )
