"""A real model for the API tests: the checkout's own, or a shrunk pipeline run in a temp copy.

CI starts from a fresh clone where ``models/`` (a DVC output) does not exist,
so the fallback runs the *real* stages (``dvc repro``) in a temporary git copy
of the repository with ``epochs`` shrunk to 2: a few seconds of training, and
exactly the files ``make repro`` would give (model, card, metrics, per-sample
predictions, prepared test split).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imgclf.jsonio import expand
from tests.support import ROOT, SHRINK, copy_repo, run

# IMGCLF_TEST_MODEL=fresh forces the temp-copy run even when the checkout has a model.
MODE_VAR = "IMGCLF_TEST_MODEL"


@dataclass(frozen=True)
class ProjectTree:
    """A directory laid out like the repo after ``dvc repro``."""

    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "models"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw" / "digits"

    def is_complete(self) -> bool:
        """All outputs present, and the metrics were computed for *this* model file."""
        needed = [
            self.model_dir / "model.onnx",
            self.model_dir / "model.json",
            self.model_dir / "checkpoint.pt",
            self.model_dir / "reference.json",
            self.model_dir / "ood.json",
            self.metrics_dir / "evaluate.json",
            self.metrics_dir / "predictions.csv",
            self.prepared / "index.csv",
            self.prepared / "test.npy",
            self.raw,
        ]
        if not all(p.exists() for p in needed):
            return False
        card = json.loads((self.model_dir / "model.json").read_text())
        metrics = expand(json.loads((self.metrics_dir / "evaluate.json").read_text()))
        return card.get("model_sha256") == metrics.get("model_sha256")


def build_in_copy(dest: Path) -> ProjectTree:
    """A shrunk temp copy of the checkout after a real ``dvc repro``."""
    copy_repo(dest, SHRINK)
    run(["dvc", "repro", "--quiet"], dest)
    tree = ProjectTree(dest)
    if not tree.is_complete():
        raise RuntimeError(f"dvc repro in {dest} did not produce a complete model")
    return tree


_built: list[ProjectTree] = []  # one shrunk run per test session, shared by all test groups


def project_tree(scratch: Path) -> ProjectTree:
    """The checkout itself when it holds a consistent model, else a fresh shrunk run."""
    here = ProjectTree(ROOT)
    if os.environ.get(MODE_VAR, "auto") != "fresh" and here.is_complete():
        return here
    if not _built:
        scratch.mkdir(parents=True, exist_ok=True)
        _built.append(build_in_copy(scratch))
    return _built[0]
