"""Generate a photo-like ImageFolder: N JPEGs of 256–640 px (decode cost is what matters).

Deterministic: the same arguments give byte-identical files.
Usage: python bench/make_photos.py OUT_DIR [--images 2000] [--classes 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(label: int, index: int, classes: int) -> Image.Image:
    """Smooth noise background plus a class-coloured shape whose size and place vary."""
    rng = np.random.default_rng(label * 1_000_003 + index)
    w, h = (int(v) for v in rng.integers(256, 641, 2))
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    hue = 360 * label // classes
    color = Image.new("RGB", (1, 1), f"hsv({hue},90%,90%)").getpixel((0, 0))
    r = int(rng.integers(min(w, h) // 6, min(w, h) // 3))
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
    box = (cx - r, cy - r, cx + r, cy + r)
    (draw.ellipse if label % 2 else draw.rectangle)(box, fill=color)
    return img.filter(ImageFilter.GaussianBlur(1))


def make_photos(out: Path, images: int = 2000, classes: int = 4) -> Path:
    for i in range(images):
        label = i % classes
        folder = out / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        photo(label, i, classes).save(folder / f"{i:06d}.jpg", quality=88)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=4)
    args = parser.parse_args()
    make_photos(args.out, args.images, args.classes)
    print(f"wrote {args.images} JPEGs to {args.out}")
