"""Out-of-distribution evaluation sets, generated (no downloads), as encoded image files.

Why generated: the detector's detection rate must be measured on every ``evaluate`` run,
for the digits default *and* a user's own photo model, without fetching anything. Why
encoded files (PNG/JPEG bytes, at their own sizes): the API scores uploads, so the sets go
through the same :func:`imgclf.data.preprocessing.preprocess` and the same size/format checks
as a real upload would. Deterministic: the same seed and test pixels give the same bytes.

The kinds follow what users actually send a classifier that was not made for them:
noise, blank and saturated frames, corrupted versions of the model's own test images
(inverted, heavily blurred), textures (brick walls, stripes, wood), photo-like scenes and
images of other (generated) data sets. None is used to *set* the threshold — that comes
from the in-distribution test split alone — they only measure it.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Images per set: enough for a stable false-accept rate (±4 % at 1 σ), cheap to score
# (the whole family costs well under a second on 2 cores).
PER_SET = 48


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=88)
    else:
        img.save(buf, "PNG", compress_level=1)  # speed over size: never stored
    return buf.getvalue()


def _size(rng: np.random.Generator, lo: int = 48, hi: int = 320) -> tuple[int, int]:
    w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
    return w, h


def noise(rng: np.random.Generator, _: np.ndarray) -> Image.Image:
    """Uniform random noise, colour or gray, at a random size."""
    w, h = _size(rng, 32, 256)
    if rng.random() < 0.5:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")


def blank(rng: np.random.Generator, _: np.ndarray) -> Image.Image:
    """One flat colour: black, white, gray or any colour (a lens cap, an empty scan)."""
    choice = int(rng.integers(4))
    value = [(0, 0, 0), (255, 255, 255), (128, 128, 128)][choice] if choice < 3 else None
    value = value or tuple(int(v) for v in rng.integers(0, 256, 3))
    return Image.new("RGB", _size(rng, 16, 384), value)


def saturated(rng: np.random.Generator, _: np.ndarray) -> Image.Image:
    """Blown-out frames: large blocks of pure 0/255 channels (over-exposed, clipped)."""
    w, h = _size(rng, 32, 384)
    blocks = rng.integers(0, 2, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)) * 255
    if rng.random() < 0.5:
        blocks[..., :] = blocks[..., :1]  # black-and-white
    return Image.fromarray(blocks.astype(np.uint8), "RGB").resize((w, h), Image.Resampling.NEAREST)


def inverted(rng: np.random.Generator, test: np.ndarray) -> Image.Image:
    """A test image of the model's own data with its values inverted (a negative)."""
    return _from_pixels(255 - test[int(rng.integers(len(test)))])


def blurred(rng: np.random.Generator, test: np.ndarray) -> Image.Image:
    """A test image blurred until its content is gone (out of focus, motion)."""
    img = _from_pixels(test[int(rng.integers(len(test)))])
    side = max(img.size)
    big = img.resize((side * 4, side * 4), Image.Resampling.BILINEAR)
    return big.filter(ImageFilter.GaussianBlur(side * 4 * float(rng.uniform(0.25, 0.5))))


def textures(rng: np.random.Generator, _: np.ndarray) -> Image.Image:
    """Brick walls, stripes, checkerboards and wood grain (what a mis-aimed camera sees)."""
    w, h = _size(rng, 64, 320)
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == 0:  # bricks: mortar lines, every other row offset by half a brick
        bh, bw = int(rng.integers(12, 40)), int(rng.integers(30, 90))
        row = (yy // bh).astype(int)
        mortar = (yy % bh < 3) | ((xx + (row % 2) * bw / 2) % bw < 3)
        base = np.array([int(rng.integers(120, 200)), int(rng.integers(40, 90)), 40.0])
        px = base + rng.normal(0, 18, (h, w, 3))
        px[mortar] = rng.integers(170, 220)
    elif kind == 1:  # stripes at an angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        px = np.repeat((127 + 120 * wave)[..., None], 3, -1)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(4, 48))
        px = np.repeat(((((xx // cell) + (yy // cell)) % 2) * 255)[..., None], 3, -1)
    else:  # wood grain: rings distorted by smooth noise
        rings = np.hypot(xx - w * rng.uniform(-1, 2), yy - h * rng.uniform(-1, 2))
        grain = np.sin(rings / rng.uniform(3, 10) + rng.normal(0, 0.3, (h, w)))
        px = np.stack([150 + 50 * grain, 100 + 35 * grain, 50 + 20 * grain], -1)
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8), "RGB")


def photos(rng: np.random.Generator, _: np.ndarray) -> Image.Image:
    """Photo-like scenes (as bench/make_photos.py): smooth colour fields and an object."""
    w, h = _size(rng, 160, 320)
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    r = int(rng.integers(min(w, h) // 6, min(w, h) // 3))
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
    box = (cx - r, cy - r, cx + r, cy + r)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return img.filter(ImageFilter.GaussianBlur(1))


def other_datasets(rng: np.random.Generator, _: np.ndarray) -> Image.Image:
    """Images of other generated data sets (bench/make_datasets.py's kinds): a ring or disc
    on gray noise (25 px), or a coloured square or disc on textured noise (32 px)."""
    if rng.random() < 0.5:
        img = Image.fromarray(rng.integers(0, 150, (25, 25), dtype=np.uint8), "L")
        r, shade = int(rng.integers(4, 9)), int(rng.integers(120, 220))
        cx, cy = (int(v) for v in rng.integers(8, 17, 2))
        draw = ImageDraw.Draw(img)
        box = (cx - r, cy - r, cx + r, cy + r)
        draw.ellipse(box, fill=shade) if rng.random() < 0.5 else draw.ellipse(box, outline=shade)
        return img
    img = Image.fromarray(rng.integers(0, 130, (32, 32, 3), dtype=np.uint8), "RGB")
    r = int(rng.integers(6, 11))
    cx, cy = (int(v) for v in rng.integers(r, 32 - r, 2))
    color = tuple(int(v) for v in rng.integers(40, 230, 3))
    draw = ImageDraw.Draw(img)
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape((cx - r, cy - r, cx + r, cy + r), color)
    return img


def _from_pixels(pixels: np.ndarray) -> Image.Image:
    """A model-input array ``(H, W, C)`` as an image (gray for one channel)."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


# name → (generator, file format). JPEG where real files of that kind are JPEGs.
GENERATORS: dict[str, tuple[Callable[[np.random.Generator, np.ndarray], Image.Image], str]] = {
    "noise": (noise, "PNG"),
    "blank": (blank, "PNG"),
    "saturated": (saturated, "PNG"),
    "inverted": (inverted, "PNG"),
    "blurred": (blurred, "PNG"),
    "textures": (textures, "JPEG"),
    "photos": (photos, "JPEG"),
    "other_datasets": (other_datasets, "PNG"),
}


def ood_sets(test_pixels: np.ndarray, seed: int, per_set: int = PER_SET) -> dict[str, list[bytes]]:
    """Every set as encoded files; ``test_pixels`` (uint8 NHWC) feed the corruption sets."""
    out: dict[str, list[bytes]] = {}
    for k, (name, (make, fmt)) in enumerate(sorted(GENERATORS.items())):
        rng = np.random.default_rng([seed, k])
        out[name] = [_encode(make(rng, test_pixels), fmt) for _ in range(per_set)]
    return out
