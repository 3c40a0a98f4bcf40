"""What is served is what was evaluated: API answers on the test split equal evaluate's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np

from imgclf.artifact.agreement import TOLERANCE
from imgclf.artifact.predictor import Predictor
from imgclf.data.prepared_files import load_split
from imgclf.jsonio import expand
from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree


def test_api_predictions_equal_evaluate_outputs(
    client: httpx.Client, project: ProjectTree, test_split_files: list[Path]
) -> None:
    """Every test image, uploaded as its raw file, through the batch endpoint.

    The API answers with the fast session, ``evaluate`` scored with the portable one
    (imgclf.artifact.agreement). The guarantee: labels equal ``metrics/predictions.csv``
    on every test image, and every probability is within the tolerance the golden
    batch records (1e-4) of the evaluated one — and within the bound evaluate measured
    on this split (``serving_session.max_abs_diff_bound``).
    """
    with (project.metrics_dir / "predictions.csv").open() as fh:
        expected = list(csv.DictReader(fh))
    assert [r["path"] for r in expected] == [
        str(p.relative_to(project.raw)) for p in test_split_files
    ]
    images, _ = load_split(project.prepared, "test")
    evaluated = Predictor(project.model_dir).predict_proba(images)
    metrics = expand(json.loads((project.metrics_dir / "evaluate.json").read_text()))
    bound = metrics["serving_session"]["max_abs_diff_bound"]
    assert bound <= TOLERANCE and metrics["serving_session"]["top1_agreement"] == 1.0
    assert client.get("/ready").json()["session"]["session"] == "fast"

    batch = int(TEST_LIMITS["IMGCLF_MAX_BATCH"])
    served: list[dict] = []
    for i in range(0, len(test_split_files), batch):
        chunk = test_split_files[i : i + batch]
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in chunk]
        resp = client.post("/predict/batch", files=files)
        assert resp.status_code == 200, resp.text
        served += resp.json()["results"]

    assert len(served) == len(expected) == len(evaluated)
    classes = list(served[0]["probabilities"])
    for row, got, probs in zip(expected, served, evaluated, strict=True):
        assert got["ok"], got
        assert got["label"] == row["predicted"], row["path"]
        assert abs(got["confidence"] - float(row["confidence"])) <= bound + 5e-7, row["path"]
        np.testing.assert_allclose(
            [got["probabilities"][c] for c in classes], probs, rtol=0, atol=bound
        )


def test_single_endpoint_matches_batch(client: httpx.Client, test_split_files: list[Path]) -> None:
    files = test_split_files[:5]
    batch = client.post(
        "/predict/batch", files=[("files", (p.name, p.read_bytes())) for p in files]
    ).json()["results"]
    for path, item in zip(files, batch, strict=True):
        one = client.post("/predict", files={"file": (path.name, path.read_bytes())}).json()
        assert one["label"] == item["label"]
        assert one["probabilities"] == item["probabilities"]
