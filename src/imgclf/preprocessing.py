"""The one preprocessing function: bytes or a file → fixed-size uint8 array.

``prepare`` runs it on every training image, the API runs it on every upload,
``imgclf predict`` runs it on local files, so what is evaluated is exactly what
is served. Normalisation is *not* here: it is baked into the exported model,
whose input is the uint8 ``(N, H, W, C)`` array this function returns.

It never imports torch, so the serving image stays small.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Re-exported: callers catch ``preprocessing.ImageError`` next to ``preprocess``.
from imgclf.errors import ImageError as ImageError

# We enforce our own pixel limit *before* decoding (see ``max_pixels``);
# Pillow's global guard would otherwise warn or raise with a different message.
Image.MAX_IMAGE_PIXELS = None

ColorMode = Literal["grayscale", "rgb"]
ResizeMode = Literal["squash", "center_crop", "pad"]


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that decides the pixels the model sees (stored in the model card)."""

    image_size: int
    color_mode: ColorMode = "rgb"
    resize: ResizeMode = "squash"
    max_pixels: int = 64_000_000

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        return cls(**{k: data[k] for k in ("image_size", "color_mode", "resize", "max_pixels")})


def open_image(source: bytes | Path | BinaryIO, max_pixels: int, draft_to: int = 0) -> Image.Image:
    """Open, bound-check and fully decode an image; raise :class:`ImageError` if unusable.

    The pixel count is checked from the header *before* decoding, so a tiny file
    declaring 30000×30000 pixels (a decompression bomb) is refused without
    allocating it. ``draft_to`` lets JPEG decode at a reduced scale (DCT scaling),
    which is exact for a given size and far faster than decoding a 12 MP photo
    only to shrink it.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        img = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt", f"cannot read image header: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"image declares {width}x{height} = {width * height} pixels, limit is {max_pixels}",
        )
    if width < 1 or height < 1:
        raise ImageError("corrupt", f"image declares an empty size {width}x{height}")
    try:
        if draft_to and img.format == "JPEG":
            img.draft(img.mode if img.mode in ("L", "RGB") else None, (draft_to, draft_to))
        img.seek(0)  # animated GIF/WebP/APNG: the first frame
        img.load()
    except Image.DecompressionBombError as exc:  # pragma: no cover - guard disabled above
        raise ImageError("too_many_pixels", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("truncated", f"image data is truncated or corrupt: {exc}") from None
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        return img


def _wide_to_uint8(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images: scale to 8 bit instead of clipping."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or arr.dtype == np.uint16 or arr.max(initial=0) > 255:
        arr = (arr.astype(np.float64) / 257.0).round()
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def to_color_mode(img: Image.Image, color_mode: ColorMode) -> Image.Image:
    """Convert any Pillow mode to ``L`` or ``RGB``; transparency is composited on white."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _wide_to_uint8(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    target = "L" if color_mode == "grayscale" else "RGB"
    if img.mode == "CMYK" or img.mode != target:
        img = img.convert("RGB").convert(target) if img.mode == "CMYK" else img.convert(target)
    return img


def fit_to_square(img: Image.Image, size: int, resize: ResizeMode) -> Image.Image:
    """Resize to ``size``×``size``: stretch, crop the centre, or letterbox with black."""
    if img.size == (size, size):
        return img
    if resize == "center_crop":
        return ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR)
    if resize == "pad":
        return ImageOps.pad(img, (size, size), Image.Resampling.BILINEAR, color=0)
    return img.resize((size, size), Image.Resampling.BILINEAR)


def preprocess(source: bytes | Path | BinaryIO | Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Decode, orient, convert and resize one image → uint8 array ``(H, W, C)``.

    This is the single function shared by ``prepare``, ``evaluate`` (through the
    arrays ``prepare`` wrote), ``imgclf predict`` and the API.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        img = open_image(source, spec.max_pixels, draft_to=2 * spec.image_size)
    img = fit_to_square(to_color_mode(img, spec.color_mode), spec.image_size, spec.resize)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
