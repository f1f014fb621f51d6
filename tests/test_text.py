"""text_embeddings: normalized, cached per (model, prompt, templates), synonyms, bad prompts."""

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from gem_engine import text
from gem_engine.models import wrap_model


@pytest.fixture
def loaded(tiny_vit):
    text.clear_cache()
    return wrap_model(tiny_vit, "tiny-vit")


def encode(loaded, sentences):
    with torch.no_grad():
        return F.normalize(loaded.model.encode_text(loaded.tokenizer(sentences)), dim=-1)


def test_single_template_matches_reference_recipe(loaded):
    out = text.text_embeddings(loaded, [["cat"], ["traffic light"]])
    expected = encode(loaded, ["a photo of a cat.", "a photo of a traffic light."])
    assert out.shape == (2, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))


def test_ensemble_averages_the_80_templates(loaded):
    out = text.text_embeddings(loaded, [["cat"]], templates="ensemble")
    sentences = [template("cat") for template in OPENAI_IMAGENET_TEMPLATES]
    assert len(sentences) == 80
    expected = F.normalize(encode(loaded, sentences).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(out, text.text_embeddings(loaded, [["cat"]]))


def test_cache_encodes_each_prompt_once(loaded, monkeypatch):
    calls = []
    original = loaded.model.encode_text

    def counting(tokens, *args, **kwargs):
        calls.append(tokens.shape[0])
        return original(tokens, *args, **kwargs)

    monkeypatch.setattr(loaded.model, "encode_text", counting)
    first = text.text_embeddings(loaded, [["cat"], ["dog"]])
    again = text.text_embeddings(loaded, [["dog"], ["cat"], ["bird"]])
    assert calls == [2, 1]
    torch.testing.assert_close(again[1], first[0])
    text.text_embeddings(loaded, [["dog"]], templates="ensemble")
    assert calls == [2, 1, 80]  # templates are part of the key


def test_synonyms_mean_and_duplicates(loaded):
    single = text.text_embeddings(loaded, [["cat"], ["kitten"]])
    both = text.text_embeddings(loaded, [["cat", "kitten"], "cat", ["cat"]])
    torch.testing.assert_close(both[0], F.normalize(single.sum(0), dim=0))
    torch.testing.assert_close(both[1], both[2])
    flat, owner = text.synonym_embeddings(loaded, [["cat", "kitten"], ["dog"]])
    assert flat.shape == (3, 32) and owner.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    "prompts, message",
    [([], "no labels"), ([["cat"], []], "label 1"), ([[" "]], "label 0"), ("cat", "single string")],
)
def test_bad_prompts(loaded, prompts, message):
    with pytest.raises(ValueError, match=message):
        text.text_embeddings(loaded, prompts)


def test_bad_options(loaded):
    with pytest.raises(ValueError, match="templates"):
        text.text_embeddings(loaded, [["cat"]], templates="many")
    with pytest.raises(ValueError, match="synonym_embeddings"):
        text.text_embeddings(loaded, [["cat"]], combine="max")


def test_the_cache_is_bounded_and_drops_the_least_recently_used(loaded, monkeypatch):
    """Free-text prompts (interactive TextArea) must not grow the cache without end."""
    monkeypatch.setattr(text, "MAX_CACHED_PROMPTS", 8)
    calls: list[int] = []
    real = text._encode
    monkeypatch.setattr(text, "_encode", lambda model, sentences: calls.append(len(sentences)) or real(model, sentences))
    first = text.prompt_embeddings(loaded, ["keep"])
    for start in range(0, 40, 4):
        text.prompt_embeddings(loaded, [f"typed {i}" for i in range(start, start + 4)])
        text.prompt_embeddings(loaded, ["keep"])  # used again: the most recent, never evicted
    assert len(text._CACHE[loaded.model]) == 8
    assert sum(calls) == 1 + 40, "'keep' was encoded once"
    torch.testing.assert_close(text.prompt_embeddings(loaded, ["keep"]), first)
    text.prompt_embeddings(loaded, ["typed 0"])  # long evicted: encoded again
    assert sum(calls) == 42
    # A request with more prompts than the cache holds still gets every embedding.
    many = text.prompt_embeddings(loaded, [f"burst {i}" for i in range(20)])
    assert many.shape[0] == 20 and len(text._CACHE[loaded.model]) == 8
