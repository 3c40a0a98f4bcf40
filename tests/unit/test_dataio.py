"""Metrics files: headline scalars for `dvc exp show`, the rest under `detail`."""

from __future__ import annotations

from imgclf.jsonio import DETAIL, expand, with_detail


def test_detail_keys_leave_the_table_and_come_back_flat() -> None:
    metrics = {
        "accuracy": 0.9,
        "model_sha256": "ab" * 32,
        "baseline": {"accuracy": 0.8, "majority_accuracy": 0.1},
        "per_class": [{"class": "a"}],
    }
    stored = with_detail(metrics, ("model_sha256", "baseline.majority_accuracy"))
    assert stored == {
        "accuracy": 0.9,
        "baseline": {"accuracy": 0.8},
        "per_class": [{"class": "a"}],
        DETAIL: [{"model_sha256": "ab" * 32, "baseline": {"majority_accuracy": 0.1}}],
    }
    assert metrics["baseline"]["majority_accuracy"] == 0.1  # the input is not modified
    assert expand(stored) == metrics


def test_files_without_detail_read_as_they_are() -> None:
    old = {"accuracy": 0.5, "model_sha256": "c" * 64}  # written before the split
    assert expand(old) == old
