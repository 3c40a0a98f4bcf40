"""The pull-request flow for real: baseline on main, branch, dvc exp run, commit, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imgclf.report.markdown import fmt, fmt_change
from tests.support import git, imgclf, run

pytestmark = pytest.mark.slow


@pytest.fixture
def baseline(reproduced_repo: Path) -> Path:
    """The session's shrunk repo on main, its `dvc repro` outputs committed (read-only).

    The gs:// default remote of .dvc/config is left in place with no credentials:
    `dvc repro` must not have needed any remote access.
    """
    assert "url = gs://" in (reproduced_repo / ".dvc/config").read_text()
    return reproduced_repo


def test_identical_revisions_say_nothing_changed(baseline: Path) -> None:
    out = imgclf(baseline, "report", "--base", "main").stdout
    assert "**Nothing changed** against `main`" in out
    assert "**no change**" in out
    assert "No cell of the confusion matrix changed." in out


def test_pr_flow_report(baseline: Path, repro_clone: Path) -> None:
    repo = repro_clone  # branches, commits and an experiment: not in the shared repo
    base_eval = json.loads((repo / "metrics/evaluate.json").read_text())
    git(repo, "checkout", "-qb", "better-lr")
    run(["dvc", "exp", "run", "-S", "lr=0.05"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "lr=0.05")
    head_eval = json.loads((repo / "metrics/evaluate.json").read_text())
    assert head_eval["accuracy"] != base_eval["accuracy"], "the experiment should move accuracy"

    imgclf(repo, "report", "--base", "main", "--out", "report.md")
    out = (repo / "report.md").read_text()
    print(out)

    for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        old, new = base_eval[key], head_eval[key]
        assert f"| {name} | {fmt(old)} | {fmt(new)} | {fmt_change(old, new)} |" in out
    assert "| `lr` | auto | 0.05 |" in out  # auto: 0.005 on the digits (card: training.lr)
    assert "| `epochs` |" not in out, "only the changed param is listed"

    sentence = re.search(
        r"lr=0\.05 changed test accuracy from (\S+) to (\S+) \(([+-]\d+\.\d\d) pp, 95 % CI "
        r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] pp; McNemar exact p = \S+, .*\): "
        r"\*\*(likely real|within noise)\*\*\.",
        out,
    )
    assert sentence, "the noise sentence is missing"
    assert float(sentence[1]) == pytest.approx(base_eval["accuracy"], abs=1e-4)
    assert float(sentence[2]) == pytest.approx(head_eval["accuracy"], abs=1e-4)
    change_pp = (head_eval["accuracy"] - base_eval["accuracy"]) * 100
    assert float(sentence[3]) == pytest.approx(change_pp, abs=0.01)

    assert "### Per-class precision / recall / F1 (largest change first)" in out
    assert "### Confusion-matrix changes" in out
    assert "Nothing changed" not in out

    data = imgclf(repo, "data-report", "--base", "main").stdout
    assert "### Images per class" in data
    assert "| `0` |" in data
    assert "No `.dvc` file changed." in data
