"""``imgclf collect``: sampled uploads → an ImageFolder under ``data/raw/`` for the next training.

Two steps, because a person decides the labels:

1. ``imgclf collect --out data/raw/served`` writes a labelling sheet,
   ``data/raw/served.labels.csv``: one row per sampled upload (``sample``, the model's
   ``predicted`` class and ``confidence``, lowest confidence first) and an empty
   ``label`` column to fill in.
2. ``imgclf collect --out data/raw/served --labels data/raw/served.labels.csv`` copies
   every labelled sample to ``<out>/<label>/``; rows left blank are skipped and counted.
   ``--labels predicted`` takes the model's answers instead (pseudo-labels: they teach
   the model what it already believes — use them for review, not as ground truth).

``--out`` may be an existing dataset (``data/raw/mydata``): files are added beside the
ones there and nothing is ever overwritten. Everything is checked before the first
file is copied, so a bad sheet changes nothing: sample paths must name a recorded sample
inside the sample directory (no ``..``, no absolute paths), labels must be plain folder
names, a sample may not get two labels.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imgclf.monitoring.traffic import open_readonly

PREDICTED = "predicted"
SHEET_FIELDS = ("sample", "predicted", "confidence", "label")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


class CollectError(ValueError):
    """The sheet, the database or the destination cannot be used; nothing was written."""


@dataclass(frozen=True)
class Sampled:
    sample: str
    predicted: str
    confidence: float


def recorded_samples(db: Path | list[Path], since: float | None = None) -> list[Sampled]:
    """Every sample the API kept (newest last), from the monitoring database(s) or shards."""
    rows: list[tuple[float, str, str, float]] = []
    for path in [db] if isinstance(db, Path) else db:
        conn = open_readonly(path)
        try:
            rows += conn.execute(
                "SELECT ts, sample, label, confidence FROM requests "
                "WHERE sample IS NOT NULL AND ts >= ? ORDER BY id",
                (since if since is not None else float("-inf"),),
            ).fetchall()
        finally:
            conn.close()
    rows.sort(key=lambda r: r[0])
    return [Sampled(s, label, float(c)) for _, s, label, c in rows]


def write_sheet(samples: list[Sampled], path: Path) -> Path:
    """The labelling sheet, least confident first (where a person's label helps most)."""
    if path.exists():
        raise CollectError(f"{path} exists: fill that one in, or move it away first")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(SHEET_FIELDS)
        for s in sorted(samples, key=lambda s: s.confidence):
            writer.writerow((s.sample, s.predicted, f"{s.confidence:.4f}", ""))
    return path


def _safe_sample(name: str, sample_dir: Path, where: str) -> Path:
    """The file a sample name points at, refusing anything that leaves ``sample_dir``."""
    rel = PurePosixPath(name)
    if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise CollectError(f"{where}: sample {name!r} is not a path inside the sample directory")
    path = sample_dir / rel
    root = sample_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise CollectError(f"{where}: sample {name!r} leads outside {sample_dir} (a symlink?)")
    if not path.is_file():
        raise CollectError(f"{where}: sample file {path} is missing")
    return path


def check_label(label: str, where: str) -> None:
    """A label becomes a folder under ``--out``: a plain name only, whoever wrote it (a
    person in the sheet, or the model's class list via the database for ``predicted``)."""
    if not _LABEL.match(label) or label in {".", ".."}:
        raise CollectError(
            f"{where}: label {label!r} is not a usable class folder name "
            "(letters, digits, space, _ . + -, at most 64 characters)"
        )


def read_labels(sheet: Path, known: dict[str, Sampled]) -> tuple[dict[str, str], int]:
    """``{sample: label}`` from a filled-in sheet, and how many rows were left blank."""
    if not sheet.is_file():
        raise CollectError(f"{sheet} not found: run `imgclf collect` without --labels first")
    try:
        with sheet.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = {"sample", "label"} - set(reader.fieldnames or ())
            if missing:
                raise CollectError(
                    f"{sheet}: no column {', '.join(sorted(missing))} in the header "
                    f"(found: {', '.join(reader.fieldnames or ()) or 'nothing'}); "
                    f"expected {', '.join(SHEET_FIELDS)}"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CollectError(f"{sheet} is not a readable CSV file: {exc}") from None
    labels: dict[str, str] = {}
    blank = 0
    for line, row in enumerate(rows, start=2):
        sample, label = (row.get("sample") or "").strip(), (row.get("label") or "").strip()
        where = f"{sheet}:{line}"
        if not label:
            blank += 1
            continue
        check_label(label, where)
        if sample not in known:
            raise CollectError(f"{where}: {sample!r} is not a sample the API recorded")
        if labels.get(sample, label) != label:
            raise CollectError(f"{where}: {sample} has two labels, {labels[sample]} and {label}")
        labels[sample] = label
    return labels, blank


def build_folder(labels: dict[str, str], sample_dir: Path, out: Path) -> Counter[str]:
    """Copy labelled samples to ``out/<label>/``; refuse (before copying) any overwrite."""
    plan: list[tuple[Path, Path]] = []
    for sample, label in sorted(labels.items()):
        source = _safe_sample(sample, sample_dir, "sample")
        target = out / label / PurePosixPath(sample).name
        if target.exists():
            raise CollectError(f"{target} exists: collect never overwrites (collected before?)")
        plan.append((source, target))
    counts: Counter[str] = Counter()
    for source, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        counts[target.parent.name] += 1
    return counts


def collect(
    db: Path | list[Path],
    sample_dir: Path,
    out: Path,
    labels: str | None,
    since: float | None = None,
    fetch: Callable[[list[str]], Path] | None = None,
) -> tuple[str, Counter[str], int]:
    """Run one step; returns (what was done, images per class, rows skipped).

    ``fetch`` downloads the chosen samples (from a bucket) and returns their folder.
    """
    samples = recorded_samples(db, since)
    if not samples:
        where = db if isinstance(db, Path) else f"{len(db)} shards"
        raise CollectError(
            f"no sampled uploads in {where}: serve with IMGCLF_SAMPLE_DIR and "
            "IMGCLF_SAMPLE_RATE set"
        )
    if labels is None:
        sheet = write_sheet(samples, out.with_name(out.name + ".labels.csv"))
        return f"wrote the labelling sheet {sheet} ({len(samples)} samples)", Counter(), 0
    known = {s.sample: s for s in samples}
    if labels == PREDICTED:
        chosen, blank = {s.sample: s.predicted for s in samples}, 0
        for s in samples:  # the database is input too: the same check as the sheet's
            check_label(s.predicted, f"{db}: sample {s.sample}")
    else:
        chosen, blank = read_labels(Path(labels), known)
    if not chosen:
        raise CollectError(f"{labels}: no row has a label yet; fill in the label column")
    if fetch is not None:
        sample_dir = fetch(sorted(chosen))
    counts = build_folder(chosen, sample_dir, out)
    return f"added {sum(counts.values())} images to {out}", counts, blank
