"""prepare: ImageFolder tree → validated, split, decoded-once uint8 arrays.

Training then never decodes a JPEG again: each epoch reads memory-mapped
``{train,val,test}.npy``. Every file that cannot be used is listed in the report
with the reason, and the raw tree is only read, never modified.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.data.prepared_files import INDEX_FIELDS, INDEX_FILE, META_FILE, SPLITS
from imgclf.data.preprocessing import (
    SOURCE_SIZE,
    ImageError,
    PreprocessSpec,
    draft_target,
    open_image,
    preprocess,
)
from imgclf.errors import PrepareError
from imgclf.jsonio import with_detail, write_json
from imgclf.params import Params


@dataclass(frozen=True)
class Decoded:
    """One scanned file: its pixels, or why it was skipped."""

    path: str
    label: int
    sha256: str
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None  # only between a decoder and the scratch array
    reason: str = ""
    detail: str = ""
    slot: int = -1  # row in the scratch array once stored

    @property
    def usable(self) -> bool:
        return not self.reason


def scan_imagefolder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted sub-folders) and every candidate file as (relative path, label).

    Hidden files (``.DS_Store``, ``.gitignore``…) are ignored; anything else is a
    candidate and is sniffed by content, not by extension.
    """
    if not root.is_dir():
        raise PrepareError(f"dataset folder {root} does not exist (see data.dataset)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise PrepareError(
            f"{root} must contain one sub-folder per class (found {len(classes)}: {classes}); "
            "layout is <dataset>/<class>/<image>"
        )
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.startswith("."):
                    rel = (Path(dirpath) / filename).relative_to(root).as_posix()
                    files.append((rel, label))
    return classes, files


def decode_one(root: Path, rel: str, label: int, spec: PreprocessSpec, min_side: int) -> Decoded:
    """Read, verify and preprocess one file; never raises for a bad or unreadable file."""
    try:
        data = (root / rel).read_bytes()
    except OSError as exc:  # a dangling link, no permission, an I/O error
        return Decoded(rel, label, "", reason="unreadable", detail=f"cannot read: {exc.strerror}")
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return Decoded(rel, label, digest, reason="empty_file", detail="file has 0 bytes")
    try:
        img = open_image(io.BytesIO(data), spec.max_pixels, draft_to=draft_target(spec))
        width, height = img.info.get(SOURCE_SIZE, img.size)
        if min(width, height) < min_side:
            return Decoded(
                rel,
                label,
                digest,
                width,
                height,
                reason="too_small",
                detail=f"{width}x{height} is below prepare.min_side={min_side}",
            )
        return Decoded(rel, label, digest, width, height, pixels=preprocess(img, spec))
    except ImageError as exc:
        return Decoded(rel, label, digest, reason=exc.reason, detail=str(exc))
    except Exception as exc:  # noqa: BLE001 - decoders raise a zoo of types; one file, not the stage
        return Decoded(rel, label, digest, reason="corrupt", detail=f"{type(exc).__name__}: {exc}")


def _decode_chunk(args: tuple[Path, list[tuple[str, int]], PreprocessSpec, int]) -> list[Decoded]:
    root, chunk, spec, min_side = args
    return [decode_one(root, rel, label, spec, min_side) for rel, label in chunk]


def decode_all(
    root: Path, files: list[tuple[str, int]], spec: PreprocessSpec, min_side: int, scratch: Path
) -> tuple[list[Decoded], np.ndarray]:
    """Decode every file (in parallel for large trees) into a memory-mapped scratch array.

    Pixels go to disk as they arrive, so tens of thousands of photos never have to
    fit in memory at once. Results keep the input order; ``slot`` is the row.
    """
    shape = (len(files), spec.image_size, spec.image_size, spec.channels)
    store = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8, shape=shape)
    workers = min(os.cpu_count() or 1, 8)
    size = 256
    chunks = [(root, files[i : i + size], spec, min_side) for i in range(0, len(files), size)]
    if len(files) < 4000 or workers == 1:
        parts = map(_decode_chunk, chunks)
        return _store(parts, store), store
    with ProcessPoolExecutor(workers) as pool:
        return _store(pool.map(_decode_chunk, chunks), store), store


def _store(parts: Iterable[list[Decoded]], store: np.ndarray) -> list[Decoded]:
    out: list[Decoded] = []
    for part in parts:
        for d in part:
            if d.pixels is not None:
                store[len(out)] = d.pixels
                d = replace(d, pixels=None, slot=len(out))
            out.append(d)
    return out


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Per-class seeded shuffle → split name per sample; every class gets ≥1 in each split."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n = len(members)
        n_test = max(1, round(n * test_fraction))
        n_val = max(1, round(n * val_fraction))
        split[members[:n_test]] = "test"
        split[members[n_test : n_test + n_val]] = "val"
        split[members[n_test + n_val :]] = "train"
    return split


def drop_duplicates(decoded: list[Decoded]) -> list[Decoded]:
    """Skip byte-identical copies (they would leak between splits); keep the first seen."""
    first: dict[str, Decoded] = {}
    out = []
    for d in decoded:
        if d.usable and d.sha256 in first:
            other = first[d.sha256]
            clash = " (in another class!)" if other.label != d.label else ""
            d = replace(d, reason="duplicate", detail=f"same bytes as {other.path}{clash}")
        elif d.usable:
            first[d.sha256] = d
        out.append(d)
    return out


def check_classes(classes: list[str], used: list[Decoded], skipped: list[Decoded]) -> None:
    """Refuse a split that cannot work: each class needs ≥3 usable images (one per split)."""
    counts = Counter(d.label for d in used)
    problems = []
    for label, name in enumerate(classes):
        n = counts.get(label, 0)
        if n < len(SPLITS):
            lost = Counter(d.reason for d in skipped if d.label == label)
            why = f" ({dict(lost)} skipped)" if lost else ""
            problems.append(f"class '{name}' has {n} usable images{why}")
    if problems:
        raise PrepareError(
            "cannot make a train/val/test split: "
            + "; ".join(problems)
            + f". Each class needs at least {len(SPLITS)} usable images."
        )


def dataset_fingerprint(used: list[Decoded], classes: list[str]) -> str:
    """A hash of exactly what was trained on: relative paths, contents, labels."""
    h = hashlib.sha256()
    for d in used:
        h.update(f"{d.path}\0{d.sha256}\0{classes[d.label]}\n".encode())
    return h.hexdigest()


def build_report(
    root: Path, classes: list[str], decoded: list[Decoded], split: dict[str, str]
) -> dict[str, Any]:
    """The per-class counts, image-size summary and skipped files with reasons."""
    per_class: dict[str, dict[str, int]] = {}
    for label, name in enumerate(classes):
        mine = [d for d in decoded if d.label == label]
        row = {"found": len(mine), "used": sum(d.usable for d in mine)}
        row.update({s: sum(split.get(d.path) == s for d in mine) for s in SPLITS})
        per_class[name] = row
    used = [d for d in decoded if d.usable]
    widths = np.array([d.width for d in used])
    heights = np.array([d.height for d in used])
    skipped = [
        {"path": d.path, "reason": d.reason, "detail": d.detail} for d in decoded if not d.usable
    ]
    return {
        "dataset": root.as_posix(),
        "n_classes": len(classes),
        "n_found": len(decoded),
        "n_used": len(used),
        "n_skipped": len(skipped),
        "split": {s: sum(v == s for v in split.values()) for s in SPLITS},
        # Lists: DVC does not tabulate lists, so `dvc exp show` shows a few totals and not
        # one column per class and statistic (issue 10, item 6).
        "image_size": [
            {
                "side": "width",
                "min": int(widths.min()),
                "median": float(np.median(widths)),
                "max": int(widths.max()),
            },
            {
                "side": "height",
                "min": int(heights.min()),
                "median": float(np.median(heights)),
                "max": int(heights.max()),
            },
        ],
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "classes": [{"class": name, **row} for name, row in per_class.items()],
        "skipped": skipped,
    }


def channel_stats(store: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> tuple[list, list]:
    """Per-channel mean and std (0–1 scale) of the given rows, streamed in chunks."""
    total = np.zeros(store.shape[-1])
    squares = np.zeros(store.shape[-1])
    for i in range(0, len(rows), chunk):
        block = store[rows[i : i + chunk]].reshape(-1, store.shape[-1]).astype(np.float64) / 255
        total += block.sum(axis=0)
        squares += (block**2).sum(axis=0)
    count = len(rows) * store.shape[1] * store.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return [round(float(v), 6) for v in mean], [round(max(float(v), 1e-3), 6) for v in std]


def write_split(path: Path, store: np.ndarray, rows: np.ndarray, chunk: int = 4096) -> None:
    """Copy the given scratch rows into a standalone ``.npy`` without loading them all."""
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(len(rows), *store.shape[1:])
    )
    for i in range(0, len(rows), chunk):
        out[i : i + chunk] = store[rows[i : i + chunk]]
    out.flush()
    del out


def prepare(raw: Path, out_dir: Path, report_path: Path, params: Params) -> dict[str, Any]:
    """Run the whole stage; on any error nothing is written and earlier outputs stay."""
    p = params.prepare
    spec = PreprocessSpec(p.image_size, p.color_mode, p.resize, p.max_pixels)
    classes, files = scan_imagefolder(raw)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        decoded, store = decode_all(raw, files, spec, p.min_side, tmp / "scratch.npy")
        if p.dedupe:
            decoded = drop_duplicates(decoded)
        used = [d for d in decoded if d.usable]
        check_classes(classes, used, [d for d in decoded if not d.usable])

        labels = np.array([d.label for d in used], dtype=np.int64)
        split_of = stratified_split(labels, p.val_fraction, p.test_fraction, params.seed)
        slots = np.array([d.slot for d in used], dtype=np.int64)
        mean, std = channel_stats(store, slots[split_of == "train"])
        meta = {
            "classes": classes,
            "preprocess": spec.to_dict(),
            "mean": mean,
            "std": std,
            "dataset": {"path": raw.as_posix(), "fingerprint": dataset_fingerprint(used, classes)},
            "counts": {s: int((split_of == s).sum()) for s in SPLITS},
        }
        with (tmp / INDEX_FILE).open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(INDEX_FIELDS)
            for name in SPLITS:
                members = [d for d, s in zip(used, split_of, strict=True) if s == name]
                write_split(tmp / f"{name}.npy", store, slots[split_of == name])
                np.save(tmp / f"{name}_labels.npy", np.array([d.label for d in members], np.int64))
                for pos, d in enumerate(members):
                    row = (
                        name,
                        pos,
                        d.label,
                        classes[d.label],
                        d.path,
                        d.sha256,
                        d.width,
                        d.height,
                    )
                    writer.writerow(row)
        del store
        (tmp / "scratch.npy").unlink()
        write_json(tmp / META_FILE, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    split_by_path = dict(zip((d.path for d in used), split_of, strict=True))
    report = build_report(raw, classes, decoded, split_by_path)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    # Headline: n_classes, n_used, n_skipped; the rest is detail (see dataio.DETAIL).
    write_json(
        report_path, with_detail(report, ("dataset", "n_found", "split", "skipped_by_reason"))
    )
    return report
