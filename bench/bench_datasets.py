"""Defaults across datasets (issue 10, item 3): the model vs the linear baseline.

For each generated dataset (bench/make_datasets.py) it runs prepare → train → evaluate
with params.yaml's defaults, changing only what the data dictates (``prepare``:
image size and colour mode) and optionally one sweep value, and prints test accuracy
and macro-F1 beside the baselines that evaluate scores on the same split: the linear
model (logistic regression: the default must beat it) and the majority class (the floor).

    python bench/bench_datasets.py [NAME …] [--sweep lr=0.001,0.005,0.02]  # "datasets"
    python bench/bench_datasets.py --quick    # digits_few, 2 epochs; records nothing
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import results
import yaml
from common import ROOT, run_tree, table
from make_datasets import DATASETS

# What a user must set for their data (not tuning): input size and colour.
PREPARE = {
    "two_class_25px": {"image_size": 32},
    "digits_noisy": {"image_size": 8},
    "digits_few": {"image_size": 8},
    "colors_10x32": {"image_size": 32, "color_mode": "rgb"},
    "photos_64": {"image_size": 64, "color_mode": "rgb", "min_side": 16},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(PREPARE))
    parser.add_argument("--sweep", default="", help="one top-level key: lr=0.001,0.02")
    parser.add_argument("--skip-default", action="store_true", help="sweep values only")
    parser.add_argument("--quick", action="store_true", help="digits_few, 2 epochs, no record")
    results.add_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.names, args.sweep, args.skip_default = ["digits_few"], "", False
    key, _, values = args.sweep.partition("=")
    settings = [] if args.skip_default else [("default", None)]
    settings += [(f"{key}={v}", yaml.safe_load(v)) for v in values.split(",") if v]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            raw = DATASETS[name](Path(tmp) / "raw" / name)
            for label, value in settings:
                params = yaml.safe_load((ROOT / "params.yaml").read_text())
                params["prepare"].update(PREPARE[name])
                if args.quick:
                    params["epochs"] = 2
                if value is not None:
                    params[key] = value
                start = time.perf_counter()
                result = run_tree(ROOT, raw, Path(tmp) / f"{name}-{label}", params)
                e, t = result["eval"], result["card"]["training"]
                b = e["baseline"]
                wins = e["accuracy"] > b["accuracy"] or e["accuracy"] == 1
                rows.append([name, label, e["n_test"], f"{t['best_epoch']}/{t['epochs_run']}",
                             f"{e['accuracy']:.3f}", f"{e['macro_f1']:.3f}",
                             f"{b['accuracy']:.3f}", f"{b['macro_f1']:.3f}",
                             f"{b['majority_accuracy']:.3f}",
                             "yes" if wins else "**no**",
                             f"{time.perf_counter() - start:.0f} s"])  # fmt: skip
                print(rows[-1], flush=True)
    header = ["dataset", "params", "test n", "best/run epochs", "test acc", "test F1",
              "linear acc", "linear F1", "majority acc", "beats linear", "time"]  # fmt: skip
    body = (
        "params.yaml defaults; per dataset only `prepare` as the data dictates "
        f"({PREPARE}).\n\n" + table(header, rows)
    )
    results.report(args, "datasets", "Defaults across datasets vs the linear baseline", body,
                   "python bench/bench_datasets.py")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
