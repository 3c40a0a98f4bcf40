"""Baselines scored beside every model: the majority class and a linear model on pixels.

Why: on a few hundred images a CNN can end up no better than a coin while a one-line
scikit-learn model on the same split does far better (issue 10). A metric alone does
not say whether 0.80 is good; the same split scored by the simplest sensible models
does. ``evaluate`` writes these numbers next to the model's, and :func:`warning` turns
"the model does not beat the linear baseline" into one line that the stage prints and
``imgclf report`` puts first.

No torch here (``evaluate`` must not load it): numpy and scikit-learn only, seeded and
rounded, so the numbers are byte-stable in ``dvc.lock``. scikit-learn is imported where
it is used: ``imgclf report`` needs :func:`warning` only and should not pay ~1 s for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The linear model sees at most SIDE×SIDE pixels per channel: enough to separate
# classes a linear model can separate at all, and it keeps the fit ≤ 2 s on 2 cores.
SIDE = 16
# Logistic regression is fitted on at most this many training images (a seeded sample):
# the baseline is a yardstick, not a model to ship, and must stay cheap on big folders.
MAX_FIT = 5000
CHUNK = 256
LINEAR_NAME = f"logistic regression on ≤{SIDE}×{SIDE} pixels"


def _bins(size: int, side: int) -> np.ndarray:
    """``(side, size)`` area-averaging matrix: row ``i`` averages the pixels of bin ``i``."""
    matrix = np.zeros((side, size), dtype=np.float64)
    for i, cols in enumerate(np.array_split(np.arange(size), side)):
        matrix[i, cols] = 1.0 / len(cols)
    return matrix


def features(images: np.ndarray, side: int = SIDE) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` → float ``(N, s·s·C)`` in [0, 1], area-downsampled to ``s ≤ side``.

    Area averaging (not subsampling) keeps thin strokes visible at low resolution;
    it is done in chunks so a memory-mapped split of photos is never loaded whole.
    """
    n, h, w, c = images.shape
    rows, cols = _bins(h, min(h, side)), _bins(w, min(w, side))
    out = np.empty((n, rows.shape[0] * cols.shape[0] * c), dtype=np.float64)
    for start in range(0, n, CHUNK):
        block = np.asarray(images[start : start + CHUNK], dtype=np.float64) / 255.0
        small = np.einsum("ih,nhwc,jw->nijc", rows, block, cols)
        out[start : start + len(block)] = small.reshape(len(block), -1)
    return out


def _scores(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    accuracy = float((predicted == labels).mean())
    macro_f1 = f1_score(
        labels, predicted, labels=list(range(n_classes)), average="macro", zero_division=0
    )
    return round(accuracy, 6), round(float(macro_f1), 6)


def score_baselines(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    seed: int,
) -> dict[str, Any]:
    """Fit on the training split, score on the test split: the ``baseline`` metrics block.

    ``accuracy``/``macro_f1`` are the linear model's (the yardstick in the warning);
    ``majority_*`` predict the most frequent training class for everything.
    """
    from sklearn.linear_model import LogisticRegression

    majority = int(np.bincount(train_y, minlength=n_classes).argmax())
    maj_acc, maj_f1 = _scores(test_y, np.full_like(test_y, majority), n_classes)
    if len(np.unique(train_y)) < 2:  # nothing for a classifier to learn
        lin_acc, lin_f1 = maj_acc, maj_f1
    else:
        rng = np.random.default_rng(seed)
        fit = np.arange(len(train_y))
        if len(fit) > MAX_FIT:
            fit = np.sort(rng.choice(fit, MAX_FIT, replace=False))
        x_train = features(train_x[fit] if len(fit) < len(train_y) else train_x)
        mean, std = x_train.mean(0), x_train.std(0) + 1e-3
        clf = LogisticRegression(C=1.0, max_iter=300, random_state=seed)
        clf.fit((x_train - mean) / std, train_y[fit])
        predicted = clf.predict((features(test_x) - mean) / std)
        lin_acc, lin_f1 = _scores(test_y, predicted, n_classes)
    return {
        "accuracy": lin_acc,
        "macro_f1": lin_f1,
        "majority_accuracy": maj_acc,
        "majority_macro_f1": maj_f1,
    }


def beats_baseline(metrics: dict[str, Any]) -> bool:
    """True unless the model is no better than the linear baseline on accuracy or macro-F1.

    "Better" is strict: a tie with logistic regression means the network added nothing.
    A perfect model counts as beating it (nothing is left to beat on easy data).
    """
    base = metrics.get("baseline")
    if not isinstance(base, dict) or "accuracy" not in base:
        return True
    if metrics["accuracy"] >= 1.0:
        return True
    return metrics["accuracy"] > base["accuracy"] and metrics["macro_f1"] > base["macro_f1"]


def warning(metrics: dict[str, Any]) -> str | None:
    """The one-line warning (plain text) when the model does not beat the baseline, else None.

    The stage prints it and ``imgclf report`` puts it first, so a worthless model is
    the first thing anyone reads.
    """
    if beats_baseline(metrics):
        return None
    base = metrics["baseline"]
    return (
        f"WARNING: the model does not beat a linear baseline: test accuracy "
        f"{metrics['accuracy']:.4f} / macro-F1 {metrics['macro_f1']:.4f} vs "
        f"{LINEAR_NAME} {base['accuracy']:.4f} / {base['macro_f1']:.4f} "
        f"(majority class: accuracy {base['majority_accuracy']:.4f}). "
        "See docs/own-data.md, 'What to tune first'."
    )
