"""Scale-out paths for real: 2-process DDP (gloo on CPU), queued sweeps, the run cache."""

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import run, tool_env

pytestmark = pytest.mark.slow


def accuracy(repo: Path) -> float:
    return json.loads((repo / "metrics" / "evaluate.json").read_text())["accuracy"]


@pytest.mark.heavy  # two torchrun processes under `dvc exp run`: ~55 s (`make test-all`)
def test_two_process_ddp_trains_from_dvc_exp_run(repo_factory: Callable[..., Path]) -> None:
    repo = repo_factory({"epochs": 3})
    run(["dvc", "repro"], repo)
    single = accuracy(repo)
    run(["dvc", "exp", "run", "-S", "train.processes=2"], repo)
    card = json.loads((repo / "models" / "model.json").read_text())
    assert card["training"]["processes"] == 2
    for name in ("model.onnx", "checkpoint.pt"):
        assert (repo / "models" / name).stat().st_size > 0
    curve = (repo / "metrics/train/plots/metrics/val/loss.tsv").read_text().splitlines()
    assert len(curve) == 1 + 3  # one writer (rank 0), one row per epoch
    assert abs(accuracy(repo) - single) < 0.05, (accuracy(repo), single)
    # Deterministic for a fixed number of processes: retraining gives the same bytes.
    model = (repo / "models" / "model.onnx").read_bytes()
    run(["dvc", "repro", "-f", "-s", "train"], repo)
    assert (repo / "models" / "model.onnx").read_bytes() == model


def wait_for_queue(repo: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"queue did not finish:\n{status}")


@pytest.mark.heavy
def test_queued_sweep_runs_with_two_workers_and_reuses_the_run_cache(
    repo_factory: Callable[..., Path],
) -> None:
    repo = repo_factory()
    run(["dvc", "exp", "run", "--queue", "-S", "lr=0.0005,0.02"], repo)
    # The workers outlive `dvc queue start` and inherit its stdout: no pipes, or we would
    # wait for them to exit.
    subprocess.run(
        ["dvc", "queue", "start", "-j", "2"],
        cwd=repo,
        env=tool_env(repo),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=120,
    )
    status = wait_for_queue(repo)
    assert status.count("Success") == 2, status
    rows = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    results = {}
    for baseline in rows:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                lr = data["params"]["params.yaml"]["data"]["lr"]
                results[lr] = data["metrics"]["metrics/evaluate.json"]["data"]["accuracy"]
    assert set(results) == {0.0005, 0.02}
    assert results[0.0005] != results[0.02]
    table = run(["dvc", "exp", "show", "--md", "--sort-by", "accuracy"], repo).stdout
    assert "accuracy" in table and "0.02" in table
    # The same params again are served from the run cache that the queue filled.
    again = run(["dvc", "exp", "run", "-S", "lr=0.02"], repo).stdout
    assert "Running stage 'train'" not in again
    assert "Stage 'train' is cached - skipping run" in again
    assert accuracy(repo) == results[0.02]
