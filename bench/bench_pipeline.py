"""The default pipeline's wall-clock: `dvc repro` from clean and up to date, per stage.

Measures wall and CPU seconds of `dvc repro` from clean, up to date, each stage alone
(`dvc repro -f -s`), and the imports a stage pays for. Floors measured in the same run:
`dvc status` (DVC's own start-up, the least an up-to-date `dvc repro` can cost) and the
bare imports (the least a stage's start-up can cost). Runs in a temp git copy of this
checkout (tracked files only), so it measures what a fresh clone experiences. Goals on
2 cores: ≤ 30 s clean, ≤ 1 s up to date.

    python bench/bench_pipeline.py            # ~2 min; replaces the "pipeline" section
    python bench/bench_pipeline.py --quick    # epochs=1; records nothing
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results
from common import copy_checkout, table

STAGES = ("params_check", "digits", "prepare", "train", "evaluate")
IMPORTS = {
    "python": "pass",
    "torch": "import torch",
    "imgclf.training.loop (torch, torchvision, albumentations, dvclive)": (
        "import imgclf.training.loop"
    ),
    "imgclf.evaluation.evaluate (onnxruntime, sklearn)": "import imgclf.evaluation.evaluate",
}


CPU_SECONDS: dict[str, float] = {}  # command → user+sys CPU seconds of its last run


def sh(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds of one command; its CPU seconds go to ``CPU_SECONDS``.

    CPU seconds are what other jobs on the machine distort least: the default pipeline
    runs one thread at a time, so on an idle machine wall ≈ CPU (+ file I/O).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    CPU_SECONDS[" ".join(args)] = cpu
    return wall


def run(args: argparse.Namespace) -> dict[str, float]:
    quick = args.quick
    bin_dir = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        copy_checkout(repo)
        if quick:
            text = (repo / "params.yaml").read_text()
            (repo / "params.yaml").write_text(re.sub(r"(?m)^epochs: \d+", "epochs: 1", text))
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(repo / "src"),
            "DVC_NO_ANALYTICS": "1",
        }
        clean = sh(["dvc", "repro"], repo, env)
        clean_cpu = CPU_SECONDS["dvc repro"]
        uptodate = min(sh(["dvc", "repro"], repo, env) for _ in range(3))
        per_stage = {s: sh(["dvc", "repro", "-f", "-s", s], repo, env) for s in STAGES}
        stage_cpu = {s: CPU_SECONDS[f"dvc repro -f -s {s}"] for s in STAGES}
        dvc_only = min(sh(["dvc", "status"], repo, env) for _ in range(3))
        imports = {
            name: min(sh([sys.executable, "-c", code], repo, env) for _ in range(2))
            for name, code in IMPORTS.items()
        }
    rows = [
        ["`dvc repro` from clean (all stages)", f"{clean:.1f}", f"{clean_cpu:.1f}", "≤ 30"],
        ["`dvc repro` up to date", f"{uptodate:.2f}", "", "≤ 1"],
        ["`dvc status` (DVC's own start-up)", f"{dvc_only:.2f}", "", ""],
    ]
    rows += [
        [f"stage `{s}` alone (`dvc repro -f -s`)", f"{t:.1f}", f"{stage_cpu[s]:.1f}", ""]
        for s, t in per_stage.items()
    ]
    rows += [[f"import: {name}", f"{t:.2f}", "", ""] for name, t in imports.items()]
    note = ": epochs=1" if quick else ""
    header = ["what", "wall s", "CPU s", "goal (wall)"]
    title = f"Default pipeline wall-clock{note}"
    results.report(args, "pipeline", title, table(header, rows), "python bench/bench_pipeline.py")
    return {"clean": clean, "clean_cpu": clean_cpu, "uptodate": uptodate, **per_stage}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="epochs=1; records nothing")
    results.add_options(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
