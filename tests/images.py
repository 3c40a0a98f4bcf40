"""Generators of real image files, good and bad, for the tests (no fixtures on disk)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def shape_image(label: int, size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB image whose class is visible: a bright square, disc or bar on noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = h / 2, w / 2, min(h, w) / 3
    if label == 0:
        mask = (abs(yy - cy) < r) & (abs(xx - cx) < r)
    elif label == 1:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    else:
        mask = abs(xx - cx) < r / 4
    arr[mask] = np.array([(220, 40, 40), (40, 220, 40), (40, 40, 220)][label % 3], np.uint8)
    return Image.fromarray(arr, "RGB")


def write_shapes_dataset(root: Path, per_class: int = 20, classes: int = 3) -> Path:
    """An ImageFolder of JPEGs of mixed sizes (the user-photo path)."""
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (40 + 7 * i % 60, 36 + 5 * i % 50)
            data = encode(shape_image(label, size, seed=label * 1000 + i), "JPEG", quality=90)
            (folder / f"img_{i:03d}.jpg").write_bytes(data)
    return root


def png_bomb(width: int = 30000, height: int = 30000, rows: int = 4) -> bytes:
    """A few hundred bytes declaring ``width``×``height`` grayscale pixels (900 MB decoded).

    Only ``rows`` rows of data follow the header; ``rows=height`` makes a complete file,
    so a decoder that does not refuse it really writes (and keeps resident) every pixel.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * (width + 1) * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def exif_rotated_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    """JPEG whose pixels are stored sideways with an EXIF Orientation tag to fix them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def odd_images(base: Image.Image) -> dict[str, bytes]:
    """Valid images in every awkward mode a user folder contains."""
    rgba = base.convert("RGBA")
    arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    frames = [base.convert("P"), base.convert("P").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "rgba.png": encode(rgba, "PNG"),
        "palette.png": encode(base.convert("P"), "PNG"),
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "gray16.png": encode(Image.fromarray(arr16), "PNG"),
        "gray.png": encode(base.convert("L"), "PNG"),
        "animated.gif": gif.getvalue(),
    }


def bad_files(good_jpeg: bytes) -> dict[str, bytes]:
    """Files named like images that are not usable ones, keyed by the expected reason."""
    return {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n" * 10,
        "bomb.png": png_bomb(),
        "tiny.png": encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
    }
