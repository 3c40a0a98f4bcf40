"""The prepared split on disk (``data/prepared/``): written by prepare, read by the rest.

``prepare`` writes ``data/prepared/`` ({split}.npy, {split}_labels.npy, index.csv,
meta.json); ``train`` and ``evaluate`` read it. Keeping the format and its readers
here, not in ``prepare.py``, means a stage that only *reads* the split does not depend
on the code that *makes* it — its ``dvc.yaml`` deps say exactly that.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
INDEX_FIELDS = ("split", "position", "label", "class", "path", "sha256", "width", "height")
INDEX_FILE = "index.csv"
META_FILE = "meta.json"


def load_split(prepared: Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, H, W, C)`` (memory-mapped) and int64 labels of one split."""
    images = np.load(prepared / f"{split}.npy", mmap_mode="r" if mmap else None)
    return images, np.load(prepared / f"{split}_labels.npy")


def load_meta(prepared: Path) -> dict[str, Any]:
    """Classes, preprocessing spec, normalisation stats and dataset fingerprint."""
    return json.loads((prepared / META_FILE).read_text())


def read_index(prepared: Path, split: str | None = None) -> list[dict[str, str]]:
    """Rows of ``index.csv`` (one per used image, in split order), optionally one split."""
    with (prepared / INDEX_FILE).open(newline="") as fh:
        return [row for row in csv.DictReader(fh) if split is None or row["split"] == split]
