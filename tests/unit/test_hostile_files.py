"""Issue 9 outside the API: one allow-list for prepare and predict, no float64 blow-up,
and prepare skips (and reports) any file it cannot use instead of aborting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclf.data.prepare import prepare
from imgclf.data.preprocessing import (
    DecodeBudget,
    ImageError,
    PreprocessSpec,
    _wide_to_uint8,
    open_image,
    preprocess,
)
from imgclf.params import Params, validate_params
from tests.api import hostile
from tests.images import write_shapes_dataset
from tests.support import ROOT

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def gray_params() -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["prepare"].update({"image_size": 16, "color_mode": "grayscale", "min_side": 4})
    return validate_params(raw)


@pytest.mark.parametrize("magic", [PNG_MAGIC, JPEG_MAGIC], ids=["png", "jpeg"])
def test_impostor_is_not_decoded_by_a_fallback_plugin(magic: bytes) -> None:
    """Pillow alone opens these as PCD; with formats=[sniffed] they are refused."""
    data = hostile.pcd_impostor(magic)
    assert Image.open(io.BytesIO(data)).format == "PCD"  # the finding, reproduced
    with pytest.raises(ImageError) as err:
        preprocess(data, PreprocessSpec(8, "grayscale"))
    assert err.value.reason == "not_an_image"


def test_wide_to_uint8_matches_the_float64_formula_without_its_memory() -> None:
    """round(x / 257) exactly as before, for 16-bit, 32-bit int and float images."""
    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    i32 = rng.integers(-1000, 70000, (37, 53), dtype=np.int32)
    f32 = rng.uniform(-10, 300, (37, 53)).astype(np.float32)
    for arr, mode in ((u16, "I;16"), (i32, "I"), (f32, "F")):
        img = Image.fromarray(arr)
        assert img.mode == mode
        expected = np.clip((arr.astype(np.float64) / 257.0).round(), 0, 255).astype(np.uint8)
        if mode == "F" and arr.max() <= 255:
            expected = np.clip(arr, 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(_wide_to_uint8(img)), expected), mode
    # Converted in strips of rows: they join up exactly.
    tall = rng.integers(0, 65536, (3000, 700), dtype=np.uint16)
    got = np.asarray(_wide_to_uint8(Image.fromarray(tall)))
    assert np.array_equal(got, ((tall.astype(np.uint32) + 128) // 257).astype(np.uint8))


def test_decode_budget_counts_bytes_per_pixel() -> None:
    gray = hostile.encode(Image.new("L", (100, 100)), "PNG")
    rgb = hostile.encode(Image.new("RGB", (100, 100)), "PNG")
    budget = DecodeBudget(30_000)
    open_image(gray, 10**6, budget=budget)  # 10 000 bytes
    assert budget.left == 20_000
    with pytest.raises(ImageError) as err:
        open_image(rgb, 10**6, budget=budget)  # 40 000 bytes: Pillow stores RGB in 4
    assert err.value.reason == "too_many_bytes"


# The API's default decode budget (IMGCLF_MAX_DECODE_BYTES).
DEFAULT_BUDGET = 128 * 2**20


def _photo(width: int, height: int) -> Image.Image:
    """A photo-like RGB image: smooth noise, so JPEG and lossy WebP have real data to code."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (max(1, height // 16), max(1, width // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def _one_component_first_scan(jpeg: bytes) -> bytes:
    """``jpeg`` (sequential, one interleaved scan) with its SOS cut to the first component.

    libjpeg then expects one scan per component and buffers the whole image's
    coefficients, as for a progressive file; the budget must refuse it before decoding.
    """
    pos = 2
    while jpeg[pos + 1] != 0xDA:
        pos += 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
    assert jpeg[pos + 4] == 3
    sos = b"\xff\xda\x00\x08\x01" + jpeg[pos + 5 : pos + 7] + b"\x00\x3f\x00"
    return jpeg[:pos] + sos + jpeg[pos + 2 + length :]


def test_webp_is_charged_for_libwebp_canvases_not_only_the_image() -> None:
    """A 38-byte 6000x5000 lossless WebP costs ~4x its 114 MiB image to decode (libwebp's
    animation decoder): refused under the default budget, which its PNG twin fits."""
    img = Image.new("RGBA", (6000, 5000), (10, 200, 30, 128))
    webp = hostile.encode(img, "WEBP", lossless=True, method=0)
    png = hostile.encode(img, "PNG")
    del img
    budget = DecodeBudget(DEFAULT_BUDGET)
    with pytest.raises(ImageError) as err:
        open_image(webp, 64_000_000, budget=budget)
    assert err.value.reason == "too_many_bytes"
    assert budget.left == DEFAULT_BUDGET  # refused before anything was charged or decoded
    assert open_image(png, 64_000_000, budget=budget).size == (6000, 5000)
    assert budget.left == DEFAULT_BUDGET - 6000 * 5000 * 4


def test_multi_scan_jpeg_is_charged_for_its_full_size_coefficients() -> None:
    """A progressive (or one-component-first-scan) 4000x3000 JPEG holds 34 MiB of DCT
    coefficients even when drafted to 1/8: refused under a budget its baseline twin fits."""
    photo = _photo(4000, 3000)
    baseline = hostile.encode(photo, "JPEG", quality=50)
    progressive = hostile.encode(photo, "JPEG", quality=50, progressive=True)
    del photo
    budget = DecodeBudget(16 * 2**20)
    img = open_image(baseline, 64_000_000, draft_to=224, budget=budget)
    assert img.size == (500, 375)  # drafted to 1/8: that is all a baseline file allocates
    assert budget.left == 16 * 2**20 - 500 * 375 * 4
    for data in (progressive, _one_component_first_scan(baseline)):
        with pytest.raises(ImageError) as err:
            open_image(data, 64_000_000, draft_to=224, budget=DecodeBudget(16 * 2**20))
        assert err.value.reason == "too_many_bytes"


@pytest.mark.parametrize("fmt", ["WEBP", "progressive JPEG"])
def test_normal_webp_and_progressive_jpeg_photos_decode_and_pay_their_decoder(fmt: str) -> None:
    """A 640x480 photo still decodes, charged the decoder's peak: 5 RGBA copies for WebP;
    the drafted image plus 4:2:0 coefficients (3 bytes a pixel, +1/8 margin) for JPEG."""
    photo = _photo(640, 480)
    if fmt == "WEBP":
        data, charge = hostile.encode(photo, "WEBP", quality=80), 5 * 640 * 480 * 4
    else:
        data = hostile.encode(photo, "JPEG", quality=85, progressive=True)
        charge = 320 * 240 * 4 + 640 * 480 * 3 * 9 // 8  # drafted to 1/2, coefficients
    budget = DecodeBudget(DEFAULT_BUDGET)
    out = preprocess(data, PreprocessSpec(224), budget)
    assert out.shape == (224, 224, 3)
    assert out.std() > 10  # real pixels, not a blank
    assert DEFAULT_BUDGET - budget.left == charge


def test_prepare_skips_what_it_cannot_use_and_says_why(tmp_path: Path) -> None:
    """A LAB TIFF under grayscale params, a dangling link, impostors: skipped, not fatal."""
    root = write_shapes_dataset(tmp_path / "raw", per_class=6)
    odd = root / "class_0"
    (odd / "lab.tif").write_bytes(hostile.lab_tiff())
    (odd / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (odd / "pcd.png").write_bytes(hostile.pcd_impostor(PNG_MAGIC))
    (odd / "pcd.jpg").write_bytes(hostile.pcd_impostor(JPEG_MAGIC))
    (odd / "markers.jpg").write_bytes(hostile.com_marker_jpeg(10_000))
    report = prepare(root, tmp_path / "out", tmp_path / "prepare.json", gray_params())
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "class_0/gone.png": "unreadable",
        "class_0/lab.tif": "unsupported_mode",
        "class_0/markers.jpg": "corrupt",
        "class_0/pcd.jpg": "not_an_image",
        "class_0/pcd.png": "not_an_image",
    }
    assert json.loads((tmp_path / "prepare.json").read_text())["n_skipped"] == 5
    assert all(str(tmp_path) not in s["detail"] for s in report["skipped"])
