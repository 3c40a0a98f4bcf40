"""evaluate fits, calibrates and measures the OOD flag for any model, photo models included.

A real ONNX export (random weights: the machinery, not the model's quality, is under
test) of an RGB photo-sized model, scored by the real evaluate stage function.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf.ood.fit
from imgclf.artifact.predictor import Predictor
from imgclf.data.prepared_files import INDEX_FIELDS
from imgclf.data.preprocessing import preprocess
from imgclf.evaluation.evaluate import evaluate
from imgclf.jsonio import DETAIL
from imgclf.ood.detector import OOD_FILE, load_detector
from imgclf.ood.synthetic_sets import GENERATORS, ood_sets
from imgclf.params import Params
from tests.images import shape_image
from tests.unit.test_profile import CLASSES, _export


def _photo_split(tmp_path: Path, n: int = 48, size: int = 32) -> Path:
    """A prepared split of RGB 'photos' (coloured shapes on noise), from 320×240 JPEGs."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    rows = []
    for split, offset in (("train", 0), ("test", 1000)):
        labels = np.arange(n) % len(CLASSES)
        px = np.stack([np.asarray(shape_image(int(k), (size, size), offset + i))
                       for i, k in enumerate(labels)])  # fmt: skip
        np.save(prepared / f"{split}.npy", px)
        np.save(prepared / f"{split}_labels.npy", labels)
        rows += [(split, i, k, CLASSES[k], f"{CLASSES[k]}/{i}.jpg", "0" * 64, 320, 240)
                 for i, k in enumerate(labels)]  # fmt: skip
    with (prepared / "index.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([INDEX_FIELDS, *rows])
    return prepared


def test_evaluate_calibrates_and_measures_the_flag_on_a_photo_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real generators, 8 images per set instead of 48: the test's time is inference.
    monkeypatch.setattr(imgclf.ood.fit, "ood_sets", functools.partial(ood_sets, per_set=8))
    model_dir = _export(tmp_path / "models", channels=3, size=32)
    prepared = _photo_split(tmp_path)
    metrics = evaluate(Params(), prepared, model_dir, tmp_path / "metrics")
    stats = (model_dir / OOD_FILE).read_bytes()
    doc = json.loads(stats)
    assert {"colorfulness", "mean_red", "size", "aspect", "brightness"} <= set(doc["checks"])
    assert doc["embedding"]["dims"] <= 64 and doc["pass_rate"] == 0.95

    ood = metrics["ood"]
    assert ood["test_pass_rate"] >= 0.95 and set(ood["sets"]) == set(GENERATORS)
    assert 0 <= ood["false_accept"] <= 1 and 0 <= ood["auroc"] <= 1
    # Headline columns for `dvc exp show` and the PR report; the rest under `detail`.
    written = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert set(written["ood"]) == {"auroc", "false_accept"}
    assert {"sets", "threshold", "test_pass_rate"} <= set(written[DETAIL][0]["ood"])

    # Byte-stable: a second run writes the same statistics.
    evaluate(Params(), prepared, model_dir, tmp_path / "metrics")
    assert (model_dir / OOD_FILE).read_bytes() == stats

    # And the API's detector, loaded from that file, flags a 600×400 noise photo.
    predictor = Predictor(model_dir)
    detector = load_detector(model_dir, predictor.card["model_sha256"])
    buf = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    pixels = preprocess(buf.getvalue(), predictor.spec)[None]
    _, embedding = predictor.predict_with_embedding(pixels)
    (verdict,) = detector.judge_uploads(pixels, embedding, [buf.getvalue()])
    assert not verdict.in_distribution and verdict.score > 1

    # The image build's integrity check refuses another model's statistics.
    from imgclf.artifact.integrity import ModelIntegrityError, verify_model

    assert verify_model(model_dir) == doc["model_sha256"]
    (model_dir / OOD_FILE).write_text(json.dumps({**doc, "model_sha256": "0" * 64}))
    with pytest.raises(ModelIntegrityError, match=r"ood\.json was calibrated for model '000"):
        verify_model(model_dir)
