"""prepare: ImageFolder tree → validated, split, decoded-once uint8 arrays.

Training then never decodes a JPEG again: each epoch reads memory-mapped
``{train,val,test}.npy``. Every file that cannot be used is listed in the report
with the reason, and the raw tree is only read, never modified.

At scale (issue 21) the stage runs near the decode ceiling with bounded memory:
worker processes decode, hash and sum each image and write its pixels straight
into a scratch file (no pixels travel between processes, nothing is memory-mapped
for writing, so the resident set does not grow with the dataset); the channel
statistics come from exact per-image integer sums (the same bytes on any CPU,
whatever the order); near-identical images are grouped
(:mod:`imgclf.data.near_duplicates`) and a group never spans two splits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.data.near_duplicates import group, phash
from imgclf.data.prepared_files import INDEX_FIELDS, INDEX_FILE, META_FILE, SPLITS
from imgclf.data.preprocessing import (
    SOURCE_SIZE,
    ImageError,
    PreprocessSpec,
    as_pixels,
    draft_target,
    open_image,
    preprocess_image,
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
    pixels: np.ndarray | None = None  # only between a decoder and the scratch file
    reason: str = ""
    detail: str = ""
    slot: int = -1  # row in the scratch file once stored
    sums: tuple[int, ...] = ()  # per channel: sum of values, then sum of squared values
    phash: int | None = None  # perceptual hash (None: not hashed, e.g. a tiny image)

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


def decode_one(
    root: Path, rel: str, label: int, spec: PreprocessSpec, min_side: int, hash_min_side: int = 0
) -> Decoded:
    """Read, verify and preprocess one file; never raises for a bad or unreadable file.

    A usable image also gets its exact pixel sums and, when both sides of the file are
    at least ``hash_min_side`` (> 0), its perceptual hash (of the decoded image before
    resizing, so ``image_size`` does not change the groups).
    """
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
        square = preprocess_image(img, spec)
        hashed = phash(img) if 0 < hash_min_side <= min(width, height) else None
        return Decoded(
            rel,
            label,
            digest,
            width,
            height,
            pixels=as_pixels(square),
            sums=pixel_sums(square),
            phash=hashed,
        )
    except ImageError as exc:
        return Decoded(rel, label, digest, reason=exc.reason, detail=str(exc))
    except Exception as exc:  # noqa: BLE001 - decoders raise a zoo of types; one file, not the stage
        return Decoded(rel, label, digest, reason="corrupt", detail=f"{type(exc).__name__}: {exc}")


_VALUES = np.arange(256, dtype=np.int64)


def pixel_sums(image: Image.Image) -> tuple[int, ...]:
    """Per channel of an ``L`` or ``RGB`` image: the sum of its values, then the sum of
    their squares (exact ints).

    From Pillow's per-channel histogram (C, one pass): ~20× faster than numpy reductions
    over the pixels, and exact, so the statistics do not depend on summation order.
    Taken from the Pillow image :func:`preprocess_image` returns, not from its array:
    going back from the array to Pillow cost a copy of every image.
    """
    hist = np.array(image.histogram(), dtype=np.int64).reshape(-1, 256)
    return tuple(int(v) for v in (*(hist @ _VALUES), *(hist @ (_VALUES * _VALUES))))


@dataclass(frozen=True)
class _Chunk:
    root: Path
    start: int  # row of the first file in the scratch file
    files: list[tuple[str, int]]
    spec: PreprocessSpec
    min_side: int
    hash_min_side: int
    scratch: Path
    header: int  # bytes reserved at the start of the scratch file (the future .npy header)


# Pillow gives each decoded image's memory back to the system when the image is freed
# (its default keeps no spare 16 MB block), so the next image faults fresh pages in. Kept
# blocks: a 640x480 JPEG decoded in 2.9 → 2.3 ms of CPU (sys 0.45 → 0.14 ms) on the 2-core
# VM, for at most this many × 16 MB per process.
IMAGE_BLOCKS = 4


def keep_image_memory() -> None:
    """Let Pillow keep :data:`IMAGE_BLOCKS` freed memory blocks for the next image."""
    if Image.core.get_blocks_max() < IMAGE_BLOCKS:
        Image.core.set_blocks_max(IMAGE_BLOCKS)


def _decode_chunk(chunk: _Chunk) -> list[Decoded]:
    """Decode a run of files; write each image's pixels at its row of the scratch file."""
    keep_image_memory()
    row_bytes = chunk.spec.image_size * chunk.spec.image_size * chunk.spec.channels
    out = []
    fd = os.open(chunk.scratch, os.O_WRONLY)
    try:
        for i, (rel, label) in enumerate(chunk.files, chunk.start):
            d = decode_one(chunk.root, rel, label, chunk.spec, chunk.min_side, chunk.hash_min_side)
            if d.pixels is not None:
                offset = chunk.header + i * row_bytes
                os.pwrite(fd, np.ascontiguousarray(d.pixels), offset)  # no copy: C-ordered
                d = replace(d, pixels=None, slot=i)
            out.append(d)
    finally:
        os.close(fd)
    return out


def workers() -> int:
    """Decoder processes: the CPUs this process may run on (at most 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


# Below this many files one process is faster than starting a pool (~50 ms per worker).
PARALLEL_FROM = 64
# Files per task at most. A task costs ~0.1 ms of pickling, and when the last one runs
# the other decoders have nothing left to do: 32 photos are ~80 ms of idle cores at the
# end (128 were ~0.3 s, 3 % of an 8,000-photo stage on 2 cores).
CHUNK_FILES = 32


def decode_all(
    root: Path,
    files: list[tuple[str, int]],
    spec: PreprocessSpec,
    min_side: int,
    scratch: Path,
    hash_min_side: int = 0,
    header: int = 0,
) -> list[Decoded]:
    """Decode every file (in parallel when it pays) into the raw scratch file ``scratch``.

    Row ``i`` of the scratch file (``image_size² · channels`` bytes, after ``header``
    reserved bytes) holds file ``i``'s pixels; workers write it themselves, so only small
    records come back and the main process never holds pixels. Results keep the input
    order; ``slot`` is the row.
    """
    row_bytes = spec.image_size * spec.image_size * spec.channels
    with scratch.open("wb") as fh:
        fh.truncate(header + len(files) * row_bytes)
    n_workers = workers()
    size = max(8, min(CHUNK_FILES, -(-len(files) // (n_workers * 8))))
    chunks = [
        _Chunk(root, i, files[i : i + size], spec, min_side, hash_min_side, scratch, header)
        for i in range(0, len(files), size)
    ]
    if len(files) < PARALLEL_FROM or n_workers == 1:
        parts: Iterable[list[Decoded]] = map(_decode_chunk, chunks)
        return [d for part in parts for d in part]
    with ProcessPoolExecutor(n_workers) as pool:
        return [d for part in pool.map(_decode_chunk, chunks) for d in part]


def stratified_split(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Per-class seeded shuffle of groups → split name per sample.

    ``groups`` (a group id per sample, the position of its first member; default: every
    sample alone) are kept whole: a group belongs to the class of its first member and
    fills test, then val, then train, until each split holds its share of that class's
    images. With no groups this is the per-sample split (same seed, same split).
    """
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    if groups is None:
        groups = np.arange(len(labels))
    roots, sizes = np.unique(groups, return_counts=True)
    size_of = dict(zip(roots.tolist(), sizes.tolist(), strict=True))
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    for label in np.unique(labels):
        owned = roots[labels[roots] == label].astype(np.int64)  # ascending: file order
        if not len(owned):  # every image of this class sits in another class's group
            continue
        rng.shuffle(owned)
        n = sum(size_of[r] for r in owned.tolist())
        n_test = max(1, round(n * test_fraction))
        n_val = max(1, round(n * val_fraction))
        got = {"test": 0, "val": 0}
        for r in owned.tolist():
            name = "test" if got["test"] < n_test else "val" if got["val"] < n_val else "train"
            if name != "train":
                got[name] += size_of[r]
            split[members[r]] = name
    return split


def near_duplicate_groups(used: list[Decoded], distance: int) -> np.ndarray:
    """Group id per used image (see :func:`imgclf.data.near_duplicates.group`)."""
    return group([d.phash for d in used], distance)


def describe_groups(
    used: list[Decoded], groups: np.ndarray, split: np.ndarray, classes: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(every group of ≥2 images, the groups spanning two classes), for the report."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    listed, conflicts = [], []
    for root, idx in members.items():
        if len(idx) < 2:
            continue
        counts = Counter(classes[used[i].label] for i in idx)
        entry = {
            "split": str(split[root]),
            "classes": dict(sorted(counts.items())),
            "files": [used[i].path for i in idx],
        }
        listed.append(entry)
        if len(counts) > 1:
            conflicts.append(entry)
    return listed, conflicts


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


def channel_stats(sums: list[tuple[int, ...]], pixels_per_image: int) -> tuple[list, list]:
    """Per-channel mean and std (0–1 scale) from per-image exact integer sums.

    The totals are Python integers, so they are the same whatever the order or the CPU;
    only the final division and square root are floating point (correctly rounded).
    """
    channels = len(sums[0]) // 2
    total = [sum(s[c] for s in sums) for c in range(channels)]
    squares = [sum(s[channels + c] for s in sums) for c in range(channels)]
    count = len(sums) * pixels_per_image
    mean = [t / (255 * count) for t in total]
    var = [q / (255 * 255 * count) - m * m for q, m in zip(squares, mean, strict=True)]
    std = [math.sqrt(max(v, 0.0)) for v in var]
    return [round(v, 6) for v in mean], [round(max(v, 1e-3), 6) for v in std]


def _npy_header(rows: int, row_shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (format 1.0) header of a uint8 array of ``rows`` rows: the exact bytes
    :func:`numpy.save` would write."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (rows, *row_shape)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``rows`` as (first row, number of rows) runs of adjacent rows."""
    runs: list[tuple[int, int]] = []
    for row in rows.tolist():
        if runs and runs[-1][0] + runs[-1][1] == row:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((row, 1))
    return runs


def write_split(
    path: Path, scratch: Path, rows: np.ndarray, row_shape: tuple[int, ...], header: int = 0
) -> None:
    """Copy the given scratch rows into a standalone ``.npy``, run by run of adjacent rows.

    No memory map: runs are read and written :data:`MOVE_BYTES` at a time, so the
    resident set stays the same whatever the size of the split.
    """
    row_bytes = math.prod(row_shape)
    src = os.open(scratch, os.O_RDONLY)
    try:
        with path.open("wb") as out:
            out.write(_npy_header(len(rows), row_shape))
            out.flush()
            for first, count in _runs(rows):
                _copy(src, out, header + first * row_bytes, count * row_bytes)
    finally:
        os.close(src)


# Bytes reserved in front of the scratch file's rows: the largest ``.npy`` header of a
# split (format 1.0 pads it to a multiple of 64 bytes; a 4-d shape needs 128).
SCRATCH_HEADER = 128
# What the copies and the in-place compaction move at a time (bounded memory, whatever
# the split's size). 1 MiB, not 16: on ext4 a write of 2 MiB or more gets a 2 MiB
# page-cache folio, which on the 2-core VM cost 5.5 s of system time per GB of new memory
# against 3.9 s in 1 MiB writes when copying alone; inside the stage the difference was
# below the noise (docs/large-datasets.md), and the buffer is 16 times smaller.
MOVE_BYTES = 2**20


def split_in_place(
    path: Path, scratch: Path, rows: np.ndarray, row_shape: tuple[int, ...], header: int
) -> bool:
    """Turn ``scratch`` itself into the split of ``rows`` at ``path``; False if it cannot.

    The largest split (train) is most of the scratch file's rows already in order:
    moving each of its rows back over the rows that went elsewhere rewrites pages the
    file already has, where a copy to a new file must get new ones from the kernel, and
    the disk holds the pixels once plus the smaller splits instead of twice. Measured
    on the 2-core VM, 8,000 photos at 224 px: 0.3 s for the 0.78 GB train split in
    place against 1.5 s to copy it (4.0 s with ``copy_file_range``). Rows only
    ever move towards the start and each is read before anything is written over it,
    so the other splits must be copied out first. The result is byte for byte what
    :func:`write_split` writes.
    """
    head = _npy_header(len(rows), row_shape)
    if len(head) != header or (len(rows) > 1 and not np.all(np.diff(rows) > 0)):
        return False
    row_bytes = math.prod(row_shape)
    fd = os.open(scratch, os.O_RDWR)
    try:
        at = header  # where the next row of the split goes
        for first, count in _runs(rows):
            src, size = header + first * row_bytes, count * row_bytes
            if src != at:
                for done in range(0, size, MOVE_BYTES):
                    part = min(MOVE_BYTES, size - done)
                    os.pwrite(fd, os.pread(fd, part, src + done), at + done)
            at += size
        os.ftruncate(fd, at)
        os.pwrite(fd, head, 0)
    finally:
        os.close(fd)
    scratch.replace(path)
    return True


def _copy(src: int, out: io.BufferedWriter, offset: int, size: int) -> None:
    """Append ``size`` bytes of ``src`` from ``offset`` to ``out``, :data:`MOVE_BYTES` at a
    time (bounded memory).

    Plain reads and writes, not ``copy_file_range``: on ext4 in the 2-core VM the
    kernel's copy took 4.0 s for 1.2 GB where reads and writes moved 0.78 GB in 1.5 s
    (``docs/large-datasets.md``).
    """
    for done in range(0, size, MOVE_BYTES):
        out.write(os.pread(src, min(MOVE_BYTES, size - done), offset + done))
    out.flush()


def check_groups(classes: list[str], used: list[Decoded], groups: np.ndarray) -> None:
    """Each class needs ≥3 groups of near-identical images (one per split)."""
    owners = Counter(used[r].label for r in set(groups.tolist()))
    short = [
        f"class '{name}' has {owners.get(label, 0)} distinct images (groups)"
        for label, name in enumerate(classes)
        if owners.get(label, 0) < len(SPLITS)
    ]
    if short:
        raise PrepareError(
            "cannot make a train/val/test split that keeps near-duplicates together: "
            + "; ".join(short)
            + f". Each class needs at least {len(SPLITS)}; lower prepare.near_dup_distance "
            "or add images."
        )


def prepare(raw: Path, out_dir: Path, report_path: Path, params: Params) -> dict[str, Any]:
    """Run the whole stage; on any error nothing is written and earlier outputs stay."""
    p = params.prepare
    spec = PreprocessSpec(p.image_size, p.color_mode, p.resize, p.max_pixels)
    classes, files = scan_imagefolder(raw)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    row_shape = (spec.image_size, spec.image_size, spec.channels)
    hash_min_side = p.near_dup_min_side if p.near_dup_distance >= 0 else 0
    scratch = tmp / "scratch.u8"
    try:
        decoded = decode_all(raw, files, spec, p.min_side, scratch, hash_min_side, SCRATCH_HEADER)
        if p.dedupe:
            decoded = drop_duplicates(decoded)
        used = [d for d in decoded if d.usable]
        check_classes(classes, used, [d for d in decoded if not d.usable])

        labels = np.array([d.label for d in used], dtype=np.int64)
        groups = near_duplicate_groups(used, p.near_dup_distance)
        check_groups(classes, used, groups)
        split_of = stratified_split(
            labels, p.val_fraction, p.test_fraction, params.seed, groups=groups
        )
        slots = np.array([d.slot for d in used], dtype=np.int64)
        train = [d.sums for d, s in zip(used, split_of, strict=True) if s == "train"]
        mean, std = channel_stats(train, spec.image_size * spec.image_size)
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
            # The largest split becomes the scratch file itself (split_in_place); the
            # others are copied out first, at once (the threads wait on I/O, not the GIL).
            largest = max(SPLITS, key=lambda n: int((split_of == n).sum()))
            others = [n for n in SPLITS if n != largest]
            with ThreadPoolExecutor(len(others)) as copier:
                copies = [
                    copier.submit(
                        write_split,
                        tmp / f"{n}.npy",
                        scratch,
                        slots[split_of == n],
                        row_shape,
                        SCRATCH_HEADER,
                    )
                    for n in others
                ]
                for done in copies:
                    done.result()
            rows = slots[split_of == largest]
            target = tmp / f"{largest}.npy"
            if not split_in_place(target, scratch, rows, row_shape, SCRATCH_HEADER):
                write_split(target, scratch, rows, row_shape, SCRATCH_HEADER)
            for name in SPLITS:
                members = [d for d, s in zip(used, split_of, strict=True) if s == name]
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
        scratch.unlink(missing_ok=True)
        write_json(tmp / META_FILE, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    split_by_path = dict(zip((d.path for d in used), split_of, strict=True))
    report = build_report(raw, classes, decoded, split_by_path)
    listed, conflicts = describe_groups(used, groups, split_of, classes)
    report["n_near_dup_groups"] = len(listed)
    report["n_label_conflicts"] = len(conflicts)
    report["near_duplicates"] = {
        "distance": p.near_dup_distance,
        "min_side": p.near_dup_min_side,
        "hashed": sum(d.phash is not None for d in used),
        "images_in_groups": sum(len(g["files"]) for g in listed),
        "groups": listed,
        "label_conflicts": conflicts,
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    # Headline: n_classes, n_used, n_skipped, n_label_conflicts (a person must look); the rest,
    # near-duplicate groups included, is detail (`dvc exp show` stays at 16 metric columns).
    detail = ("dataset", "n_found", "split", "skipped_by_reason", "near_duplicates")
    write_json(report_path, with_detail(report, (*detail, "n_near_dup_groups")))
    return report
