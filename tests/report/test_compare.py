"""The noise test against cases with a known answer."""

from __future__ import annotations

import pytest

from imgclf.evaluation.paired_test import (
    NotPairedError,
    Prediction,
    bootstrap_ci,
    compare_predictions,
    confusion_changes,
    mcnemar_exact,
    parse_predictions,
)


def preds(correct: list[bool], prefix: str = "s") -> dict[str, Prediction]:
    """Samples of class 'a'; a wrong one is predicted as 'b'."""
    return {f"{prefix}{i}": Prediction("a", "a" if ok else "b", ok) for i, ok in enumerate(correct)}


def test_identical_predictions_are_no_change() -> None:
    base = preds([True] * 90 + [False] * 10)
    result = compare_predictions(base, dict(base))
    assert result.identical
    assert result.difference == 0
    assert result.p_value == 1.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.verdict == "no change"
    assert not result.significant


def test_large_constructed_improvement_is_significant() -> None:
    # 1,000 samples: base gets 800 right; head fixes 100 of its errors and breaks 5.
    base_ok = [True] * 800 + [False] * 200
    head_ok = [True] * 795 + [False] * 5 + [True] * 100 + [False] * 100
    result = compare_predictions(preds(base_ok), preds(head_ok))
    assert (result.head_only, result.base_only) == (100, 5)
    assert result.base_accuracy == pytest.approx(0.800)
    assert result.head_accuracy == pytest.approx(0.895)
    assert result.p_value < 1e-20
    assert 0 < result.ci_low < 0.095 < result.ci_high
    assert result.verdict == "likely real"


def test_a_few_flips_are_within_noise() -> None:
    base_ok = [True] * 95 + [False] * 5
    head_ok = [True] * 94 + [False] + [True] * 2 + [False] * 3  # fixes 2, breaks 1
    result = compare_predictions(preds(base_ok), preds(head_ok))
    assert (result.head_only, result.base_only) == (2, 1)
    assert result.p_value == pytest.approx(1.0)
    assert result.ci_low < 0 < result.ci_high
    assert result.verdict == "within noise"


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(mcnemar_exact(9, 1))


def test_bootstrap_is_seeded_and_paired() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    base = rng.random(500) < 0.9
    head = base.copy()
    head[:20] = True
    assert bootstrap_ci(base, head) == bootstrap_ci(base, head)
    low, high = bootstrap_ci(base, head)
    assert low <= (head.mean() - base.mean()) <= high


def test_different_test_sets_are_not_paired() -> None:
    with pytest.raises(NotPairedError, match="test sets differ"):
        compare_predictions(preds([True] * 10), preds([True] * 10, prefix="other"))
    relabelled = {k: Prediction("z", p.predicted, p.correct) for k, p in preds([True]).items()}
    with pytest.raises(NotPairedError, match="different true label"):
        compare_predictions(preds([True]), relabelled)


def test_parse_and_confusion_changes() -> None:
    base = parse_predictions(
        "position,path,actual,predicted,confidence,correct\n"
        "0,a/1.png,a,a,0.9,1\n1,b/1.png,b,a,0.6,0\n2,b/2.png,b,b,0.8,1\n"
    )
    head = parse_predictions(
        "position,path,actual,predicted,confidence,correct\n"
        "0,a/1.png,a,a,0.9,1\n1,b/1.png,b,b,0.7,1\n2,b/2.png,b,b,0.8,1\n"
    )
    assert base["b/1.png"] == Prediction("b", "a", False)
    assert confusion_changes(base, head) == {("b", "a"): (1, 0), ("b", "b"): (1, 2)}
    assert confusion_changes(base, base) == {}
