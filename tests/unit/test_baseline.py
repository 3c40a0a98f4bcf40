"""The baselines scored beside every model, and the warning when the model loses to them."""

from __future__ import annotations

import numpy as np

from imgclf.evaluation.baseline import beats_baseline, features, score_baselines, warning
from imgclf.report.pr_report import baseline_line


def test_features_area_average_to_at_most_16_px() -> None:
    images = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    images[:, :2, :2, 0] = 255  # exactly one 2×2 block of the red channel
    x = features(images)
    assert x.shape == (3, 16 * 16 * 3)
    small = x.reshape(3, 16, 16, 3)
    assert np.allclose(small[:, 0, 0, 0], 1.0) and np.allclose(small.sum((1, 2, 3)), 1.0)
    assert features(np.zeros((2, 8, 8, 1), dtype=np.uint8)).shape == (2, 64)  # never upsampled
    odd = np.full((1, 25, 25, 1), 255, dtype=np.uint8)
    assert np.allclose(features(odd), 1.0)  # uneven bins still average to the pixel value


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 is brighter on the left half: linearly separable, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 120, (n, 12, 12, 1)).astype(np.uint8)
    images[labels == 1, :, :6] += 100
    return images, labels


def test_linear_baseline_learns_and_majority_does_not() -> None:
    tx, ty = _blobs(200, 0)
    sx, sy = _blobs(100, 1)
    b = score_baselines(tx, ty, sx, sy, n_classes=2, seed=0)
    assert b["accuracy"] >= 0.95 and b["macro_f1"] >= 0.95
    assert b["majority_accuracy"] == 0.5 and b["majority_macro_f1"] < 0.34
    assert score_baselines(tx, ty, sx, sy, 2, seed=0) == b  # byte-stable in dvc.lock


def test_baseline_cost_is_bounded_whatever_the_data_size(monkeypatch) -> None:
    """What keeps the baseline fast, checked without a clock (2 shared cores make any
    wall-clock bound flaky; speed is a benchmark's business): logistic regression sees at
    most ``MAX_FIT`` rows of at most 16×16×C area-averaged features, for ≤ 300 iterations,
    however many and however large the images are."""
    from sklearn.linear_model import LogisticRegression

    from imgclf.evaluation import baseline

    seen: list[tuple[tuple[int, ...], int]] = []
    real_fit = LogisticRegression.fit

    def fit(self, x, y, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((x.shape, self.max_iter))
        return real_fit(self, x[:200], y[:200], *args, **kwargs)  # the shapes are the point

    monkeypatch.setattr(LogisticRegression, "fit", fit)
    rng = np.random.default_rng(0)
    n = baseline.MAX_FIT + 500
    tx = rng.integers(0, 255, (n, 32, 32, 1), dtype=np.uint8)
    ty = np.arange(n) % 10
    score_baselines(tx, ty, tx[:50], ty[:50], n_classes=10, seed=0)
    assert seen == [((baseline.MAX_FIT, 16 * 16), 300)]


def _metrics(acc: float, f1: float, base_acc: float, base_f1: float) -> dict:
    base = {"accuracy": base_acc, "macro_f1": base_f1, "majority_accuracy": 0.5}
    return {"accuracy": acc, "macro_f1": f1, "baseline": base}


def test_warning_names_both_numbers_only_when_the_model_loses() -> None:
    bad = _metrics(0.5, 0.333333, 0.975, 0.974937)
    text = warning(bad)
    assert text is not None and text.startswith("WARNING")
    assert "0.5000" in text and "0.3333" in text and "0.9750" in text and "0.9749" in text
    assert not beats_baseline(_metrics(0.9, 0.9, 0.9, 0.85))  # a tie is not a win
    assert warning(_metrics(0.99, 0.99, 0.97, 0.97)) is None
    assert warning(_metrics(1.0, 1.0, 1.0, 1.0)) is None  # nothing left to beat
    assert warning({"accuracy": 0.5, "macro_f1": 0.3}) is None  # old metrics: no baseline


def test_report_leads_with_the_warning() -> None:
    assert baseline_line(_metrics(0.99, 0.99, 0.97, 0.97)) == []
    assert baseline_line(None) == []
    first, blank = baseline_line(_metrics(0.5, 0.33, 0.975, 0.97))
    assert first.startswith("> ⚠️ **WARNING: the model does not beat a linear baseline")
    assert blank == ""
