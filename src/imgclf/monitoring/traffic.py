"""Read the monitoring database: served traffic in a time window, as columns.

The read side of :mod:`imgclf.monitoring.recorder`, shared by ``imgclf drift-report`` and
``imgclf collect``. It opens the database read-only (``mode=ro``), so a report run
against the production file can never change it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TrafficError(ValueError):
    """The database or the window cannot be read as asked; the message says why."""


def parse_time(text: str, now: float | None = None) -> float:
    """``1h``/``30m``/``2d`` (that long before now) or an ISO-8601 time → Unix seconds."""
    now = time.time() if now is None else now
    m = _DURATION.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TrafficError(
            f"{text!r} is neither a duration (90s, 30m, 1h, 2d, 1w) nor an ISO-8601 time "
            "(2026-11-30T06:00:00+00:00)"
        ) from None
    if moment.tzinfo is None:
        raise TrafficError(f"{text!r} has no time zone: add one, e.g. +00:00 or Z")
    return moment.timestamp()


@dataclass
class Traffic:
    """Recorded predictions of one window, for one model version (columns, oldest first)."""

    start: float
    end: float
    version: str | None
    features: dict[str, list[Any]] = field(default_factory=dict)
    predicted: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    embedding: np.ndarray | None = None
    samples: list[str | None] = field(default_factory=list)
    other_versions: Counter[str] = field(default_factory=Counter)
    # Read from several files (a fleet): rows and whole files that could not be read as
    # recorded data (a corrupt or hostile object in the bucket) are left out and counted.
    unreadable_rows: int = 0
    unreadable_files: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.predicted)


def open_readonly(db: Path) -> sqlite3.Connection:
    if not db.is_file():
        raise TrafficError(
            f"{db} does not exist: start the API with IMGCLF_MONITOR_DB={db} (make serve does) "
            "and send it some traffic"
        )
    # as_uri() escapes "?" and "#" in the path; mode=ro: a report can never change the file.
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        conn.execute("SELECT 1 FROM requests LIMIT 1")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise TrafficError(f"{db} is not an imgclf monitoring database ({exc})") from None
    return conn


def load_traffic(
    dbs: Path | list[Path],
    start: float,
    end: float,
    version: str | None,
    from_fleet: Collection[Path] = (),
) -> Traffic:
    """Rows with ``start <= ts < end``; only ``version``'s (others are counted, not mixed in).

    A report that mixed two models' answers would show "drift" that is only the new
    model; counting the others lets the report say what it left out. Several files
    (one per replica) are read as one window. Rows whose feature set is unknown or whose
    features do not have one float per name are left out and counted (misread, they would
    shift every column). A file of a fleet (``from_fleet``: a bucket's or a folder's
    shards) that is not a monitoring database is left out and counted too: one bad object
    must not stop the fleet's report. A file the user named still fails with the reason.
    """
    traffic = Traffic(start, end, version)
    embeddings: list[np.ndarray] = []
    rows: dict[str, list[bytes]] = {}  # feature names (comma-joined) → float32 rows
    formats: list[str] = []
    paths = [dbs] if isinstance(dbs, Path) else dbs
    for db in paths:
        fetched = db in from_fleet
        try:
            conn = open_readonly(db)
        except TrafficError:
            if not fetched:
                raise
            traffic.unreadable_files.append(db.name)
            continue
        try:
            sets = dict(conn.execute("SELECT id, names FROM feature_sets"))
            widths = {k: 4 * len(str(v).split(",")) for k, v in sets.items()}
            cursor = conn.execute(
                "SELECT model_version, label, confidence, format, feature_set, features, "
                "embedding, sample FROM requests WHERE ts >= ? AND ts < ? ORDER BY id",
                (start, end),
            )
            for model_version, label, conf, fmt, feature_set, features, emb, sample in cursor:
                if not isinstance(features, bytes) or len(features) != widths.get(feature_set):
                    traffic.unreadable_rows += 1
                    continue
                if version is not None and model_version != version:
                    traffic.other_versions[model_version] += 1
                    continue
                traffic.predicted.append(label)
                traffic.confidence.append(float(conf))
                traffic.samples.append(sample)
                formats.append(fmt)
                rows.setdefault(sets[feature_set], []).append(features)
                if emb is not None:
                    embeddings.append(np.frombuffer(emb, dtype="<f4"))
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            if not fetched:
                raise TrafficError(f"{db} cannot be read as monitoring data ({exc})") from None
            traffic.unreadable_files.append(db.name)  # its rows so far stay: they were fine
        finally:
            conn.close()
    if len(rows) > 1:  # e.g. a grayscale and an RGB model in one window
        raise TrafficError("the window mixes models with different features: pick one version")
    for names, blobs in rows.items():
        matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1)
        for j, name in enumerate(names.split(",")):
            traffic.features[name] = [round(float(x), 6) for x in matrix[:, j]]
    if formats:
        traffic.features["format"] = formats
    dims = {len(e) for e in embeddings}
    if embeddings and len(embeddings) == traffic.rows and len(dims) == 1:
        traffic.embedding = np.stack(embeddings).astype(np.float64)
    return traffic
