"""Where the pipeline writes what people and reports read, relative to the repository root.

One list, so the lock check, the PR reports and the drift report name the same files as
``dvc.yaml`` does (a test checks each of them is an output ``dvc.yaml`` declares).
"""

from __future__ import annotations

from imgclf.artifact.files import CARD_FILE, REFERENCE_FILE

METRICS_DIR = "metrics"
MODELS_DIR = "models"
PREPARE = "metrics/prepare.json"
TRAIN = "metrics/train/metrics.json"
EVALUATE = "metrics/evaluate.json"
PREDICTIONS = "metrics/predictions.csv"
CONFUSION_PNG = "metrics/confusion_matrix.png"
CARD = f"{MODELS_DIR}/{CARD_FILE}"
REFERENCE = f"{MODELS_DIR}/{REFERENCE_FILE}"
# dvclive's per-epoch curves (train stage, plots in dvc.yaml): "train/loss" → its TSV.
TRAIN_PLOTS = "metrics/train/plots/metrics"
TRAIN_CURVES = {
    f"{split}/{metric}": f"{TRAIN_PLOTS}/{split}/{metric}.tsv"
    for split in ("train", "val")
    for metric in ("loss", "accuracy")
}
