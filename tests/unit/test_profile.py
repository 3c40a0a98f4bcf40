"""The reference profile: image features, the ONNX embedding output, evaluate's file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from imgclf.artifact.export import export_onnx
from imgclf.artifact.files import EMBEDDING_NAME, REFERENCE_FILE
from imgclf.artifact.integrity import verify_model
from imgclf.artifact.predictor import Predictor
from imgclf.data.features import (
    MAX_EMBEDDING_DIMS,
    format_from_path,
    image_features,
    numeric_features,
    reduce_embedding,
    source_info,
)
from imgclf.data.prepared_files import INDEX_FIELDS
from imgclf.errors import ModelIntegrityError
from imgclf.evaluation.evaluate import evaluate
from imgclf.evaluation.reference_profile import build_reference, load_reference
from imgclf.jsonio import write_json
from imgclf.params import ModelParams, Params
from imgclf.training.architectures import WithSoftmax, build_model

CLASSES = ["a", "b", "c"]


def _card(sha: str, size: int, color: str) -> dict:
    spec = {"image_size": size, "color_mode": color, "resize": "squash", "max_pixels": 10**6}
    return {"classes": CLASSES, "preprocess": spec, "model_sha256": sha}


def _export(tmp_path: Path, channels: int = 1, size: int = 8, embedding: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(ModelParams(), channels, len(CLASSES), size, [0.5] * channels, [0.25])
    model.eval()
    sha = export_onnx(
        WithSoftmax(model, embedding=embedding), (size, size, channels), tmp_path / "model.onnx"
    )
    write_json(tmp_path / "model.json", _card(sha, size, "grayscale" if channels == 1 else "rgb"))
    return tmp_path


def test_embedding_output_is_the_penultimate_layer_and_leaves_probs_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelParams(), 3, 3, 16, [0.5] * 3, [0.25] * 3).eval()
    wrapped = WithSoftmax(model, embedding=True)
    sha = export_onnx(wrapped, (16, 16, 3), tmp_path / "model.onnx")
    write_json(tmp_path / "model.json", _card(sha, 16, "rgb"))
    # The wrapped model keeps no hook: training or a second export see it unchanged.
    assert all(not m._forward_pre_hooks for m in model.modules())
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        expected_probs = WithSoftmax(model)(x).numpy()
        # What the head sees: everything before the final Linear (dropout is identity in eval).
        body = torch.nn.Sequential(*list(model.backbone.children())[:-1])
        xin = (x.permute(0, 3, 1, 2).float() - model.mean * 255.0) / model.std
        expected_emb = body(xin).numpy()
    predictor = Predictor(tmp_path)
    assert predictor.has_embedding
    assert [o.name for o in predictor.session.get_outputs()] == ["probabilities", EMBEDDING_NAME]
    probs, emb = predictor.predict_with_embedding(pixels, batch_size=2)
    assert emb is not None and emb.shape == (5, 128)  # small_cnn at 16 px: 128 channels
    np.testing.assert_allclose(emb, expected_emb, atol=1e-4)
    np.testing.assert_allclose(probs, expected_probs, atol=1e-5)
    np.testing.assert_array_equal(predictor.predict_proba(pixels), probs)
    # Same weights, same bytes (the cross-CPU reproducibility contract still holds).
    again = export_onnx(wrapped, (16, 16, 3), tmp_path / "again.onnx")
    assert again == sha


def test_an_artifact_without_embedding_still_predicts(tmp_path: Path) -> None:
    predictor = Predictor(_export(tmp_path, embedding=False))
    assert not predictor.has_embedding
    pixels = np.zeros((2, 8, 8, 1), np.uint8)
    probs, emb = predictor.predict_with_embedding(pixels)
    assert emb is None and probs.shape == (2, 3)


def _photo(seed: int = 0) -> np.ndarray:
    """A 32×32 grayscale image with edges: random blocks."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(30, 220, (4, 4), dtype=np.uint8)
    return np.kron(blocks, np.ones((8, 8), np.uint8))[:, :, None]


def test_features_move_the_way_the_corruption_says() -> None:
    base = _photo()
    dark = (base * 0.4).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(base[:, :, 0]).filter(ImageFilter.GaussianBlur(2)))[
        :, :, None
    ]
    flat = np.full_like(base, 128)
    f = image_features(
        np.stack([base, dark, blurred, flat]),
        [32, 32, 32, 640],
        [32] * 3 + [480],
        ["PNG"] * 3 + ["JPEG"],
    )
    assert list(f) == [*numeric_features(1), "format"]
    assert f["brightness"][1] < 0.5 * f["brightness"][0]
    assert f["contrast"][1] < f["contrast"][0]
    assert f["sharpness"][2] < 0.5 * f["sharpness"][0]
    assert f["brightness"][3] == pytest.approx(128 / 255, abs=1e-6)
    assert f["contrast"][3] == 0 and f["sharpness"][3] == 0
    assert f["aspect"] == [1.0, 1.0, 1.0, pytest.approx(4 / 3, abs=1e-6)]
    assert f["format"][3] == "JPEG"


def test_rgb_features_see_colour_and_clipping() -> None:
    gray = np.full((1, 8, 8, 3), 100, np.uint8)
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    f = image_features(np.concatenate([gray, red]), [8, 8], [8, 8], ["PNG", "PNG"])
    assert f["colorfulness"][0] == 0 and f["colorfulness"][1] > 0.3
    assert f["mean_red"] == [pytest.approx(100 / 255, abs=1e-6), 1.0]
    assert f["saturated"] == [0.0, 1.0]
    assert f["dark"] == [0.0, 0.0]  # red is not dark: one channel is lit
    with pytest.raises(ValueError, match="one width"):
        image_features(gray, [8, 8], [8], ["PNG"])
    with pytest.raises(ValueError, match="uint8"):
        image_features(gray.astype(np.float32), [8], [8], ["PNG"])


def test_reduce_embedding_is_fixed_and_keeps_distances() -> None:
    rng = np.random.default_rng(1)
    wide = rng.standard_normal((50, 512))
    a, b = reduce_embedding(wide), reduce_embedding(wide)
    assert a.shape == (50, MAX_EMBEDDING_DIMS)
    np.testing.assert_array_equal(a, b)
    d_full = np.linalg.norm(wide[0] - wide[1])
    d_red = np.linalg.norm(a[0] - a[1])
    assert 0.6 < d_red / d_full < 1.4
    narrow = rng.standard_normal((3, 16))
    np.testing.assert_array_equal(reduce_embedding(narrow), narrow)


def test_format_from_path() -> None:
    assert format_from_path("a/b/x.JPG") == "JPEG"
    assert format_from_path("x.tif") == "TIFF"
    assert format_from_path("x.heic") == "HEIC"


def _prepared(tmp_path: Path, n: int = 30) -> Path:
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.save(prepared / f"{split}.npy", rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
        np.save(prepared / f"{split}_labels.npy", np.arange(n) % len(CLASSES))
    with (prepared / "index.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(INDEX_FIELDS)
        for split in ("train", "test"):
            for i in range(n):
                k = i % len(CLASSES)
                w.writerow((split, i, k, CLASSES[k], f"{CLASSES[k]}/{i}.png", "0" * 64, 16, 12))
    return prepared


def test_evaluate_writes_the_reference_profile_next_to_the_model(tmp_path: Path) -> None:
    model_dir = _export(tmp_path / "models")
    evaluate(Params(), _prepared(tmp_path), model_dir, tmp_path / "metrics")
    path = model_dir / REFERENCE_FILE
    data = json.loads(path.read_text())
    ref = load_reference(path)
    card = json.loads((model_dir / "model.json").read_text())
    assert ref.model_sha256 == card["model_sha256"]
    assert ref.rows == ref.total == 30 and ref.classes == CLASSES
    assert ref.features["width"] == [16] * 30 and ref.features["format"] == ["PNG"] * 30
    assert ref.embedding is not None and ref.embedding.shape == (30, 64)
    summary = data["summary"]  # the ranges, for people and range checks
    assert summary["features"]["width"] == {f"p{q}": 16.0 for q in (0, 1, 5, 50, 95, 99, 100)}
    b = summary["features"]["brightness"]
    assert b["p0"] <= b["p5"] <= b["p50"] <= b["p95"] <= b["p100"]
    assert summary["format"] == {"PNG": 1.0}
    assert sum(summary["predicted"].values()) == pytest.approx(1.0)
    assert list(summary["predicted"]) == CLASSES
    # The predictions in the profile are the ones in predictions.csv.
    with (tmp_path / "metrics" / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert ref.predicted == [r["predicted"] for r in rows]
    assert ref.confidence == [float(r["confidence"]) for r in rows]
    # Byte-stable: a second run writes the same file.
    evaluate(Params(), tmp_path / "prepared", model_dir, tmp_path / "metrics")
    assert json.loads(path.read_text()) == data
    # `imgclf verify-model` (and the image build) refuse a profile of another model.
    assert verify_model(model_dir, tmp_path / "metrics" / "evaluate.json") == card["model_sha256"]
    path.write_text(json.dumps({**data, "model_sha256": "0" * 64}))
    with pytest.raises(ModelIntegrityError, match=r"reference\.json profiles model '000"):
        verify_model(model_dir)


def test_reference_is_sampled_when_large_and_refuses_foreign_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 12
    pixels = np.zeros((n, 4, 4, 1), np.uint8)
    probs = np.tile([0.2, 0.8, 0.0], (n, 1))
    monkeypatch.setattr("imgclf.evaluation.reference_profile.MAX_REFERENCE_ROWS", 5)
    ref = build_reference(
        pixels, [4] * n, [4] * n, ["PNG"] * n, probs, None, CLASSES, "f" * 64, seed=0
    )
    assert ref["rows"] == 5 and ref["total"] == n and ref["embedding"] is None
    assert ref["predicted"] == ["b"] * 5
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not an imgclf reference"):
        load_reference(bad)
    with pytest.raises(FileNotFoundError, match="evaluate stage"):
        load_reference(tmp_path / "missing.json")


def test_source_info_reads_size_orientation_and_format() -> None:
    import io

    img = Image.new("RGB", (40, 30), (10, 20, 30))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert source_info(buf.getvalue()) == (40, 30, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the model sees a 30×40 image
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert source_info(buf.getvalue()) == (30, 40, "JPEG")
    assert source_info(b"\x89PNG\r\n\x1a\n broken") == (0, 0, "PNG")


def test_large_inputs_are_measured_on_a_strided_view_small_ones_whole() -> None:
    """224 px inputs cost a quarter (the OOD flag's per-request time, docs/ood.md); the same
    function runs in evaluate and the API, so calibration and served features agree."""
    from imgclf.data.features import SUBSAMPLE_FROM, feature_matrix

    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (2, SUBSAMPLE_FROM, SUBSAMPLE_FROM + 6, 3), dtype=np.uint8)
    names, whole = feature_matrix(big, [640, 640], [480, 480])
    _, strided = feature_matrix(np.ascontiguousarray(big[:, ::2, ::2]), [640, 640], [480, 480])
    assert np.array_equal(whole, strided)
    small = big[:, : SUBSAMPLE_FROM - 1, : SUBSAMPLE_FROM - 1]
    _, a = feature_matrix(small, [1, 1], [1, 1])
    _, b = feature_matrix(np.ascontiguousarray(small[:, ::2, ::2]), [1, 1], [1, 1])
    assert not np.array_equal(a[:, names.index("contrast")], b[:, names.index("contrast")])


def _plain_features(pixels: np.ndarray, widths: list[int], heights: list[int]) -> np.ndarray:
    """The features as their docstring defines them, one quantity at a time in int64: what
    the stacked, planar fast path must equal bit for bit (its sums are exact integers)."""
    from imgclf.data.features import SUBSAMPLE_FROM

    if min(pixels.shape[1:3]) >= SUBSAMPLE_FROM:
        pixels = pixels[:, ::2, ::2]
    n, h, w, c = pixels.shape
    px = pixels.astype(np.int64)

    def mean_std(v: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        v = v.reshape(n, -1)
        k = v.shape[1]
        mean = v.sum(1) / k
        var = (v * v).sum(1) / k - mean * mean
        return mean / scale, np.sqrt(np.maximum(var, 0.0)) / scale

    r, g, b = (px[..., i] for i in range(3)) if c == 3 else (px[..., 0],) * 3
    luma = px[..., 0] * 1000 if c == 1 else r * 299 + g * 587 + b * 114
    lap = 4 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1]
    lap = lap - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:]
    width, height = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    cols = [width, height, width / np.maximum(height, 1.0), *mean_std(luma, 255_000.0)]
    cols.append(mean_std(lap, 1000.0)[1] ** 2)
    cols.append(np.count_nonzero((px >= 250).any(-1).reshape(n, -1), axis=1) / (h * w))
    cols.append(np.count_nonzero((px <= 5).all(-1).reshape(n, -1), axis=1) / (h * w))
    if c == 3:
        for channel in (r, g, b):
            cols += mean_std(channel, 255.0)
        rg_mean, rg_std = mean_std(r - g, 255.0)
        yb_mean, yb_std = mean_std((r + g) - 2 * b, 510.0)
        cols.append(np.hypot(rg_std, yb_std) + 0.3 * np.hypot(rg_mean, yb_mean))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize(
    "shape",
    [(3, 8, 8, 1), (2, 224, 224, 3), (1, 224, 224, 1), (2, 127, 200, 3), (1, 600, 900, 3)],
)
def test_fast_features_equal_the_plain_definition_bit_for_bit(shape: tuple[int, ...]) -> None:
    """The OOD flag computes features per request on channel planes in one stacked pass
    (docs/serving-speed.md); evaluate calibrated on the same function. Equal bytes to the
    one-quantity-at-a-time definition, on noise, on flat and on clipped images, and on a
    strided (not contiguous) input."""
    from imgclf.data.features import feature_matrix

    rng = np.random.default_rng(sum(shape))
    sizes = [list(rng.integers(1, 5000, shape[0])) for _ in range(2)]
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8),
        np.full(shape, 7, np.uint8),
        rng.choice(np.array([0, 3, 252, 255], np.uint8), shape),
        rng.integers(0, 256, (shape[0], shape[1] * 2, *shape[2:]), dtype=np.uint8)[:, ::2],
    ]
    for pixels in images:
        _, fast = feature_matrix(pixels, *sizes)
        assert fast.tobytes() == _plain_features(pixels, *sizes).tobytes()


def test_noted_source_equals_a_second_header_read(tmp_path: Path) -> None:
    """The API takes the upload's size and format from the image its decode opened (no
    second header parse); it must say what :func:`source_info` says, EXIF rotation and a
    reduced-scale JPEG decode included."""
    import io

    from PIL import Image

    from imgclf.data.features import noted_source, source_info
    from imgclf.data.preprocessing import DecodeBudget, open_image

    class Noting(DecodeBudget):
        last = None

        def take(self, img: Image.Image) -> None:
            super().take(img)
            self.last = img

    rng = np.random.default_rng(5)
    files = []
    for size, orientation, fmt in (((1200, 500), 6, "JPEG"), ((640, 480), 1, "JPEG"),
                                   ((300, 200), None, "PNG")):  # fmt: skip
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        buf = io.BytesIO()
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        img.save(buf, fmt, exif=exif.tobytes()) if orientation else img.save(buf, fmt)
        files.append(buf.getvalue())
    for data in files:
        budget = Noting(1 << 30)
        open_image(data, 40_000_000, draft_to=224, budget=budget)
        assert noted_source(budget.last, data) == source_info(data)
    assert noted_source(None, files[0]) == (500, 1200, "JPEG")
