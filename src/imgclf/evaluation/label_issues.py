"""Likely label errors: the training images whose label the data most likely contradicts.

Why: a few per cent of wrong labels in a team's folder cap the accuracy any model can
reach, and nobody re-reads 8,000 labels. Confident learning (``cleanlab``'s
``find_label_issues``) needs only *out-of-fold* predicted probabilities: each image
scored by a model that never saw it. The model here is the project's linear baseline
(:mod:`imgclf.evaluation.baseline`: logistic regression on ≤16×16 area-averaged
pixels), fitted on K seeded folds: cheap (seconds for thousands of images), no torch,
and good enough that an image it confidently puts in another class is worth a look.
Images are ranked by the probability the model gives their label (lowest first).

Used by ``imgclf label-issues`` and ``imgclf data-report --label-issues``; measured
on injected label noise by ``bench/bench_label_issues.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.prepared_files import load_meta, load_split, read_index
from imgclf.evaluation.baseline import features

FOLDS = 5
# Out-of-fold fits see at most this many images each (a seeded sample): the cost stays
# bounded on a big folder; every image is still scored by a model that did not see it.
MAX_FIT = 8000


@dataclass(frozen=True)
class LabelIssue:
    """One training image whose label the out-of-fold model contradicts."""

    rank: int
    position: int  # row in the training split
    path: str
    given: str
    suggested: str
    given_probability: float  # the model's probability for the given label
    suggested_probability: float


def out_of_fold_probabilities(
    images: np.ndarray, labels: np.ndarray, n_classes: int, seed: int, folds: int = FOLDS
) -> np.ndarray:
    """``(N, n_classes)`` probabilities, each row from a model fitted without that image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = features(images)
    smallest = int(np.bincount(labels, minlength=n_classes)[np.unique(labels)].min())
    k = max(2, min(folds, smallest))
    probs = np.zeros((len(labels), n_classes))
    rng = np.random.default_rng(seed)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit, held in splitter.split(x, labels):
        if len(fit) > MAX_FIT:
            fit = np.sort(rng.choice(fit, MAX_FIT, replace=False))
        mean, std = x[fit].mean(0), x[fit].std(0) + 1e-3
        clf = LogisticRegression(C=1.0, max_iter=300, random_state=seed)
        clf.fit((x[fit] - mean) / std, labels[fit])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba((x[held] - mean) / std)
    return probs


def rank_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Positions of the likely label errors, most likely first (cleanlab's defaults)."""
    from cleanlab.filter import find_label_issues

    return np.asarray(
        find_label_issues(labels, probs, return_indices_ranked_by="self_confidence"), dtype=int
    )


def find_issues(prepared: Path, seed: int = 42, folds: int = FOLDS) -> list[LabelIssue]:
    """The ranked likely label errors of the training split of a prepared folder."""
    images, labels = load_split(prepared, "train")
    classes = load_meta(prepared)["classes"]
    rows = read_index(prepared, "train")
    probs = out_of_fold_probabilities(images, labels, len(classes), seed, folds)
    out = []
    for rank, pos in enumerate(rank_issues(labels, probs).tolist(), 1):
        best = int(probs[pos].argmax())
        out.append(
            LabelIssue(
                rank=rank,
                position=pos,
                path=rows[pos]["path"],
                given=classes[int(labels[pos])],
                suggested=classes[best],
                given_probability=round(float(probs[pos, labels[pos]]), 4),
                suggested_probability=round(float(probs[pos, best]), 4),
            )
        )
    return out


def as_dicts(issues: list[LabelIssue]) -> list[dict[str, Any]]:
    """JSON-ready rows."""
    return [dict(vars(i)) for i in issues]


def markdown(issues: list[LabelIssue], n_train: int, top: int = 50) -> list[str]:
    """A markdown section: how many, and the top ``top`` as a table."""
    lines = [
        f"{len(issues)} of {n_train} training images look mislabelled (out-of-fold "
        "linear baseline + cleanlab's confident learning; most likely first).",
        "",
    ]
    if issues:
        lines += [
            "| rank | file | label | data suggests | p(label) | p(suggested) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {i.rank} | `{i.path}` | `{i.given}` | `{i.suggested}` | "
            f"{i.given_probability:.3f} | {i.suggested_probability:.3f} |"
            for i in issues[:top]
        ]
        if len(issues) > top:
            lines.append(f"\n… and {len(issues) - top} more (`imgclf label-issues --json`).")
        lines.append("")
    return lines
