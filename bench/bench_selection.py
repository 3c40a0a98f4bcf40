"""Best-epoch selection before/after (issue 10): can training hand back an untrained model?

Runs prepare → train → evaluate (the real stage scripts, no DVC) on a generated
dataset, once with the code of a git revision (``--before``, e.g. ``main``) and once
with this checkout, for a few seeds, and prints test accuracy, the selected epoch and
the linear baseline of the same split (the floor a selected model must clear).
Baseline: the ``--before`` revision's selection, run on the same split in the same run.

    python bench/bench_selection.py [--before main] [--seeds 42 7] [-S key=value …]
    python bench/bench_selection.py --quick   # HEAD vs HEAD, one seed, 2 epochs; records nothing

A full run replaces the "selection" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import results
import yaml
from common import ROOT, run_tree, table
from make_datasets import DATASETS

# The issue's failing case: 2 classes × 100 images at 25 px, light augmentation.
ISSUE_CASE = {
    "lr": 0.005,  # the default when the issue was measured (now `auto`: 0.00125 here)
    "prepare": {"image_size": 32},
    "augment": {"hflip": 0.5, "shift": 0.05, "rotate": 10},
}


def _set(params: dict, dotted: str, value: object) -> None:
    *path, last = dotted.split(".")
    for key in path:
        params = params.setdefault(key, {})
    params[last] = value


def baseline_of(work: Path, seed: int) -> dict:
    from imgclf.data.prepared_files import load_meta, load_split
    from imgclf.evaluation.baseline import score_baselines

    tx, ty = load_split(work / "prepared", "train")
    sx, sy = load_split(work / "prepared", "test")
    n = len(load_meta(work / "prepared")["classes"])
    return score_baselines(tx, ty, sx, sy, n, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git revision with the old selection")
    parser.add_argument("--dataset", default="two_class_25px", choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7])
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="one seed, 2 epochs, not recorded")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        # HEAD: a CI checkout may have no local `main`.
        args.seeds, args.overrides = args.seeds[:1], ["epochs=2"]
        args.before = "HEAD"

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        raw = DATASETS[args.dataset](tmp_path / "raw" / args.dataset)
        before = tmp_path / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.before], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        base_params = yaml.safe_load((ROOT / "params.yaml").read_text())
        for seed in args.seeds:
            for label, tree in ((f"before ({args.before})", before), ("after", ROOT)):
                params = yaml.safe_load((tree / "params.yaml").read_text())
                for section, values in ISSUE_CASE.items():
                    if isinstance(values, dict):
                        params[section].update(values)
                    else:
                        params[section] = values
                params["seed"] = seed
                for item in args.overrides:
                    key, _, value = item.partition("=")
                    _set(params, key, yaml.safe_load(value))
                work = tmp_path / f"{label.split()[0]}-{seed}"
                start = time.perf_counter()
                result = run_tree(tree, raw, work, params)
                seconds = time.perf_counter() - start
                t, e = result["card"]["training"], result["eval"]
                base = baseline_of(work, seed)
                rows.append(
                    [
                        label,
                        seed,
                        f"{t['best_epoch']}/{t['epochs_run']}",
                        f"{t['best_val_accuracy']:.3f}",
                        f"{e['accuracy']:.3f}",
                        f"{e['macro_f1']:.3f}",
                        f"{base['accuracy']:.3f}",
                        f"{seconds:.0f} s",
                    ]
                )
                print(rows[-1], flush=True)
        del base_params
    header = ["code", "seed", "best/run epochs", "val acc", "test acc", "test F1",
              "linear baseline acc", "time"]  # fmt: skip
    extra = f", overrides {args.overrides}" if args.overrides else ""
    body = (
        f"Dataset `{args.dataset}` (bench/make_datasets.py), params.yaml defaults plus "
        f"{ISSUE_CASE}{extra}.\n\n" + table(header, rows)
    )
    results.report(args, "selection", "Best-epoch selection: before/after", body,
                   "python bench/bench_selection.py --before main")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
