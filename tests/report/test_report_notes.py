"""The report's notes instead of crashes, on a tiny hand-made DVC repo (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import git, imgclf, init_dvc_repo, run

DVC_YAML = """\
stages:
  evaluate:
    cmd: python -c "print('metrics are written by the test')"
    params:
      - lr
    metrics:
      - metrics/evaluate.json:
          cache: false
    outs:
      - metrics/predictions.csv:
          cache: false
"""


def write_metrics(repo: Path, paths: list[str], correct: list[bool]) -> None:
    """predictions.csv and a matching evaluate.json (two classes, 'a' and 'b')."""
    rows = ["position,path,actual,predicted,confidence,correct"]
    for i, (path, ok) in enumerate(zip(paths, correct, strict=True)):
        actual = path.split("/")[0]
        predicted = actual if ok else ("b" if actual == "a" else "a")
        rows.append(f"{i},{path},{actual},{predicted},0.900000,{int(ok)}")
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/predictions.csv").write_text("\n".join(rows) + "\n")
    acc = sum(correct) / len(correct)
    per_class = {c: {"precision": acc, "recall": acc, "f1": acc, "support": 1} for c in "ab"}
    data = {"accuracy": acc, "macro_f1": acc, "ece": 0.1, "n_test": len(paths),
            "per_class": per_class, "confusion_matrix": [[1, 0], [0, 1]]}  # fmt: skip
    (repo / "metrics/evaluate.json").write_text(json.dumps(data))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """git + dvc repo on main with params and a dvc.yaml declaring the metrics."""
    init_dvc_repo(tmp_path)
    (tmp_path / "params.yaml").write_text("lr: 0.1\n")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    return tmp_path


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def test_base_without_metrics_gets_a_note(tiny: Path) -> None:
    commit(tiny, "no metrics yet")
    write_metrics(tiny, ["a/1.png", "b/1.png"], [True, False])
    out = imgclf(tiny, "report", "--base", "main").stdout
    assert "the base revision `main` has no metrics" in out
    assert "| accuracy | — | 0.5000 | new |" in out


def test_different_test_sets_are_not_paired(tiny: Path) -> None:
    write_metrics(tiny, [f"a/{i}.png" for i in range(10)], [True] * 9 + [False])
    commit(tiny, "baseline")
    write_metrics(tiny, [f"b/{i}.png" for i in range(12)], [True] * 12)
    (tiny / "params.yaml").write_text("lr: 0.01\n")
    out = imgclf(tiny, "report", "--base", "main").stdout
    assert "not paired" in out
    assert "10 samples only in base, 12 only in this revision" in out
    assert "lr=0.01 changed test accuracy from 0.9000 to 1.0000" in out
    assert "| accuracy | 0.9000 | 1.0000 | +0.1000 |" in out


def test_base_without_predictions_is_not_paired(tiny: Path) -> None:
    write_metrics(tiny, ["a/1.png", "b/1.png"], [True, True])
    (tiny / "metrics/predictions.csv").unlink()
    commit(tiny, "metrics from before per-sample predictions were kept")
    write_metrics(tiny, ["a/1.png", "b/1.png"], [True, False])
    out = imgclf(tiny, "report", "--base", "main").stdout
    assert "predictions.csv is missing at one of the two revisions" in out
    assert "**not paired**" in out
    assert "evaluated different test sets" not in out
    assert "| accuracy | 1.0000 | 0.5000 | -0.5000 |" in out


def test_unknown_base_and_missing_workspace_metrics_are_errors(tiny: Path) -> None:
    commit(tiny, "nothing")
    proc = imgclf(tiny, "report", "--base", "origin/main", check=False)
    assert proc.returncode == 2
    assert "unknown git revision 'origin/main'" in proc.stderr
    assert "fetch-depth: 0" in proc.stderr
    proc = imgclf(tiny, "report", "--base", "main", check=False)
    assert proc.returncode == 2
    assert "run `dvc repro` first" in proc.stderr


def test_base_predictions_come_from_dvc_when_not_in_git(tiny: Path) -> None:
    """A project that caches predictions.csv with DVC (not git): read through DVC's API."""
    cached = DVC_YAML.replace(
        "- metrics/predictions.csv:\n          cache: false", "- metrics/predictions.csv"
    )
    assert cached != DVC_YAML
    (tiny / "dvc.yaml").write_text(cached)
    paths = [f"a/{i}.png" for i in range(20)]
    write_metrics(tiny, paths, [True] * 20)
    run(["dvc", "commit", "-f", "-q"], tiny)
    commit(tiny, "baseline, predictions in the DVC cache")
    tracked = git(tiny, "ls-files").stdout
    assert "metrics/predictions.csv" not in tracked and "metrics/evaluate.json" in tracked
    write_metrics(tiny, paths, [False] * 20)
    out = imgclf(tiny, "report", "--base", "main").stdout
    assert "not paired" not in out
    assert "changed test accuracy from 1.0000 to 0.0000" in out
    assert "0 fixed / 20 broken of 20 samples): **likely real**" in out


def test_an_int8_model_report_says_what_quantizing_cost() -> None:
    from imgclf.report.pr_report import quantization_lines

    fp32 = {"accuracy": 0.9}
    assert quantization_lines(fp32) == []
    int8 = {**fp32, "export": {"quantize": "int8", "val_accuracy_fp32": 0.75,
                               "val_accuracy_int8": 0.7}}  # fmt: skip
    (line, blank) = quantization_lines(int8)
    assert "int8 model" in line and "0.7500" in line and "0.7000" in line and "-0.0500" in line
    assert blank == ""
