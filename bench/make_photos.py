"""Generate a photo-like ImageFolder: N JPEGs of 256–640 px (decode cost is what matters).

Deterministic: the same arguments give byte-identical files.
Usage: python bench/make_photos.py OUT_DIR [--images 2000] [--classes 4]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(label: int, index: int, classes: int, size: tuple[int, int] | None = None) -> Image.Image:
    """Smooth noise background plus a class-coloured shape whose size and place vary.

    ``size``: a fixed (width, height) instead of a random one in 256–640 px.
    """
    rng = np.random.default_rng(label * 1_000_003 + index)
    w, h = (int(v) for v in rng.integers(256, 641, 2))
    w, h = size or (w, h)
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


# The benchmark's real-size inputs: (name, width, height, format, grain). The grain (pixel
# noise, sigma) brings the file sizes close to real photos of that size: a 600x400
# JPEG of ~70 KB, a phone's 4000x3000 of ~1.3 MB, a 512x512 PNG of ~420 KB.
BENCH_INPUTS = (
    ("jpeg_600x400", 600, 400, "JPEG", 10.0),
    ("jpeg_1920x1080", 1920, 1080, "JPEG", 4.0),
    ("jpeg_4000x3000", 4000, 3000, "JPEG", 2.0),
    ("png_512x512", 512, 512, "PNG", 3.0),
)


def sized_photo(width: int, height: int, seed: int, grain: float) -> Image.Image:
    """A photo-like RGB image of exactly ``width`` x ``height``: shapes, blur and sensor grain."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 24 + 1, width // 24 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(12):
        r = int(rng.integers(side // 20, side // 5))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            (cx - r, cy - r, cx + r, cy + r), fill=color
        )
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)
    arr += rng.normal(0.0, grain, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def bench_inputs(out: Path) -> dict[str, Path]:
    """Write :data:`BENCH_INPUTS` into ``out`` (deterministic; kept when already there)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, (name, width, height, fmt, grain) in enumerate(BENCH_INPUTS):
        path = out / f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}"
        if not path.is_file():
            options = {"quality": 88} if fmt == "JPEG" else {}
            sized_photo(width, height, seed=i, grain=grain).save(path, fmt, **options)
        files[name] = path
    return files


def make_photos(
    out: Path, images: int = 2000, classes: int = 4, size: tuple[int, int] | None = None
) -> Path:
    for i in range(images):
        label = i % classes
        folder = out / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        photo(label, i, classes, size).save(folder / f"{i:06d}.jpg", quality=88)
    return out


def _write_part(args: tuple[Path, int, int, int, tuple[int, int]]) -> None:
    out, start, stop, classes, size = args
    for i in range(start, stop):
        label = i % classes
        photo(label, i, classes, size).save(out / f"class_{label}" / f"{i:06d}.jpg", quality=88)


def make_photos_parallel(
    out: Path, images: int, classes: int = 4, size: tuple[int, int] = (640, 480)
) -> Path:
    """:func:`make_photos` with a fixed size, in all cores (the same bytes); kept when
    ``out`` already holds ``images`` files (big benchmark sets are reused)."""
    from concurrent.futures import ProcessPoolExecutor

    if out.is_dir() and sum(1 for _ in out.rglob("*.jpg")) == images:
        return out
    for label in range(classes):
        (out / f"class_{label}").mkdir(parents=True, exist_ok=True)
    step = 250
    parts = [(out, i, min(i + step, images), classes, size) for i in range(0, images, step)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_part, parts))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=4)
    args = parser.parse_args()
    make_photos(args.out, args.images, args.classes)
    print(f"wrote {args.images} JPEGs to {args.out}")


def variants(img: Image.Image, seed: int) -> dict[str, Image.Image]:
    """Near-identical copies of ``img``, as a camera roll or a scraper makes them:
    re-encoded harder, resized to half, cropped 2 % and 5 % a side, brightened 15 %, and
    a burst: three more frames, each shifted 1 % of the side further (3 % in all) with
    fresh sensor noise. Deterministic per seed."""
    from PIL import ImageEnhance

    w, h = img.size
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=55)
    out = {
        "reencoded": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        "half": img.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "crop2": img.crop((round(0.02 * w), round(0.02 * h), round(0.98 * w), round(0.98 * h))),
        "crop5": img.crop((round(0.05 * w), round(0.05 * h), round(0.95 * w), round(0.95 * h))),
        "bright15": ImageEnhance.Brightness(img).enhance(1.15),
    }
    for step in (1, 2, 3):
        dx, dy = round(0.01 * step * w), round(0.01 * step * h)
        frame = img.crop((dx, dy, w, h)).resize((w, h), Image.Resampling.BILINEAR)
        noisy = np.asarray(frame, np.float32) + rng.normal(0, 4, (h, w, 3)).astype(np.float32)
        out[f"burst{step}"] = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    return out


# The copies the near-duplicate split is checked on (bench/bench_near_dups.py): the crops
# are measured there too, but a global 64-bit hash finds them only in part (its table).
SPLIT_KINDS = ("reencoded", "half", "bright15", "burst1", "burst2", "burst3")


def make_bursts(
    out: Path,
    sources: int = 100,
    distinct: int = 200,
    classes: int = 4,
    conflicts: int = 0,
    kinds: tuple[str, ...] | None = None,
) -> tuple[Path, dict[str, list[str]]]:
    """An ImageFolder of near-duplicate groups plus distinct photos (640×480 JPEGs).

    Each of ``sources`` photos is written with its :func:`variants` (only ``kinds`` if
    given) in its class; the first ``conflicts`` sources have their last burst frame
    filed under the next class (the same scene with two labels). Returns the folder and
    source name → relative paths (the original first).
    """
    groups: dict[str, list[str]] = {}
    for i in range(sources + distinct):
        label = i % classes
        base = photo(label, 500_000 + i, classes, (640, 480))
        more = variants(base, i) if i < sources else {}
        copies = {"orig": base, **{k: v for k, v in more.items() if kinds is None or k in kinds}}
        paths = []
        for kind, img in copies.items():
            cls = (label + 1) % classes if kind == "burst3" and i < conflicts else label
            rel = f"class_{cls}/{i:05d}_{kind}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(out / rel, quality=88)
            paths.append(rel)
        groups[f"{i:05d}"] = paths
    return out, groups
