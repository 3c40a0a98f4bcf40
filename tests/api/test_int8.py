"""``export.quantize: int8``: the served file becomes the int8 one, deterministically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from imgclf.artifact.int8_export import calibration_set, quantize_int8, replace_with_int8
from imgclf.artifact.predictor import Predictor
from imgclf.data.prepared_files import load_split
from tests.api.modelfactory import ProjectTree


def test_int8_file_is_deterministic_and_agrees_with_fp32(
    project: ProjectTree, tmp_path: Path
) -> None:
    train_x, _ = load_split(project.prepared, "train")
    fp32 = (project.model_dir / "model.onnx").read_bytes()
    a = quantize_int8(fp32, calibration_set(train_x))
    b = quantize_int8(fp32, calibration_set(train_x))
    assert a == b and a != fp32

    # What train does: model.onnx replaced in place, the card records it and its new hash.
    model_dir = tmp_path / "models"
    shutil.copytree(project.model_dir, model_dir)
    card = json.loads((model_dir / "model.json").read_text())
    val_x, val_y = load_split(project.prepared, "val")
    sha, section = replace_with_int8(model_dir / "model.onnx", card, train_x, val_x, val_y)
    assert section["quantize"] == "int8" and section["calibration_images"] == min(64, len(train_x))
    assert 0.0 <= section["val_accuracy_int8"] <= 1.0
    assert abs(section["val_accuracy_int8"] - section["val_accuracy_fp32"]) < 0.1
    card.update({"model_sha256": sha, "export": section})
    (model_dir / "model.json").write_text(json.dumps(card))

    test_x, _ = load_split(project.prepared, "test")
    int8 = Predictor(model_dir).predict_proba(test_x).argmax(1)  # the integrity check passes
    ref = Predictor(project.model_dir).predict_proba(test_x).argmax(1)
    assert np.mean(int8 == ref) >= 0.9
