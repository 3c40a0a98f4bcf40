"""Fit, calibrate and measure the OOD detector (:mod:`imgclf.ood.detector`) in the evaluate stage.

* **fit** on the training split: the input checks' allowed ranges (0.1–99.9 % quantiles
  of :func:`imgclf.data.features.image_features`, widened by a margin) and the feature space
  (class means and a shared, shrunk covariance of the embedding);
* **calibrate** on the test split: the distance threshold that lets
  ``evaluate.ood_pass_rate`` (default 95 %) of the test images pass, input checks included;
* **measure** on generated OOD sets (:mod:`imgclf.ood.synthetic_sets`): AUROC and the false-accept
  rate at that threshold, per set and overall, like accuracy.

Nothing here is tuned per dataset, so a user's own photo model gets the same calibration
with no configuration. Byte-stable output: the covariance is summed in integers (the
embedding in fixed point), inverted with element-wise arithmetic only, and the threshold
rounded to 6 significant digits, so CPUs with other SIMD widths write the same ``ood.json``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from imgclf.data.features import image_features, reduce_embedding, source_info
from imgclf.data.preprocessing import PreprocessSpec, preprocess
from imgclf.ood.detector import OOD_FORMAT, SOURCE_COLOUR, Detector, detector_from_dict
from imgclf.ood.synthetic_sets import ood_sets

# Rows of the training split used for the fit (a seeded sample beyond): plenty for 64-dim
# statistics, and bounded time on a large photo set.
MAX_FIT_ROWS = 5000
QUANTILES = (0.001, 0.999)
# Log-scale checks: how many times beyond the training range counts as one unit "out".
LOG_FACTORS = {"size": 4.0, "aspect": 1.4, "sharpness": 3.0}
# Larger uploads lose nothing when resized down (a phone's 4032 px photo for a model
# trained on 640 px ones), smaller ones are blown up: twice the room above.
SIZE_ABOVE = 8.0
# Linear checks (0-1 features): margin of 25 % of the training range, at least 0.1. Measured:
# 10 %/0.05 flagged test digits saved as JPEG q75 on their black-pixel share (5 % more
# flagged) and detected nothing more on the generated sets than the embedding did.
MIN_MARGIN, MARGIN = 0.1, 0.25
# Covariance shrinkage towards a scaled identity, so that a photo model's embedding from a
# few hundred images stays invertible. Measured (digits; photos_64 at 64 px): 1 % detects
# more than 10 % on every generated set (a stronger pull hides the low-variance
# directions in which OOD inputs stand out).
SHRINK = 0.01
# The colour check's smallest margin: gray files measure exactly 0 (a gray JPEG saved as
# RGB ~0.005), a muted colour photo ~0.08, a colourful one 0.15-0.3.
COLOUR_MIN_MARGIN = 0.05
FIXED_POINT = 1024.0  # embedding quantum for the integer sums (1/1024 of a unit)


def _sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def fit_checks(features: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Allowed ranges of every numeric feature (``image_features`` columns of the train split)."""
    checks: dict[str, dict[str, Any]] = {}
    for name, values in sorted(features.items()):
        if name in ("format", "width", "height"):
            continue
        x = np.asarray(values, np.float64)
        lo, hi = (float(v) for v in np.quantile(x, QUANTILES))
        if name in LOG_FACTORS:
            f = LOG_FACTORS[name]
            checks[name] = {"lo": lo / f, "hi": hi * f, "log": True, "unit": math.log(f)}
        else:
            margin = max(MARGIN * (hi - lo), MIN_MARGIN)
            checks[name] = {"lo": lo - margin, "hi": hi + margin, "log": False, "unit": margin}
    sides = np.asarray(features["width"] + features["height"], np.float64)
    lo, hi = (float(v) for v in np.quantile(sides, QUANTILES))
    f = LOG_FACTORS["size"]
    checks["size"] = {"lo": lo / f, "hi": hi * SIZE_ABOVE, "log": True, "unit": math.log(f)}
    return {k: {n: _sig(v, 8) if isinstance(v, float) else v for n, v in c.items()}
            for k, c in checks.items()}  # fmt: skip


def fit_colour(colours: list[float | None] | None) -> dict[str, Any] | None:
    """The colour check of a grayscale model: the training files' colourfulness range
    (None when fewer than 10 files could be measured, e.g. the raw data is not here)."""
    known = np.asarray([c for c in colours or [] if c is not None], np.float64)
    if len(known) < 10:
        return None
    lo, hi = (float(v) for v in np.quantile(known, QUANTILES))
    margin = max(MARGIN * (hi - lo), COLOUR_MIN_MARGIN)
    return {"lo": _sig(lo - margin, 8), "hi": _sig(hi + margin, 8), "log": False,
            "unit": _sig(margin, 8)}  # fmt: skip


def spd_inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite matrix by Gauss-Jordan elimination.

    Why not ``np.linalg.inv``: LAPACK's kernels are chosen by CPU (AVX2 vs AVX-512 block
    sizes) and sum in different orders, so the last bits — and the bytes of ``ood.json``
    in ``dvc.lock`` — would depend on the machine. Here every step is an element-wise
    IEEE operation (no reductions, no fused multiply-add), the same on every CPU. No
    pivoting is needed for an SPD matrix; 64 dims take ~1 ms.
    """
    d = a.shape[0]
    m = np.concatenate([np.array(a, np.float64), np.eye(d)], axis=1)
    for k in range(d):
        m[k] = m[k] / m[k, k]
        col = m[:, k].copy()
        col[k] = 0.0
        m -= np.multiply.outer(col, m[k])
    return m[:, d:]


def fit_space(embedding: np.ndarray, labels: np.ndarray, classes: int) -> dict[str, Any]:
    """Class means and the shrunk shared precision matrix of the reduced embedding.

    Sums are exact (int64 on fixed-point values), so they do not depend on the order a
    CPU's SIMD kernels add in, and the inverse is element-wise arithmetic
    (:func:`spd_inverse`): the same bytes on every CPU.
    """
    q = np.round(reduce_embedding(embedding) * FIXED_POINT).astype(np.int64)
    n, d = q.shape
    scatter = (q.T @ q).astype(np.float64)  # int64 matmul: exact, no BLAS
    means = np.zeros((classes, d))
    for c in range(classes):
        rows = q[labels == c]
        if len(rows):
            s = rows.sum(0)
            scatter -= np.outer(s, s).astype(np.float64) / len(rows)
            means[c] = s / len(rows)
    cov = scatter / max(n - classes, 1) / FIXED_POINT**2
    means /= FIXED_POINT
    scale = math.fsum(np.diag(cov).tolist()) / d or 1.0
    shrunk = (1 - SHRINK) * cov + SHRINK * scale * np.eye(d)
    precision = spd_inverse(shrunk)
    precision = (precision + precision.T) / 2
    present = [c for c in range(classes) if (labels == c).any()]
    return {
        "dims": d,
        "means": [[_sig(v, 10) for v in means[c]] for c in present],
        "precision": [[_sig(v, 10) for v in row] for row in precision],
    }


def calibrate(detector: Detector, doc: dict[str, Any], test: dict[str, Any]) -> float:
    """The squared-distance threshold that lets ``pass_rate`` of the test split through.

    Images the input checks already flag count as failures, so the overall pass rate is
    the stated one. Rounded *up* to 6 significant digits (never fewer passes).
    """
    _, violations, _ = detector.raw_scores(**test)
    ok = np.ones(len(test["pixels"]), bool)
    for v in violations.values():
        ok &= v <= 0
    assert detector.space is not None
    dist = np.sort(detector.space.distance(test["embedding"])[ok])
    need = math.ceil(doc["pass_rate"] * len(ok))
    if len(dist) == 0:
        return 1.0
    t = float(dist[min(need, len(dist)) - 1])
    r = _sig(t, 6)
    return r if r >= t else _sig(t * (1 + 1e-5), 6)


def fit_detector(
    train: dict[str, Any],
    labels: np.ndarray,
    test: dict[str, Any],
    classes: int,
    model_sha256: str,
    pass_rate: float,
) -> dict[str, Any]:
    """The ``ood.json`` document: ranges and space from ``train``, threshold from ``test``.

    ``train``/``test`` hold ``pixels`` (uint8 NHWC), ``embedding`` (or None), ``widths``,
    ``heights``, ``formats`` and ``colours`` (grayscale models: the files' colourfulness,
    or None): the keywords of :meth:`imgclf.ood.detector.Detector.judge`.
    """
    feats = image_features(train["pixels"], train["widths"], train["heights"], train["formats"])
    checks = fit_checks(feats)
    colour = fit_colour(train.get("colours"))
    if colour is not None:
        checks[SOURCE_COLOUR] = colour
    doc: dict[str, Any] = {
        "format": OOD_FORMAT,
        "model_sha256": model_sha256,
        "pass_rate": pass_rate,
        "checks": dict(sorted(checks.items())),
        "embedding": None,
    }
    if train["embedding"] is not None and test["embedding"] is not None:
        space = fit_space(train["embedding"], labels, classes)
        doc["embedding"] = {**space, "threshold": 1.0}
        doc["embedding"]["threshold"] = calibrate(detector_from_dict(doc), doc, test)
    return doc


def scores(detector: Detector, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Combined OOD score per image (1.0 = threshold) and whether it is in distribution."""
    verdicts = detector.judge(**batch)
    return (
        np.array([v.score for v in verdicts]),
        np.array([v.in_distribution for v in verdicts]),
    )


def encoded_batch(files: list[bytes], spec: PreprocessSpec, predictor: Any) -> dict[str, Any]:
    """Generated files as the API sees them: :func:`preprocess`, header info, one model pass."""
    pixels = np.stack([preprocess(f, spec) for f in files])
    info = [source_info(f) for f in files]
    probs, embedding = predictor.predict_with_embedding(pixels)
    return {
        "pixels": pixels,
        "embedding": embedding,
        "widths": [i[0] for i in info],
        "heights": [i[1] for i in info],
        "formats": [i[2] for i in info],
        "probs": probs,
    }


def measure(
    detector: Detector,
    test: dict[str, Any],
    test_probs: np.ndarray,
    predictor: Any,
    seed: int,
) -> dict[str, Any]:
    """Pass rate on the test split; AUROC and false-accept rate per generated OOD set and
    pooled; and the classifier's own confidence as a detector, for comparison."""
    id_score, id_ok = scores(detector, test)
    r = lambda v: round(float(v), 6)  # noqa: E731 - fixed precision keeps the JSON byte-stable
    sets: dict[str, Any] = {}
    all_scores, all_ok, all_conf = [], [], []
    for name, files in ood_sets(np.asarray(test["pixels"]), seed).items():
        batch = encoded_batch(files, predictor.spec, predictor)
        probs = batch.pop("probs")
        batch["colours"] = detector.colours(files)
        s, ok = scores(detector, batch)
        y = np.r_[np.zeros(len(id_score)), np.ones(len(s))]
        sets[name] = {
            "auroc": r(roc_auc_score(y, np.r_[id_score, s])),
            "false_accept": r(ok.mean()),
            "n": len(s),
        }
        all_scores.append(s)
        all_ok.append(ok)
        all_conf.append(probs.max(1))
    pooled, pooled_ok = np.concatenate(all_scores), np.concatenate(all_ok)
    y = np.r_[np.zeros(len(id_score)), np.ones(len(pooled))]
    # Max-softmax as a detector (low confidence = OOD): what the API offered before.
    conf = np.r_[test_probs.max(1), np.concatenate(all_conf)]
    return {
        "auroc": r(roc_auc_score(y, np.r_[id_score, pooled])),
        "false_accept": r(pooled_ok.mean()),
        "test_pass_rate": r(id_ok.mean()),
        "target_pass_rate": detector.pass_rate,
        "threshold": detector.space.threshold if detector.space else None,
        "confidence_auroc": r(roc_auc_score(y, -conf)),
        "sets": sets,
    }
