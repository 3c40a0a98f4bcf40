"""``imgclf check-lock`` after a real ``dvc repro``: the three verdicts and a stale lock."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from tests.support import git, imgclf, run

pytestmark = pytest.mark.slow


@pytest.fixture
def committed(reproduced_repo: Path) -> Path:
    """The session's shrunk repo whose reproduced dvc.lock and metrics/ are committed."""
    return reproduced_repo


@pytest.fixture
def clone(repro_clone: Path) -> Path:
    """A private copy (workspace, git history, DVC cache) a test may change."""
    return repro_clone


def other_numerics(repo: Path, flips: int) -> None:
    """What another machine's run looks like: other weights, ``flips`` images now wrong."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for out in lock["stages"]["train"]["outs"]:
        if out["path"] == "models/model.onnx":
            out["md5"] = "0" * 32
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    path = repo / "metrics" / "predictions.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    right = [r for r in rows if r["correct"] == "1"]
    assert len(right) >= flips
    for row in right[:flips]:
        row["predicted"] = "0" if row["actual"] != "0" else "1"
        row["correct"] = "0"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def test_a_reproduced_lock_is_bit_identical(committed: Path) -> None:
    out = imgclf(committed, "check-lock").stdout
    assert out.startswith("lock check: bit-identical")


def test_other_numerics_within_noise_pass_and_say_so(clone: Path) -> None:
    other_numerics(clone, flips=1)
    proc = imgclf(clone, "check-lock")
    assert "different numerics, metrics agree within noise" in proc.stdout
    assert "Δacc -0.2" in proc.stdout and "McNemar p = 1" in proc.stdout
    assert "models/model.onnx differs" in proc.stdout


def test_a_change_beyond_noise_fails(clone: Path) -> None:
    other_numerics(clone, flips=40)
    proc = imgclf(clone, "check-lock", check=False)
    assert proc.returncode == 1
    assert "lock check: differs beyond noise" in proc.stdout


def test_a_stale_lock_fails_and_names_the_module(clone: Path) -> None:
    """Code edited and committed without its lock: the stages that import it re-run, and
    the check fails, naming the module and saying that no output changed (a comment)."""
    module = clone / "src" / "imgclf" / "data" / "prepared_files.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    status = json.loads(run(["dvc", "status", "--json"], clone).stdout)
    changed = {
        stage
        for stage, items in status.items()
        for item in items
        if isinstance(item, dict)
        and "src/imgclf/data/prepared_files.py" in item.get("changed deps", {})
    }
    assert changed == {"prepare", "train", "evaluate"}
    git(clone, "commit", "-qam", "edit dataio without its lock")
    run(["dvc", "repro"], clone)
    proc = imgclf(clone, "check-lock", check=False)
    assert proc.returncode == 1
    assert "lock check: outputs bit-identical, only code deps differ" in proc.stdout
    assert "stage train: dep src/imgclf/data/prepared_files.py differs" in proc.stdout
    assert "every stage's outputs and metrics/ match HEAD byte for byte" in proc.stdout


def test_a_stale_lock_with_other_results_says_inputs_differ(clone: Path) -> None:
    """Code *and* results changed without the lock: the plain stale-lock failure."""
    module = clone / "src" / "imgclf" / "data" / "prepared_files.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    git(clone, "commit", "-qam", "edit without its lock")
    run(["dvc", "repro"], clone)
    other_numerics(clone, flips=1)
    proc = imgclf(clone, "check-lock", check=False)
    assert proc.returncode == 1
    assert "lock check: inputs differ" in proc.stdout
