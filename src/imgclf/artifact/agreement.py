"""The contract between the evaluated session and the served one: same answers, proven.

``evaluate`` scores the model with the *portable* onnxruntime session, whose bits are the
same on every x86-64 CPU (that is what ``dvc.lock`` records). The API and ``imgclf
predict`` answer with the *fast* session on the same ONNX bytes (every graph optimisation;
its last bits depend on the CPU). Two checks tie them together (docs/serving-speed.md):

* **on the whole test split, in evaluate** — :func:`agreement`: the share of images whose
  top-1 class is the same, and the largest absolute probability difference. The metrics
  record the top-1 agreement and a *bound* on the difference from a fixed ladder
  (:data:`BOUNDS`): the exact difference is CPU-specific and would make the lock differ
  between CPUs, the bound does not (evaluate prints the exact value);
* **on a golden batch, at every server start** — evaluate stores a few test images with
  their evaluated probabilities (``models/golden.json``, :func:`golden_batch`); the server
  runs them through its fast session (:func:`check_golden`). Within :data:`TOLERANCE` and
  with the same top-1 on every image → it serves with the fast session; otherwise it falls
  back to the portable one and says so (``/ready``, ``/model``, the log, ``/metrics``).

Only numpy and the standard library: it runs in the serving image.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgclf.artifact.files import GOLDEN_FILE
from imgclf.artifact.predictor import Predictor
from imgclf.errors import ModelIntegrityError

GOLDEN_FORMAT = "imgclf-golden/1"
# Largest absolute difference in any class probability that still counts as "answers like
# the evaluated model". Measured differences between the two sessions are 1e-7..1e-6
# (float32 sums in another order, docs/serving-speed.md); a real defect (a wrong layout,
# another model) moves probabilities by far more than this.
TOLERANCE = 1e-4
# The bound recorded in the metrics: the first rung at or above the measured difference.
# Rungs a decade apart, starting well above the measured 1e-7..1e-6, so that every x86-64
# CPU lands on the same rung and the lock stays bit-identical.
BOUNDS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
GOLDEN_IMAGES = 16


class ProbaModel(Protocol):
    """What a check needs from a model: :class:`imgclf.artifact.predictor.Predictor`."""

    session_kind: str

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


@dataclass(frozen=True)
class Agreement:
    """How closely one session's answers match the evaluated ones on the same images."""

    images: int
    top1_agreement: float
    max_abs_diff: float
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.top1_agreement == 1.0 and self.max_abs_diff <= self.tolerance

    @property
    def bound(self) -> float:
        """The :data:`BOUNDS` rung that bounds :attr:`max_abs_diff` (CPU-independent)."""
        return next((b for b in BOUNDS if self.max_abs_diff <= b), math.inf)

    def metrics(self) -> dict[str, Any]:
        """What ``metrics/evaluate.json`` records: nothing that differs between CPUs."""
        return {
            "images": self.images,
            "top1_agreement": round(self.top1_agreement, 6),
            "max_abs_diff_bound": self.bound,
            "tolerance": self.tolerance,
            "within_tolerance": self.ok,
        }


def agreement(reference: np.ndarray, probs: np.ndarray, tolerance: float = TOLERANCE) -> Agreement:
    """Compare ``probs`` with the evaluated ``reference`` probabilities (same images, order)."""
    if reference.shape != probs.shape:
        raise ValueError(f"cannot compare {probs.shape} with the evaluated {reference.shape}")
    if not len(reference):
        return Agreement(0, 1.0, 0.0, tolerance)
    same = float((reference.argmax(1) == probs.argmax(1)).mean())
    diff = float(np.abs(reference.astype(np.float64) - probs.astype(np.float64)).max())
    return Agreement(len(reference), same, diff, tolerance)


def golden_indices(labels: np.ndarray, count: int = GOLDEN_IMAGES) -> list[int]:
    """Up to ``count`` test images, classes taken in turn (every class shows up early)."""
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for indices in by_class:
            if indices and len(picked) < count:
                picked.append(int(indices.pop(0)))
    return sorted(picked)


def golden_batch(
    pixels: np.ndarray, probs: np.ndarray, model_sha256: str, split: Agreement
) -> dict[str, Any]:
    """The JSON-able golden file: images (uint8, base64), evaluated probabilities, and the
    agreement measured on the whole split (:meth:`Agreement.metrics`)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    return {
        "format": GOLDEN_FORMAT,
        "model_sha256": model_sha256,
        "shape": list(pixels.shape),
        "pixels": base64.b64encode(pixels.tobytes()).decode("ascii"),
        # float32 → float64 → JSON repr round-trips exactly.
        "probabilities": [[float(p) for p in row] for row in probs.astype(np.float32)],
        "tolerance": TOLERANCE,
        "test_split": split.metrics(),
    }


@dataclass(frozen=True)
class Golden:
    """The loaded golden file."""

    pixels: np.ndarray
    probabilities: np.ndarray
    tolerance: float
    test_split: dict[str, Any]


def load_golden(model_dir: Path, model_sha256: str) -> Golden | None:
    """The golden batch next to the model; None for artifacts evaluated before it existed.

    A file made for another model, or one that does not parse, is an error (the server
    then reports not ready): checking against the wrong answers would prove nothing.
    """
    path = Path(model_dir) / GOLDEN_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != GOLDEN_FORMAT:
        raise ValueError(f"{GOLDEN_FILE} is not an imgclf golden batch ({GOLDEN_FORMAT})")
    if data.get("model_sha256") != model_sha256:
        raise ValueError(f"{GOLDEN_FILE} holds the answers of another model")
    shape = tuple(int(x) for x in data["shape"])
    raw = base64.b64decode(data["pixels"], validate=True)
    if len(shape) != 4 or math.prod(shape) != len(raw):
        raise ValueError(f"{GOLDEN_FILE}: {len(raw)} pixel bytes do not fill shape {shape}")
    pixels = np.frombuffer(raw, np.uint8).reshape(shape)
    probs = np.asarray(data["probabilities"], dtype=np.float64)
    if probs.ndim != 2 or len(probs) != shape[0]:
        raise ValueError(f"{GOLDEN_FILE}: one probability row per image is needed")
    tolerance = float(data.get("tolerance", TOLERANCE))
    return Golden(pixels, probs, tolerance, data.get("test_split", {}))


@dataclass(frozen=True)
class SessionCheck:
    """What the server (or ``imgclf predict``) found when it checked its session."""

    session: str  # the kind that answers: "fast" or "portable"
    status: str  # "agrees", "fallback", "unchecked" (no golden file), "configured"
    detail: str
    golden: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def check_golden(model: ProbaModel, golden: Golden) -> Agreement:
    """Run the golden images through ``model`` and compare with the evaluated answers."""
    probs = model.predict_proba(golden.pixels)
    return agreement(golden.probabilities, probs.astype(np.float64), golden.tolerance)


def describe(result: Agreement) -> str:
    """One line for the log and ``/ready``."""
    return (
        f"{result.images} golden images: top-1 agreement {result.top1_agreement:.4f}, "
        f"largest probability difference {result.max_abs_diff:.2e} "
        f"(tolerance {result.tolerance:.0e})"
    )


def load_served(
    model_dir: Path | str, threads: int = 1, session: str = "fast"
) -> tuple[Predictor, SessionCheck]:
    """The predictor to answer with, and why (the API and ``imgclf predict``).

    ``fast`` (the default): the fastest session, kept only if it answers the golden batch
    like the evaluated model did (:mod:`imgclf.artifact.agreement`); otherwise the portable
    session, which is what ``evaluate`` scored. If neither agrees, the files next to the
    model do not belong together: :class:`ModelIntegrityError`, so the server is not ready.
    ``portable``: the evaluated session, unchecked (the operator asked for it).
    """
    if session not in ("fast", "portable"):
        raise ValueError(f"session must be 'fast' or 'portable', got {session!r}")
    if session == "portable":
        return Predictor(model_dir, threads, "portable"), SessionCheck(
            "portable", "configured", "the portable session (what evaluate scored), as configured"
        )
    fast = Predictor(model_dir, threads, "fast")
    golden = load_golden(Path(model_dir), fast.card["model_sha256"])
    if golden is None:
        return fast, SessionCheck(
            "fast", "unchecked", f"no {GOLDEN_FILE} next to the model: fast session unchecked"
        )
    result = check_golden(fast, golden)
    summary = {**asdict(result), "test_split": golden.test_split}
    if result.ok:
        return fast, SessionCheck("fast", "agrees", describe(result), summary)
    portable = Predictor(model_dir, threads, "portable")
    again = check_golden(portable, golden)
    if not again.ok:
        raise ModelIntegrityError(
            f"neither session answers the golden batch like the evaluated model (fast: "
            f"{describe(result)}; portable: {describe(again)}): {GOLDEN_FILE} and the model "
            "come from different runs, or this CPU computes differently"
        )
    return portable, SessionCheck(
        "portable",
        "fallback",
        f"the fast session disagrees with the evaluated answers ({describe(result)}); "
        f"serving the portable session ({describe(again)})",
        summary,
    )
