"""The one preprocessing function: bytes or a file → fixed-size uint8 array.

``prepare`` runs it on every training image, the API runs it on every upload,
``imgclf predict`` runs it on local files, so what is evaluated is exactly what
is served. Normalisation is *not* here: it is baked into the exported model,
whose input is the uint8 ``(N, H, W, C)`` array this function returns.

It never imports torch, so the serving image stays small.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

# Re-exported: callers catch ``preprocessing.ImageError`` next to ``preprocess``.
from imgclf.errors import ImageError as ImageError

# We enforce our own pixel limit *before* decoding (see ``max_pixels``);
# Pillow's global guard would otherwise warn or raise with a different message.
Image.MAX_IMAGE_PIXELS = None
# PNG text chunks (tEXt/zTXt/iTXt) are never used here, yet Pillow inflates up to
# 64 MB of them per file: a few kB of zTXt chunks cost seconds of CPU. 1 MB in all
# is plenty for real metadata; past it the file is refused as corrupt.
PngImagePlugin.MAX_TEXT_MEMORY = 1024 * 1024
PngImagePlugin.MAX_TEXT_CHUNK = 256 * 1024

ColorMode = Literal["grayscale", "rgb"]
ResizeMode = Literal["squash", "center_crop", "pad"]


# The image-format allow-list: the one list of what we decode, used wherever an image is
# opened (the API, ``imgclf predict`` and ``prepare`` all go through :func:`open_image`).
# Pillow knows many more formats (EPS runs Ghostscript, PSD, ICNS, PCD, SPIDER, IM…), and
# when the plugin for the real format fails, ``Image.open`` without ``formats=`` silently
# tries every other plugin. So the leading bytes decide the format, and the file is opened
# with ``formats=[that one]``: a file that starts like a PNG is decoded as a PNG or not at
# all. (Magic bytes, offset, Pillow format name; WebP is RIFF....WEBP, checked apart.)
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
SNIFF_BYTES = 16  # how many leading bytes :func:`sniff` needs


def sniff(data: bytes | bytearray | memoryview) -> str | None:
    """The image format from the magic bytes, or None when it is none we accept."""
    head = bytes(data[:SNIFF_BYTES])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


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


# Bytes Pillow keeps per pixel for a mode once decoded (everything not listed: 4).
# The decode budget counts these, not pixels: a 16-bit or RGBA image costs 2-4x an 8-bit one.
_STORED_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decoded_bytes(img: Image.Image) -> int:
    """Memory the decoded image will take (from the header, before decoding)."""
    width, height = img.size
    return width * height * _STORED_BYTES_PER_PIXEL.get(img.mode, 4)


# WebP: Pillow decodes even a still image through libwebp's animation decoder, which keeps
# two full canvases (the frame and the disposed previous one), hands the frame over as a
# bytes copy, and Pillow copies that into the image: 4 full-size 4-byte-per-pixel copies at
# the peak. Measured (Pillow 13.0, libwebp 1.6, 6000x5000, lossless and lossy, RGB and RGBA,
# peak RSS of a fresh process): 458 MiB for the 114 MiB image, 4.0x. Charged 5x for margin.
WEBP_DECODE_COPIES = 5
# ``img.info`` key where :func:`open_image` leaves what libjpeg will hold in DCT coefficients
# for a multi-scan (progressive, or sequential with one scan per component) JPEG; 0 if none.
JPEG_COEFFICIENT_BYTES = "imgclf_jpeg_coefficient_bytes"


def decode_cost(img: Image.Image) -> int:
    """Peak memory decoding ``img`` will allocate (from the header, before decoding).

    The decoded image itself (:func:`decoded_bytes`, at the reduced JPEG scale), times
    :data:`WEBP_DECODE_COPIES` for WebP, plus a multi-scan JPEG's full-size coefficient
    buffers (:func:`jpeg_coefficient_bytes`, noted by :func:`open_image`).
    """
    cost = decoded_bytes(img)
    if img.format == "WEBP":
        cost *= WEBP_DECODE_COPIES
    return cost + int(img.info.get(JPEG_COEFFICIENT_BYTES, 0))


def jpeg_coefficient_bytes(width: int, height: int, layers: list[tuple[int, int, int, int]]) -> int:
    """What libjpeg allocates for a multi-scan JPEG's coefficients, with a 1/8 margin.

    A progressive JPEG, or a sequential one whose first scan does not hold every
    component, is decoded from a whole-image buffer of DCT coefficients: per component,
    its blocks (8x8 at its sampling, rounded up to the sampling factors) x 64 x 2 bytes
    (JCOEF is int16), at the full size whatever ``draft()`` reduces the output to. So
    2 bytes a pixel per full-resolution component: 6 for 4:4:4 colour, 3 for 4:2:0, 2 for
    gray, 8 for CMYK. Measured on 6000x6000 (formula 206 MiB for 4:4:4, 103 for 4:2:0, 69
    for gray, 275 for CMYK): peak RSS grew 212, 107, 70 and 283 MiB, the rest being the
    reduced output and libjpeg's fixed state, which a baseline JPEG also takes (8 MiB).
    ``layers`` is Pillow's ``JpegImageFile.layer``: (id, horizontal, vertical, table).
    """
    factors = [(min(max(h, 1), 4), min(max(v, 1), 4)) for _, h, v, _ in layers]
    if not factors:
        return 0
    max_h = max(h for h, _ in factors)
    max_v = max(v for _, v in factors)
    blocks = 0
    for h, v in factors:
        across = -(-width * h // (8 * max_h))  # libjpeg's width_in_blocks
        down = -(-height * v // (8 * max_v))
        blocks += -(-across // h) * h * (-(-down // v) * v)
    return blocks * 64 * 2 * 9 // 8


def _jpeg_scan_components(data: bytes | memoryview, start: int = 0) -> int:
    """How many components the JPEG's first scan (SOS) holds; 0 when no scan is found.

    libjpeg buffers the whole image's coefficients when it is progressive or when that
    first scan holds fewer components than the frame (a sequential multi-scan file).
    Walks the segment headers only (their count is bounded by :data:`MAX_JPEG_MARKERS`).
    """
    data = bytes(data)  # for find(): junk between segments is skipped at C speed
    pos, end = start + 2, len(data)  # past SOI
    while pos + 4 < end:
        if data[pos] != 0xFF:
            pos = data.find(b"\xff", pos)  # junk between segments, skipped as libjpeg does
            if pos < 0:
                return 0
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1  # fill byte
        elif marker == 0xDA:
            return int(data[pos + 4])
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2  # stand-alone marker: no length
        elif marker == 0xD9:
            return 0
        else:
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return 0


@dataclass
class DecodeBudget:
    """Decoded bytes one request may still allocate, shared by every file of a batch.

    Pixels alone undercount: a 16-bit or RGBA image of the same size takes 2-4x
    the memory (and the CPU) of an 8-bit gray one, and a batch multiplies it.
    """

    left: int

    def take(self, img: Image.Image) -> None:
        """Charge what decoding ``img`` allocates (:func:`decode_cost`), or refuse it (413)."""
        cost = decode_cost(img)
        if cost > self.left:
            raise ImageError(
                "too_many_bytes",
                f"{img.size[0]}x{img.size[1]} {img.mode} {img.format or ''} image would take "
                f"{cost} bytes to decode; {self.left} bytes of this request's decode budget "
                "are left",
            )
        self.left -= cost


def _open(source: bytes | bytearray | Path | BinaryIO) -> tuple[BinaryIO, str]:
    """A seekable file for ``source`` and its sniffed format; :class:`ImageError` if none."""
    if isinstance(source, Path):
        try:
            fp: BinaryIO = io.BytesIO(source.read_bytes())
        except OSError as exc:
            raise ImageError("unreadable", f"cannot read {source.name}: {exc.strerror}") from None
    elif isinstance(source, bytes | bytearray):
        fp = io.BytesIO(source)
    else:
        fp = source
    start = fp.tell()
    head = fp.read(SNIFF_BYTES)
    fp.seek(start)
    if not head:
        raise ImageError("not_an_image", "the file is empty, not an image")
    fmt = sniff(head)
    if fmt is None:
        raise ImageError(
            "not_an_image",
            f"content is not a supported image ({', '.join(SUPPORTED_FORMATS)}); "
            "the filename and Content-Type are not trusted",
        )
    return fp, fmt


# ``img.info`` key where :func:`open_image` leaves the file's own (width, height): after
# reduced-scale JPEG decoding ``img.size`` is the reduced one.
SOURCE_SIZE = "imgclf_source_size"


def draft_target(spec: PreprocessSpec) -> int:
    """The side JPEG DCT-domain downscaling (``Image.draft``) may go down to, for ``spec``.

    libjpeg decodes at 1/2, 1/4 or 1/8 scale, and Pillow picks the smallest scale
    whose image still has both sides >= this, so the one resize that follows always
    shrinks (it never enlarges) and keeps its antialiasing. ``image_size`` itself, not
    Pillow's thumbnail default of twice it: a 4000x3000 photo then decodes at 1/8
    (500x375) instead of 1/4, which saves 2 ms of decoding and 2 ms of resizing per
    photo (bench/RESULTS.md, photo models). ``prepare`` and the API both use it, so
    training, evaluation and serving see the same pixels.
    """
    return spec.image_size


# Pillow walks the markers in front of a JPEG's image data in Python, one by one: a
# file of 4-byte empty COM markers costs ~1.5 s of CPU per MB. Real files have a few
# dozen (EXIF thumbnails, ICC profiles and progressive scans included).
MAX_JPEG_MARKERS = 4096


def _check_jpeg_markers(data: memoryview) -> None:
    """Refuse a JPEG with an absurd number of segment markers before Pillow parses them.

    Counts ``FF xx`` for xx in C0–FE except the RST/SOI/EOI codes D0–D9, which
    is every segment header. Entropy-coded data cannot contain one (``FF`` is
    stuffed as ``FF 00``), so only headers and binary metadata do. One pass finds
    the ``FF`` bytes, the test runs on the few bytes after them: 0.02 ms for a 76 KB
    photo, 0.28 ms for 1.4 MB (five whole-file passes took 6.7x that, 12 % of a served
    600x400 request's CPU).
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    nxt = arr[np.flatnonzero(arr[:-1] == 0xFF) + 1]
    count = int(np.count_nonzero((nxt >= 0xC0) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD9))))
    del arr, nxt  # release the view on the buffer
    if count > MAX_JPEG_MARKERS:
        raise ImageError(
            "corrupt", f"JPEG has {count} segment markers, more than {MAX_JPEG_MARKERS}"
        )


def open_image(
    source: bytes | bytearray | Path | BinaryIO,
    max_pixels: int,
    draft_to: int = 0,
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """Sniff, open, bound-check and fully decode an image; raise :class:`ImageError` if unusable.

    The format is decided by the magic bytes and Pillow is told to use that
    plugin only (``formats=``): without it, a file whose PNG or JPEG decoder
    fails is handed to every other plugin Pillow has (PCD, SPIDER, IM…).

    The pixel count and the decoded size in bytes (charged to ``budget``, which
    counts bytes per pixel of the stored mode) are checked from the header *before*
    decoding, so a tiny file declaring 30000×30000 pixels (a decompression
    bomb) is refused without allocating it. ``draft_to`` lets JPEG decode at a
    reduced scale (DCT scaling), which is exact for a given size and far faster
    than decoding a 12 MP photo only to shrink it; the byte budget is checked
    after that reduction, since that is what will be allocated. What the decoder
    holds besides the image is charged too (:func:`decode_cost`): libwebp's canvases,
    and a progressive or multi-scan JPEG's coefficients at the full size.
    """
    fp, fmt = _open(source)
    start = fp.tell()
    if fmt == "JPEG" and isinstance(fp, io.BytesIO):
        _check_jpeg_markers(fp.getbuffer())
    try:
        img = Image.open(fp, formats=[fmt])
    except UnidentifiedImageError:
        # The sniffed plugin refused it, and no other plugin is asked (formats=).
        raise ImageError(
            "not_an_image", f"content starts like {fmt} but is not a valid one"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageError("corrupt", "cannot read image header") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"image declares {width}x{height} = {width * height} pixels, limit is {max_pixels}",
        )
    if width < 1 or height < 1:
        raise ImageError("corrupt", f"image declares an empty size {width}x{height}")
    if budget is not None and img.format == "JPEG":
        if isinstance(fp, io.BytesIO):
            with fp.getbuffer() as view:
                components = _jpeg_scan_components(view, start)
        else:
            at = fp.tell()
            fp.seek(start)
            components = _jpeg_scan_components(fp.read())
            fp.seek(at)
        if img.info.get("progressive") or components < len(img.layer):
            img.info[JPEG_COEFFICIENT_BYTES] = jpeg_coefficient_bytes(width, height, img.layer)
    try:
        if draft_to and img.format == "JPEG":
            img.draft(img.mode if img.mode in ("L", "RGB") else None, (draft_to, draft_to))
    except (OSError, ValueError):
        raise ImageError("corrupt", "cannot read image header") from None
    drafted = img.size
    if budget is not None:
        budget.take(img)
    try:
        img.seek(0)  # animated GIF/WebP/APNG: the first frame
        img.load()
    except Image.DecompressionBombError:  # pragma: no cover - guard disabled above
        raise ImageError("too_many_pixels", "image is a decompression bomb") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageError("truncated", "image data is truncated or corrupt") from None
    # in_place: without it Pillow returns a full copy even when nothing is rotated
    # (another 80 MB for a 40 MP 16-bit image). A broken EXIF block must not lose the image.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)
    # The size of the file's image (not of the reduced decode), as the viewer sees it.
    turned = img.size != drafted
    img.info[SOURCE_SIZE] = (height, width) if turned else (width, height)
    return img


# round(x / 257) for every 16-bit value, as a table: exact, and no float64 copy of the image.
_U16_TO_U8 = ((np.arange(65536, dtype=np.uint32) + 128) // 257).astype(np.uint8)
# Rows converted at a time, so the temporary arrays stay a few MB whatever the image size.
_STRIP_BYTES = 4 * 1024 * 1024


def _strips(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, array) for consecutive bands of rows of ``img``, a few MB each.

    numpy releases the GIL on these small arrays, where one call over the whole
    image (``getextrema``, ``tobytes``) would hold it for ~100 ms at 40 MP and
    stall the API's event loop thread.
    """
    width, height = img.size
    rows = max(1, _STRIP_BYTES // (8 * width))
    for top in range(0, height, rows):
        yield top, np.asarray(img.crop((0, top, width, min(height, top + rows))))


def _wide_to_uint8(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float images → 8 bit, scaled (``round(x / 257)``) not clipped.

    Values are scaled when the mode is 16-bit or any value exceeds 255. The work
    is done strip by strip into one uint8 array: a 40 MP 16-bit image costs its
    own 80 MB plus the 40 MB result, not the 320 MB a float64 copy would.
    """
    width, height = img.size
    sixteen = img.mode.startswith("I;16")
    scale = sixteen or any(strip.max(initial=0) > 255 for _, strip in _strips(img))
    out = np.empty((height, width), dtype=np.uint8)
    for top, strip in _strips(img):
        rows = slice(top, top + len(strip))
        if sixteen:
            out[rows] = _U16_TO_U8[strip.astype(np.uint16, copy=False)]
        elif scale and strip.dtype.kind in "iu":
            out[rows] = np.clip((strip.astype(np.int64) + 128) // 257, 0, 255)
        elif scale:
            out[rows] = np.clip(np.round(strip / 257.0), 0, 255)
        else:
            out[rows] = np.clip(strip, 0, 255)
    return Image.fromarray(out, mode="L")


def to_color_mode(img: Image.Image, color_mode: ColorMode) -> Image.Image:
    """Convert any Pillow mode to ``L`` or ``RGB``; transparency is composited on white."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _wide_to_uint8(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # no needless full copy
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


def preprocess(
    source: bytes | bytearray | Path | BinaryIO | Image.Image,
    spec: PreprocessSpec,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Decode, orient, convert and resize one image → uint8 array ``(H, W, C)``.

    This is the single function shared by ``prepare``, ``evaluate`` (through the
    arrays ``prepare`` wrote), ``imgclf predict`` and the API. Every way an input
    can be unusable ends as an :class:`ImageError` with a reason, so callers
    (the API, ``prepare``) report it instead of crashing. ``budget`` bounds
    the decoded size (see :func:`open_image`).
    """
    return as_pixels(preprocess_image(source, spec, budget))


def preprocess_image(
    source: bytes | bytearray | Path | BinaryIO | Image.Image,
    spec: PreprocessSpec,
    budget: DecodeBudget | None = None,
) -> Image.Image:
    """:func:`preprocess` up to its last step: the ``L`` or ``RGB`` Pillow image.

    ``preprocess(x) == as_pixels(preprocess_image(x))`` always. ``prepare`` takes the
    image itself because it also needs Pillow's histogram of it (the exact channel
    sums): from here that costs no copy into numpy and back.
    """
    if isinstance(source, Image.Image):
        img = source
    else:
        img = open_image(source, spec.max_pixels, draft_to=draft_target(spec), budget=budget)
    try:
        return fit_to_square(to_color_mode(img, spec.color_mode), spec.image_size, spec.resize)
    except (ValueError, OSError):
        # e.g. a LAB or HSV TIFF: Pillow has no conversion from it to L/RGB.
        raise ImageError(
            "unsupported_mode", f"cannot convert a {img.mode} image to {spec.color_mode}"
        ) from None


def as_pixels(img: Image.Image) -> np.ndarray:
    """An ``L`` or ``RGB`` image as the uint8 ``(H, W, C)`` array the model takes."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
