"""Is this the model that was evaluated? The ONNX file's sha256 against its card.

``train`` writes ``model.onnx`` and records the sha256 of its exact bytes in the card
(``model.json``: ``model_sha256``); ``evaluate`` scores that file and copies the hash
into ``metrics/evaluate.json``, which is committed to git and reviewed in the PR. So a
model file that no longer hashes to its card, or a card that no longer names the model
the committed metrics describe, is not the artifact that was reviewed: an object
overwritten in the bucket, a partial download, a hand-edited file. This module is the
one place that says so, for every consumer:

* the image build (``dockerfiles/api.dockerfile`` runs ``python -m imgclf.artifact.integrity``)
  and the ``docker`` workflow (``imgclf verify-model``) refuse to ship it;
* :class:`imgclf.artifact.predictor.Predictor` (the API, ``evaluate``, ``imgclf predict``)
  refuses to load it, and checks the very bytes it hands to onnxruntime.

Standard library only: it runs inside the serving image, which has neither typer nor
DVC.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imgclf.artifact.files import (
    CARD_FILE,
    GOLDEN_FILE,
    MODEL_FILE,
    OOD_FILE,
    REFERENCE_FILE,
    require_model_files,
)
from imgclf.errors import ModelIntegrityError, ModelNotFoundError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = (
    "fix: fetch it again (`dvc pull` — with `verify = true` DVC re-hashes what it "
    "downloads) or rebuild it (`dvc repro`); do not ship or serve this file"
)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory (what the Predictor hands to onnxruntime)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so a large model does not double memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def expected_sha256(card: Mapping[str, Any], card_path: Path | str) -> str:
    """The card's ``model_sha256``, or a clear error when it is missing or malformed.

    A card without a hash cannot vouch for anything, so it is refused rather than
    trusted: every card ``train`` writes has one.
    """
    value = card.get("model_sha256")
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ModelIntegrityError(
            f"{card_path} has no valid model_sha256 (found {value!r}): cannot check that the "
            f"model is the trained one; {_FIX}"
        )
    return value


def check_model_bytes(
    data: bytes, card: Mapping[str, Any], model_path: Path | str, card_path: Path | str
) -> str:
    """Raise :class:`ModelIntegrityError` unless ``data`` hashes to the card's model_sha256.

    Takes the bytes rather than the path so that a caller can check exactly what it is
    about to load (no window between the check and the use).
    """
    expected = expected_sha256(card, card_path)
    actual = sha256_bytes(data)
    if actual != expected:
        raise ModelIntegrityError(_mismatch(model_path, card_path, actual, expected))
    return actual


def _mismatch(model_path: Path | str, card_path: Path | str, actual: str, expected: str) -> str:
    return (
        f"{model_path} does not match its card: its sha256 is {actual}, {card_path} says "
        f"{expected}. The file changed after training (tampered with, overwritten in the "
        f"remote, or truncated); {_FIX}"
    )


def read_card(card_path: Path) -> dict[str, Any]:
    """The card as a dict; an unreadable card is an integrity failure, not a crash."""
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelIntegrityError(f"cannot read the model card {card_path}: {exc}") from None
    if not isinstance(card, dict):
        raise ModelIntegrityError(f"the model card {card_path} is not a JSON object")
    return card


def _scored_sha(metrics: dict[str, Any]) -> Any:
    """``model_sha256`` of ``evaluate.json``: under ``detail`` (see :mod:`imgclf.jsonio`), or
    on top in files written before that (kept stdlib-only here rather than importing it)."""
    for extra in metrics.get("detail") or []:
        if isinstance(extra, dict) and "model_sha256" in extra:
            return extra["model_sha256"]
    return metrics.get("model_sha256")


def verify_model(model_dir: Path | str, evaluated: Path | str | None = None) -> str:
    """Check ``model_dir``'s ONNX file against its card, and the card against the metrics.

    ``evaluated`` is an ``evaluate.json`` (``metrics/evaluate.json`` in the repository,
    ``/app/models/evaluate.json`` in the image): when given it must exist and name the
    same ``model_sha256``, otherwise the image would serve (and ``GET /model`` would
    show) metrics of a different model. Returns the verified sha256.
    """
    model_dir = Path(model_dir)
    model_path, card_path = require_model_files(model_dir)
    expected = expected_sha256(read_card(card_path), card_path)
    actual = sha256_file(model_path)
    if actual != expected:
        raise ModelIntegrityError(_mismatch(model_path, card_path, actual, expected))
    if evaluated is not None:
        evaluated = Path(evaluated)
        if not evaluated.is_file():
            raise ModelIntegrityError(f"{evaluated} not found: the evaluation of this model")
        scored = _scored_sha(read_card(evaluated))
        if scored != actual:
            raise ModelIntegrityError(
                f"{evaluated} is the evaluation of model {scored!r}, not of {model_path} "
                f"({actual}): the model and the committed metrics come from different "
                "runs; pull or reproduce both from the same dvc.lock (`dvc pull` / "
                "`dvc repro evaluate`)"
            )
    # evaluate's files next to the model must describe this model too: the drift report
    # and the out-of-distribution flag compare with them, and another model's statistics
    # would flag the wrong inputs.
    sidecars = (
        (REFERENCE_FILE, "profiles model"),
        (OOD_FILE, "was calibrated for model"),
        (GOLDEN_FILE, "holds the evaluated answers of model"),
    )
    for name, what in sidecars:
        sidecar = model_dir / name
        if not sidecar.is_file():
            continue
        made_for = read_card(sidecar).get("model_sha256")
        if made_for != actual:
            raise ModelIntegrityError(
                f"{sidecar} {what} {made_for!r}, not {model_path} ({actual}): "
                "pull or reproduce both from the same dvc.lock (`dvc repro evaluate`)"
            )
    return actual


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.artifact.integrity MODEL_DIR [--evaluated FILE]``: exit 1, with why."""
    parser = argparse.ArgumentParser(
        prog="python -m imgclf.artifact.integrity",
        description="Check that model.onnx hashes to its card's model_sha256 "
        "(and that the evaluation metrics are those of this model).",
    )
    parser.add_argument("model_dir", type=Path, help="folder with model.onnx and model.json")
    parser.add_argument("--evaluated", type=Path, default=None, help="evaluate.json to match")
    args = parser.parse_args(argv)
    try:
        sha = verify_model(args.model_dir, args.evaluated)
    except (ModelIntegrityError, ModelNotFoundError) as exc:
        print(f"error: model integrity check failed: {exc}", file=sys.stderr)
        return 1
    against = f"{CARD_FILE}" + (f" and {args.evaluated}" if args.evaluated else "")
    print(f"ok: {args.model_dir / MODEL_FILE} sha256 {sha} matches {against}")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess in tests
    sys.exit(main())
