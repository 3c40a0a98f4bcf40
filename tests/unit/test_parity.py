"""The exported ONNX artifact predicts what the PyTorch model predicts (torch vs onnxruntime)."""

from pathlib import Path

import numpy as np
import torch

from imgclf.artifact.export import export_onnx
from imgclf.artifact.predictor import Predictor
from imgclf.jsonio import write_json
from imgclf.params import ModelParams
from imgclf.training.architectures import WithSoftmax, build_model


def test_torch_and_onnx_agree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelParams(), 3, 4, 16, [0.5] * 3, [0.25] * 3).eval()
    sha = export_onnx(WithSoftmax(model), (16, 16, 3), tmp_path / "model.onnx")
    card = {
        "classes": ["a", "b", "c", "d"],
        "preprocess": {
            "image_size": 16,
            "color_mode": "rgb",
            "resize": "squash",
            "max_pixels": 10**6,
        },
        "model_sha256": sha,
    }
    write_json(tmp_path / "model.json", card)
    pixels = np.random.default_rng(0).integers(0, 256, (37, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = WithSoftmax(model)(torch.from_numpy(pixels)).numpy()
    got = Predictor(tmp_path).predict_proba(pixels, batch_size=10)
    assert got.shape == (37, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_export_is_byte_stable(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = WithSoftmax(build_model(ModelParams(), 1, 3, 8, [0.5], [0.25])).eval()
    a = export_onnx(model, (8, 8, 1), tmp_path / "a.onnx")
    b = export_onnx(model, (8, 8, 1), tmp_path / "b.onnx")
    assert a == b
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
