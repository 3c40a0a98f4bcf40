"""imgclf collect: recorded samples → labelling sheet → ImageFolder; bad sheets change nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgclf.cli import app
from imgclf.data.preprocessing import DecodeBudget
from imgclf.monitoring.collect import CollectError, collect
from imgclf.monitoring.recorder import Monitor, MonitorConfig


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path]:
    """A monitoring database with 6 sampled uploads (3 JPEG, 3 PNG) and their files."""
    db, samples = tmp_path / "m.db", tmp_path / "samples"
    monitor = Monitor(MonitorConfig(db, sample_dir=samples, sample_rate=1.0))
    for fmt, conf in (("JPEG", 0.9), ("PNG", 0.4)):
        uploads = []
        for value in (10, 120, 240):
            buf = io.BytesIO()
            Image.new("RGB", (20, 10), (value, value, value)).save(buf, fmt)
            uploads.append(monitor.upload(buf.getvalue(), DecodeBudget(10**6)))
        probs = np.tile([conf, 1 - conf], (3, 1))
        pixels = np.zeros((3, 8, 8, 1), np.uint8)
        monitor.observe(uploads, pixels, probs, None, ["cat", "dog"], "v1")
    monitor.close()
    return db, samples


def _sheet(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]], fields: tuple[str, ...]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_sheet_then_labels_make_an_image_folder(served: tuple[Path, Path], tmp_path: Path) -> None:
    db, samples = served
    out = tmp_path / "data" / "raw" / "served"
    runner = CliRunner()
    args = ["collect", "--out", str(out), "--db", str(db), "--samples", str(samples)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    sheet = out.with_name("served.labels.csv")
    rows = _sheet(sheet)
    assert len(rows) == 6 and not out.exists()
    assert [r["confidence"] for r in rows][:3] == ["0.6000"] * 3  # least confident first
    # A person labels four rows (one as a new class) and leaves two blank.
    for row, label in zip(rows, ["dog", "cat", "", "fox", "cat", ""], strict=True):
        row["label"] = label
    _write(sheet, rows, ("sample", "predicted", "confidence", "label"))
    second = runner.invoke(app, [*args, "--labels", str(sheet)])
    assert second.exit_code == 0, second.output
    assert "2 rows without a label were skipped" in second.output
    files = sorted(p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file())
    assert files == ["cat", "cat", "dog", "fox"]
    for path in out.rglob("*.*"):  # real images, bytes as uploaded
        Image.open(path).verify()
    # Running it again would overwrite: refused, nothing changes.
    again = runner.invoke(app, [*args, "--labels", str(sheet)])
    assert again.exit_code == 2 and "never overwrites" in again.output


def test_predicted_labels_on_request(served: tuple[Path, Path], tmp_path: Path) -> None:
    db, samples = served
    done, counts, _ = collect(db, samples, tmp_path / "out", "predicted")
    assert counts == {"cat": 3, "dog": 3} and "added 6 images" in done


def test_predicted_labels_from_the_database_are_checked_like_sheet_labels(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    """Issue 20: a label ``../x`` recorded in the database (the model's class list) wrote
    outside ``--out`` under ``--labels predicted``; it is now refused, nothing written."""
    import sqlite3

    db, samples = served
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE requests SET label = '../escaped' WHERE label = 'dog'")
    out = tmp_path / "box" / "out"
    with pytest.raises(CollectError, match="class folder name"):
        collect(db, samples, out, "predicted")
    assert not (tmp_path / "box").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows.__setitem__(0, {**rows[0], "sample": "../../etc/passwd"}), "recorded"),
        (lambda rows: rows.__setitem__(0, {**rows[0], "label": "../up"}), "class folder name"),
        (lambda rows: rows.__setitem__(0, {**rows[0], "label": ".."}), "class folder name"),
        (lambda rows: rows.append({**rows[0], "label": "other"}), "two labels"),
        (lambda rows: rows.clear(), "no row has a label"),
    ],
    ids=["traversal", "label-path", "label-dotdot", "conflict", "empty"],
)
def test_bad_sheets_are_refused_before_anything_is_copied(
    served: tuple[Path, Path], tmp_path: Path, edit, message: str
) -> None:
    db, samples = served
    out = tmp_path / "out"
    collect(db, samples, out, None)
    sheet = tmp_path / "out.labels.csv"
    rows = _sheet(sheet)
    for row in rows:
        row["label"] = "cat"
    edit(rows)
    _write(sheet, rows, ("sample", "predicted", "confidence", "label"))
    with pytest.raises(CollectError, match=message):
        collect(db, samples, out, str(sheet))
    assert not out.exists()


def test_malformed_files_and_escaping_samples(served: tuple[Path, Path], tmp_path: Path) -> None:
    db, samples = served
    out = tmp_path / "out"
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("path;class\nx;y\n")
    with pytest.raises(CollectError, match="no column label, sample in the header"):
        collect(db, samples, out, str(sheet))
    sheet.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CollectError, match="not a readable CSV"):
        collect(db, samples, out, str(sheet))
    with pytest.raises(CollectError, match="not found"):
        collect(db, samples, out, str(tmp_path / "missing.csv"))
    # A recorded sample replaced by a symlink out of the sample folder is refused.
    (name,) = [r["sample"] for r in _sheet_rows(db, samples, tmp_path)][:1]
    target = samples / name
    target.unlink()
    target.symlink_to(tmp_path / "sheet.csv")
    with pytest.raises(CollectError, match="outside"):
        collect(db, samples, out, "predicted")
    assert not out.exists()


def _sheet_rows(db: Path, samples: Path, tmp_path: Path) -> list[dict[str, str]]:
    collect(db, samples, tmp_path / "peek", None)
    return _sheet(tmp_path / "peek.labels.csv")[:1]
