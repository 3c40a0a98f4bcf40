"""Is an accuracy change larger than noise? Paired statistics on per-sample predictions.

Two revisions evaluated on the *same* test images disagree only on a few samples;
comparing their accuracies as if they were independent would throw that pairing away
and call real improvements noise (or the reverse). So the comparison is made sample by
sample, keyed on the image path that ``evaluate`` writes to ``predictions.csv``:

* McNemar's exact test: under "no difference" the discordant samples (right in one
  revision, wrong in the other) split 50/50, so a two-sided binomial test on them is
  exact even for the handful of disagreements a small test set produces.
* A seeded bootstrap over samples of the paired correctness difference gives a 95 %
  confidence interval for the accuracy change in the units a reviewer reads.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Prediction:
    """One row of ``metrics/predictions.csv`` (only what the comparison needs).

    ``confidence`` and ``position`` (the row in the test split) are for the report's
    pictures; they take no part in equality, so "the same predictions" still means the
    same labels, whatever the last digits of a probability did.
    """

    actual: str
    predicted: str
    correct: bool
    confidence: float | None = field(default=None, compare=False)
    position: int | None = field(default=None, compare=False)


def parse_predictions(text: str) -> dict[str, Prediction]:
    """Rows of a predictions CSV keyed by the dataset-relative image path (a stable key)."""
    rows: dict[str, Prediction] = {}
    for row in csv.DictReader(io.StringIO(text)):
        rows[row["path"]] = Prediction(
            actual=row["actual"],
            predicted=row["predicted"],
            correct=row["correct"] == "1",
            confidence=_number(row.get("confidence"), float),
            position=_number(row.get("position"), int),
        )
    return rows


def _number(text: str | None, kind: type) -> Any:
    """A CSV cell as a number, or None when the column is missing or not a number."""
    try:
        return kind(text) if text not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class PairedComparison:
    """The result of comparing two revisions' predictions on the same test set."""

    n: int
    base_accuracy: float
    head_accuracy: float
    base_only: int  # right in base, wrong in head
    head_only: int  # wrong in base, right in head
    p_value: float
    ci_low: float
    ci_high: float
    level: float = 0.95
    # The discordant samples themselves (image paths, sorted): what the report pictures.
    broken: tuple[str, ...] = field(default=(), compare=False)  # right in base, wrong in head
    fixed: tuple[str, ...] = field(default=(), compare=False)  # wrong in base, right in head

    @property
    def difference(self) -> float:
        """Head minus base accuracy (a fraction, not percentage points)."""
        return self.head_accuracy - self.base_accuracy

    @property
    def identical(self) -> bool:
        """No sample changed correctness: the two revisions score the same on every image."""
        return self.base_only == 0 and self.head_only == 0

    @property
    def significant(self) -> bool:
        """Likely real: McNemar rejects at ALPHA *and* the bootstrap interval excludes zero."""
        return self.p_value < ALPHA and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def verdict(self) -> str:
        """The two words a reviewer looks for."""
        if self.identical:
            return "no change"
        return "likely real" if self.significant else "within noise"


def mcnemar_exact(base_only: int, head_only: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs against 1/2."""
    discordant = base_only + head_only
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(head_only, discordant, 0.5, alternative="two-sided").pvalue)


def bootstrap_ci(
    base_correct: np.ndarray,
    head_correct: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of the accuracy difference, resampling *pairs* so the pairing is kept.

    Seeded, so the same two revisions always get the same interval in the PR comment.
    """
    delta = head_correct.astype(np.int8) - base_correct.astype(np.int8)
    if len(delta) == 0 or not delta.any():
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(delta), size=(resamples, len(delta)))
    means = delta[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


class NotPairedError(ValueError):
    """The two revisions did not evaluate the same test samples."""


def compare_predictions(
    base: dict[str, Prediction],
    head: dict[str, Prediction],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> PairedComparison:
    """Paired comparison of two revisions' per-sample predictions.

    Raises :class:`NotPairedError` when the samples (paths or their true labels) differ:
    a paired test on different test sets would be meaningless.
    """
    if base.keys() != head.keys():
        only_base = len(base.keys() - head.keys())
        only_head = len(head.keys() - base.keys())
        raise NotPairedError(
            f"the test sets differ ({only_base} samples only in base, {only_head} only in this "
            "revision)"
        )
    relabelled = [k for k in base if base[k].actual != head[k].actual]
    if relabelled:
        raise NotPairedError(f"{len(relabelled)} test samples have a different true label")
    if not base:
        raise NotPairedError("no test samples")
    keys = sorted(base)
    b = np.array([base[k].correct for k in keys])
    h = np.array([head[k].correct for k in keys])
    base_only = int((b & ~h).sum())
    head_only = int((~b & h).sum())
    low, high = bootstrap_ci(b, h, resamples=resamples, seed=seed)
    return PairedComparison(
        n=len(keys),
        base_accuracy=float(b.mean()),
        head_accuracy=float(h.mean()),
        base_only=base_only,
        head_only=head_only,
        p_value=mcnemar_exact(base_only, head_only),
        ci_low=low,
        ci_high=high,
        broken=tuple(k for k, bi, hi in zip(keys, b, h, strict=True) if bi and not hi),
        fixed=tuple(k for k, bi, hi in zip(keys, b, h, strict=True) if hi and not bi),
    )


def confusion_changes(
    base: dict[str, Prediction], head: dict[str, Prediction]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(actual, predicted) → (base count, head count) for every cell whose count changed."""
    counts: dict[tuple[str, str], list[int]] = {}
    for which, rows in enumerate((base, head)):
        for p in rows.values():
            counts.setdefault((p.actual, p.predicted), [0, 0])[which] += 1
    return {cell: (b, h) for cell, (b, h) in counts.items() if b != h}
