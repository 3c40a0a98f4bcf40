"""The OOD flag in the API: load the detector with the model, judge each batch, count.

Kept apart from :mod:`imgclf.serving.service` so the service only calls three hooks
(:func:`load`, :func:`infer`, :func:`judge`), and from :mod:`imgclf.ood.detector` so the
detector itself knows nothing of HTTP, settings or metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import ImageError
from imgclf.ood.detector import Detector, Verdict, load_detector
from imgclf.serving.prometheus_metrics import Telemetry

log = logging.getLogger("imgclf.serving.app")
OOD_REASON = "out_of_distribution"  # the 422's reason under IMGCLF_OOD=refuse


@dataclass(frozen=True)
class Scored:
    """One upload's probabilities and its OOD verdict (None when the flag is off)."""

    probs: np.ndarray
    verdict: Verdict | None

    def ood_json(self) -> dict[str, Any]:
        if self.verdict is None:
            return {"in_distribution": None, "ood_score": None, "ood_reasons": []}
        return self.verdict.as_json()


def load(mode: str, model_dir: Path, model_sha256: str) -> Detector | None:
    """The detector for ``mode``; None when off. Under ``flag`` a missing or stale
    ``ood.json`` only disables the flag (with a warning: the model still answers);
    under ``refuse`` it fails the load, since the operator asked for the guard."""
    if mode == "off":
        return None
    try:
        return load_detector(model_dir, model_sha256)
    except (OSError, ValueError, KeyError) as exc:
        if mode == "refuse":
            raise ValueError(f"IMGCLF_OOD=refuse needs the OOD statistics: {exc}") from exc
        log.warning("out-of-distribution flag disabled: %s", exc)
        return None


def describe(mode: str, detector: Detector | None) -> dict[str, Any]:
    """What ``GET /model`` says about the flag: the mode, whether it is live, its rate."""
    return {
        "mode": mode,
        "active": detector is not None,
        "pass_rate": detector.pass_rate if detector else None,
        "feature_space": bool(detector and detector.space),
    }


def infer(backend: Any, pixels: np.ndarray, embedding: bool) -> tuple[np.ndarray, Any]:
    """Probabilities, and the embedding from the same pass when the detector needs it
    and the backend has one (bench's torch twin and old artifacts do not)."""
    fn = getattr(backend, "predict_with_embedding", None)
    if embedding and fn is not None:
        return fn(pixels)
    return backend.predict_proba(pixels), None


def judge(
    detector: Detector | None,
    mode: str,
    telemetry: Telemetry,
    pixels: np.ndarray,
    probs: np.ndarray,
    embedding: np.ndarray | None,
    uploads: list[bytearray],
    info: list[tuple[int, int, str]] | None = None,
) -> list[Scored | ImageError]:
    """A :class:`Scored` per upload, or under ``refuse`` an :class:`ImageError` (422)."""
    if detector is None:
        return [Scored(p, None) for p in probs]
    out: list[Scored | ImageError] = []
    verdicts = detector.judge_uploads(pixels, embedding, uploads, info)
    for p, verdict in zip(probs, verdicts, strict=True):
        for code in verdict.codes:
            telemetry.ood.labels(code).inc()
        if mode == "refuse" and not verdict.in_distribution:
            out.append(
                ImageError(
                    OOD_REASON,
                    "the image does not look like the training images "
                    f"(ood_score {verdict.score:.2f}): " + "; ".join(verdict.reasons),
                )
            )
        else:
            out.append(Scored(p, verdict))
    return out
