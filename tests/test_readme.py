"""What a newcomer needs from the README, found missing by a newcomer run (fresh clone, README only)."""

from __future__ import annotations

from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()


def section(title: str) -> str:
    """Return the text of the README section with this heading (up to the next heading of any level)."""
    start = README.index(f"{title}\n")
    following = [README.find(f"\n{mark} ", start + len(title)) for mark in ("#", "##", "###")]
    return README[start:min([i for i in following if i > 0] or [len(README)])]


def test_connecting_says_what_label_studio_on_the_same_host_needs_and_how_to_authenticate():
    text = section("### Connecting it in Label Studio")
    assert "LABEL_STUDIO_ML_BLOCK_LOCAL_IP=false" in text
    assert "Basic Authentication" in text and "X-Webhook-Secret" in text


def test_an_api_key_without_the_ui():
    text = section("### Connecting it in Label Studio")
    assert "--user-token" in text and "label-studio user --username" in text and "/api/token/" in text


def test_air_gapped_weights_name_the_model_too():
    text = section("### Air-gapped weights")
    assert "MODEL_NAME" in text and "MODEL_PRETRAINED" in text and "MODEL_CONFIG" in text


def test_prelabel_says_which_model_settings_it_uses():
    text = section("## Bulk pre-labeling and heatmaps")
    assert "**Which model settings it uses.**" in text and "model settings: method=" in text
    assert "this\nshell's" in text or "this shell's" in text


def test_security_defaults_are_documented():
    text = section("### Security")
    for word in ("127.0.0.1", "HOST=0.0.0.0", "WEBHOOK_SECRET", "ALLOW_UNAUTHENTICATED", "BASIC_AUTH_USER"):
        assert word in text, word
