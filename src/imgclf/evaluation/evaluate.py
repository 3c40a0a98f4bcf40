"""evaluate: score the *serving artifact* (ONNX via onnxruntime) on the test split.

No torch here: the model is loaded by :class:`imgclf.artifact.predictor.Predictor`, the
class the API uses, and fed the uint8 arrays that ``prepare`` produced with
:func:`imgclf.data.preprocessing.preprocess`, the function the API uses.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from imgclf.artifact.agreement import agreement, golden_batch, golden_indices
from imgclf.artifact.files import GOLDEN_FILE, REFERENCE_FILE
from imgclf.artifact.predictor import Predictor
from imgclf.data.features import format_from_path, source_colorfulness
from imgclf.data.prepared_files import META_FILE, load_split, read_index
from imgclf.evaluation.baseline import score_baselines
from imgclf.evaluation.reference_profile import build_reference
from imgclf.jsonio import with_detail, write_json
from imgclf.ood.detector import OOD_FILE, detector_from_dict
from imgclf.ood.fit import MAX_FIT_ROWS, fit_detector, measure
from imgclf.params import Params

PREDICTION_FIELDS = ("position", "path", "actual", "predicted", "confidence", "correct")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE: the |accuracy − confidence| gap, averaged over equal-width confidence bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def score(probs: np.ndarray, labels: np.ndarray, classes: list[str], bins: int) -> dict[str, Any]:
    """Headline and per-class metrics from predicted probabilities and true labels.

    Headline numbers are scalars (columns of ``dvc exp show``); per-class detail and the
    confusion matrix are lists, which DVC leaves out of its tables but ``imgclf report``
    and the API read.
    """
    predicted = probs.argmax(1)
    confidence = probs.max(1)
    correct = predicted == labels
    ids = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=ids, zero_division=0
    )
    r = lambda v: round(float(v), 6)  # noqa: E731 - fixed precision keeps the JSON byte-stable
    return {
        "accuracy": r(correct.mean()),
        "macro_f1": r(f1.mean()),
        "macro_precision": r(precision.mean()),
        "macro_recall": r(recall.mean()),
        "ece": r(expected_calibration_error(confidence, correct, bins)),
        "mean_confidence": r(confidence.mean()),
        "n_test": len(labels),
        "n_errors": int((~correct).sum()),
        # Lists, not dicts: DVC does not tabulate lists, so `dvc exp show` keeps to the
        # headline numbers however many classes there are (issue 10, item 6).
        "per_class": [
            {"class": c, "precision": r(p), "recall": r(rc), "f1": r(f), "support": int(s)}
            for c, p, rc, f, s in zip(classes, precision, recall, f1, support, strict=True)
        ],
        "confusion_matrix": confusion_matrix(labels, predicted, labels=ids).tolist(),
    }


def write_predictions(
    path: Path, probs: np.ndarray, labels: np.ndarray, classes: list[str], sources: list[str]
) -> None:
    """Per-sample results, so two revisions can be compared sample by sample."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(PREDICTION_FIELDS)
        for i, (p, y) in enumerate(zip(probs, labels, strict=True)):
            k = int(p.argmax())
            writer.writerow((i, sources[i], classes[y], classes[k], f"{p[k]:.6f}", int(k == y)))


def plot_confusion(path: Path, matrix: np.ndarray, classes: list[str]) -> None:
    """A PNG for reports that cannot render vega (CML comments, offline HTML)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * n, 1.2 + 0.45 * n), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = matrix.max() or 1
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > top / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=color)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: byte-stable
    plt.close(fig)


# Not columns of `dvc exp show` (see dataio.DETAIL); `imgclf report` and the API read them.
EVALUATE_DETAIL = (
    "macro_precision",
    "macro_recall",
    "model_sha256",
    "baseline.majority_accuracy",
    "baseline.majority_macro_f1",
    # The OOD flag (issue 14): AUROC and false-accept rate stay headline columns.
    "ood.test_pass_rate",
    "ood.target_pass_rate",
    "ood.threshold",
    "ood.confidence_auroc",
    "ood.sets",
    # The served (fast) session vs this one (docs/serving-speed.md): in the detail, so that
    # `dvc exp show` keeps to 16 metric columns.
    "serving_session",
)


def _sizes(rows: list[dict[str, str]]) -> dict[str, list[Any]]:
    return {
        "widths": [int(row["width"]) for row in rows],
        "heights": [int(row["height"]) for row in rows],
        "formats": [format_from_path(row["path"]) for row in rows],
    }


# Original files read for a grayscale model's colour check (the rest count as unmeasured).
MAX_COLOUR_FILES = 2000


def _colours(prepared: Path, rows: list[dict[str, str]], gray: bool) -> list[float | None]:
    """Colourfulness of the split's original files, for a grayscale model (its arrays are
    gray). The files are the ones ``prepare`` hashed into ``index.csv``, so the
    ``data/prepared`` dependency covers them; missing files count as unmeasured."""
    meta = prepared / META_FILE
    if not gray or not meta.is_file():
        return [None] * len(rows)
    root = Path(json.loads(meta.read_text())["dataset"]["path"])
    out: list[float | None] = []
    for i, row in enumerate(rows):
        path = root / row["path"]
        ok = i < MAX_COLOUR_FILES and path.is_file()
        out.append(source_colorfulness(path.read_bytes()) if ok else None)
    return out


def evaluate_ood(
    params: Params,
    predictor: Predictor,
    prepared: Path,
    test: dict[str, Any],
    test_probs: np.ndarray,
    model_dir: Path,
) -> dict[str, Any]:
    """Fit the OOD detector on train, calibrate it on test, write ``ood.json`` next to the
    model (the API loads it) and return its measured detection rates (:mod:`imgclf.ood.fit`)."""
    train_x, train_y = load_split(prepared, "train")
    rows = read_index(prepared, "train")
    keep = np.arange(len(train_x))
    if len(keep) > MAX_FIT_ROWS:
        keep = np.sort(np.random.default_rng(params.seed).choice(len(keep), MAX_FIT_ROWS, False))
    pixels = np.asarray(train_x[keep])
    _, train_emb = predictor.predict_with_embedding(pixels, params.evaluate.batch_size)
    fit_rows = [rows[i] for i in keep]
    gray = predictor.spec.channels == 1
    train = {"pixels": pixels, "embedding": train_emb, **_sizes(fit_rows),
             "colours": _colours(prepared, fit_rows, gray)}  # fmt: skip
    test = {**test, "colours": _colours(prepared, read_index(prepared, "test"), gray)}
    doc = fit_detector(
        train,
        np.asarray(train_y)[keep],
        test,
        len(predictor.classes),
        predictor.card["model_sha256"],
        params.evaluate.ood_pass_rate,
    )
    write_json(model_dir / OOD_FILE, doc)
    return measure(detector_from_dict(doc), test, test_probs, predictor, params.seed)


def check_serving_session(
    predictor: Predictor,
    model_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    """Score the test split again with the session the API serves with, and write the golden
    batch the server checks itself against (``<model_dir>/golden.json``).

    Evaluate itself stays on the portable session: its probabilities are what the lock
    records, the same bits on every CPU. The fast session's exact difference is
    CPU-specific, so it is printed; the metrics keep a bound (imgclf.artifact.agreement).
    """
    fast = Predictor(model_dir, session="fast")
    result = agreement(probs, fast.predict_proba(images, batch_size))
    print(
        f"served (fast) session vs evaluated: top-1 agreement {result.top1_agreement:.4f}, "
        f"largest probability difference {result.max_abs_diff:.3g} on this CPU "
        f"(tolerance {result.tolerance:g})"
    )
    picked = golden_indices(np.asarray(labels))
    golden = golden_batch(
        np.asarray(images[picked]), probs[picked], predictor.card["model_sha256"], result
    )
    write_json(model_dir / GOLDEN_FILE, golden)
    return result.metrics()


def evaluate(params: Params, prepared: Path, model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Run the whole stage: metrics JSON (with baselines), predictions CSV, confusion PNG,
    the reference profile ``<model_dir>/reference.json`` (:mod:`imgclf.data.features`), the
    OOD detector's statistics ``<model_dir>/ood.json`` (:mod:`imgclf.ood.fit`) and the golden
    batch ``<model_dir>/golden.json`` (:mod:`imgclf.artifact.agreement`)."""
    predictor = Predictor(model_dir)
    images, labels = load_split(prepared, "test")
    rows = read_index(prepared, "test")
    sources = [row["path"] for row in rows]
    probs, embedding = predictor.predict_with_embedding(images, params.evaluate.batch_size)
    # The profile the API's traffic is compared with (imgclf drift-report), next to the
    # model so that it travels with it into the serving image.
    reference = build_reference(
        images,
        [int(row["width"]) for row in rows],
        [int(row["height"]) for row in rows],
        [format_from_path(p) for p in sources],
        probs,
        embedding,
        predictor.classes,
        predictor.card["model_sha256"],
        params.seed,
    )
    write_json(model_dir / REFERENCE_FILE, reference)
    metrics = score(probs, labels, predictor.classes, params.evaluate.calibration_bins)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(out_dir / "predictions.csv", probs, labels, predictor.classes, sources)
    plot_confusion(
        out_dir / "confusion_matrix.png", np.array(metrics["confusion_matrix"]), predictor.classes
    )
    metrics["model_sha256"] = predictor.card["model_sha256"]
    metrics["serving_session"] = check_serving_session(
        predictor, model_dir, images, labels, probs, params.evaluate.batch_size
    )
    if "export" in predictor.card:  # an int8 file: what quantizing cost (validation split)
        export = predictor.card["export"]
        metrics["export"] = {
            k: export[k] for k in ("quantize", "val_accuracy_fp32", "val_accuracy_int8")
        }
    test = {"pixels": np.asarray(images), "embedding": embedding, **_sizes(rows)}
    metrics["ood"] = evaluate_ood(params, predictor, prepared, test, probs, model_dir)
    # The same split scored by the simplest models: the yardstick for "is this any good".
    train_x, train_y = load_split(prepared, "train")
    metrics["baseline"] = score_baselines(
        train_x, train_y, images, labels, len(predictor.classes), params.seed
    )
    write_json(out_dir / "evaluate.json", with_detail(metrics, EVALUATE_DETAIL))
    return metrics
