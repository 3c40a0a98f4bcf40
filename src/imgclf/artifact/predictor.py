"""Load the serving artifact (ONNX + JSON card) and predict — without torch.

``evaluate``, ``imgclf predict`` and the API all go through :class:`Predictor`,
so the numbers in ``metrics/`` are the numbers of the model that is served.

Two kinds of onnxruntime session run the very same ONNX bytes (docs/serving-speed.md):

* ``portable`` — what ``evaluate`` scores with: graph optimisations that give the same
  bits on AVX2 and AVX-512 CPUs, so ``dvc.lock`` reproduces on any x86-64;
* ``fast`` — what the API and ``imgclf predict`` answer with: every optimisation the CPU
  allows (NCHWc layouts: 3.9x the portable speed for a 224 px mobilenet_v3_small here).
  Its last bits depend on the CPU; :mod:`imgclf.artifact.agreement` proves it answers
  like the evaluated session (same top-1, probabilities within a recorded tolerance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# Re-exported for callers that load a model directory through the predictor.
from imgclf.artifact.files import CARD_FILE as CARD_FILE
from imgclf.artifact.files import EMBEDDING_NAME, require_model_files
from imgclf.artifact.files import MODEL_FILE as MODEL_FILE
from imgclf.data.preprocessing import PreprocessSpec, preprocess
from imgclf.errors import ModelNotFoundError as ModelNotFoundError


def portable_numerics(card: dict[str, Any]) -> bool:
    """Whether the model's weights were made with portable CPU numerics (the default).

    Cards written before the numerics were recorded count as portable.
    """
    return str(card.get("training", {}).get("numerics", "portable-cpu")) == "portable-cpu"


SESSION_KINDS = ("portable", "fast")


def session_options(card: dict[str, Any], threads: int = 1, kind: str = "portable") -> Any:
    """onnxruntime options for this artifact: ``portable`` (evaluate) or ``fast`` (serving).

    ``fast`` turns on every graph optimisation (``ORT_ENABLE_ALL``, NCHWc layouts): the
    fastest session on this CPU, whose last bits differ between CPUs; what it answers is
    checked against the evaluated answers (:mod:`imgclf.artifact.agreement`).

    ``portable`` (docs/reproducibility.md): onnxruntime picks AVX2 or AVX-512
    kernels by CPU. Below the layout level (NCHWc blocks of 8 vs 16 channels) the
    kernels it runs sum in the same order on both; flushing subnormals removes the
    one difference left (softmax's far tail, probabilities < 1e-38). A model trained
    with ``train.numerics: fast`` is reproducible on one kind of CPU only anyway, so
    it gets every graph optimisation, NCHWc layouts included: 3.5x faster for a
    224 px mobilenet_v3_small, 1.2x for resnet18 (bench/RESULTS.md, photo models).
    """
    import onnxruntime as ort

    if kind not in SESSION_KINDS:
        raise ValueError(f"session kind must be one of {', '.join(SESSION_KINDS)}, got {kind!r}")
    options = ort.SessionOptions()
    # A fixed thread count keeps results identical run to run.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    level = ort.GraphOptimizationLevel
    exact = kind == "portable" and portable_numerics(card)
    options.graph_optimization_level = level.ORT_ENABLE_EXTENDED if exact else level.ORT_ENABLE_ALL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


@dataclass(frozen=True)
class Prediction:
    """One image's result: the winning class and the full distribution."""

    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


class Predictor:
    """An onnxruntime session plus the card that says how to feed it.

    ``session``: ``portable`` (the default; what ``evaluate`` scores) or ``fast`` (what is
    served), see :func:`session_options`.
    """

    def __init__(self, model_dir: Path | str, threads: int = 1, session: str = "portable") -> None:
        import onnxruntime as ort  # deferred: importing the package should stay cheap

        from imgclf.artifact.integrity import check_model_bytes

        onnx_path, card_path = require_model_files(model_dir)
        self.card: dict[str, Any] = json.loads(card_path.read_text())
        # The bytes checked against the card are the bytes onnxruntime loads: a tampered
        # or truncated file stops here with the reason (the API then stays not-ready).
        model_bytes = onnx_path.read_bytes()
        check_model_bytes(model_bytes, self.card, onnx_path, card_path)
        self.classes: list[str] = list(self.card["classes"])
        self.spec = PreprocessSpec.from_dict(self.card["preprocess"])
        options = session_options(self.card, threads, session)
        self.session_kind = session
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        # Output 0 is the probabilities; models exported since the monitoring profile also
        # have ``embedding`` (older artifacts and hand-built graphs do not: None then).
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = outputs[0]
        self.embedding_name: str | None = EMBEDDING_NAME if EMBEDDING_NAME in outputs else None

    @property
    def version(self) -> str:
        """Short content hash of the ONNX model: changes whenever the weights do."""
        return str(self.card.get("model_sha256", ""))[:12]

    @property
    def has_embedding(self) -> bool:
        return self.embedding_name is not None

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` → float32 probabilities ``(N, classes)``."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        out = [
            self.session.run([self.output_name], {self.input_name: pixels[i : i + batch_size]})[0]
            for i in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict_with_embedding(
        self, pixels: np.ndarray, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and the penultimate-layer embedding ``(N, D)`` from one pass.

        The embedding is None for an artifact exported without it: callers (evaluate's
        reference profile, the API's recorder) then simply go without embedding drift.
        """
        if self.embedding_name is None:
            return self.predict_proba(pixels, batch_size), None
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        names = [self.output_name, self.embedding_name]
        runs = [
            self.session.run(names, {self.input_name: pixels[i : i + batch_size]})
            for i in range(0, len(pixels), batch_size)
        ]
        if not runs:
            return np.zeros((0, len(self.classes)), np.float32), None
        return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])

    def to_prediction(self, probs: np.ndarray) -> Prediction:
        index = int(np.argmax(probs))
        return Prediction(
            label=self.classes[index],
            index=index,
            confidence=float(probs[index]),
            probabilities={c: float(p) for c, p in zip(self.classes, probs, strict=True)},
        )

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        return [self.to_prediction(p) for p in self.predict_proba(pixels)]

    def predict_images(self, sources: list[bytes | Path | BinaryIO]) -> list[Prediction]:
        """Raw images (bytes, paths, files) → predictions, through :func:`preprocess`."""
        if not sources:
            return []
        return self.predict_pixels(np.stack([preprocess(s, self.spec) for s in sources]))
