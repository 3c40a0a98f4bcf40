"""A model file that is not the one its card (and the metrics) describe is refused everywhere.

Real files: a small but genuine ONNX model (onnx.helper, loaded by onnxruntime), its
card with the file's real sha256, an evaluate.json naming the same hash; then one byte
of the model is changed, as an overwritten object in the bucket would be.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.artifact.integrity import ModelIntegrityError, main, verify_model
from tests.support import ROOT, imgclf

SIZE = 8
CLASSES = ["cat", "dog"]


def write_model(model_dir: Path) -> str:
    """uint8 NHWC pixels → mean brightness → 2-class softmax; returns the file's sha256."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", SIZE, SIZE, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString(deterministic=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """models/ with model.onnx, its card, and metrics/evaluate.json of the same model."""
    models = tmp_path / "models"
    sha = write_model(models)
    card = {
        "classes": CLASSES,
        "preprocess": {"image_size": SIZE, "color_mode": "grayscale", "resize": "squash",
                       "max_pixels": 10**6},
        "model_sha256": sha,
    }  # fmt: skip
    (models / "model.json").write_text(json.dumps(card))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(
        json.dumps({"accuracy": 0.5, "model_sha256": sha})
    )
    return models


def tamper(model_dir: Path) -> None:
    """Flip one byte of the weights: same size, still a loadable ONNX file, other model."""
    path = model_dir / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01
    path.write_bytes(bytes(data))


def test_intact_model_passes(model_dir: Path) -> None:
    sha = json.loads((model_dir / "model.json").read_text())["model_sha256"]
    assert verify_model(model_dir, model_dir.parent / "metrics/evaluate.json") == sha


def test_tampered_model_is_refused_with_the_reason(model_dir: Path) -> None:
    tamper(model_dir)
    with pytest.raises(ModelIntegrityError) as err:
        verify_model(model_dir)
    message = str(err.value)
    assert "model.onnx does not match its card" in message
    assert "dvc pull" in message and "do not ship" in message


def test_card_of_another_model_than_the_metrics_is_refused(model_dir: Path) -> None:
    """Model and card replaced together: the committed metrics still name the old model."""
    sha = write_model(model_dir)  # same bytes: rewrite the card as if for another model
    other = hashlib.sha256(b"another model").hexdigest()
    metrics = model_dir.parent / "metrics/evaluate.json"
    metrics.write_text(json.dumps({"model_sha256": other}))
    with pytest.raises(ModelIntegrityError, match=r"not of .*model\.onnx"):
        verify_model(model_dir, metrics)
    assert verify_model(model_dir) == sha, "without metrics only the card is checked"


@pytest.mark.parametrize("value", [None, "", "abc", 42])
def test_card_without_a_valid_hash_cannot_vouch(model_dir: Path, value: object) -> None:
    card = json.loads((model_dir / "model.json").read_text())
    card["model_sha256"] = value
    (model_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelIntegrityError, match="no valid model_sha256"):
        verify_model(model_dir)


def test_module_entry_point_used_by_the_dockerfile(model_dir: Path) -> None:
    """`python -m imgclf.artifact.integrity` (stdlib only, as in the image): 0, then 1."""
    metrics = str(model_dir.parent / "metrics/evaluate.json")
    cmd = [
        sys.executable,
        "-m",
        "imgclf.artifact.integrity",
        str(model_dir),
        "--evaluated",
        metrics,
    ]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: ")
    tamper(model_dir)
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1
    assert "error: model integrity check failed:" in bad.stderr
    assert "does not match its card" in bad.stderr
    assert main([str(model_dir)]) == 1


def test_cli_verify_model(model_dir: Path) -> None:
    metrics = str(model_dir.parent / "metrics/evaluate.json")
    args = ("verify-model", "--model-dir", str(model_dir), "--evaluated", metrics)
    assert "matches model.json and" in imgclf(model_dir.parent, *args).stdout
    tamper(model_dir)
    proc = imgclf(model_dir.parent, *args, check=False)
    assert proc.returncode == 1
    assert "does not match its card" in proc.stderr


def test_predictor_refuses_a_tampered_model(model_dir: Path) -> None:
    import numpy as np

    from imgclf.artifact.predictor import Predictor

    probs = Predictor(model_dir).predict_proba(np.zeros((2, SIZE, SIZE, 1), np.uint8))
    assert probs.shape == (2, 2)
    tamper(model_dir)
    with pytest.raises(ModelIntegrityError, match="does not match its card"):
        Predictor(model_dir)


def test_api_stays_up_but_not_ready_on_a_tampered_model(model_dir: Path) -> None:
    """The server does not serve it: /ready is 503 and says why; /health still answers."""
    from fastapi.testclient import TestClient

    from imgclf.serving.app import create_app
    from imgclf.serving.settings import Settings

    tamper(model_dir)
    app = create_app(Settings().with_model_dir(model_dir))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "ModelIntegrityError" in ready.json()["detail"]
        assert "does not match its card" in ready.json()["detail"]
        assert client.post("/predict", files={"file": ("x.png", b"\x89PNG")}).status_code == 503
