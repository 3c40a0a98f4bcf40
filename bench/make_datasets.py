"""Small ImageFolder datasets of different shapes, for testing defaults on "the user's data".

Why generated: the defaults must hold on data nobody tuned them on (issue 10), and the
benchmarks must be reproducible without downloads. Deterministic: the same name gives
byte-identical PNG files.

Usage: python bench/make_datasets.py OUT_DIR NAME [NAME …]   (names: see DATASETS)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _save(out: Path, label: str, index: int, pixels: np.ndarray) -> None:
    folder = out / label
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{index:05d}.png", optimize=False)


def two_class_25px(out: Path, per_class: int = 100) -> Path:
    """2 classes × ``per_class`` grayscale 25×25: a ring vs a filled disc, jittered, noisy.

    The shape of the issue's failing case (200 images, 2 classes, 25 px); flip- and
    small-rotation-invariant, so the README's light augmentation keeps labels valid.
    """
    for label in range(2):
        for i in range(per_class):
            rng = np.random.default_rng(10_007 * label + i)
            img = Image.fromarray(rng.integers(0, 150, (25, 25), dtype=np.uint8), "L")
            draw = ImageDraw.Draw(img)
            r = int(rng.integers(4, 9))
            cx, cy = (int(v) for v in rng.integers(12 - 4, 12 + 5, 2))
            box = (cx - r, cy - r, cx + r, cy + r)
            shade = int(rng.integers(120, 220))
            if label:
                draw.ellipse(box, fill=shade)
            else:
                draw.ellipse(box, outline=shade, width=1)
            _save(out, ["ring", "disc"][label], i, np.asarray(img))
    return out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).round().astype(np.uint8), d.target


def digits_noisy(out: Path) -> Path:
    """sklearn digits (8×8) with strong additive noise: a harder, still 10-class task."""
    images, labels = _digits()
    rng = np.random.default_rng(3)
    noisy = np.clip(images + rng.normal(0, 60, images.shape), 0, 255).astype(np.uint8)
    for i, (img, y) in enumerate(zip(noisy, labels, strict=True)):
        _save(out, str(y), i, img)
    return out


def digits_few(out: Path, per_class: int = 30) -> Path:
    """sklearn digits with only ``per_class`` images per class (300 images in all)."""
    images, labels = _digits()
    for y in range(10):
        for i in np.flatnonzero(labels == y)[:per_class]:
            _save(out, str(y), int(i), images[i])
    return out


def colors_10x32(out: Path, per_class: int = 60) -> Path:
    """10 classes of 32×32 RGB: 5 colours × {square, disc} on textured noise."""
    palette = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 40), (200, 40, 200)]
    for label in range(10):
        color, disc = palette[label % 5], label >= 5
        for i in range(per_class):
            rng = np.random.default_rng(7919 * label + i)
            img = Image.fromarray(rng.integers(0, 130, (32, 32, 3), dtype=np.uint8), "RGB")
            draw = ImageDraw.Draw(img)
            r = int(rng.integers(6, 11))
            cx, cy = (int(v) for v in rng.integers(r, 32 - r, 2))
            jitter = rng.integers(-30, 31, 3)
            fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(color, jitter, strict=True))
            box = (cx - r, cy - r, cx + r, cy + r)
            (draw.ellipse if disc else draw.rectangle)(box, fill=fill)
            _save(out, f"c{label}", i, np.asarray(img))
    return out


def photos_64(out: Path) -> Path:
    """bench/make_photos.py: 4 classes × 100 photo-like JPEGs (256–640 px), used at 64 px."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from make_photos import make_photos

    return make_photos(out, images=400, classes=4)


DATASETS: dict[str, Callable[[Path], Path]] = {
    "two_class_25px": two_class_25px,
    "digits_noisy": digits_noisy,
    "digits_few": digits_few,
    "colors_10x32": colors_10x32,
    "photos_64": photos_64,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("names", nargs="+", choices=sorted(DATASETS))
    args = parser.parse_args()
    for name in args.names:
        DATASETS[name](args.out / name)
        print(f"{args.out / name}")


if __name__ == "__main__":
    main()
