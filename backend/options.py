"""Per-project options, each declared once in `OPTIONS`; everything that reads or shows one derives from it.

An `Option` says what it means, which environment variable holds the deployment default, which key of
Label Studio's `extra_params` and which `gem-labeler prelabel` flag override it, how a value is read and
checked (its `Kind`), what a change rebuilds (its `stage`) and whether it enters the model version. From
the table come:
- `Settings` fields (one per option, read from its variable) through `option_fields`;
- `ProjectOptions` (one project's values: the defaults, then its extra params or the command-line flags);
- the prelabel flags (`add_flags`, `flag_params`), `model_version`, and the README table of per-project
  options that tests/test_options.py checks.

A `preset` (backend/presets.py) fills the knobs it names wherever it is given (variables, extra params or
flags), except those given beside it. `pamr_iterations` "auto" is resolved here (`ProjectOptions.resolved`),
since it depends on the region mode; engine keys and the model version hold the resolved value.

A bad value raises ValueError naming the key it came under (variable, extra param or flag). Standard
library only: the HTTP service imports this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from backend.presets import NO_PRESET, PRESET_CHOICES, with_preset

PRODUCT = "gem-labeler"


def choices(values: tuple[str, ...]) -> str:
    """Return "'a', 'b' or 'c'" for an error message."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class WrongType(ValueError):
    """A raw value of the wrong type; the message names what is needed ("a number")."""


# --------------------------------------------------------------------------------------------------
# Kinds: how values are read from text (variables, flags) or JSON (extra params), and fingerprinted.


@dataclass(frozen=True)
class Kind:
    """How one type of option value is read and checked, and what of it enters the model version."""

    annotation: str  # type of the Settings and ProjectOptions fields
    # Raw text or JSON value -> the value; raises WrongType, or ValueError("must be ..."). Reading a value
    # it returned gives it back, so values can be read again from payloads and overrides.
    read: Callable[[Any], Any]
    fingerprint: Callable[[Any], Any] = lambda value: value
    # A value naming a file (weights, a model config) enters the model version by its content as well:
    # two different checkpoints that share a file name must not share predictions.
    by_content: bool = False


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise WrongType("text")
    return raw.strip()


def _file_name(value: str) -> str:
    return value.replace("\\", "/").rsplit("/", 1)[-1]


def text() -> Kind:
    """Return the kind of free text (a model name)."""
    return Kind("str", _text)


def file_or_name() -> Kind:
    """Return the kind of a name or a file path; a file enters the model version by its name and content
    digest (not its folder), so the same file mounted elsewhere gives the same version."""
    return Kind("str", _text, fingerprint=_file_name, by_content=True)


FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json")


def names_a_file(value: str) -> bool:
    """Return whether an option value is a file path (as `gem_engine.models` reads it), not a tag or a name."""
    return value.lower().endswith(FILE_SUFFIXES) or "/" in value or "\\" in value


def choice(*values: str) -> Kind:
    """Return the kind of one of `values`."""

    def read(raw: Any) -> str:
        value = _text(raw)
        if value not in values:
            raise ValueError(f"must be {choices(values)}, not {value!r}")
        return value

    return Kind("str", read)


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise WrongType("a number")
    try:
        value = float(raw)
    except ValueError:
        raise WrongType("a number") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {value}")
    return value


def number(low: float | None = None, high: float | None = None, *, high_open: bool = False,
           low_open: bool = False) -> Kind:
    """Return the kind of a finite number, in [low, high] (an end open when `low_open` / `high_open`) when given."""

    def read(raw: Any) -> float:
        value = _number(raw)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise ValueError(f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}, "
                             f"not {value}")
        return value

    return Kind("float", read)


def share_or_auto() -> Kind:
    """Return the kind of a share in (0, 1], or "auto" (the engine decides)."""
    share = number(0.0, 1.0, low_open=True)

    def read(raw: Any) -> float | str:
        if isinstance(raw, str) and raw.strip().lower() == "auto":
            return "auto"
        return share.read(raw)

    return Kind("float | str", read)


def whole(low: int, high: int, *, auto: bool = False) -> Kind:
    """Return the kind of a whole number in [low, high]; with `auto`, also "auto" (the engine decides)."""
    needed = "a whole number or 'auto'" if auto else "a whole number"

    def read(raw: Any) -> int | str:
        if auto and isinstance(raw, str) and raw.strip().lower() == "auto":
            return "auto"
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise WrongType(needed)
        try:
            value = float(raw)
        except ValueError:
            raise WrongType(needed) from None
        if not value.is_integer() or not low <= value <= high:
            raise ValueError(f"must be {'auto or ' if auto else ''}a whole number in [{low}, {high}], not {raw!r}")
        return int(value)

    return Kind("int | str" if auto else "int", read)


def otsu_or_fraction() -> Kind:
    """Return the kind of a threshold: "otsu" or a number in [0, 1], kept as the text it was given in."""

    def read(raw: Any) -> str:
        text_form = str(raw).strip()
        if text_form == "otsu":
            return text_form
        try:
            value = _number(raw)
        except ValueError:
            raise ValueError(f"must be 'otsu' or a number in [0, 1], not {raw!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be in [0, 1], not {value}")
        return text_form

    return Kind("str", read)


def names(allowed: tuple[str, ...]) -> Kind:
    """Return the kind of a non-empty selection of `allowed`: a comma list in text, or a JSON list."""

    def read(raw: Any) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = raw.split(",")
        if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
            raise WrongType("a comma list or a list of strings")
        items = tuple(item.strip().lower() for item in raw if item.strip())
        bad = [item for item in items if item not in allowed]
        if bad:
            raise ValueError(f"may only name {choices(allowed)}, not {bad}")
        if not items:
            raise ValueError(f"must name at least one of {choices(allowed)}")
        return items

    return Kind("tuple[str, ...]", read)


def prompt_list() -> Kind:
    """Return the kind of a list of free-text prompts: a comma list in text, or a JSON list (may be empty)."""

    def read(raw: Any) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = raw.split(",")
        if not isinstance(raw, list | tuple) or not all(isinstance(item, str) for item in raw):
            raise WrongType("a comma list or a list of strings")
        return tuple(item.strip() for item in raw if item.strip())

    return Kind("tuple[str, ...]", read)


def label_fractions() -> Kind:
    """Return the kind of per-label numbers in [0, 1]: "cat=0.3,dog=0.6" in text, or a JSON object."""
    fraction = number(0.0, 1.0)

    def read(raw: Any) -> tuple[tuple[str, float], ...]:
        if isinstance(raw, str):
            pairs = [item.rsplit("=", 1) for item in raw.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"must be label=number pairs separated by commas, not {raw!r}")
        elif isinstance(raw, Mapping):
            pairs = list(raw.items())
        elif isinstance(raw, list | tuple) and all(isinstance(p, list | tuple) and len(p) == 2 for p in raw):
            pairs = list(raw)
        else:
            raise WrongType("a JSON object of label: number, or label=number pairs")
        values: dict[str, float] = {}
        for label, number_text in pairs:
            label = str(label).strip()
            if not label:
                raise ValueError("names an empty label")
            try:
                values[label] = fraction.read(number_text)
            except ValueError:
                raise ValueError(f"gives {label!r} {number_text!r}, not a number in [0, 1]") from None
        return tuple(sorted(values.items()))

    return Kind("tuple[tuple[str, float], ...]", read)


# --------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Option:
    """One per-project option: where its values come from, how they are read, what they change."""

    name: str  # field of Settings and ProjectOptions
    env: str  # environment variable holding the deployment default
    flag: str  # `gem-labeler prelabel` flag
    kind: Kind
    default: Any  # the value when the variable is unset (as `kind.read` returns it)
    meaning: str  # one line, for the README and --help
    # What a new value rebuilds: the loaded model, the engine on it, or only the regions and results drawn
    # from the engine's maps. Workers keep one model per "model" values and one engine per "engine" values.
    stage: Literal["model", "engine", "regions", "output"]
    # How it enters the model version: spelled out, in the digest, or not at all (it never changes results).
    version: Literal["spelled", "hashed", "none"] = "hashed"
    param: str = ""  # key in extra_params when not `name`
    aliases: tuple[str, ...] = ()  # other extra_params keys accepted for it

    @property
    def key(self) -> str:
        """Return its extra_params key."""
        return self.param or self.name

    def read(self, raw: Any, source: str) -> Any:
        """Return the value `raw` stands for; raise ValueError naming `source` (a variable, key or flag)."""
        try:
            return self.kind.read(raw)
        except WrongType as exc:
            raise ValueError(f"{source}={raw!r} has the wrong type: {exc} needed") from None
        except ValueError as exc:
            raise ValueError(f"{source} {exc}") from None


OUTPUT_TYPES = ("brush", "polygon", "rectangle")
# The engine's user-facing methods and inputs (gem_engine's METHODS, INPUT_MODES and TEMPLATE_SETS; this
# module may not import the engine, tests/test_options.py checks that the lists agree).
METHOD_CHOICES = ("gem", "gradcam", "naclip", "sclip", "clearclip")
INPUT_MODES = ("square", "aspect", "sliding")
TEMPLATE_SETS = ("single", "ensemble")
PRESENCE_EVIDENCE = ("image", "map", "image+map", "none")  # gem_engine.presence.EVIDENCE
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # gem_engine.precision.CHOICES

# The model version lists the "spelled" options in table order, then a digest of the "hashed" ones in
# table order: keep the order of existing options (model_config comes last for that reason) so that
# versions made before stay the same, and add new options at the end.
OPTIONS: tuple[Option, ...] = (
    Option("method", "METHOD", "--method", choice(*METHOD_CHOICES), "gem",
           "heatmap method: `gem`, `gradcam`, `naclip`, `sclip` or `clearclip` (see Methods)",
           stage="engine", version="spelled"),
    Option("model_name", "MODEL_NAME", "--model", text(), "ViT-B-16",
           "open_clip model name (a ViT for GEM; ViT or ResNet for Grad-CAM)",
           stage="model", version="spelled", param="model", aliases=("model_name",)),
    Option("model_pretrained", "MODEL_PRETRAINED", "--pretrained", file_or_name(), "openai",
           "open_clip pretrained tag, or a local checkpoint file (.pt/.bin/.safetensors)",
           stage="model", version="spelled"),
    Option("region_mode", "REGION_MODE", "--region-mode", choice("semantic", "independent"), "semantic",
           "`semantic` (each pixel to its best label or background) or `independent` (per-label threshold)",
           stage="regions"),
    Option("threshold", "THRESHOLD", "--threshold", otsu_or_fraction(), "otsu",
           "threshold on each label's normalized heatmap: `otsu` or a number in [0, 1]", stage="regions"),
    Option("min_area", "MIN_AREA", "--min-area", number(0.0, 1.0, high_open=True), 0.001,
           "smallest region kept, as a fraction of the image area", stage="regions"),
    Option("score_threshold", "SCORE_THRESHOLD", "--score-threshold", number(), 0.0,
           "regions scoring below this are dropped", stage="regions"),
    Option("outputs", "OUTPUTS", "--outputs", names(OUTPUT_TYPES), OUTPUT_TYPES,
           "which result types (`brush`, `polygon`, `rectangle`) to produce when the label config has the "
           "control for them", stage="output"),
    Option("model_config", "MODEL_CONFIG", "--model-config", file_or_name(), "",
           "JSON open_clip model config registered under its file stem (custom models)", stage="model"),
    Option("image_size", "IMAGE_SIZE", "--image-size", whole(16, 2048, auto=True), "auto",
           "model input side in pixels (shorter side for `aspect` and `sliding`); `auto`: 448 for GEM and the "
           "other token methods, the model's own size for Grad-CAM", stage="engine"),
    Option("input_mode", "INPUT_MODE", "--input-mode", choice(*INPUT_MODES), "square",
           "how an image becomes model input: `square` (resized, as the GEM reference), `aspect` (shorter side "
           "to `image_size`, aspect kept) or `sliding` (windows of `image_size` over the aspect-kept image)",
           stage="engine"),
    Option("templates", "TEMPLATES", "--templates", choice(*TEMPLATE_SETS), "single",
           "prompt templates per label: `single` (\"a photo of a {}.\") or `ensemble` (CLIP's 80 ImageNet "
           "templates, averaged)", stage="engine"),
    Option("gem_blocks", "GEM_BLOCKS", "--gem-blocks", whole(1, 64, auto=True), "auto",
           "how many last blocks GEM modifies; `auto`: the reference's 6, or every block of a shallower model",
           stage="engine"),
    Option("pamr_iterations", "PAMR_ITERATIONS", "--pamr-iterations", whole(0, 50, auto=True), "auto",
           "PAMR mask-refinement iterations on the maps, any method (0: off); `auto`: 10 in `semantic` region "
           "mode, 0 in `independent` (what measured best, see Which method, measured)", stage="engine"),
    Option("presence", "PRESENCE", "--presence", choice(*PRESENCE_EVIDENCE), "image+map",
           "how labels are judged present before any mask: `image` (image embedding against the background "
           "prompts), `map` (map peaks against theirs), `image+map` (both averaged) or `none` (every label)",
           stage="regions"),
    Option("presence_threshold", "PRESENCE_THRESHOLD", "--presence-threshold", number(0.0, 1.0), 0.5,
           "a label is present when its presence probability reaches this", stage="regions"),
    Option("label_presence_thresholds", "LABEL_PRESENCE_THRESHOLDS", "--label-presence-thresholds",
           label_fractions(), (),
           "per-label presence thresholds overriding `presence_threshold`: `cat=0.3,dog=0.6` or a JSON object",
           stage="regions"),
    Option("background_prompts", "BACKGROUND_PROMPTS", "--background-prompts", prompt_list(), ("background",),
           "prompts of the background class: presence weighs each label against them, and in semantic mode "
           "a pixel closer to them than to every present label stays unlabeled", stage="regions"),
    Option("background_threshold", "BACKGROUND_THRESHOLD", "--background-threshold", number(0.0, 1.0), 0.0,
           "semantic mode: a pixel whose winning label's probability is below this stays unlabeled",
           stage="regions"),
    Option("logit_scale", "LOGIT_SCALE", "--logit-scale", number(0.0, 1000.0, low_open=True), 100.0,
           "semantic mode: the softmax scale over raw map values that makes the pixel probabilities",
           stage="regions"),
    Option("score_slope", "SCORE_SLOPE", "--score-slope", number(0.0, 100.0, low_open=True), 1.0,
           "region scores become sigmoid(score_slope * logit(score) + score_offset): what a calibration fits "
           "so that scores match how often regions are right (1 and 0 keep them)", stage="regions"),
    Option("score_offset", "SCORE_OFFSET", "--score-offset", number(-100.0, 100.0), 0.0,
           "see `score_slope`", stage="regions"),
    Option("precision", "PRECISION", "--precision", choice(*PRECISIONS), "auto",
           "model precision: `auto` (bf16 on a CPU with native bf16, else fp32; fp32 on GPU), `fp32`, `bf16` "
           "(CPU: vision tower only) or `fp16` (GPU only)",
           stage="model"),
    Option("window_size", "WINDOW_SIZE", "--window-size", whole(16, 2048, auto=True), "auto",
           "input_mode `sliding`: window edge in pixels; `auto`: `image_size` (the papers' protocol: 224 over a "
           "336 px shorter side)", stage="engine"),
    Option("window_stride", "WINDOW_STRIDE", "--window-stride", share_or_auto(), "auto",
           "input_mode `sliding`: step between windows as a share of the window (0.5: half a window, the papers' "
           "112 px for 224); `auto`: 2/3", stage="engine"),
    Option("max_side", "MAX_SIDE", "--max-side", whole(16, 4096), 1344,
           "input_mode `sliding`: the longer side of the resized image is capped at this many pixels (the shorter "
           "side then gets less than `image_size`)", stage="engine"),
    Option("preset", "PRESET", "--preset", choice(*PRESET_CHOICES), NO_PRESET,
           "a paper's evaluation protocol: `naclip`, `sclip` or `clearclip` sets the knobs it names (see "
           "Evaluation-protocol presets); a knob given beside it (same variables, extra params or flags) wins; "
           "`none`: no preset (a project's `none` keeps what the deployment's PRESET set)", stage="engine"),
)
# extra_params key (and alias) -> option
BY_KEY: dict[str, Option] = {key: o for o in OPTIONS for key in (o.key, *o.aliases)}

# `pamr_iterations` "auto", per region mode: PAMR where it measured better on the fixed-vocabulary bench
# (README "Which method, measured", 100 scenes, mIoU as a multiple of all-background, 6 / 36 labels: semantic
# 4.91x / 1.39x without, 5.89x / 1.45x with 10 iterations; independent 3.90x / 1.54x without, 5.14x / 1.44x
# with, a loss on the larger vocabulary). Resolved here, not by the engine, because the region mode decides.
AUTO_PAMR_ITERATIONS: dict[str, int] = {"semantic": 10, "independent": 0}


def spell(value: Any) -> str:
    """Return a value as an environment variable or a flag would hold it."""
    if isinstance(value, tuple):
        return ",".join(f"{item[0]}={item[1]:g}" if isinstance(item, tuple) else item for item in value)
    return str(value)


def option_fields(cls: type) -> type:
    """Add one field per option (default from the table) to a class about to become a dataclass."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for option in OPTIONS:
        annotations[option.name] = option.kind.annotation
        meaning = f"default of the per-project option `{option.key}` (see Per-project options)"
        setattr(cls, option.name, field(default=option.default,
                                        metadata={"env": option.env, "meaning": meaning, "option": option}))
    cls.__annotations__ = annotations
    return cls


# --------------------------------------------------------------------------------------------------
# One project's values


class OptionsError(ValueError):
    """A per-project option (Label Studio `extra_params`) has a value that cannot be used."""


@dataclass(frozen=True)
@option_fields
class ProjectOptions:
    """The options one project's predictions are made with: a field per entry of `OPTIONS`."""

    @classmethod
    def from_settings(cls, settings: Any, extra_params: Mapping[str, Any] | None = None) -> ProjectOptions:
        """Return the environment's defaults (`Settings`) overridden by a project's extra params.

        Raises OptionsError naming the first key that is unknown or holds a bad value.
        """
        base = cls(**{o.name: o.read(getattr(settings, o.name), o.env) for o in OPTIONS})
        options = base.with_params(extra_params or {})
        if options.precision == "fp16" and getattr(settings, "device", "") == "cpu":
            source = "precision" if "precision" in (extra_params or {}) else "PRECISION"
            raise OptionsError(f"{source}='fp16' runs on a GPU only, and DEVICE=cpu: use 'bf16', 'fp32' or 'auto'")
        return options

    def with_params(self, params: Mapping[str, Any]) -> ProjectOptions:
        """Return these options with `params` (extra_params keys; a later key for the same option wins) applied."""
        if not isinstance(params, Mapping):
            raise OptionsError("extra_params must be a JSON object")
        unknown = sorted(key for key in params if key not in BY_KEY)
        if unknown:
            raise OptionsError(f"unknown extra params {unknown}; known: {sorted(BY_KEY)}")
        changes: dict[str, Any] = {}
        for key, raw in params.items():
            option = BY_KEY[key]
            try:
                changes[option.name] = option.read(raw, key)
            except ValueError as exc:
                raise OptionsError(str(exc)) from None
        # A preset among the params fills its knobs, except those given beside it; one set in a layer below
        # (the environment) yields to the project's preset.
        return _check_combination(replace(self, **with_preset(changes)))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form (the `options` of a job payload)."""
        return {o.name: list(v) if isinstance(v := getattr(self, o.name), tuple) else v for o in OPTIONS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProjectOptions:
        """Return the options `to_dict` described; an option the dict lacks (older payload) takes its default."""
        return cls(**{o.name: o.read(data[o.name], o.name) for o in OPTIONS if o.name in data})

    def resolved(self, name: str) -> Any:
        """Return an option's value as predictions use it: `pamr_iterations` "auto" as its region mode's number
        (AUTO_PAMR_ITERATIONS); any other value as set (an "auto" that the engine resolves stays "auto")."""
        value = getattr(self, name)
        if name == "pamr_iterations" and value == "auto":
            return AUTO_PAMR_ITERATIONS[self.region_mode]
        return value

    def model_key(self) -> tuple[Any, ...]:
        """Return what decides which loaded model serves these options."""
        return tuple(getattr(self, o.name) for o in OPTIONS if o.stage == "model")

    def engine_key(self) -> tuple[Any, ...]:
        """Return what decides which engine serves these options: the model key, then the engine's options
        as they run (so "auto" PAMR in two region modes gets two engines)."""
        return self.model_key() + tuple(self.resolved(o.name) for o in OPTIONS if o.stage == "engine")


def _check_combination(options: ProjectOptions) -> ProjectOptions:
    """Return `options`, or raise OptionsError when two of them cannot work together."""
    if options.presence != "none" and not options.background_prompts:
        raise OptionsError(f"presence={options.presence!r} weighs labels against the background prompts: give at "
                           "least one in background_prompts, or set presence='none'")
    if options.method == "gradcam" and options.input_mode != "square":
        raise OptionsError(f"input_mode={options.input_mode!r} does not work with method='gradcam': Grad-CAM runs on "
                           "square inputs at the model's own size; use input_mode='square'")
    return options


class ContentUnknown(ValueError):
    """The model version needs the content digest of a file (weights, model config) nobody has supplied."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__(f"the content digest of {', '.join(paths)} is not known")
        self.paths = paths


def content_files(options: ProjectOptions) -> list[str]:
    """Return the files whose content enters the model version (weights and config files), in table order."""
    values = [getattr(options, o.name) for o in OPTIONS if o.kind.by_content and o.version != "none"]
    return list(dict.fromkeys(v for v in values if v and names_a_file(v)))


def model_version(options: ProjectOptions, contents: Mapping[str, str] | None = None) -> str:
    """Return the stable version string of predictions made with `options`: the product, the spelled-out
    options (method, model, weights file or tag), and a digest of the others that change results and of
    the content of every file among them (`contents`: file path -> content digest; ContentUnknown when
    one is missing)."""
    # Resolved values: the version says what ran ("auto" PAMR and an explicit 10 in semantic mode are one version).
    spelled = [o.kind.fingerprint(options.resolved(o.name)) or "none" for o in OPTIONS if o.version == "spelled"]
    hashed = [o.kind.fingerprint(options.resolved(o.name)) for o in OPTIONS if o.version == "hashed"]
    files = content_files(options)
    if files:  # only then: versions of tag-based options stay what they were
        contents = contents or {}
        missing = [path for path in files if not contents.get(path)]
        if missing:
            raise ContentUnknown(missing)
        hashed = [*hashed, {"content": [contents[path] for path in files]}]
    digest = hashlib.sha256(json.dumps(hashed).encode()).hexdigest()[:8]
    return "-".join([PRODUCT, *spelled, digest])


# --------------------------------------------------------------------------------------------------
# Command-line flags of `gem-labeler prelabel`


def add_flags(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """Add one flag per option; its value stays text until `flag_params` reads it."""
    for option in OPTIONS:
        group.add_argument(option.flag, dest=option.name,
                           help=f"{option.meaning.replace('`', '')} (default: {option.env})")


def flag_params(args: argparse.Namespace) -> dict[str, Any]:
    """Return the options given as flags, read, by extra_params key; raise ValueError naming a bad flag."""
    given = [(o, getattr(args, o.name)) for o in OPTIONS if getattr(args, o.name, None) is not None]
    return {o.key: o.read(raw, o.flag) for o, raw in given}

