"""The serving artifact's names: the files of ``models/``, the ONNX graph's inputs and
outputs, the card's format, and the one "are the model files there?" check.

The artifact room is two modules: this one, which every reader imports (evaluate, the
API, the CLI — the serving image, which has no torch), and :mod:`imgclf.artifact.export`,
the writer ``train`` runs (the ONNX export and the card), which needs torch and onnx.
Together they decide the bytes of ``models/``.
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.onnx"
CARD_FILE = "model.json"
CHECKPOINT_FILE = "checkpoint.pt"
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
# Second output (models exported since the monitoring profile): the penultimate layer.
EMBEDDING_NAME = "embedding"
# The evaluated data's profile (imgclf.evaluation.reference_profile), by evaluate.
REFERENCE_FILE = "reference.json"
OOD_FILE = "ood.json"  # the out-of-distribution flag's statistics (imgclf.ood.fit), by evaluate
# A few test images with their evaluated probabilities (imgclf.artifact.agreement), by
# evaluate: the server checks its fast session against them before it says ready.
GOLDEN_FILE = "golden.json"
CARD_FORMAT = "imgclf-model/1"


def require_model_files(model_dir: Path | str) -> tuple[Path, Path]:
    """``model.onnx`` and ``model.json`` of ``model_dir``, or one error that names the
    missing file and how to get it (the same words for the API, ``predict`` and the
    integrity check)."""
    from imgclf.errors import ModelNotFoundError

    model_dir = Path(model_dir)
    onnx_path, card_path = model_dir / MODEL_FILE, model_dir / CARD_FILE
    for path in (onnx_path, card_path):
        if not path.is_file():
            raise ModelNotFoundError(
                f"{path} not found: run `dvc repro` (or `dvc pull`) to produce the model"
            )
    return onnx_path, card_path
