"""Metrics on hand-checked cases."""

import numpy as np
import pytest

from imgclf.evaluation.evaluate import expected_calibration_error, score


def test_ece_of_a_calibrated_and_an_overconfident_model() -> None:
    conf = np.full(10, 0.8)
    assert expected_calibration_error(conf, np.array([1] * 8 + [0] * 2, bool), 10) == pytest.approx(
        0
    )
    assert expected_calibration_error(
        np.ones(4), np.array([1, 0, 1, 0], bool), 10
    ) == pytest.approx(0.5)


def test_score_per_class_and_confusion() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    m = score(probs, labels, ["cat", "dog"], bins=5)
    assert m["accuracy"] == 0.75
    assert m["n_errors"] == 1
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    cat = {"class": "cat", "precision": 0.5, "recall": 1.0, "f1": 0.666667, "support": 1}
    assert cat in m["per_class"]
    assert m["per_class"][0]["class"] == "cat"  # a list: DVC does not make it columns
    assert m["macro_f1"] == pytest.approx((0.666667 + 0.8) / 2, abs=1e-6)
