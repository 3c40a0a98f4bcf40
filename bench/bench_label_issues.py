"""Likely label errors on injected label noise (issue 21, item 3): precision and recall.

A known fraction of each dataset's images is moved to a random other class folder,
the real prepare stage splits it, and ``imgclf.evaluation.label_issues.find_issues``
(out-of-fold linear baseline + cleanlab) ranks the training split. Precision: flagged
images that were really flipped; recall: flipped training images that were flagged.

    python bench/bench_label_issues.py [--noise 0.05,0.1]
    python bench/bench_label_issues.py --quick     # digits_few, 10 % noise; records nothing
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import results
from common import ROOT, table
from make_datasets import DATASETS

from imgclf.data.prepare import prepare
from imgclf.data.prepared_files import read_index
from imgclf.evaluation.label_issues import find_issues
from imgclf.params import load_params

# name → (make the clean ImageFolder in a folder, prepare overrides)
SETS = {
    "digits (default, 1,797 × 8×8)": (
        lambda out: shutil.copytree(ROOT / "data/raw/digits", out) and out,
        {},
    ),
    "colors_10x32 (600 × 32×32 RGB)": (
        DATASETS["colors_10x32"],
        {"image_size": 32, "color_mode": "rgb"},
    ),
    "digits_few (300 × 8×8)": (DATASETS["digits_few"], {}),
}


def inject(raw: Path, fraction: float, seed: int) -> set[str]:
    """Move ``fraction`` of the files to a random other class; their new relative paths."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in raw.iterdir() if p.is_dir())
    files = sorted(p for p in raw.rglob("*") if p.is_file())
    moved = set()
    for i in rng.choice(len(files), round(fraction * len(files)), replace=False).tolist():
        src = files[i]
        others = [c for c in classes if c != src.parent.name]
        dest = raw / others[int(rng.integers(len(others)))] / f"flipped_{src.name}"
        src.rename(dest)
        moved.add(dest.relative_to(raw).as_posix())
    return moved


def measure(name: str, fraction: float, work: Path) -> list[object]:
    make, overrides = SETS[name]
    raw = work / "raw"
    make(raw)
    flipped = inject(raw, fraction, seed=7)
    params = load_params(ROOT / "params.yaml")
    params = params.model_copy(
        update={"prepare": params.prepare.model_copy(update=overrides)}, deep=True
    )
    prepare(raw, work / "prepared", work / "prepare.json", params)
    train = {row["path"] for row in read_index(work / "prepared", "train")}
    truth = flipped & train
    start = time.perf_counter()
    issues = find_issues(work / "prepared", seed=params.seed)
    seconds = time.perf_counter() - start
    flagged = {i.path for i in issues}
    hits = len(flagged & truth)
    top = [i.path for i in issues[: len(truth)]]
    precision = hits / len(flagged) if flagged else 0.0
    recall = hits / len(truth) if truth else 0.0
    at_k = len(set(top) & truth) / len(truth) if truth else 0.0
    return [name, f"{fraction:.0%}", len(train), len(truth), len(flagged),
            f"**{precision:.2f}**", f"**{recall:.2f}**", f"{at_k:.2f}",
            f"{seconds:.1f} s"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", default="0.05,0.1", help="fractions of labels flipped")
    parser.add_argument("--quick", action="store_true", help="digits_few, 10 %%, no record")
    results.add_options(parser)
    args = parser.parse_args(argv)
    names = list(SETS)[:2]
    if args.quick:
        names, args.noise = [list(SETS)[2]], "0.1"
    rows = []
    for name in names:
        for fraction in (float(v) for v in args.noise.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(measure(name, fraction, Path(tmp)))
            print(rows[-1], flush=True)
    header = ["dataset", "labels flipped", "train images", "flipped in train", "flagged",
              "precision", "recall", "precision at k = flipped", "time"]  # fmt: skip
    body = (
        "Flipped labels: a seeded random sample moved to a random other class; the real "
        "prepare stage (params.yaml defaults, size/colour as the data needs); "
        "`imgclf label-issues` at its defaults (5-fold out-of-fold linear baseline, "
        "cleanlab `find_label_issues`, `prune_by_noise_rate`). Time: the ranking only.\n\n"
        + table(header, rows)
    )
    results.report(args, "label_issues", "Likely label errors on injected noise", body,
                   "python bench/bench_label_issues.py")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
