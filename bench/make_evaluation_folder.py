"""Write a folder that `gem-labeler evaluate --folder` reads, from the project's synthetic scenes.

Held-out scenes of tests/scenes.py (the seed bench/localization.py holds out from the fixture model's
training) -> OUT/images/NNN.png, OUT/masks/NNN.png (pixel value = label index), OUT/labels.txt (line i
names value i, line 0 the background) and OUT/config.xml (a BrushLabels config with the 6 colour labels,
"red object" ...). Used for the README's example table:

    .venv/bin/python bench/make_evaluation_folder.py /tmp/eval-scenes --scenes 40

Prints what it wrote as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import scenes  # noqa: E402

HELD_OUT_SEED = 20240617  # bench/localization.py's: the fixture model never saw these scenes
LABELS = [scenes.mention(color, None) for color in scenes.COLORS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes.scenes(HELD_OUT_SEED, args.scenes, size=args.size)):
        mask = np.zeros((args.size, args.size), np.uint8)
        for obj in scene.objects:  # visible masks: later objects already cut out of earlier ones
            mask[obj.mask] = LABELS.index(scenes.mention(obj.color, None)) + 1
        scene.image.save(args.out / "images" / f"{index:03d}.png")
        Image.fromarray(mask, mode="L").save(args.out / "masks" / f"{index:03d}.png")
    (args.out / "labels.txt").write_text("\n".join(["background", *LABELS]) + "\n", encoding="utf-8")
    labels = "".join(f'<Label value="{label}"/>' for label in LABELS)
    (args.out / "config.xml").write_text(
        f'<View><Image name="image" value="$image"/>'
        f'<BrushLabels name="tag" toName="image">{labels}</BrushLabels></View>\n', encoding="utf-8")
    print(json.dumps({"folder": str(args.out), "scenes": args.scenes, "labels": LABELS}))


if __name__ == "__main__":
    main()
