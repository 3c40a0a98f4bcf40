"""The prepared split on disk and byte-stable JSON: written by prepare, read by the rest.

``prepare`` writes ``data/prepared/`` ({split}.npy, {split}_labels.npy, index.csv,
meta.json); ``train`` and ``evaluate`` read it. Keeping the format and its readers
here, not in ``prepare.py``, means a stage that only *reads* the split does not depend
on the code that *makes* it — its ``dvc.yaml`` deps say exactly that.
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
INDEX_FIELDS = ("split", "position", "label", "class", "path", "sha256", "width", "height")
INDEX_FILE = "index.csv"
# Metrics files keep their headline scalars at the top and everything else under this
# key, in a one-element list: DVC tabulates scalars but not lists, so `dvc exp show`
# shows ~15 metric columns instead of 30+ (issue 10, item 6). Readers call `expand`.
DETAIL = "detail"
META_FILE = "meta.json"


def write_json(path: Path, data: Any) -> None:
    """Byte-stable JSON (sorted keys, fixed indent, trailing newline), written atomically.

    Every JSON file a stage writes goes through here, so its bytes in ``dvc.lock``
    depend only on the data, never on dict order or a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def with_detail(data: dict[str, Any], detail_keys: Iterable[str]) -> dict[str, Any]:
    """``data`` with the (dotted) ``detail_keys`` moved under ``DETAIL``, out of DVC's tables."""
    head = copy.deepcopy(data)
    detail: dict[str, Any] = {}
    for dotted in detail_keys:
        *parents, leaf = dotted.split(".")
        src, dst = head, detail
        for key in parents:
            src, dst = src[key], dst.setdefault(key, {})
        dst[leaf] = src.pop(leaf)
    return {**head, DETAIL: [detail]}


def expand(data: Any) -> Any:
    """The flat view of a metrics file: ``DETAIL`` merged back (deeply) into the headline.

    Files written before the split (no ``DETAIL``) come back unchanged, so reports
    against an old base revision still read every key.
    """
    if not isinstance(data, dict) or not isinstance(data.get(DETAIL), list):
        return data
    out = {k: v for k, v in data.items() if k != DETAIL}
    for extra in data[DETAIL]:
        if isinstance(extra, dict):
            _merge(out, extra)
    return out


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


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
