"""What portable CPU numerics cost: the train stage with ``train.numerics`` portable vs fast.

Measures wall and CPU seconds of the train stage per workload (the digits default, and
two photo models), and their ratio portable ÷ fast. Baseline and ceiling in one: ``fast``
is torch's own CPU path (oneDNN convolutions at the CPU's best ISA, fused AdamW), the
fastest this machine trains; ``portable`` gives the same weights on any x86-64 CPU with
AVX2 (README, Reproducibility). Each workload runs the real stage script
(``stages/train.py``) on data prepared once, in a temp folder, so the numbers are what
``dvc repro`` pays for the train stage, start-up included.

    python bench/bench_numerics.py            # ~5 min; replaces the "numerics" section
    python bench/bench_numerics.py --quick    # two workloads, 1 epoch, 32 px; records nothing
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results
import yaml
from common import ROOT, table
from make_photos import make_photos

WORKLOADS: dict[str, dict] = {
    "digits default (small_cnn, 8 px, early stop)": {},
    "photos: mobilenet_v3_small, 96 px RGB, 2 epochs": {
        "epochs": 2,
        "batch_size": 32,
        "data": {"dataset": "photos"},
        "prepare": {"image_size": 96, "color_mode": "rgb", "min_side": 16},
        "model": {"name": "mobilenet_v3_small"},
    },
    "photos: resnet18, 64 px RGB, 2 epochs": {
        "epochs": 2,
        "batch_size": 32,
        "data": {"dataset": "photos"},
        "prepare": {"image_size": 64, "color_mode": "rgb", "min_side": 16},
        "model": {"name": "resnet18"},
    },
}


HEADER = [
    "workload",
    "fast wall s",
    "portable wall s",
    "ratio",
    "fast CPU s",
    "portable CPU s",
    "CPU ratio",
]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else value
    return out


def stage(work: Path, script: str, *args: str) -> tuple[float, float]:
    """Run one stage script; (wall seconds, CPU seconds of the child, user + system).

    CPU seconds are reported too because a shared 2-core machine inflates wall time far
    more than the work itself.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "stages" / script), *args],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


# --quick: the digits default and one photo model, one epoch at 32 px on 24 photos.
QUICK = {"epochs": 1, "prepare": {"image_size": 32}}


def run(args: argparse.Namespace) -> None:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    workloads = dict(list(WORKLOADS.items())[:2]) if args.quick else WORKLOADS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stage(work, "digits.py", "digits")
        make_photos(work / "photos", images=24 if args.quick else 400, classes=4)
        for name, over in workloads.items():
            params = merge(base, {"data": {"dataset": "digits"}, **over})
            if args.quick:
                params = merge(params, QUICK if "photos" in name else {"epochs": 1})
            times = {}
            for numerics in ("fast", "portable"):
                p = merge(params, {"train": {"numerics": numerics}})
                (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
                if numerics == "fast":  # prepare does not read train.numerics: once per workload
                    stage(work, "prepare.py", p["data"]["dataset"], "prepared", "prepare.json")
                times[numerics] = stage(work, "train.py", "prepared", "models", "live")
            (fw, fc), (pw, pc) = times["fast"], times["portable"]
            rows.append([name, f"{fw:.1f}", f"{pw:.1f}", f"{pw / fw:.2f}", f"{fc:.1f}",
                         f"{pc:.1f}", f"{pc / fc:.2f}"])  # fmt: skip
    load = os.getloadavg()[0]
    note = f"\n\nLoad average at the end: {load:.2f} (2 cores: above ~2.5 numbers are inflated)."
    results.report(args, "numerics", "Train stage: portable vs fast CPU numerics",
                   table(HEADER, rows) + note, "python bench/bench_numerics.py")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 32 px; records nothing")
    results.add_options(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
