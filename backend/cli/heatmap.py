"""`gem-labeler heatmap IMAGE --labels "cat,remote control"`: one overlay PNG per label (and raw maps).

The quickest way to see what the encoder sees, and to compare GEM with Grad-CAM and the baselines
(`patch`, `qk`, `vv`) on the same image: run it once per method into the same folder.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from backend.labeling.overlays import COLORMAPS, render_label_overlay
from backend.options import PRECISIONS

METHODS = ("gem", "gradcam", "patch", "qk", "vv")  # gem_engine.engine.METHODS, without importing torch here


class HeatmapUsageError(ValueError):
    """The command line asks for something that cannot work; the message says what."""


def parse_labels(raw: str) -> list[str]:
    """Return the labels of a comma list, stripped; raise HeatmapUsageError on empty or duplicate labels."""
    labels = [item.strip() for item in raw.split(",")]
    if not raw.strip() or any(not label for label in labels):
        raise HeatmapUsageError(f"--labels needs a comma list of non-empty labels, got {raw!r}")
    seen: set[str] = set()
    for label in labels:
        if label.lower() in seen:
            raise HeatmapUsageError(f"label {label!r} is given twice in --labels")
        seen.add(label.lower())
    return labels


def file_stems(labels: Sequence[str]) -> list[str]:
    """Return a distinct, filesystem-safe name for each label."""
    stems: list[str] = []
    for index, label in enumerate(labels):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "label"
        stems.append(slug if slug not in stems else f"{slug}_{index}")
    return stems


def write_heatmaps(
    image: Image.Image,
    maps: np.ndarray,
    labels: Sequence[str],
    out_dir: Path,
    *,
    prefix: str,
    raw: bool = False,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> list[Path]:
    """Write one overlay PNG per label (and its raw [h, w] map as .npy when asked); return the paths written."""
    from gem_engine.maps import normalize, upsample

    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[0] != len(labels):
        raise ValueError(f"expected maps of shape [{len(labels)}, h, w], got {maps.shape}")
    out_dir.mkdir(parents=True, exist_ok=True)
    heat = upsample(normalize(maps), image.size)
    written: list[Path] = []
    for index, (label, stem) in enumerate(zip(labels, file_stems(labels), strict=True)):
        png = out_dir / f"{prefix}.{stem}.png"
        render_label_overlay(image, heat[index], label, alpha=alpha, colormap=colormap).save(png, format="PNG")
        written.append(png)
        if raw:
            npy = out_dir / f"{prefix}.{stem}.npy"
            np.save(npy, maps[index])
            written.append(npy)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `heatmap` subcommand's arguments to a parser."""
    parser.add_argument("image", type=Path, help="image file (JPEG, PNG, WebP, BMP, TIFF, GIF)")
    parser.add_argument("--labels", required=True, help='comma list of labels, e.g. "cat,remote control"')
    parser.add_argument("--method", choices=METHODS, default="gem", help="heatmap method (default gem)")
    parser.add_argument("--out", type=Path, default=Path("heatmaps"), help="output folder (default ./heatmaps)")
    parser.add_argument("--raw", action="store_true", help="also write each label's raw map at grid resolution (.npy)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity over the image, 0..1 (default 0.5)")
    parser.add_argument("--colormap", choices=COLORMAPS, default="jet")
    parser.add_argument("--model", help="open_clip model name (default: MODEL_NAME)")
    parser.add_argument("--pretrained", help="open_clip tag or checkpoint file (default: MODEL_PRETRAINED)")
    parser.add_argument("--model-config", help="JSON open_clip config of a custom model (default: MODEL_CONFIG)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: DEVICE)")
    parser.add_argument("--precision", choices=PRECISIONS, help="auto, fp32, bf16, fp16 (GPU only) (default: PRECISION)")
    parser.add_argument("--input-mode", default="square", help="engine input mode (square as the GEM reference)")
    parser.add_argument("--image-size", type=int, help="engine input side in pixels (default 448; Grad-CAM: model's)")


def run(args: argparse.Namespace) -> int:
    """Run the `heatmap` subcommand; return the exit status (0 ok, 2 bad input, 3 model cannot load)."""
    from backend.labelstudio.images import ImageError, decode_image
    from backend.settings import Settings, SettingsError

    try:
        labels = parse_labels(args.labels)
        if not 0.0 <= args.alpha <= 1.0:
            raise HeatmapUsageError(f"--alpha must be in [0, 1], got {args.alpha}")
        settings = Settings.from_env()
        image = decode_image(args.image.read_bytes())
    except (HeatmapUsageError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImageError as exc:
        print(f"error: {args.image}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    from gem_engine.engine import HeatmapEngine
    from gem_engine.models import load_model

    try:
        loaded = load_model(
            args.model or settings.model_name,
            args.pretrained if args.pretrained is not None else (settings.model_pretrained or None),
            config_path=args.model_config or settings.model_config or None,
            device=args.device or settings.device,
            precision=args.precision or settings.precision,
            cache_dir=settings.model_cache_dir or None,
        )
    except Exception as exc:  # noqa: BLE001 - missing weights, unknown model: one clear line
        print(f"error: cannot load the model: {exc}", file=sys.stderr)
        return 3
    options = {"input_mode": args.input_mode}
    if args.image_size:
        options["image_size"] = args.image_size
    try:
        engine = HeatmapEngine(loaded, method=args.method, **options)
        maps = engine.heatmaps([image], [[label] for label in labels])[0]
    except ValueError as exc:  # e.g. GEM asked of a ResNet CLIP: the message names what supports it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prefix = f"{args.image.stem}.{args.method}"
    for path in write_heatmaps(
        image, maps, labels, args.out, prefix=prefix, raw=args.raw, alpha=args.alpha, colormap=args.colormap
    ):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `heatmap` as a standalone command; return the exit status."""
    parser = argparse.ArgumentParser(prog="gem-labeler heatmap", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
