"""Label config to vocabulary: controls, prompts, background labels, and errors naming what is missing."""

from __future__ import annotations

import pytest

from backend.labelstudio.label_config import LabelConfigError, Vocabulary, parse_label_config

CONFIG = """
<View>
  <Image name="image" value="$img"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Cat" predicted_values="cat, kitten"/>
    <Label value="Dog" prompt="a photo of a dog" predicted_values="dog"/>
    <Label value="Background"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="Car"/>
    <Label value="Cat"/>
  </PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="Car"/></RectangleLabels>
  <TextArea name="prompt" toName="image"/>
  <Choices name="other" toName="image"><Choice value="x"/></Choices>
</View>
"""


def test_controls_labels_and_prompts():
    vocab = parse_label_config(CONFIG)
    assert vocab.image_name == "image" and vocab.image_key == "img"
    assert [(c.kind, c.from_name, c.labels) for c in vocab.controls] == [
        ("brush", "brush", ("Cat", "Dog", "Background")),
        ("polygon", "poly", ("Car", "Cat")),
        ("rectangle", "box", ("Car",)),
    ]
    assert vocab.labels == ("Cat", "Dog", "Background", "Car")
    assert vocab.prompts_for(["Cat", "Dog", "Car"]) == [["cat", "kitten"], ["a photo of a dog"], ["Car"]]
    assert vocab.background == ("Background",)
    assert vocab.foreground == ("Cat", "Dog", "Car")
    assert vocab.text_inputs == ("prompt",)


def test_round_trip_and_hash_ignores_cosmetics():
    vocab = parse_label_config(CONFIG)
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    restyled = CONFIG.replace("<View>", '<View style="padding: 4px">').replace("  ", "    ")
    assert parse_label_config(restyled).config_hash() == vocab.config_hash()
    changed = CONFIG.replace('prompt="a photo of a dog"', 'prompt="a puppy"')
    assert parse_label_config(changed).config_hash() != vocab.config_hash()


def test_controls_on_another_object_are_ignored():
    config = """<View><Image name="a" value="$a"/><Image name="b" value="$b"/>
      <BrushLabels name="x" toName="b"><Label value="Cat"/></BrushLabels>
      <PolygonLabels name="y" toName="a"><Label value="Dog"/></PolygonLabels></View>"""
    vocab = parse_label_config(config)
    assert vocab.image_name == "a" and vocab.labels == ("Dog",)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        ('<View><Text name="t" value="$t"/></View>', "no <Image>"),
        ('<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>',
         'no BrushLabels, PolygonLabels or RectangleLabels with toName="i"'),
        ('<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i"/></View>', "has no <Label>"),
        ('<View><Image name="i" value="http://x/y.png"/><BrushLabels name="b" toName="i">'
         '<Label value="a"/></BrushLabels></View>', 'value="\\$key"'),
        ('<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i">'
         '<Label value="Background"/></BrushLabels></View>', "every label names the background"),
    ],
)
def test_bad_configs_say_what_is_missing(config, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(config)
