"""Byte-stable JSON and the headline/detail split of metrics files, used by every stage.

Every JSON file a stage writes goes through :func:`write_json`, so its bytes in
``dvc.lock`` depend only on the data. Metrics files keep their headline scalars at the top
and the rest under ``detail`` (:func:`with_detail`); readers flatten them with
:func:`expand`. A top-level module because prepare, train, evaluate, the reports and the
API all read or write these files.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Metrics files keep their headline scalars at the top and everything else under this
# key, in a one-element list: DVC tabulates scalars but not lists, so `dvc exp show`
# shows ~15 metric columns instead of 30+ (issue 10, item 6). Readers call `expand`.
DETAIL = "detail"


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
