"""Parity of PAMR (gem_engine/pamr.py, fp32) with an independent derivation (float64), on random inputs.

The derivation (tests/independent_methods.py) builds every pixel's neighbours and affinities in a
plain loop and iterates a dense row-stochastic matrix. Cases: random colour images (normal noise),
a grayscale one (three equal channels), the published dilations (8, 16) and Araslanov & Roth's
(1, 2, 4, 8, 12, 24), 10 iterations, 4 random maps. Negative control: the derivation with 9
iterations instead of 10; it must fail the tolerance. The JSON line last.

    .venv/bin/python bench/pamr_parity.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET = 1e-5
CASES = [  # name, (height, width), dilations, grayscale
    ("colour 48x64, dilations (8, 16)", (48, 64), (8, 16), False),
    ("colour 37x53, dilations (1, 2, 4, 8, 12, 24)", (37, 53), (1, 2, 4, 8, 12, 24), False),
    ("grayscale 56x40, dilations (8, 16)", (56, 40), (8, 16), True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from gem_engine.pamr import refine
    from tests import independent_methods as independent

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(11)
    diffs, first = {}, None
    for name, size, dilations, gray in CASES:
        image = torch.randn(1 if gray else 3, *size, generator=generator)
        image = image.expand(3, -1, -1) if gray else image
        maps = torch.randn(4, *size, generator=generator)
        ours = refine(image, maps, 10, dilations).numpy()
        expected = independent.pamr(image.numpy(), maps.numpy(), 10, dilations)
        diffs[name] = float(np.abs(ours - expected).max())
        print(f"{name:>46}: max |ours - independent| {diffs[name]:.2e} (maps std {float(maps.std()):.2f})")
        if first is None:
            first = (image, maps, dilations, ours)
    image, maps, dilations, ours = first
    fewer = independent.pamr(image.numpy(), maps.numpy(), 9, dilations)
    negative_diff = float(np.abs(ours - fewer).max())
    negative_fails = negative_diff > TARGET
    verdict = "FAILS the tolerance, as it must" if negative_fails else "PASSES the tolerance: the check is blind to it"
    print(f"negative control (9 iterations instead of 10) on {CASES[0][0]}: max diff {negative_diff:.2e} -> {verdict}")
    max_diff = max(diffs.values())
    print(f"target: max diff <= {TARGET:g}")
    print(json.dumps({
        "max_abs_diff": max_diff,
        "negative_control": "9 iterations instead of 10",
        "negative_control_diff": negative_diff,
        "negative_control_fails": negative_fails,
        "target": TARGET,
        "pass": max_diff <= TARGET and negative_fails,
    }))


if __name__ == "__main__":
    main()
