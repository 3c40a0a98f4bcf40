"""A user's own data (issue 10): untracked folders caught up front, bad models flagged first.

Real git, real DVC, real training in temp copies of this checkout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.images import write_shapes_dataset
from tests.support import git, imgclf, run

pytestmark = pytest.mark.slow

SHAPES = {"data": {"dataset": "data/raw/shapes"}, "prepare": {"image_size": 16}}


def test_untracked_dataset_fails_in_params_check_with_the_fix(
    repo_factory: Callable[..., Path],
) -> None:
    repo = repo_factory(SHAPES)
    write_shapes_dataset(repo / "data/raw/shapes", per_class=4)
    failed = run(["dvc", "repro", "params_check"], repo, check=False)
    assert failed.returncode != 0
    out = failed.stdout + failed.stderr
    assert "error: params_check: data.dataset 'data/raw/shapes'" in out
    assert "`dvc add data/raw/shapes`" in out and "data/raw/shapes.dvc" in out

    run(["dvc", "add", "data/raw/shapes"], repo)  # core.autostage: git-adds the .dvc file
    ok = run(["dvc", "repro", "params_check"], repo).stdout
    assert "params.yaml is valid" in ok and "note:" not in ok

    git(repo, "rm", "-q", "--cached", "data/raw/shapes.dvc")  # as with autostage off
    noted = run(["dvc", "repro", "-f", "params_check"], repo).stdout
    assert "note: data/raw/shapes.dvc is not in git yet" in noted


def test_stage_outputs_and_git_tracked_folders_count_as_tracked(tmp_path: Path) -> None:
    from imgclf.pipeline.dataset_tracking import UntrackedDatasetError, check_dataset_tracked

    repo = tmp_path / "r"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "dvc.yaml").write_text(
        "stages:\n  digits:\n    cmd: x\n    outs:\n      - data/raw/d\n"
    )
    git(tmp_path, "init", "-q", str(repo))
    assert check_dataset_tracked("data/raw/d", repo) is None  # a stage output, even absent
    write_shapes_dataset(repo / "data/raw/in_git", per_class=1)
    with pytest.raises(UntrackedDatasetError, match="does not exist here"):
        check_dataset_tracked("data/raw/absent", repo)
    with pytest.raises(UntrackedDatasetError, match="dvc add data/raw/in_git"):
        check_dataset_tracked("data/raw/in_git", repo)
    git(repo, "add", "data/raw/in_git")
    assert check_dataset_tracked("data/raw/in_git", repo) is None
    assert check_dataset_tracked(str(tmp_path), repo) is None  # outside the repository
    (repo / "weights").mkdir()
    (repo / "weights/w.pt").write_bytes(b"x")
    with pytest.raises(UntrackedDatasetError, match=r"model\.weights 'weights/w\.pt'"):
        check_dataset_tracked("weights/w.pt", repo, key="model.weights")


@pytest.mark.heavy  # a real `dvc queue` run: ~90 s on 2 cores (`make test-all`)
def test_missing_dataset_in_a_queued_experiment_is_explained(
    repo_factory: Callable[..., Path],
) -> None:
    """The issue's case: the folder exists in the workspace, not in the queue's copy."""
    repo = repo_factory()
    write_shapes_dataset(repo / "data/raw/shapes", per_class=4)
    run(["dvc", "exp", "run", "--queue", "-S", "data.dataset=data/raw/shapes"], repo)
    run(["dvc", "queue", "start", "-j", "1"], repo)
    run(["dvc", "queue", "status"], repo)
    # `dvc queue start` returns at once; `dvc exp show` waits for nothing, so poll logs.
    import time

    deadline = time.monotonic() + 120
    logs = ""
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Failed" in status or "Success" in status:
            name = next(line.split()[0] for line in status.splitlines()[1:] if line.strip())
            logs = run(["dvc", "queue", "logs", name], repo, check=False).stdout
            break
        time.sleep(1)
    assert "Failed" in status, status
    assert "`dvc add data/raw/shapes`" in logs, logs[-3000:]


def test_a_bad_run_warns_and_the_report_leads_with_it(repo_factory: Callable[..., Path]) -> None:
    repo = repo_factory()
    # A learning rate 2000x the default diverges: the model loses to logistic regression.
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["lr"] = 10.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(["dvc", "repro"], repo)
    out = proc.stdout + proc.stderr
    assert "WARNING: the model does not beat a linear baseline" in out
    report = imgclf(repo, "report", "--base", "main").stdout
    assert report.startswith("> ⚠️ **WARNING: the model does not beat a linear baseline")
    assert "linear baseline accuracy" in report


@pytest.mark.heavy
def test_training_starts_from_given_weights_and_refuses_another_architecture(
    repo_factory: Callable[..., Path],
) -> None:
    """Weights made here, in the checkpoint layout train writes (digits: 8 px, 10 classes)."""
    import json

    import torch

    from imgclf.params import ModelParams
    from imgclf.training.architectures import build_model

    repo = repo_factory()
    model = build_model(ModelParams(), 1, 10, 8, [0.3], [0.4])
    torch.save({"state_dict": model.state_dict()}, repo / "weights/prev.pt")
    run(["dvc", "add", "weights/prev.pt"], repo)
    git(repo, "commit", "-qm", "weights")
    started = run(["dvc", "exp", "run", "-S", "model.weights=weights/prev.pt"], repo)
    assert "Running stage 'train'" in started.stdout
    card = json.loads((repo / "models/model.json").read_text())
    assert card["model"]["weights"] == "weights/prev.pt"

    wrong = run(
        ["dvc", "exp", "run", "-S", "model.weights=weights/prev.pt", "-S", "model.width=16"],
        repo,
        check=False,
    )
    assert wrong.returncode != 0
    message = wrong.stdout + wrong.stderr
    assert "error: train: model.weights: weights/prev.pt does not fit" in message
    assert "shape 0.weight (32, 1, 3, 3) vs (16, 1, 3, 3)" in message
