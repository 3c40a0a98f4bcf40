"""Odd but valid uploads are predicted like the plain image (RGBA, palette, CMYK, 16-bit, …)."""

from __future__ import annotations

import csv
import io

import httpx
import pytest
from PIL import Image

from tests.api import samples
from tests.api.modelfactory import ProjectTree


@pytest.fixture(scope="module")
def confident_digits(project: ProjectTree) -> tuple[Image.Image, str, Image.Image]:
    """A test-split digit that ``evaluate`` got right with the highest confidence, and another."""
    with (project.metrics_dir / "predictions.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["correct"] == "1"]
    rows.sort(key=lambda r: -float(r["confidence"]))
    best = rows[0]
    other = next(r for r in rows if r["actual"] != best["actual"])
    digit, second = (Image.open(project.raw / r["path"]) for r in (best, other))
    digit.load()
    second.load()
    return digit, best["actual"], second


def predict(client: httpx.Client, data: bytes, name: str) -> dict:
    # A neutral name and type: the server must sniff the content itself.
    resp = client.post("/predict", files={"file": (name, data, "application/octet-stream")})
    assert resp.status_code == 200, f"{name}: {resp.status_code} {resp.text}"
    return resp.json()


def test_lossless_variants_give_identical_probabilities(
    client: httpx.Client, confident_digits: tuple[Image.Image, str, Image.Image]
) -> None:
    digit, label, other = confident_digits
    variants = samples.lossless_variants(digit, other)
    reference = predict(client, variants.pop("grayscale_png"), "upload")
    assert reference["label"] == label
    for name, data in variants.items():
        got = predict(client, data, "upload")
        assert got["label"] == label, name
        for cls, p in reference["probabilities"].items():
            assert got["probabilities"][cls] == pytest.approx(p, abs=1e-6), name


def test_lossy_and_huge_variants_keep_the_label(
    client: httpx.Client, confident_digits: tuple[Image.Image, str, Image.Image]
) -> None:
    digit, label, _ = confident_digits
    for name, data in samples.lossy_variants(digit).items():
        assert predict(client, data, "upload")["label"] == label, name


def test_exif_orientation_is_applied(
    client: httpx.Client, confident_digits: tuple[Image.Image, str, Image.Image]
) -> None:
    """Without honouring EXIF the stored (rotated) pixels would be classified instead.

    The upright answer must be the plain digit's (to 1e-6, as the lossless variants), and
    the stored pixels' answer must be clearly another one: a 1e-9 wobble is not a rotation.
    """
    digit, _, other = confident_digits
    rotated = samples.lossless_variants(digit, other)["exif_rotated_png"]
    stored = Image.open(io.BytesIO(rotated))
    raw_pixels = samples.encode(stored.copy(), "PNG")  # re-encoding drops the EXIF block
    plain = predict(client, samples.encode(digit, "PNG"), "plain")["probabilities"]
    upright = predict(client, rotated, "upload")["probabilities"]
    sideways = predict(client, raw_pixels, "upload")["probabilities"]
    assert upright == pytest.approx(plain, abs=1e-6)
    assert max(abs(sideways[c] - plain[c]) for c in plain) > 0.05, (sideways, plain)
