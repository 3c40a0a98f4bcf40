"""Real image files for the API tests, made in memory: odd-but-valid variants and bad ones."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

# One definition of each, shared with the unit tests (re-exported for the API tests).
from tests.images import encode, png_bomb  # noqa: F401


def _exif_rotated_png(img: Image.Image) -> bytes:
    """Pixels stored turned 90°, EXIF Orientation=6 says how to turn them back."""
    stored = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "PNG", exif=exif)


def _animated_gif(first: Image.Image, other: Image.Image) -> bytes:
    frames = [first.convert("P"), other.convert("P"), other.convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def lossless_variants(digit: Image.Image, other: Image.Image) -> dict[str, bytes]:
    """Same pixels as ``digit`` after preprocessing, in modes and containers people upload."""
    rgb = digit.convert("RGB")
    wide = Image.fromarray(np.asarray(digit, dtype=np.uint16) * 257)
    rgba = rgb.convert("RGBA")
    return {
        "grayscale_png": encode(digit, "PNG"),
        "rgb_png": encode(rgb, "PNG"),
        "rgba_png": encode(rgba, "PNG"),
        "palette_png": encode(digit.convert("P"), "PNG"),
        "cmyk_tiff": encode(rgb.convert("CMYK"), "TIFF"),
        "16bit_png": encode(wide, "PNG"),
        "exif_rotated_png": _exif_rotated_png(digit),
        "animated_gif_first_frame": _animated_gif(digit, other),
        "bmp": encode(rgb, "BMP"),
        "webp_lossless": encode(rgb, "WEBP", lossless=True),
    }


def lossy_variants(digit: Image.Image) -> dict[str, bytes]:
    """Re-encoded or resampled versions: the label must survive, the bits need not."""
    big = digit.resize((6000, 6000), Image.Resampling.NEAREST)
    return {
        "rgb_jpeg": encode(digit.convert("RGB").resize((64, 64)), "JPEG", quality=95),
        "cmyk_jpeg": encode(digit.convert("RGB").resize((64, 64)).convert("CMYK"), "JPEG"),
        "huge_jpeg_36mp": encode(big, "JPEG", quality=90),
    }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def gif_bomb() -> bytes:
    """A GIF whose logical screen and frame declare 65535×65535 pixels."""
    header = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 65535, 65535) + b"\x00"
    return header + frame + b"\x02\x02\x44\x01\x00" + b"\x3b"


def truncated_png(digit: Image.Image) -> bytes:
    data = encode(digit.resize((256, 256)).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    """A JPEG start-of-image marker followed by noise."""
    rng = np.random.default_rng(0)
    return b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()


def corrupt_png_header() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDX" + b"\x00" * 40
