"""Label prompts to L2-normalized CLIP text embeddings, cached per (model, prompt, templates).

The cache is an LRU of at most MAX_CACHED_PROMPTS entries per model: prompts also come from annotators'
free text (interactive TextArea prompts), so it must not grow with every word ever typed.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from gem_engine.models import LoadedModel

SINGLE_TEMPLATE = "a photo of a {}."
TEMPLATE_SETS = ("single", "ensemble")
COMBINES = ("mean", "max")
_ENCODE_CHUNK = 256
# Per model; one ViT-B embedding is 2 KiB, so the cache stays under 8 MiB per model at this size.
MAX_CACHED_PROMPTS = 4096

# model -> {(templates, prompt): [D] embedding}, least recently used first; weak so that a dropped model
# frees its cache.
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict[tuple[str, str], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def template_strings(prompt: str, templates: str) -> list[str]:
    """Return the sentences a prompt expands to under a template set."""
    if templates == "single":
        return [SINGLE_TEMPLATE.format(prompt)]
    if templates == "ensemble":
        return [template(prompt) for template in OPENAI_IMAGENET_TEMPLATES]
    raise ValueError(f"unknown templates {templates!r}: use one of {', '.join(TEMPLATE_SETS)}")


def validate_prompts(prompts: Sequence[Sequence[str]]) -> list[list[str]]:
    """Return the prompts as lists of stripped strings, or raise ValueError saying which label is bad."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of labels, each a list of synonyms, not a single string")
    if len(prompts) == 0:
        raise ValueError("no labels given: at least one label prompt is needed")
    cleaned: list[list[str]] = []
    for index, synonyms in enumerate(prompts):
        if isinstance(synonyms, str):
            synonyms = [synonyms]
        words = [str(word).strip() for word in synonyms] if synonyms is not None else []
        if not words or any(not word for word in words):
            raise ValueError(f"label {index} has an empty prompt: {synonyms!r}")
        cleaned.append(words)
    return cleaned


def _encode(loaded: LoadedModel, sentences: list[str]) -> torch.Tensor:
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(sentences), _ENCODE_CHUNK):
            tokens = loaded.tokenizer(sentences[start : start + _ENCODE_CHUNK]).to(loaded.device)
            outputs.append(loaded.model.encode_text(tokens).float())
    return F.normalize(torch.cat(outputs), dim=-1)


def prompt_embeddings(loaded: LoadedModel, prompts: Sequence[str], *, templates: str = "single") -> torch.Tensor:
    """Return [P, D] float32 L2-normalized embeddings of single prompts, encoding only uncached ones."""
    template_strings("x", templates)  # validates the template set name
    wanted = list(dict.fromkeys(prompts))
    with _LOCK:
        cache = _CACHE.setdefault(loaded.model, OrderedDict())
        found = {p: cache[(templates, p)] for p in wanted if (templates, p) in cache}
        for prompt in found:
            cache.move_to_end((templates, prompt))
    missing = [p for p in wanted if p not in found]
    if missing:
        sentences = [s for prompt in missing for s in template_strings(prompt, templates)]
        per_prompt = len(sentences) // len(missing)
        encoded = _encode(loaded, sentences).reshape(len(missing), per_prompt, -1)
        # Template ensembles average the normalized sentence embeddings, then renormalize (CLIP's recipe).
        encoded = F.normalize(encoded.mean(dim=1), dim=-1)
        found.update(zip(missing, encoded, strict=True))
        with _LOCK:
            for prompt, vector in zip(missing, encoded, strict=True):
                cache[(templates, prompt)] = vector
            while len(cache) > MAX_CACHED_PROMPTS:
                cache.popitem(last=False)
    return torch.stack([found[p] for p in prompts])


def text_embeddings(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[str]],
    *,
    templates: str = "single",
    combine: str = "mean",
) -> torch.Tensor:
    """Return [L, D] float32 L2-normalized label embeddings; synonyms of a label are averaged.

    combine="max" (per-pixel maximum over synonyms) cannot be expressed as one vector per label:
    use `HeatmapEngine(..., combine="max")` or `synonym_embeddings`.
    """
    if combine != "mean":
        raise ValueError(
            f"combine={combine!r} has no single embedding per label; text_embeddings supports 'mean', "
            "use synonym_embeddings or HeatmapEngine(combine='max')"
        )
    labels = validate_prompts(prompts)
    flat, _ = synonym_embeddings(loaded, labels, templates=templates)
    if flat.shape[0] == len(labels):
        return flat  # one prompt per label: already normalized
    sizes = [len(words) for words in labels]
    return F.normalize(torch.stack([group.sum(0) for group in flat.split(sizes)]), dim=-1)


def synonym_embeddings(
    loaded: LoadedModel, prompts: Sequence[Sequence[str]], *, templates: str = "single"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ([P, D] normalized embeddings of every synonym, [P] index of the label each belongs to)."""
    labels = validate_prompts(prompts)
    flat = [word for words in labels for word in words]
    owner = torch.tensor([i for i, words in enumerate(labels) for _ in words], dtype=torch.long)
    embeddings = prompt_embeddings(loaded, flat, templates=templates)
    return embeddings, owner.to(embeddings.device)


def clear_cache() -> None:
    """Forget every cached text embedding (all models)."""
    with _LOCK:
        _CACHE.clear()
