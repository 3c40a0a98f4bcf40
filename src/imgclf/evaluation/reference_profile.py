"""The reference profile: the evaluated test split as numbers, next to the model.

``evaluate`` writes it (``models/reference.json``): per-image input features
(:mod:`imgclf.data.features`), predictions, confidences and reduced embeddings, plus
quantile summaries. ``imgclf drift-report`` compares served traffic with it, and the
OOD flag's input checks read its ranges. Its own module because it is a file format
written by one stage and read by two other parts; the features themselves are shared
with the API's recorder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.features import CATEGORICAL, image_features, reduce_embedding

PROFILE_FORMAT = "imgclf-reference/1"
# Reference rows kept (a seeded sample of larger test splits): enough for drift tests'
# power, small enough that the file travels into the serving image without notice.
MAX_REFERENCE_ROWS = 5000


@dataclass(frozen=True)
class Reference:
    """The reference profile as loaded: feature columns, predictions, embeddings."""

    model_sha256: str
    classes: list[str]
    features: dict[str, list[Any]]
    predicted: list[str]
    confidence: list[float]
    embedding: np.ndarray | None
    total: int

    @property
    def rows(self) -> int:
        return len(self.predicted)


def build_reference(
    pixels: np.ndarray,
    widths: list[int],
    heights: list[int],
    formats: list[str],
    probs: np.ndarray,
    embedding: np.ndarray | None,
    classes: list[str],
    model_sha256: str,
    seed: int,
) -> dict[str, Any]:
    """The JSON-able profile of an evaluated split (a seeded sample of at most MAX rows)."""
    total = len(pixels)
    keep = np.arange(total)
    if total > MAX_REFERENCE_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(total, MAX_REFERENCE_ROWS, False))
    features: dict[str, list[Any]] = {}
    for start in range(0, len(keep), 1024):  # bounded memory for photo-sized splits
        part = keep[start : start + 1024]
        chunk = image_features(
            np.asarray(pixels[part]),
            [widths[i] for i in part],
            [heights[i] for i in part],
            [formats[i] for i in part],
        )
        for name, values in chunk.items():
            features.setdefault(name, []).extend(values)
    emb = None
    if embedding is not None:
        reduced = reduce_embedding(embedding[keep])
        emb = {
            "dims": reduced.shape[1],
            "model_dims": int(embedding.shape[1]),
            "values": [[round(float(x), 4) for x in row] for row in reduced],
        }
    predicted = [classes[int(k)] for k in probs[keep].argmax(1)]
    confidence = [round(float(p), 6) for p in probs[keep].max(1)]
    return {
        "format": PROFILE_FORMAT,
        "model_sha256": model_sha256,
        "classes": classes,
        "split": "test",
        "total": total,
        "rows": len(keep),
        "summary": summarize(features, predicted, confidence, classes),
        "features": features,
        "predicted": predicted,
        "confidence": confidence,
        "embedding": emb,
    }


QUANTILES = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)


def summarize(
    features: dict[str, list[Any]],
    predicted: list[str],
    confidence: list[float],
    classes: list[str],
) -> dict[str, Any]:
    """What a person (or a range check) reads first: quantiles and shares.

    Per numeric feature its quantiles (``p0`` … ``p100``), the share of each format and
    of each predicted class, and the confidence's quantiles: the ranges the evaluated
    data spans, without reading every row.
    """

    def quantiles(values: list[float]) -> dict[str, float]:
        qs = np.quantile(np.asarray(values, dtype=np.float64), QUANTILES)
        return {
            f"p{round(q * 100)}": round(float(v), 6) for q, v in zip(QUANTILES, qs, strict=True)
        }

    def shares(values: list[str], keys: list[str]) -> dict[str, float]:
        n = max(len(values), 1)
        return {k: round(values.count(k) / n, 6) for k in keys}

    numeric = {k: quantiles(v) for k, v in features.items() if k not in CATEGORICAL and v}
    formats = features.get("format", [])
    return {
        "features": numeric,
        "format": shares(formats, sorted(set(formats))),
        "predicted": shares(predicted, classes),
        "confidence": quantiles(confidence) if confidence else {},
    }


def load_reference(path: Path) -> Reference:
    """Read ``reference.json``; a missing or foreign file is a clear error, not a KeyError."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the evaluate stage writes it (`dvc repro` or `dvc pull`)"
        )
    data = json.loads(path.read_text())
    if data.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{path} is not an imgclf reference profile ({PROFILE_FORMAT})")
    emb = data.get("embedding")
    return Reference(
        model_sha256=data["model_sha256"],
        classes=list(data["classes"]),
        features=data["features"],
        predicted=list(data["predicted"]),
        confidence=[float(c) for c in data["confidence"]],
        embedding=np.array(emb["values"], dtype=np.float64) if emb else None,
        total=int(data["total"]),
    )
