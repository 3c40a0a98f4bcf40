"""The image-format allow-list: which formats we decode, recognised by their magic bytes.

One list, used everywhere an image is opened (the API, ``imgclf predict`` and
``prepare`` all go through :func:`imgclf.preprocessing.open_image`). Pillow
knows many more formats (EPS runs Ghostscript, PSD, ICNS, PCD, SPIDER, IM…),
and when the plugin for the real format fails, ``Image.open`` without
``formats=`` silently tries every other plugin. So we sniff the leading bytes
ourselves and open with ``formats=[that one format]``: a file that starts like a
PNG is decoded as a PNG or not at all.
"""

from __future__ import annotations

# (magic bytes, offset, Pillow format name); WebP is checked separately (RIFF....WEBP).
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
# How many leading bytes :func:`sniff` needs.
SNIFF_BYTES = 16


def sniff(data: bytes | bytearray | memoryview) -> str | None:
    """The image format from the magic bytes, or None when it is none we accept."""
    head = bytes(data[:SNIFF_BYTES])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    return None


def describe_supported() -> str:
    """The allow-list as people read it, for error messages."""
    return ", ".join(SUPPORTED_FORMATS)
