"""Real ``dvc repro`` / ``dvc exp run`` in temp git repos copied from this checkout."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from imgclf.jsonio import expand
from imgclf.pipeline.lockcheck import machine_is_portable
from tests.images import write_shapes_dataset
from tests.support import ROOT, imgclf, run

pytestmark = pytest.mark.slow


def metrics(repo: Path) -> dict:
    """evaluate.json, flat: headline and ``detail`` merged, as every reader sees it."""
    return expand(json.loads((repo / "metrics" / "evaluate.json").read_text()))


@pytest.fixture
def reproduced(reproduced_repo: Path) -> Path:
    """The session's shrunk repo after a real `dvc repro` (tests/conftest.py): read-only."""
    return reproduced_repo


def test_repro_produces_model_and_sane_metrics(reproduced: Path) -> None:
    m = metrics(reproduced)
    assert 0.5 < m["accuracy"] <= 1.0  # two epochs on digits
    assert 0.0 <= m["ece"] <= 1.0
    assert [row["class"] for row in m["per_class"]] == [str(d) for d in range(10)]
    for name in ("model.onnx", "model.json", "checkpoint.pt"):
        assert (reproduced / "models" / name).stat().st_size > 0
    card = json.loads((reproduced / "models" / "model.json").read_text())
    assert card["classes"] == [str(d) for d in range(10)]
    assert card["input"]["shape"] == ["batch", 8, 8, 1]
    assert m["model_sha256"] == card["model_sha256"]
    rows = (reproduced / "metrics" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "position,path,actual,predicted,confidence,correct"
    assert len(rows) == m["n_test"] + 1
    curves = (reproduced / "metrics/train/plots/metrics/val/accuracy.tsv").read_text().split()
    assert curves[:2] == ["step", "accuracy"] and len(curves) == 2 + 2 * 2


def test_second_repro_changes_nothing(repro_clone: Path) -> None:
    lock = (repro_clone / "dvc.lock").read_bytes()
    out = run(["dvc", "repro"], repro_clone).stdout
    assert "didn't change, skipping" in out and "Running stage" not in out
    assert (repro_clone / "dvc.lock").read_bytes() == lock
    assert "up to date" in run(["dvc", "status"], repro_clone).stdout


def test_metrics_and_plots_commands_show_results(reproduced: Path) -> None:
    shown = run(["dvc", "metrics", "show", "--json"], reproduced).stdout
    assert '"accuracy"' in shown and "metrics/evaluate.json" in shown
    plots = run(["dvc", "plots", "show", "--json"], reproduced).stdout
    for name in ("Loss", "Accuracy", "predictions.csv", "confusion_matrix.png", "lr.tsv"):
        assert name in plots


def test_experiment_table_keeps_to_headline_metrics(reproduced: Path) -> None:
    """`dvc exp show` fits a terminal: ~15 metric columns, none per class (issue 10)."""
    rows = json.loads(run(["dvc", "exp", "show", "--json"], reproduced).stdout)
    data = rows[0]["data"]  # the workspace row

    def columns(value: object, prefix: str = "") -> list[str]:  # what DVC tabulates
        if isinstance(value, dict):
            return [c for k, v in value.items() for c in columns(v, f"{prefix}{k}.")]
        return [] if isinstance(value, list) else [prefix.rstrip(".")]

    shown = [f"{file}:{c}" for file, m in data["metrics"].items() for c in columns(m["data"])]
    assert len(shown) <= 16, shown
    for key in ("accuracy", "macro_f1", "ece", "baseline.accuracy", "best_epoch", "n_used"):
        assert any(c.endswith(":" + key) for c in shown), (key, shown)
    detail = ("per_class", "classes.", "skipped_by_reason", "sha256", "split.", ":step")
    assert not any(d in c for c in shown for d in detail), shown


def test_default_params_reproduce_the_committed_lock(repo_factory: Callable[..., Path]) -> None:
    """The core promise: the committed dvc.lock is exactly what the code produces."""
    repo = repo_factory({"epochs": yaml_epochs()})
    committed = (ROOT / "dvc.lock").read_text()
    run(["dvc", "repro"], repo)
    verdict = imgclf(repo, "check-lock", check=False)
    if not machine_is_portable():  # ARM, or x86-64 without AVX2: no bit-identity promised
        assert verdict.returncode == 0 and "within noise" in verdict.stdout, verdict.stdout
        return
    # Portable numerics: the same bytes on any x86-64 CPU with AVX2 (docs/reproducibility.md).
    assert verdict.stdout.startswith("lock check: bit-identical"), verdict.stdout
    assert (repo / "dvc.lock").read_text() == committed
    for name in ("evaluate.json", "prepare.json", "predictions.csv", "train/metrics.json"):
        assert (repo / "metrics" / name).read_bytes() == (ROOT / "metrics" / name).read_bytes()
    m = metrics(repo)
    # 4 errors in 359; seeds 1-3 give 0.99-0.994 (a test image is 0.28 pp).
    assert m["accuracy"] >= 0.985 and m["macro_f1"] >= 0.985


def yaml_epochs() -> int:
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())["epochs"]


def test_experiments_with_top_level_and_nested_params(repro_clone: Path) -> None:
    run(
        ["dvc", "exp", "run", "-S", "lr=1e-3", "-S", "model.width=16", "-n", "small-lr"],
        repro_clone,
    )
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repro_clone).stdout)
    text = json.dumps(shown)
    assert "small-lr" in text and '"lr": 0.001' in text


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        # DVC itself refuses -S on a key that does not exist, naming it...
        ("lr_rate=1e-3", "Could not override 'lr_rate'"),
        # ...and when it is forced in with '+', our schema refuses it and suggests 'lr'.
        ("+lr_rate=1e-3", "unknown key 'lr_rate'. Did you mean 'lr'?"),
        ("lr=-1", "'lr' = -1: lr must be 'auto' or a number > 0 and <= 10"),
        ("model.name=nope", "'model.name' = 'nope'"),
    ],
)
def test_bad_params_fail_the_experiment_with_a_clear_message(
    repro_clone: Path, setting: str, expected: str
) -> None:
    proc = run(["dvc", "exp", "run", "-S", setting], repro_clone, check=False)
    assert proc.returncode != 0
    assert expected in proc.stdout + proc.stderr


def test_user_jpeg_folder_trains_with_no_code_change(repo_factory: Callable[..., Path]) -> None:
    """docs/own-data.md's steps: dvc add a JPEG ImageFolder, switch one param."""
    repo = repo_factory(
        {
            # 4 epochs of one optimizer step each (39 training images) is a shortcut for
            # speed; it needs a larger step than lr: auto's 0.00125 at 32 px, which the
            # defaults' 30 epochs reach (bench/RESULTS.md, "Defaults vs a queued sweep").
            "epochs": 4,
            "lr": 0.005,
            "data": {"dataset": "data/raw/shapes"},
            "prepare": {"image_size": 32, "color_mode": "rgb", "min_side": 16},
        }
    )
    shapes = write_shapes_dataset(repo / "data/raw/shapes", per_class=20)
    (shapes / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    run(["dvc", "add", "data/raw/shapes"], repo)
    run(["dvc", "repro"], repo)
    report = json.loads((repo / "metrics" / "prepare.json").read_text())
    assert report["n_used"] == 60 and report["n_skipped"] == 1
    assert report["skipped"][0]["path"] == "class_1/broken.jpg"
    width = next(row for row in report["image_size"] if row["side"] == "width")
    assert width["max"] > width["min"]
    m = metrics(repo)
    assert [row["class"] for row in m["per_class"]] == ["class_0", "class_1", "class_2"]
    assert m["accuracy"] >= 0.6  # shapes are easy; 4 epochs from scratch
    card = json.loads((repo / "models" / "model.json").read_text())
    assert card["input"]["shape"] == ["batch", 32, 32, 3]
    predicted = run(
        ["imgclf", "predict", "data/raw/shapes/class_0/img_000.jpg", "--top-k", "2"], repo
    ).stdout
    assert predicted.startswith("data/raw/shapes/class_0/img_000.jpg: class_")


def test_a_failed_experiment_keeps_the_earlier_outputs(repro_clone: Path) -> None:
    params = (repro_clone / "params.yaml").read_text()
    model = (repro_clone / "models" / "model.onnx").read_bytes()
    evaluation = metrics(repro_clone)
    proc = run(["dvc", "exp", "run", "-S", "lr=-1"], repro_clone, check=False)
    assert proc.returncode != 0
    assert (repro_clone / "models" / "model.onnx").read_bytes() == model
    assert metrics(repro_clone) == evaluation
    (repro_clone / "params.yaml").write_text(params)  # undo the -S edit
    assert "up to date" in run(["dvc", "status"], repro_clone).stdout
