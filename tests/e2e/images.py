"""Test images for the end-to-end suite: several sizes, and a JPEG whose EXIF orientation rotates it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF value: the stored pixels must be turned 90 degrees clockwise to display


@dataclass(frozen=True)
class ImageFile:
    """An image file written for a test and the size Label Studio shows it at."""

    path: Path
    natural_size: tuple[int, int]  # (width, height) after EXIF orientation
    stored_size: tuple[int, int]  # (width, height) of the pixels in the file


def scene(size: tuple[int, int], seed: int) -> Image.Image:
    """Return an RGB picture with a red disc and a blue square on a grey background."""
    width, height = size
    image = Image.new("RGB", size, (120 + seed % 40, 120, 120))
    draw = ImageDraw.Draw(image)
    r = max(4, min(width, height) // 5)
    cx, cy = width // 3, height // 2
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 30, 30))
    sx, sy = 2 * width // 3, height // 3
    draw.rectangle([sx - r, sy - r, sx + r, sy + r], fill=(30, 40, 220))
    return image


def write_images(folder: Path, sizes: list[tuple[int, int]], *, prefix: str = "img") -> list[ImageFile]:
    """Return PNG/JPEG images of the given sizes written to `folder` (alternating formats)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, size in enumerate(sizes):
        suffix = ".png" if i % 2 == 0 else ".jpg"
        path = folder / f"{prefix}-{i}-{size[0]}x{size[1]}{suffix}"
        scene(size, i).save(path, quality=95) if suffix == ".jpg" else scene(size, i).save(path)
        written.append(ImageFile(path, size, size))
    return written


def write_exif_rotated_jpeg(path: Path, stored_size: tuple[int, int] = (160, 96)) -> ImageFile:
    """Return a JPEG stored landscape with EXIF orientation 6, so it displays portrait (natural size swapped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    scene(stored_size, 7).save(path, quality=95, exif=exif)
    width, height = stored_size
    return ImageFile(path, (height, width), stored_size)


def write_broken_image(path: Path) -> Path:
    """Return the path of a file named like a JPEG whose bytes are not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg " * 8)
    return path
