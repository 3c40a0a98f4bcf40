"""Near-duplicate groups: the hash is exact and portable, copies group, distinct photos do
not, a group never spans two splits, and a picture under two labels is reported."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageEnhance

from imgclf.data import near_duplicates
from imgclf.data.near_duplicates import DCT, group, hamming, phash
from imgclf.data.prepare import prepare, stratified_split
from imgclf.jsonio import expand
from imgclf.params import NEAR_DUP_DISTANCE, validate_params

ROOT = Path(__file__).resolve().parents[2]


def photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """Smooth random colours (a distinct picture per seed), upsampled from a coarse grid."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)


def copies(img: Image.Image) -> list[Image.Image]:
    """Re-encoded, half size, cropped 2 % a side, brightened 15 %."""
    w, h = img.size
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=55)
    return [
        Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        img.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        img.crop((round(0.02 * w), round(0.02 * h), round(0.98 * w), round(0.98 * h))),
        ImageEnhance.Brightness(img).enhance(1.15),
    ]


def test_the_dct_matrix_is_pinned_so_hashes_are_the_same_everywhere() -> None:
    # Integers computed once from math.cos: a change here would change every group.
    assert DCT.dtype == np.int64 and DCT.shape == (8, 32)
    assert hashlib.sha256(DCT.tobytes()).hexdigest()[:16] == "3d46015ededc9934"


def test_copies_are_near_and_distinct_pictures_far() -> None:
    base = photo(1)
    h = phash(base)
    for copy in copies(base):
        assert hamming(h, phash(copy)) <= NEAR_DUP_DISTANCE
    others = [phash(photo(seed)) for seed in range(2, 40)]
    assert min(hamming(h, o) for o in others) > NEAR_DUP_DISTANCE
    assert phash(base.convert("L")) == phash(base)  # grey input: the same hash


def test_groups_are_transitive_and_named_by_their_first_member() -> None:
    hashes = [0b0, 0xFFFF_FFFF_FFFF_FFFF, 0b111, None, 0b111111, 0b0]
    assert group(hashes, 3).tolist() == [0, 1, 0, 3, 0, 0]  # 0–7 (3 bits), 7–63 (3 bits)
    assert group(hashes, 0).tolist() == [0, 1, 2, 3, 4, 0]
    assert group(hashes, -1).tolist() == [0, 1, 2, 3, 4, 5]
    assert group(hashes, 3, cells=6).tolist() == group(hashes, 3).tolist()  # one row a block


def _hashes_with_copies(n: int, distance: int, seed: int) -> list[int | None]:
    """``n`` random hashes, ``n / 3`` copies of them 0 … ``distance + 2`` bits away (chains
    too: a copy of a copy), and a few unhashed items, shuffled."""
    rng = random.Random(seed)
    hashes: list[int | None] = [rng.getrandbits(64) for _ in range(n)]
    for _ in range(n // 3):
        h = hashes[rng.randrange(len(hashes))]
        assert h is not None
        for bit in rng.sample(range(64), rng.randrange(distance + 3)):
            h ^= 1 << bit
        hashes.append(h)
    hashes += [None] * 5
    rng.shuffle(hashes)
    return hashes


@pytest.mark.parametrize("distance", [0, 3, 8, 12, 20])
def test_block_search_groups_exactly_like_comparing_all_pairs(
    distance: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Multi-index search (a pair within d bits shares one of d + 1 blocks) must find every
    pair all-pairs finds and no other, or a split would change with the dataset's size."""
    hashes = _hashes_with_copies(1500, distance, seed=distance)
    fast, chunked = group(hashes, distance), group(hashes, distance, cells=7)
    values = np.array([h for h in hashes if h is not None], dtype=np.uint64)
    searched = near_duplicates._pairs_by_blocks(values, distance, 1 << 22) is not None
    assert searched == (distance <= 8)  # wider thresholds share too many blocks: all pairs
    monkeypatch.setattr(near_duplicates, "_pairs_by_blocks", lambda *_: None)
    reference = group(hashes, distance)
    assert fast.tolist() == reference.tolist() == chunked.tolist()
    assert len(set(reference.tolist())) < len(hashes) - 100  # the copies did group


def test_block_search_gives_up_on_hashes_that_share_their_blocks() -> None:
    """Many equal or low-entropy hashes make (almost) every pair a candidate: all pairs are
    compared instead, and the equal hashes still form one group."""
    rng = random.Random(0)
    equal = [5] * 300 + [rng.getrandbits(64) for _ in range(300)]
    narrow = [rng.getrandbits(16) for _ in range(600)]
    for hashes in (equal, narrow):
        values = np.array(hashes, dtype=np.uint64)
        assert near_duplicates._pairs_by_blocks(values, 8, 1 << 22) is None
    assert set(group(equal, 8)[:300].tolist()) == {0}


def _old_split(labels: np.ndarray, val: float, test: float, seed: int) -> np.ndarray:
    """The per-file split before groups existed (the digits' split must not change)."""
    rng = np.random.default_rng(seed)
    split = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        n_test, n_val = max(1, round(len(members) * test)), max(1, round(len(members) * val))
        split[members[:n_test]] = "test"
        split[members[n_test : n_test + n_val]] = "val"
        split[members[n_test + n_val :]] = "train"
    return split


def test_without_groups_the_split_is_the_per_file_split() -> None:
    labels = np.random.default_rng(0).integers(0, 5, 400)
    assert (stratified_split(labels, 0.15, 0.2, 42) == _old_split(labels, 0.15, 0.2, 42)).all()


def test_a_group_never_spans_two_splits_and_the_split_stays_stratified() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 60)
    groups = np.arange(180)
    for start in range(0, 180, 10):  # bursts of 4 inside each class
        groups[start : start + 4] = start
    split = stratified_split(labels, 0.15, 0.2, 42, groups=groups)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    for label in range(3):
        counts = {s: int((split[labels == label] == s).sum()) for s in ("train", "val", "test")}
        assert abs(counts["test"] - 12) <= 3 and abs(counts["val"] - 9) <= 3, counts
    assert (split == stratified_split(labels, 0.15, 0.2, 42, groups=groups)).all()
    assert not (split == stratified_split(labels, 0.15, 0.2, 7, groups=groups)).all()
    del rng


def test_prepare_keeps_bursts_in_one_split_and_reports_label_conflicts(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    sources = {}
    for i in range(24):
        label = i % 3
        base = photo(100 + i)
        paths = []
        for k, img in enumerate([base, *copies(base)]):
            cls = (label + 1) % 3 if (i < 2 and k == 4) else label  # 2 conflicts
            rel = f"c{cls}/{i:03d}_{k}.jpg"
            (raw / rel).parent.mkdir(parents=True, exist_ok=True)
            img.save(raw / rel, quality=90)
            paths.append(rel)
        sources[i] = paths
    for i in range(24, 60):  # distinct singletons
        (raw / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        photo(100 + i).save(raw / f"c{i % 3}/{i:03d}.jpg", quality=90)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update({"image_size": 16, "color_mode": "rgb"})
    report = expand(prepare(raw, tmp_path / "out", tmp_path / "p.json", validate_params(params)))
    near = report["near_duplicates"]
    split_of = {f: g["split"] for g in near["groups"] for f in g["files"]}
    for paths in sources.values():
        assert len({split_of[p] for p in paths}) == 1, paths  # whole and in one split
    assert report["n_near_dup_groups"] == 24
    assert report["n_label_conflicts"] == 2
    conflict = {f for g in near["label_conflicts"] for f in g["files"]}
    assert "c1/000_4.jpg" in conflict and "c2/001_4.jpg" in conflict
    assert [sorted(g["classes"].values()) for g in near["label_conflicts"]] == [[1, 4], [1, 4]]


def test_data_report_lists_groups_and_label_conflicts() -> None:
    from imgclf.report.data_changes import _near_duplicates

    conflict = {"split": "train", "classes": {"cat": 2, "dog": 1}, "files": ["cat/a.jpg",
                "cat/b.jpg", "dog/a2.jpg"]}  # fmt: skip
    head = {"near_duplicates": {"distance": 8, "images_in_groups": 5, "groups": [
        conflict, {"split": "test", "classes": {"cat": 2}, "files": ["cat/c.jpg", "cat/d.jpg"]}
    ], "label_conflicts": [conflict]}}  # fmt: skip
    text = "\n".join(_near_duplicates(head, "workspace"))
    assert "2 groups of near-identical images (5 images; hashes within 8 bits)" in text
    assert "1 spread over two or more classes" in text
    assert "`cat`: 2, `dog`: 1" in text and "`dog/a2.jpg`" in text
    assert "- test: `cat/c.jpg`, `cat/d.jpg`" in text
    assert _near_duplicates({}, "workspace") == []  # an old prepare.json: no section
