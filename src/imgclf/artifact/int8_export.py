"""The int8 export itself: static quantization of the fp32 ONNX file (``export.quantize: int8``).

``train`` calls :func:`replace_with_int8` after the fp32 export, so ``models/model.onnx``
*is* the int8 file: ``evaluate`` scores it and the API serves it, and the card
records the quantization with the validation accuracy of both files. Whether an
architecture may be quantized at all is decided in :mod:`imgclf.artifact.int8_policy`.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.artifact.int8_policy import MEASURED_SPEEDUP
from imgclf.artifact.predictor import session_options

CALIBRATION_IMAGES = 64  # the first training images (train split only)


def calibration_set(images: np.ndarray, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """The first ``count`` training images: deterministic, and never the val or test split."""
    return np.ascontiguousarray(images[:count], dtype=np.uint8)


def quantize_int8(fp32: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 (QDQ, per-channel) version of the ONNX model ``fp32``, calibrated on images.

    MinMax calibration over a fixed set of images is deterministic, so the same
    fp32 file and images give the same int8 bytes.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return out.read_bytes()


def _accuracy(model: bytes, card: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX file with the session options the API would use."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, session_options(card), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    probs = np.concatenate(
        [session.run(None, {name: np.ascontiguousarray(images[i : i + 64])})[0]
         for i in range(0, len(images), 64)]
    )  # fmt: skip
    return round(float((probs.argmax(1) == labels).mean()), 6) if len(labels) else float("nan")


def replace_with_int8(
    path: Path,
    card: dict[str, Any],
    train_images: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
) -> tuple[str, dict[str, Any]]:
    """Quantize the fp32 ONNX file at ``path`` in place; (new sha256, the card's ``export``).

    The validation split (never the test split, which only ``evaluate`` reads) gives
    the accuracy of both files, so the card and the report show what int8 cost.
    """
    fp32 = path.read_bytes()
    calibration = calibration_set(train_images)
    int8 = quantize_int8(fp32, calibration)
    path.write_bytes(int8)
    section = {
        "quantize": "int8",
        "method": "static, QDQ, per-channel weights, MinMax calibration",
        "calibration_images": len(calibration),
        "fp32_sha256": hashlib.sha256(fp32).hexdigest(),
        "val_accuracy_fp32": _accuracy(fp32, card, val_images, val_labels),
        "val_accuracy_int8": _accuracy(int8, card, val_images, val_labels),
        "measured_speedup": MEASURED_SPEEDUP.get(str(card.get("model", {}).get("name"))),
    }
    return hashlib.sha256(int8).hexdigest(), section
