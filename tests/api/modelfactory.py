"""The model the API and container tests serve, and which one it is (said in pytest's header).

One behaviour everywhere, locally and in CI: the session's shrunk reproduction — the
*real* stages (``dvc repro``, ``epochs: 2``) in a temporary git copy of the checkout,
built once per session and shared with the pipeline and report tests (the
``reproduced_repo`` fixture). ``IMGCLF_TEST_MODEL=checkout`` opts into the checkout's own
``models/`` instead (quicker when only the API tests run; it must match ``metrics/``,
else the tests fail rather than fall back). docs/testing.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgclf.jsonio import expand
from tests.support import ROOT

MODE_VAR = "IMGCLF_TEST_MODEL"
MODES = {"reproduced": "the session's shrunk `dvc repro` (epochs: 2)",
         "fresh": "the session's shrunk `dvc repro` (epochs: 2)",  # the old name
         "checkout": "the checkout's own models/ and metrics/"}  # fmt: skip


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


def model_mode() -> str:
    """``IMGCLF_TEST_MODEL``: ``reproduced`` (the default; ``fresh`` is the old name) or
    ``checkout``."""
    mode = os.environ.get(MODE_VAR, "reproduced") or "reproduced"
    if mode not in MODES:
        raise pytest.UsageError(f"{MODE_VAR}={mode!r}: use one of {', '.join(MODES)}")
    return mode


def describe_model() -> str:
    """One line for pytest's header: which model the API tests serve."""
    mode = model_mode()
    return f"API tests' model: {MODES[mode]} ({MODE_VAR}={mode})"


def project_for(request: pytest.FixtureRequest) -> ProjectTree:
    """The tree the API tests serve: the shared reproduction, or the checkout on request."""
    if model_mode() == "checkout":
        here = ProjectTree(ROOT)
        if not here.is_complete():
            pytest.fail(f"{MODE_VAR}=checkout, but models/ and metrics/ do not match (make repro)")
        return here
    tree = ProjectTree(request.getfixturevalue("reproduced_repo"))
    assert tree.is_complete(), f"dvc repro in {tree.root} did not produce a complete model"
    return tree
