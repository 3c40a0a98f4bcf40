"""prepare: ImageFolder tree → validated, split, decoded-once uint8 arrays.

Training then never decodes a JPEG again: each epoch reads memory-mapped
``{train,val,test}.npy``. Every file that cannot be used is listed in the report
with the reason, and the raw tree is only read, never modified.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.params import Params
from imgclf.preprocessing import ImageError, PreprocessSpec, open_image, preprocess

SPLITS = ("train", "val", "test")
INDEX_FIELDS = ("split", "position", "label", "class", "path", "sha256", "width", "height")


class PrepareError(RuntimeError):
    """The dataset cannot be turned into a train/val/test split; the message says why."""


@dataclass(frozen=True)
class Decoded:
    """One scanned file: its pixels, or why it was skipped."""

    path: str
    label: int
    sha256: str
    width: int = 0
    height: int = 0
    pixels: np.ndarray | None = None
    reason: str = ""
    detail: str = ""


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
    """Read, verify and preprocess one file; never raises for a bad image."""
    data = (root / rel).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return Decoded(rel, label, digest, reason="empty_file", detail="file has 0 bytes")
    try:
        img = open_image(io.BytesIO(data), spec.max_pixels, draft_to=2 * spec.image_size)
        width, height = img.size
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


def _decode_chunk(args: tuple[Path, list[tuple[str, int]], PreprocessSpec, int]) -> list[Decoded]:
    root, chunk, spec, min_side = args
    return [decode_one(root, rel, label, spec, min_side) for rel, label in chunk]


def decode_all(
    root: Path, files: list[tuple[str, int]], spec: PreprocessSpec, min_side: int
) -> list[Decoded]:
    """Decode every file, in parallel for large trees; the order of results is the input order."""
    workers = min(os.cpu_count() or 1, 8)
    if len(files) < 4000 or workers == 1:
        return _decode_chunk((root, files, spec, min_side))
    size = -(-len(files) // (workers * 4))
    chunks = [(root, files[i : i + size], spec, min_side) for i in range(0, len(files), size)]
    with ProcessPoolExecutor(workers) as pool:
        return [d for part in pool.map(_decode_chunk, chunks) for d in part]


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


def _skip(d: Decoded, reason: str, detail: str) -> Decoded:
    return Decoded(d.path, d.label, d.sha256, d.width, d.height, reason=reason, detail=detail)


def drop_duplicates(decoded: list[Decoded]) -> list[Decoded]:
    """Skip byte-identical copies (they would leak between splits); keep the first seen."""
    first: dict[str, Decoded] = {}
    out = []
    for d in decoded:
        if d.pixels is not None and d.sha256 in first:
            other = first[d.sha256]
            clash = " (in another class!)" if other.label != d.label else ""
            d = _skip(d, "duplicate", f"same bytes as {other.path}{clash}")
        elif d.pixels is not None:
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
        row = {"found": len(mine), "used": sum(d.pixels is not None for d in mine)}
        row.update({s: sum(split.get(d.path) == s for d in mine) for s in SPLITS})
        per_class[name] = row
    used = [d for d in decoded if d.pixels is not None]
    widths = np.array([d.width for d in used])
    heights = np.array([d.height for d in used])
    skipped = [
        {"path": d.path, "reason": d.reason, "detail": d.detail}
        for d in decoded
        if d.pixels is None
    ]
    return {
        "dataset": root.as_posix(),
        "n_classes": len(classes),
        "n_found": len(decoded),
        "n_used": len(used),
        "n_skipped": len(skipped),
        "split": {s: sum(v == s for v in split.values()) for s in SPLITS},
        "image_size": {
            "min_width": int(widths.min()),
            "max_width": int(widths.max()),
            "median_width": float(np.median(widths)),
            "min_height": int(heights.min()),
            "max_height": int(heights.max()),
            "median_height": float(np.median(heights)),
        },
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "classes": per_class,
        "skipped": skipped,
    }


def write_json(path: Path, data: Any) -> None:
    """Byte-stable JSON (sorted keys, fixed indent, trailing newline), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def prepare(raw: Path, out_dir: Path, report_path: Path, params: Params) -> dict[str, Any]:
    """Run the whole stage; on any error nothing is written and earlier outputs stay."""
    p = params.prepare
    spec = PreprocessSpec(p.image_size, p.color_mode, p.resize, p.max_pixels)
    classes, files = scan_imagefolder(raw)
    decoded = decode_all(raw, files, spec, p.min_side)
    if p.dedupe:
        decoded = drop_duplicates(decoded)
    used = [d for d in decoded if d.pixels is not None]
    check_classes(classes, used, [d for d in decoded if d.pixels is None])

    labels = np.array([d.label for d in used], dtype=np.int64)
    split_of = stratified_split(labels, p.val_fraction, p.test_fraction, params.seed)
    train_pixels = np.stack([d.pixels for d, s in zip(used, split_of, strict=True) if s == "train"])
    scaled = train_pixels.reshape(-1, spec.channels).astype(np.float64) / 255.0
    meta = {
        "classes": classes,
        "preprocess": spec.to_dict(),
        "mean": [round(float(v), 6) for v in scaled.mean(axis=0)],
        "std": [round(max(float(v), 1e-3), 6) for v in scaled.std(axis=0)],
        "dataset": {"path": raw.as_posix(), "fingerprint": dataset_fingerprint(used, classes)},
        "counts": {s: int((split_of == s).sum()) for s in SPLITS},
    }

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with (tmp / "index.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(INDEX_FIELDS)
        for name in SPLITS:
            members = [d for d, s in zip(used, split_of, strict=True) if s == name]
            np.save(tmp / f"{name}.npy", np.stack([d.pixels for d in members]))
            np.save(tmp / f"{name}_labels.npy", np.array([d.label for d in members], np.int64))
            for pos, d in enumerate(members):
                row = (name, pos, d.label, classes[d.label], d.path, d.sha256, d.width, d.height)
                writer.writerow(row)
    write_json(tmp / "meta.json", meta)
    split_by_path = dict(zip((d.path for d in used), split_of, strict=True))
    report = build_report(raw, classes, decoded, split_by_path)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    write_json(report_path, report)
    return report


def load_split(prepared: Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images ``(N, H, W, C)`` (memory-mapped) and int64 labels of one split."""
    images = np.load(prepared / f"{split}.npy", mmap_mode="r" if mmap else None)
    return images, np.load(prepared / f"{split}_labels.npy")


def load_meta(prepared: Path) -> dict[str, Any]:
    """Classes, preprocessing spec, normalisation stats and dataset fingerprint."""
    return json.loads((prepared / "meta.json").read_text())
