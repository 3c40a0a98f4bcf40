"""Per-image input features: what an image looks like, as a few numbers.

One function, :func:`feature_matrix` (:func:`image_features` is the same as columns),
turns the uint8 pixels the model sees (the output of
:func:`imgclf.data.preprocessing.preprocess`) plus the upload's decoded size and format into a
few numbers per image. ``evaluate`` runs it on the test split and writes the result, with
the model's predictions, confidences and embeddings, as the *reference profile* next to
the model (``models/reference.json``, :mod:`imgclf.evaluation.reference_profile`); the
API's recorder (:mod:`imgclf.monitoring.recorder`) runs it on every accepted upload's
pixels and stores the same numbers; the drift report compares
the two. Computing both sides with the same function on the same kind
of pixels is what makes the comparison mean something.

Only numpy: the serving image has no pandas or torch. Sums are taken in integers where
possible, so the profile's bytes do not depend on the CPU's floating-point kernels.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

# Embeddings wider than this are reduced by a fixed random projection (Johnson-Lindenstrauss:
# distances are kept to a few percent), for the profile file and the monitoring database.
MAX_EMBEDDING_DIMS = 64
# Pixel values at or beyond these count as clipped (blown highlights / crushed shadows).
SATURATED, DARK = 250, 5
# Model inputs at least this many pixels a side are measured on every second row and column
# (a strided view, no copy): a 224 px RGB image's features cost 0.9 ms of a request in the
# API with the OOD flag on, a quarter of that at 112 px, and statistics of 12,544 pixels
# are as telling as of 50,176. Smaller inputs (the 8 px digits) are measured whole.
SUBSAMPLE_FROM = 128

FORMAT_BY_SUFFIX = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
CATEGORICAL = ("format",)


def channel_names(channels: int) -> tuple[str, ...]:
    return ("gray",) if channels == 1 else ("red", "green", "blue")


def numeric_features(channels: int) -> list[str]:
    """Names of the numeric features for a model with ``channels`` input channels, in order."""
    names = ["width", "height", "aspect", "brightness", "contrast", "sharpness"]
    names += ["saturated", "dark"]
    if channels == 3:
        for c in channel_names(3):
            names += [f"mean_{c}", f"std_{c}"]
        names.append("colorfulness")
    return names


def _mean_std(values: np.ndarray, scale: float, peak: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and standard deviation of an integer ``(N, K)`` array, divided by ``scale``.

    The sums are exact, so the result does not depend on summation order or SIMD width
    (the lock and the OOD calibration stay the same on every CPU): in float64 when every
    partial sum of squares stays below 2**53 (``peak`` bounds ``|values|``; every partial
    sum of integers is then an integer float, whatever the order), else in int64 (luma
    Laplacians of images up to ~1000 px a side fit). What follows is element-wise IEEE
    arithmetic, the same on every CPU. The float64 path is 3x faster at 224 px.
    """
    mean, std = _stacked_mean_std(values[None], [scale], [peak])
    return mean[0], std[0]


def _stacked_mean_std(
    stack: np.ndarray, scales: list[float], peaks: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_mean_std` of every row ``r`` of an integer ``(R, N, K)`` stack at once.

    Three numpy calls for all the quantities when they all fit the exact float64 path (a
    224 px RGB image's six channel statistics: the OOD flag's features, per request),
    instead of three per quantity; the integer sums, and so the results, are the same.
    """
    k = stack.shape[2]
    if all(peak * peak * k < 2**53 for peak in peaks):
        f = stack.astype(np.float64)
        total, squares = f.sum(2), np.einsum("rnk,rnk->rn", f, f)
    else:
        v = stack.astype(np.int64)
        total, squares = v.sum(2), (v * v).sum(2)
    mean = total / k
    var = squares / k - mean * mean
    scale = np.asarray(scales, dtype=np.float64)[:, None]
    return mean / scale, np.sqrt(np.maximum(var, 0.0)) / scale


def _share(planes: np.ndarray, level: int, above: bool) -> np.ndarray:
    """Per image, the share of pixels with *any* channel ≥ ``level`` (``above``) or with
    *all* channels ≤ ``level``; ``planes`` is uint8 ``(C, N, H, W)``, one contiguous plane
    per channel.

    Combined channel by channel: numpy's ``any(-1)``/``all(-1)`` over a 3-wide last axis
    took 1.3 ms of a 224 px RGB image's 2 ms of features (the OOD flag's cost per
    request). Counts are integers, so the share is the same float on every CPU.
    """
    n = planes.shape[1]
    hits = planes[0] >= level if above else planes[0] <= level
    for plane in planes[1:]:
        if above:
            hits |= plane >= level
        else:
            hits &= plane <= level
    return np.count_nonzero(hits.reshape(n, -1), axis=1) / hits[0].size


def feature_matrix(
    pixels: np.ndarray, widths: list[int], heights: list[int]
) -> tuple[list[str], np.ndarray]:
    """The numeric features of a batch as a float64 ``(N, F)`` array (names in order).

    Vectorised, with no per-value Python work: the API's recorder runs it on everything
    queued in the last second at once. :func:`image_features` is the same, as columns.
    Inputs of :data:`SUBSAMPLE_FROM` px a side or more are measured on a 2x-strided view:
    ``evaluate`` (the OOD calibration, the reference profile) and the API call this same
    function on the same model pixels, so both sides see the same features.
    """
    if pixels.ndim != 4 or pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W, C) pixels, got {pixels.dtype} {pixels.shape}")
    if not len(widths) == len(heights) == pixels.shape[0]:
        raise ValueError("one width, height and format per image is needed")
    if min(pixels.shape[1:3]) >= SUBSAMPLE_FROM:
        pixels = pixels[:, ::2, ::2]
    n, h, w, c = pixels.shape
    # One contiguous plane per channel, copied once: every operation below then runs over
    # adjacent values. On the strided subsample and interleaved channels the same integer
    # arithmetic cost 0.63 ms per 224 px RGB image, 0.3 ms on planes (bench: the OOD flag
    # is most of what the API adds to a request). Same integers, so the same features.
    planes = np.ascontiguousarray(np.moveaxis(pixels, -1, 0))
    # The integer quantities whose mean and std are features, one row each: luma ×1000
    # (BT.601 weights as integers), then for RGB the channels and the two opponent
    # channels of Hasler–Süsstrunk colourfulness. All exact.
    rows = 1 if c == 1 else 6
    q = np.empty((rows, n, h * w), dtype=np.int32)
    flat = planes.reshape(c, n, h * w)
    if c == 1:
        np.multiply(flat[0], 1000, out=q[0], dtype=np.int32)
    else:
        q[1:4] = flat  # red, green, blue
        red, green, blue = q[1], q[2], q[3]
        np.multiply(red, 299, out=q[0])
        q[0] += green * 587
        q[0] += blue * 114
        np.subtract(red, green, out=q[4])  # rg
        np.add(red, green, out=q[5])  # yb = (r + g) - 2b
        q[5] -= 2 * blue
    scales = [255_000.0] + ([] if c == 1 else [255.0, 255.0, 255.0, 255.0, 510.0])
    peaks = [255_000] + ([] if c == 1 else [255, 255, 255, 255, 510])
    means, stds = _stacked_mean_std(q, scales, peaks)
    brightness, contrast = means[0], stds[0]
    luma = q[0].reshape(n, h, w)
    if h >= 3 and w >= 3:
        lap = 4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1]
        lap = lap - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:]
        _, lap_std = _mean_std(lap.reshape(n, -1), 1000.0, 4 * 255_000 * 2)
        sharpness = lap_std**2
    else:
        sharpness = np.zeros(n)
    width = np.asarray(widths, dtype=np.float64).reshape(n)
    height = np.asarray(heights, dtype=np.float64).reshape(n)
    cols: dict[str, np.ndarray] = {
        "width": width,
        "height": height,
        "aspect": width / np.maximum(height, 1.0),
        "brightness": brightness,
        "contrast": contrast,
        "sharpness": sharpness,
        "saturated": _share(planes, SATURATED, above=True),
        "dark": _share(planes, DARK, above=False),
    }
    if c == 3:
        for i, name in enumerate(channel_names(3), 1):
            cols[f"mean_{name}"], cols[f"std_{name}"] = means[i], stds[i]
        rg_mean, rg_std, yb_mean, yb_std = means[4], stds[4], means[5], stds[5]
        cols["colorfulness"] = np.hypot(rg_std, yb_std) + 0.3 * np.hypot(rg_mean, yb_mean)
    names = numeric_features(c)
    return names, np.stack([cols[name] for name in names], axis=1)


def image_features(
    pixels: np.ndarray, widths: list[int], heights: list[int], formats: list[str]
) -> dict[str, list[Any]]:
    """Feature columns for a batch: uint8 ``(N, H, W, C)`` model pixels + original size/format.

    * ``width``, ``height``, ``aspect``, ``format``: the upload before resizing — a new
      camera or a screenshot shows here first;
    * ``brightness``/``contrast``: mean and standard deviation of the luma, 0-1;
    * ``sharpness``: variance of the Laplacian of the luma (blur lowers it);
    * ``saturated``/``dark``: fraction of pixels with a channel ≥ 250 / all channels ≤ 5;
    * RGB models also get per-channel mean and std and Hasler–Süsstrunk colorfulness.
    """
    if len(formats) != len(widths):
        raise ValueError("one width, height and format per image is needed")
    names, matrix = feature_matrix(pixels, widths, heights)
    out: dict[str, list[Any]] = {
        name: [round(float(x), 6) for x in matrix[:, j]] for j, name in enumerate(names)
    }
    out["width"], out["height"] = [int(v) for v in widths], [int(v) for v in heights]
    out["format"] = [str(f) for f in formats]
    return out


# EXIF orientations that swap width and height (rotated by 90 or 270 degrees).
_TRANSPOSED = {5, 6, 7, 8}


def source_info(data: bytes | bytearray) -> tuple[int, int, str]:
    """Width, height (after EXIF orientation, as ``prepare`` records them) and format.

    For an upload that :func:`imgclf.data.preprocessing.preprocess` has already accepted: this
    reads the header again (tens of microseconds), so the one preprocessing function
    keeps its signature. Unknown values are 0 / ``""``, never an exception.
    """
    import io

    from PIL import Image

    from imgclf.data.preprocessing import sniff

    fmt = sniff(data) or ""
    try:
        with Image.open(io.BytesIO(data), formats=[fmt] if fmt else None) as img:
            width, height = img.size
            # A PNG whose eXIf chunk was not in its header: Pillow's getexif() would decode
            # the whole image to look behind the pixel data (7 ms for a 512x512 upload, a
            # second decode per request); such files are all but unknown, so: upright.
            late_png_exif = img.format == "PNG" and "exif" not in img.info
            if not late_png_exif and img.getexif().get(0x0112) in _TRANSPOSED:
                width, height = height, width
    except Exception:  # noqa: BLE001 - best effort: a monitoring value, never a request error
        return 0, 0, fmt
    return width, height, fmt


def noted_source(img: Any | None, data: bytes | bytearray) -> tuple[int, int, str]:
    """:func:`source_info` from the image object the decode already opened (``img``, as
    :func:`imgclf.data.preprocessing.open_image` left it: its ``SOURCE_SIZE`` is the file's
    own size after EXIF rotation); without one, the header is read again."""
    if img is None:
        return source_info(data)
    from imgclf.data.preprocessing import SOURCE_SIZE

    width, height = img.info.get(SOURCE_SIZE, img.size)
    return int(width), int(height), img.format or ""


# Pillow modes without colour: their colourfulness is 0 without decoding anything.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Decoded pixels the colour measurement may take (after JPEG's reduced-scale decoding):
# beyond it the answer is None ("not measured") rather than a second full decode.
COLOUR_MAX_PIXELS = 4_000_000


def source_colorfulness(data: bytes | bytearray) -> float | None:
    """Colourfulness (Hasler–Süsstrunk, as :func:`image_features`) of the *original* file.

    For grayscale models, whose pixels have lost the colour: a colour photo sent to a
    model trained on grayscale scans shows here (the OOD flag's colour check). Gray
    modes answer 0 from the header; JPEGs decode at 1/8 scale; other files are measured
    up to :data:`COLOUR_MAX_PIXELS`, else None. Never an exception (best effort).
    """
    import io

    from PIL import Image

    from imgclf.data.preprocessing import sniff

    fmt = sniff(data)
    if fmt is None:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            if img.mode in _GRAY_MODES:
                return 0.0
            if fmt == "JPEG":
                img.draft("RGB", (64, 64))
            if img.size[0] * img.size[1] > COLOUR_MAX_PIXELS:
                return None
            img.thumbnail((64, 64))
            rgb = np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - a monitoring value, never a request error
        return None
    return float(image_features(rgb[None], [1], [1], [""])["colorfulness"][0])


def format_from_path(path: str) -> str:
    """The image format a training file most likely has, from its suffix (for the reference)."""
    return FORMAT_BY_SUFFIX.get(Path(path).suffix.lower(), Path(path).suffix.lstrip(".").upper())


def reduce_embedding(embedding: np.ndarray) -> np.ndarray:
    """``(N, D)`` → at most :data:`MAX_EMBEDDING_DIMS` columns, by a projection fixed by D.

    The projection matrix comes from a seeded generator, so the reference profile and the
    API (which never see each other) reduce the same way.
    """
    embedding = np.asarray(embedding, dtype=np.float64)
    d = embedding.shape[1]
    if d <= MAX_EMBEDDING_DIMS:
        return embedding
    return embedding @ _projection(d)


@functools.lru_cache(maxsize=8)
def _projection(d: int) -> np.ndarray:
    """The fixed ``(d, 64)`` projection, drawn once per width (0.8 ms per request before:
    36,864 normals for a 576-wide mobilenet embedding). Read-only: it is shared."""
    proj = np.random.default_rng(d).standard_normal((d, MAX_EMBEDDING_DIMS))
    proj = proj / np.sqrt(MAX_EMBEDDING_DIMS)
    proj.setflags(write=False)
    return proj
