"""The agreement contract's arithmetic: what counts as agreeing, what the lock records."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from imgclf.artifact.agreement import (
    BOUNDS,
    TOLERANCE,
    Agreement,
    agreement,
    golden_batch,
    golden_indices,
    load_golden,
)
from imgclf.artifact.files import GOLDEN_FILE
from imgclf.artifact.predictor import session_options


def test_agreement_needs_the_same_top1_and_a_difference_within_tolerance() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    assert agreement(ref, ref).ok and agreement(ref, ref).max_abs_diff == 0.0
    near = ref + np.float32(5e-5)
    assert agreement(ref, near).ok
    far = ref + np.float32(2e-4)
    assert not agreement(ref, far).ok and agreement(ref, far).top1_agreement == 1.0
    flipped = ref[:, ::-1]
    result = agreement(ref, flipped)
    assert result.top1_agreement == 0.0 and not result.ok
    with pytest.raises(ValueError, match="cannot compare"):
        agreement(ref, ref[:1])


def test_the_recorded_bound_is_a_rung_not_the_cpu_specific_value() -> None:
    """Differences of 1e-7 and 9e-7 (two CPUs) record the same bound: the lock agrees."""
    a, b = Agreement(10, 1.0, 1e-7), Agreement(10, 1.0, 9e-7)
    assert a.metrics() == b.metrics()
    assert a.metrics()["max_abs_diff_bound"] == BOUNDS[0] == 1e-5
    assert Agreement(10, 1.0, 3e-4).bound == 1e-3
    assert Agreement(10, 1.0, 3e-4).metrics()["within_tolerance"] is False
    assert "max_abs_diff" not in a.metrics()  # the exact value is printed, not recorded


def test_golden_indices_take_every_class_early_and_are_deterministic() -> None:
    labels = np.array([0] * 50 + [1] * 3 + [2] * 50)
    picked = golden_indices(labels, count=7)
    assert picked == golden_indices(labels, count=7) == sorted(picked)
    assert set(labels[picked]) == {0, 1, 2}
    assert len(golden_indices(np.array([1, 1]), count=16)) == 2


def test_golden_file_round_trips_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    probs = np.array([[0.25, 0.75], [0.6, 0.4]], np.float32)
    doc = golden_batch(pixels, probs, "sha", agreement(probs, probs))
    (tmp_path / GOLDEN_FILE).write_text(json.dumps(doc))
    golden = load_golden(tmp_path, "sha")
    assert golden is not None and np.array_equal(golden.pixels, pixels)
    assert np.array_equal(golden.probabilities, probs.astype(np.float64))
    assert golden.tolerance == TOLERANCE
    assert load_golden(tmp_path / "nowhere", "sha") is None
    with pytest.raises(ValueError, match="another model"):
        load_golden(tmp_path, "other")
    doc["pixels"] = base64.b64encode(b"\0" * 5).decode()
    (tmp_path / GOLDEN_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="do not fill shape"):
        load_golden(tmp_path, "sha")


def test_session_kinds_differ_only_for_portable_cards() -> None:
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    portable_card = {"training": {"numerics": "portable-cpu"}}
    fast_card = {"training": {"numerics": "fast"}}
    assert session_options(portable_card).graph_optimization_level == level.ORT_ENABLE_EXTENDED
    assert session_options(portable_card, kind="fast").graph_optimization_level == (
        level.ORT_ENABLE_ALL
    )
    assert session_options(fast_card).graph_optimization_level == level.ORT_ENABLE_ALL
    with pytest.raises(ValueError, match="session kind"):
        session_options(portable_card, kind="turbo")
