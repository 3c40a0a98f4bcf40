"""Near-duplicate images: a perceptual hash per image and the groups it implies.

Why: a per-file split puts a burst of almost identical photos, or a re-encoded,
resized, lightly cropped or brightened copy, in train *and* test, so the test score
measures memory, not generalisation. ``prepare`` hashes every image, joins images
whose hashes differ in at most ``prepare.near_dup_distance`` bits into one group,
and splits groups, never single files (:mod:`imgclf.data.prepare`). A group whose
members carry two labels is a label conflict, reported with its files.

The hash is the usual 64-bit DCT hash (pHash, as in the ``imagehash`` package: the
8×8 lowest frequencies of a 32×32 grey image, each bit "above the median"), computed
in exact integer arithmetic: a float DCT (scipy, BLAS) may round differently on
another CPU and flip a bit next to the median, which would change a group, a split
and ``dvc.lock``. Integers give the same hash on every CPU.

Tiny images are not hashed (``prepare.near_dup_min_side``): at 8×8 pixels (the
digits default) a 64-bit hash describes little more than the class's average shape,
and distinct digits of one class would be grouped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

HASH_SIDE = 32  # grey thumbnail side the DCT runs on
LOW = 8  # the LOW×LOW lowest frequencies make the 64 bits
_SCALE = 1 << 12
# DCT-II basis rows 0..7 for 32 points, scaled and rounded to integers once: the hash is
# then an exact integer function of the thumbnail (math.cos rounding cannot move a value
# across .5 here; tests/unit pins the matrix's checksum).
DCT = np.array(
    [
        [round(_SCALE * math.cos(math.pi * (2 * n + 1) * k / (2 * HASH_SIDE))) for n in range(32)]
        for k in range(LOW)
    ],
    dtype=np.int64,
)
_WEIGHTS = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))


def thumbnail(img: Image.Image) -> np.ndarray:
    """The 32×32 grey thumbnail the hash is computed from (int64 array)."""
    grey = img if img.mode == "L" else img.convert("L")
    small = grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.int64)


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash of a PIL image (any mode), identical on every CPU."""
    low = DCT @ thumbnail(img) @ DCT.T  # exact: int64, |value| < 2**45
    values = np.sort(low.ravel())
    # bit = value > median, with median = (v[31] + v[32]) / 2: compare doubled, in integers
    bits = (2 * low.ravel()) > (values[31] + values[32])
    return int((bits.astype(np.uint64) * _WEIGHTS).sum(dtype=np.uint64))


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def group(hashes: list[int | None], distance: int, cells: int = 1 << 22) -> np.ndarray:
    """Group id per item: items within ``distance`` bits are joined (transitively).

    An item without a hash (``None``: too small, or grouping off) is its own group. The
    id is the position of the group's first item, so it does not depend on the order in
    which pairs are found (nor on how they are found: both searches below give the same
    ids). Pairs are found by :func:`_pairs_by_blocks` when it checks at most a quarter of
    all pairs (the default threshold: ~1/20 of them), else by comparing all pairs
    (:func:`_all_pairs`); both work in buffers of about ``cells`` entries whatever the
    number of images.
    """
    n = len(hashes)
    parent = np.arange(n)
    present = np.array([i for i, h in enumerate(hashes) if h is not None], dtype=np.int64)
    if distance < 0 or len(present) < 2:
        return parent
    values = np.array([hashes[i] for i in present], dtype=np.uint64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    pairs = _pairs_by_blocks(values, distance, cells)
    for a, b in pairs if pairs is not None else _all_pairs(values, distance, cells):
        ra, rb = root(int(present[a])), root(int(present[b]))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smaller position is the id
    return np.array([root(i) for i in range(n)])


def _all_pairs(values: np.ndarray, distance: int, cells: int) -> Iterator[tuple[int, int]]:
    """Every pair (a, b), a < b, of ``values`` within ``distance`` bits: all n²/2 pairs
    compared, XOR + popcount over blocks of rows into reused buffers of ``cells`` entries
    (~50 MB): ~0.1 s for 8,000 hashes, ~1.8 s for 32,000 on the 2-core VM."""
    m = len(values)
    rows = max(1, min(m, cells // m))
    xor = np.empty(rows * m, dtype=np.uint64)
    bits = np.empty(rows * m, dtype=np.uint8)
    near = np.empty(rows * m, dtype=bool)
    for start in range(0, m, rows):
        head = values[start : start + rows]
        width = m - start  # compare with this row and everything after it
        shape = (len(head), width)
        x = xor[: shape[0] * width].reshape(shape)
        np.bitwise_xor(head[:, None], values[None, start:], out=x)
        b = bits[: x.size].reshape(shape)
        np.bitwise_count(x, out=b)
        hit = near[: x.size].reshape(shape)
        np.less_equal(b, distance, out=hit)
        for a, off in zip(*np.nonzero(hit), strict=True):
            if off > a:  # pairs (row, later column) only; the diagonal is the row itself
                yield start + int(a), start + int(off)


def _pairs_by_blocks(values: np.ndarray, distance: int, cells: int) -> list[tuple[int, int]] | None:
    """The pairs of :func:`_all_pairs` (each once, in another order) by multi-index hashing,
    or None when it would check more than a quarter of all pairs.

    Cut the 64 bits into ``distance + 1`` blocks: two hashes within ``distance`` bits
    differ in at most ``distance`` blocks, so at least one block is identical in both
    (pigeonhole). Only pairs sharing a block value are candidates, and each candidate is
    then checked on all 64 bits: the result is exactly the all-pairs result. At the
    default 8 bits (9 blocks of 7–8 bits), random-looking hashes share a block with
    ~1/20 of the others, so 32,000 hashes need ~25 M checks instead of 512 M. Buckets
    are walked by offset in block order (rows ``i`` and ``i + k`` of one bucket, only
    for rows with ``k`` partners left): one step per candidate, memory O(n) per block.
    """
    m = len(values)
    blocks = distance + 1
    if blocks > 32:
        return None
    edges = [round(64 * j / blocks) for j in range(blocks + 1)]
    keys = [(values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            for lo, hi in itertools.pairwise(edges)]  # fmt: skip
    sizes = [np.unique(k, return_counts=True)[1] for k in keys]
    candidates = sum(int((s * (s - 1) // 2).sum()) for s in sizes)
    # A candidate costs a gather more than an all-pairs comparison: block search only
    # when it compares at most a quarter as many pairs.
    if 4 * candidates >= m * (m - 1) // 2:
        return None
    found: set[tuple[int, int]] = set()
    for key, size in zip(keys, sizes, strict=True):
        order = np.argsort(key, kind="stable")  # rows by block value: buckets are runs
        starts = np.r_[0, np.cumsum(size)[:-1]]
        # Per sorted row: how many rows after it share its bucket.
        later = np.repeat(size, size) - (np.arange(m) - np.repeat(starts, size)) - 1
        rows = np.argsort(-later, kind="stable")  # sorted rows, most later partners first
        partners = later[rows]
        for k in range(1, int(partners[0]) + 1):
            active = int(np.searchsorted(-partners, -k, side="right"))  # rows with ≥ k left
            for part in range(0, active, cells):
                i = rows[part : min(active, part + cells)]
                a, b = order[i], order[i + k]
                near = np.bitwise_count(values[a] ^ values[b]) <= distance
                low, high = np.minimum(a[near], b[near]), np.maximum(a[near], b[near])
                found.update(zip(low.tolist(), high.tolist(), strict=True))
    return sorted(found)
