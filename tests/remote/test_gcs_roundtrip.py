"""Every cached pipeline output round-trips bit-identically through a gs:// remote."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from tests.support import copy_repo, git, imgclf, run

pytestmark = pytest.mark.slow


def cached_outputs(repo: Path) -> list[str]:
    """The outputs dvc.yaml caches (those `dvc push` sends; the rest are git-tracked)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    outs = []
    for stage in stages.values():
        for out in stage.get("outs", []):
            name, conf = (out, {}) if isinstance(out, str) else next(iter(out.items()))
            if conf.get("cache", True):
                outs.append(name)
    return outs


def digests(repo: Path, outs: list[str]) -> dict[str, str]:
    """sha256 of every file under the given outputs, keyed by repo-relative path."""
    result = {}
    for out in outs:
        path = repo / out
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            result[file.relative_to(repo).as_posix()] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    return result


@pytest.mark.heavy
def test_push_pull_round_trip_is_bit_identical(tmp_path: Path, emulator: str) -> None:
    repo = copy_repo(tmp_path / "repo", {"epochs": 2})
    run(["dvc", "repro"], repo)
    outs = cached_outputs(repo)
    assert {"data/raw/digits", "data/prepared", "models/model.onnx"} <= set(outs)
    before = digests(repo, outs)
    assert len(before) > 1797, "every digit image plus the prepared arrays and the model"

    # --local: the committed .dvc/config (the team's gs:// placeholder) stays untouched.
    run(["dvc", "remote", "add", "--local", "-d", "storage", "gs://b/roundtrip"], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", emulator], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "allow_anonymous_login", "true"], repo)
    assert git(repo, "diff", "--name-only", "--", ".dvc").stdout == ""

    pushed = imgclf(repo, "push")
    assert "OK" in pushed.stderr

    for out in outs:
        target = repo / out
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.rmtree(repo / ".dvc/cache")

    imgclf(repo, "pull")
    assert digests(repo, outs) == before
    status = run(["dvc", "status", "--cloud"], repo).stdout
    assert "in sync" in status, status
