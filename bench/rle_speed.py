"""Brush RLE speed: label_studio_sdk's mask2rle against gem_engine.rle.encode_rle, same process, same masks.

Usage: .venv/bin/python bench/rle_speed.py [--repeats N] [--sizes 1024x1024,4000x3000]
Prints one line per case, then every figure as one JSON line. Outputs are checked to be identical.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from gem_engine.rle import encode_rle


def simple_mask(width: int, height: int) -> np.ndarray:
    """One filled disc in the middle: a few thousand long runs."""
    yy, xx = np.ogrid[0:height, 0:width]
    radius = min(width, height) / 3
    return (xx - width / 2) ** 2 + (yy - height / 2) ** 2 <= radius**2


def complex_mask(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Hundreds of random discs plus 2% salt-and-pepper noise: many short runs, like a noisy heatmap."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:height, 0:width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(300):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.005, 0.05) * min(width, height)
        y0, y1 = max(0, int(cy - radius)), min(height, int(cy + radius) + 1)
        x0, x1 = max(0, int(cx - radius)), min(width, int(cx + radius) + 1)
        mask[y0:y1, x0:x1] |= (xx[:, x0:x1] - cx) ** 2 + (yy[y0:y1] - cy) ** 2 <= radius**2
    mask ^= rng.random((height, width)) < 0.02
    return mask


def best_time(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Return (fastest wall time in seconds over repeats, last output)."""
    best, output = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        output = function()
        best = min(best, time.perf_counter() - start)
    return best, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the fastest counts")
    parser.add_argument("--sizes", default="1024x1024,4000x3000", help="comma-separated WIDTHxHEIGHT")
    args = parser.parse_args()

    figures: dict[str, float] = {}
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        for kind, build in (("simple", simple_mask), ("complex", complex_mask)):
            mask = build(width, height)
            as_uint8 = mask.astype(np.uint8) * 255  # what the SDK needs; conversion not timed for it
            encode_rle(mask)  # warm-up: first-call costs are not what a worker pays per image
            ours_s, ours = best_time(lambda m=mask: encode_rle(m), args.repeats)
            sdk_s, sdk = best_time(lambda m=as_uint8: mask2rle(m), args.repeats)
            if ours != sdk:
                raise SystemExit(f"{kind} {size}: outputs differ, the benchmark is void")
            runs = int(np.count_nonzero(mask.ravel()[1:] != mask.ravel()[:-1])) + 1
            speedup = sdk_s / ours_s
            print(
                f"{kind:8s} {width}x{height}: runs {runs:>9d}  bytes {len(ours):>9d}  "
                f"sdk {sdk_s * 1000:9.1f} ms  ours {ours_s * 1000:8.2f} ms  speedup {speedup:7.1f}x"
            )
            key = f"{kind}_{width}x{height}"
            figures[f"{key}_ours_s"] = round(ours_s, 5)
            figures[f"{key}_sdk_s"] = round(sdk_s, 5)
            figures[f"{key}_speedup"] = round(speedup, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
