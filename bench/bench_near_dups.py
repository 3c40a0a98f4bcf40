"""Near-duplicate grouping (issue 21, item 2): the threshold's precision and recall, and
the split that keeps bursts together.

A generated set (bench/make_photos.py ``make_bursts``): source photos each with six
near-identical copies (re-encoded, half size, cropped 2 % and 5 % a side, brightened
15 %, a burst neighbour) and distinct photos. Every image is hashed exactly as ``prepare`` does;
for each threshold (bits of 64) it reports pair precision/recall (a pair is "same"
when its hashes are within the threshold) and, after grouping, how many sources end
whole in one group and how many groups join two sources. Then the real prepare stage
runs at the default on the same kind of set, with some copies filed under another
class: every source must end in one split and the conflicts must be reported.

    python bench/bench_near_dups.py [--sources 150 --distinct 450]
    python bench/bench_near_dups.py --quick     # 12 sources, 24 distinct; records nothing
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import results
from common import ROOT, table
from make_photos import SPLIT_KINDS, make_bursts

from imgclf.data.near_duplicates import group
from imgclf.data.prepare import decode_one, prepare
from imgclf.data.preprocessing import PreprocessSpec
from imgclf.jsonio import expand
from imgclf.params import NEAR_DUP_DISTANCE, load_params

THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 14, 16, 20)


def hashes(raw: Path, paths: list[str]) -> list[int | None]:
    """The hash prepare computes for each file (224 px RGB spec, min side 32)."""
    spec = PreprocessSpec(224, "rgb", "squash", 64_000_000)
    return [decode_one(raw, rel, 0, spec, 8, 32).phash for rel in paths]


def threshold_rows(raw: Path, groups: dict[str, list[str]]) -> tuple[list[str], list[list]]:
    paths = [p for members in groups.values() for p in members]
    source = np.array([i for i, members in enumerate(groups.values()) for _ in members])
    kind = np.array([p.rsplit("_", 1)[-1].removesuffix(".jpg") for p in paths])
    values = hashes(raw, paths)
    h = np.array(values, dtype=np.uint64)
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    upper = np.triu(np.ones_like(dist, dtype=bool), 1)
    same = (source[:, None] == source[None, :]) & upper
    other = ~(source[:, None] == source[None, :]) & upper
    orig = {int(s): i for i, (s, k) in enumerate(zip(source, kind, strict=True)) if k == "orig"}
    kinds = sorted(set(kind) - {"orig"}, key=lambda k: (k.rstrip("0123456789"), k))
    to_orig = np.array([dist[i, orig[int(source[i])]] for i in range(len(paths))])
    sizes = np.bincount(source)
    multi = np.flatnonzero(sizes > 1)
    rows = []
    for t in THRESHOLDS:
        hit = dist <= t
        tp, fp = int((hit & same).sum()), int((hit & other).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = [f"{(to_orig[kind == k] <= t).mean():.2f}" for k in kinds]
        ids = group(values, t)
        whole = sum(len(set(ids[source == s].tolist())) == 1 for s in multi)
        no_crop = (kind != "crop2") & (kind != "crop5")
        whole_nc = sum(len(set(ids[(source == s) & no_crop].tolist())) == 1 for s in multi)
        mark = " (default)" if t == NEAR_DUP_DISTANCE else ""
        rows.append([f"{t}{mark}", f"{precision:.3f}", fp, *recall, f"{whole}/{len(multi)}",
                     f"{whole_nc}/{len(multi)}"])  # fmt: skip
    header = ["threshold (bits)", "pair precision", "false pairs",
              *(f"recall {k}" for k in kinds), "sources whole (all copies)",
              "sources whole (no crops)"]  # fmt: skip
    return header, rows


def split_check(work: Path, sources: int, distinct: int) -> tuple[str, dict]:
    """Run prepare on a burst set with label conflicts; one line of verdict and the report."""
    conflicts = max(2, sources // 20)
    raw, groups = make_bursts(
        work / "split", sources, distinct, conflicts=conflicts, kinds=SPLIT_KINDS
    )
    params = load_params(ROOT / "params.yaml")
    update = {"image_size": 64, "color_mode": "rgb"}
    params = params.model_copy(update={"prepare": params.prepare.model_copy(update=update)})
    report = expand(prepare(raw, work / "prepared", work / "prepare.json", params))
    split_of = {}
    for g in report["near_duplicates"]["groups"]:
        for f in g["files"]:
            split_of[f] = g["split"]
    whole = 0
    for members in list(groups.values())[:sources]:
        whole += len({split_of.get(f, f) for f in members}) == 1
    listed = report["near_duplicates"]["label_conflicts"]
    found = sum(any(f"{i:05d}_burst3" in f for g in listed for f in g["files"])
                for i in range(conflicts))  # fmt: skip
    per_split = defaultdict(int)
    for g in report["near_duplicates"]["groups"]:
        per_split[g["split"]] += 1
    line = (
        f"prepare at the default ({NEAR_DUP_DISTANCE} bits) on {sources} sources × "
        f"{1 + len(SPLIT_KINDS)} images ({', '.join(SPLIT_KINDS)}) + {distinct} distinct "
        f"photos: **{whole}/{sources} sources whole in one split** (groups per split: "
        f"{dict(sorted(per_split.items()))}); {report['n_near_dup_groups']} groups reported; "
        f"label conflicts reported {len(listed)}, of them the {found}/{conflicts} injected ones"
    )
    return line, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=150)
    parser.add_argument("--distinct", type=int, default=450)
    parser.add_argument("--quick", action="store_true", help="12 + 24 photos, no record")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sources, args.distinct = 12, 24
    with tempfile.TemporaryDirectory() as tmp:
        raw, groups = make_bursts(Path(tmp) / "pairs", args.sources, args.distinct)
        header, rows = threshold_rows(raw, groups)
        line, _ = split_check(Path(tmp), max(args.sources // 3, 8), args.distinct // 3)
    n = sum(len(m) for m in groups.values())
    body = (
        f"{n} generated 640×480 JPEGs: {args.sources} sources each with 8 near-identical "
        "copies (re-encoded q55, half size, cropped 2 % / 5 % a side, brightened 15 %, a "
        f"burst of 3 frames 1 % apart) and {args.distinct} distinct photos; hashes as "
        "prepare computes them (64-bit integer pHash). Precision over all pairs (copies of "
        "one source = same); recall per kind: the copy within the threshold of its original; "
        "whole: all of a source's images in one group (transitively).\n\n"
        + table(header, rows)
        + f"\n\n{line}."
    )
    results.report(args, "near_dups", "Near-duplicate groups: threshold and split", body,
                   "python bench/bench_near_dups.py")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
