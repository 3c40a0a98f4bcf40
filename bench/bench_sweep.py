"""Defaults vs a queued sweep on each generated dataset, run the way a user runs it.

Issue 10, item 3: for every dataset of ``bench/make_datasets.py`` this makes a temp
git copy of the checkout, writes the dataset to ``data/raw/<name>`` and ``dvc add``-s it,
sets only what the data dictates (``prepare``: size, colour), then runs

    dvc repro                                        # the defaults
    dvc exp run --queue -S lr=… -S batch_size=…      # the sweep (a grid)
    dvc queue start -j 1                             # one worker: 2 cores, honest timings
    dvc exp show --json                              # collect

and prints default vs best-of-sweep vs the linear baseline that ``evaluate`` scores.
Baseline: the linear model ``evaluate`` scores on the same split; ceiling: the best of
the sweep, run in the same temp repository. Goal: on every dataset the defaults beat the
linear baseline and come within 2 pp of the sweep's best.

    python bench/bench_sweep.py [NAME …] [--sweep lr=0.001,0.02 --sweep …]  # "sweep"
    python bench/bench_sweep.py --quick       # digits_few, 2 epochs, 2 values; records nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import results
import yaml
from bench_datasets import PREPARE
from common import copy_checkout, table
from make_datasets import DATASETS

from imgclf.jsonio import expand

EVALUATE = "metrics/evaluate.json"


def _env(repo: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    who = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"}
    who |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    return {
        **os.environ,
        **who,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
        "DVC_NO_ANALYTICS": "1",
    }


def sh(args: list[str], repo: Path, **kw: Any) -> str:
    kw.setdefault("check", True)
    proc = subprocess.run(args, cwd=repo, env=_env(repo), text=True, **kw)
    return proc.stdout or ""


def user_repo(dest: Path, name: str, epochs: int | None = None) -> Path:
    """A fresh clone's state with the user's dataset `dvc add`-ed and params pointed at it."""
    copy_checkout(dest)
    data = f"data/raw/{name}"
    DATASETS[name](dest / data)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["dataset"] = data
    params["prepare"].update(PREPARE[name])
    if epochs:
        params["epochs"] = epochs
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["dvc", "add", "-q", data], dest, capture_output=True)
    sh(["git", "add", "-A"], dest, capture_output=True)
    sh(["git", "commit", "-qm", f"dataset {name}"], dest, capture_output=True)
    return dest


def wait_for_queue(repo: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], repo, capture_output=True)
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise TimeoutError(f"the queue did not finish in {timeout:.0f} s:\n{status}")


def sweep_results(repo: Path, keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(label, flat evaluate.json) of every experiment in ``dvc exp show``."""
    rows = json.loads(sh(["dvc", "exp", "show", "--json"], repo, capture_output=True))
    out = []
    for baseline in rows:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                evaluated = (data.get("metrics") or {}).get(EVALUATE, {}).get("data")
                if not evaluated:
                    continue  # a failed run: `dvc queue logs` says why
                params = data["params"]["params.yaml"]["data"]
                label = " ".join(f"{k}={params[k]}" for k in keys)
                out.append((label, expand(evaluated)))
    return out


def bench(name: str, sweeps: list[str], timeout: float, epochs: int | None = None) -> list[Any]:
    # The queue's worker may still be writing its logs while the directory goes.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        repo = user_repo(Path(tmp), name, epochs)
        start = time.perf_counter()
        sh(["dvc", "repro", "-q"], repo, capture_output=True)
        default = expand(json.loads((repo / EVALUATE).read_text()))
        card = json.loads((repo / "models/model.json").read_text())["training"]
        set_args = [a for s in sweeps for a in ("-S", s)]
        sh(["dvc", "exp", "run", "--queue", *set_args], repo, capture_output=True)
        # The worker outlives `dvc queue start` and inherits its stdout: no pipes.
        sh(["dvc", "queue", "start", "-j", "1"], repo, stdout=subprocess.DEVNULL)
        status = wait_for_queue(repo, timeout)
        results = sweep_results(repo, [s.split("=")[0] for s in sweeps])
        sh(["dvc", "queue", "stop"], repo, capture_output=True, check=False)
        seconds = time.perf_counter() - start
    failed = status.count("Failed")
    best_label, best = max(results, key=lambda r: r[1]["accuracy"], default=("—", default))
    best_acc = max(best["accuracy"], default["accuracy"])
    base = default["baseline"]
    gap = 100 * (default["accuracy"] - best_acc)
    beats = default["accuracy"] > base["accuracy"] or default["accuracy"] == 1.0
    row = [name, default["n_test"], f"{card['best_epoch']}/{card['epochs_run']}",
           f"{default['accuracy']:.3f}", f"{best['accuracy']:.3f} ({best_label})",
           f"{gap:+.1f} pp", f"{base['accuracy']:.3f}", "yes" if beats else "**no**",
           "yes" if gap >= -2.0 else "**no**", f"{len(results)} ok, {failed} failed",
           f"{seconds:.0f} s"]  # fmt: skip
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(PREPARE))
    parser.add_argument(
        "--sweep", action="append", default=None, help="dvc -S value, e.g. lr=0.001,0.02"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="per dataset's queue")
    parser.add_argument("--quick", action="store_true", help="digits_few, 2 epochs, no record")
    results.add_options(parser)
    args = parser.parse_args(argv)
    sweeps = args.sweep or ["lr=0.001,0.002,0.01"]
    epochs = None
    if args.quick:
        args.names, sweeps, epochs = ["digits_few"], ["lr=0.001,0.01"], 2
    rows = [bench(name, sweeps, args.timeout, epochs) for name in args.names]
    header = ["dataset", "test n", "kept/run epochs", "default acc", "best of sweep",
              "default − best", "linear acc", "beats linear", "within 2 pp", "sweep runs",
              "time"]  # fmt: skip
    body = (
        f"`dvc repro` with params.yaml's defaults, then `dvc exp run --queue "
        f"{' '.join('-S ' + s for s in sweeps)}` and `dvc queue start -j 1`, in a temp git "
        f"copy with the dataset `dvc add`-ed; per dataset only `prepare` as the data "
        f"dictates ({PREPARE}).\n\n" + table(header, rows)
    )
    results.report(args, "sweep", "Defaults vs a queued sweep, per dataset", body,
                   "python bench/bench_sweep.py --sweep lr=0.001,0.005")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
