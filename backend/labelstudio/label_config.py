"""Label Studio label config to the vocabulary the engine is asked about.

The first `Image` object tag is the image; every `BrushLabels`, `PolygonLabels` and
`RectangleLabels` control pointing to it is an output. A label's prompt is its name, unless the
`<Label>` has a `prompt="..."` attribute (one free-text prompt) or `predicted_values="a,b"` (a comma
list of synonyms); `prompt` wins when both are present. Labels named like background
(`BACKGROUND_NAMES`) are the background class, not prompted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

OUTPUT_KINDS = {"BrushLabels": "brush", "PolygonLabels": "polygon", "RectangleLabels": "rectangle"}
PROMPT_ATTR = "prompt"
# The same names gem_engine.regions treats as background (not imported: the API process stays light).
BACKGROUND_NAMES = frozenset({"background", "bg", "_background_", "void", "nothing", "unlabeled", "unlabelled"})


class LabelConfigError(ValueError):
    """The label config cannot be used: the message names what is missing or wrong."""


@dataclass(frozen=True)
class OutputControl:
    """One control tag the backend produces results for."""

    kind: str  # "brush" | "polygon" | "rectangle"
    from_name: str
    to_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """What a project asks for: the image, its output controls, labels and their prompts."""

    image_name: str
    image_key: str  # key in task["data"] holding the image URL
    controls: tuple[OutputControl, ...]
    labels: tuple[str, ...]  # every label of every output control, first occurrence order
    prompts: tuple[tuple[str, ...], ...]  # per label, its synonyms
    background: tuple[str, ...]  # labels that name the background class
    text_inputs: tuple[str, ...]  # TextArea controls on the image: free-text prompts in interactive mode

    @property
    def foreground(self) -> tuple[str, ...]:
        """Return the labels that are prompted (not background)."""
        return tuple(label for label in self.labels if label not in self.background)

    def prompts_for(self, labels: tuple[str, ...] | list[str]) -> list[list[str]]:
        """Return the synonyms of each of `labels`."""
        by_label = dict(zip(self.labels, self.prompts, strict=True))
        return [list(by_label[label]) for label in labels]

    def config_hash(self) -> str:
        """Return a short hash of everything that changes predictions (not of cosmetic config changes)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form, for jobs."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        """Return the vocabulary `to_dict` described."""
        return cls(
            image_name=data["image_name"],
            image_key=data["image_key"],
            controls=tuple(
                OutputControl(c["kind"], c["from_name"], c["to_name"], tuple(c["labels"])) for c in data["controls"]
            ),
            labels=tuple(data["labels"]),
            prompts=tuple(tuple(p) for p in data["prompts"]),
            background=tuple(data["background"]),
            text_inputs=tuple(data["text_inputs"]),
        )


def parse_label_config(config: str | None) -> Vocabulary:
    """Return the vocabulary of a label config; raise LabelConfigError naming what is missing."""
    if config is not None and not isinstance(config, str):
        raise LabelConfigError(f"the label config must be a string of XML, not {type(config).__name__}")
    if not config or not config.strip():
        raise LabelConfigError("the label config is empty: send the project's label_config")
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML error types
        raise LabelConfigError(f"the label config is not valid XML: {exc}") from None
    images = [obj for obj in interface.objects if obj.tag == "Image"]
    if not images:
        raise LabelConfigError("the label config has no <Image> object tag")
    image = images[0]
    value = str(image.value or "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f'<Image name="{image.name}"> needs value="$key" naming the task data field')

    controls: list[OutputControl] = []
    text_inputs: list[str] = []
    labels: list[str] = []
    prompts: dict[str, tuple[str, ...]] = {}
    for control in interface.controls:
        if image.name not in (control.to_name or []):
            continue
        if control.tag == "TextArea":
            text_inputs.append(control.name)
            continue
        kind = OUTPUT_KINDS.get(control.tag)
        if kind is None:
            continue
        names = list(control.labels)
        if not names:
            raise LabelConfigError(f'<{control.tag} name="{control.name}"> has no <Label> children')
        controls.append(OutputControl(kind, control.name, image.name, tuple(names)))
        for name in names:
            if name not in prompts:
                labels.append(name)
                prompts[name] = _prompts_of(name, control.labels_attrs[name].attr)
    if not controls:
        raise LabelConfigError(
            f'the label config has no BrushLabels, PolygonLabels or RectangleLabels with toName="{image.name}"'
        )
    background = tuple(label for label in labels if label.strip().lower() in BACKGROUND_NAMES)
    if len(background) == len(labels):
        raise LabelConfigError("every label names the background: add at least one object label")
    return Vocabulary(
        image_name=image.name,
        image_key=value[1:],
        controls=tuple(controls),
        labels=tuple(labels),
        prompts=tuple(prompts[label] for label in labels),
        background=background,
        text_inputs=tuple(text_inputs),
    )


def _prompts_of(label: str, attrs: dict[str, str]) -> tuple[str, ...]:
    prompt = (attrs.get(PROMPT_ATTR) or "").strip()
    if prompt:
        return (prompt,)
    synonyms = tuple(s.strip() for s in (attrs.get("predicted_values") or "").split(",") if s.strip())
    return synonyms or (label,)
