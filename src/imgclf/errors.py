"""The errors a user can cause and fix: a stage prints them as one ``error:`` line.

They live in one small module so that ``stage.py`` can catch them without importing
the modules that raise them: a stage's imports (and so its ``dvc.yaml`` deps) stay
exactly what it uses.
"""

from __future__ import annotations


class PrepareError(RuntimeError):
    """The dataset cannot be prepared (missing folder, too few images in a class…)."""


class ModelNotFoundError(FileNotFoundError):
    """The model directory lacks the ONNX file or its card."""


class ModelIntegrityError(ValueError):
    """The model file is not the one its card (or the committed metrics) describes."""


class WeightsError(ValueError):
    """``model.weights`` cannot initialise this model (other architecture or shapes)."""


class ImageError(ValueError):
    """An input cannot be used as an image; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
