"""Releases end to end in a real git + DVC repo: GTO tags, the gate, show, the live check.

One module fixture reproduces the shrunk pipeline twice (a good model, then a much worse
one) and commits a docs-only change in between (a second version with the same model),
so every test works on real ``dvc repro`` outputs, real tags written by the ``gto``
library and, for the live check, the real API under uvicorn.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest.mock import ANY

import pytest
import yaml

from tests.api.server import uvicorn_server
from tests.support import BIN, SHRINK, copy_repo, git, imgclf, run, tool_env
from tests.workflows.test_workflows import load

pytestmark = pytest.mark.slow

IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
MODEL_FILES = ("model.onnx", "model.json", "reference.json", "ood.json")


def _keep_models(repo: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copyfile(repo / "models" / name, dest / name)
    shutil.copyfile(repo / "metrics" / "evaluate.json", dest / "evaluate.json")
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Commits: good model (A), docs only (B, same model), worse model (C); main = C."""
    base = tmp_path_factory.mktemp("release")
    repo = copy_repo(base / "repo", SHRINK)
    run(["dvc", "repro"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "good model")
    good = _keep_models(repo, base / "models-good")
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nA docs change.\n")
    git(repo, "commit", "-qam", "docs only")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(epochs=1, lr=0.00001)  # barely trained: far worse on the same test split
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "worse model")
    worse = _keep_models(repo, base / "models-worse")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    commits = git(repo, "rev-list", "--reverse", "HEAD").stdout.split()[-3:]
    return {"repo": repo, "A": commits[0], "B": commits[1], "C": commits[2],
            "good": good, "worse": worse}  # fmt: skip


@pytest.fixture
def repo(built: dict[str, object], tmp_path: Path) -> Path:
    """A private copy (history, tags, workspace) a test may tag."""
    return Path(shutil.copytree(built["repo"], tmp_path / "repo", symlinks=True))


def rel(repo: Path, *args: str, check: bool = True):
    return imgclf(repo, "release", *args, check=check, **IDENTITY)


def gate(repo: Path, tag: str, *extra: str):
    return rel(repo, "gate", tag, *extra, check=False)


def test_two_versions_registered_promoted_gated_and_shown(built: dict, repo: Path) -> None:
    out = rel(repo, "register", built["A"], "--version", "v1.0.0").stdout
    assert "registered v1.0.0" in out and "imgclf@v1.0.0" in out
    assert gate(repo, "imgclf@v1.0.0").returncode == 0
    tags = []
    for stage in ("staging", "prod"):
        line = rel(repo, "promote", "v1.0.0", stage).stdout
        tags.append(line.split("(tag ")[1].rstrip(")\n"))
    first = gate(repo, tags[0])
    assert first.returncode == 0 and "first version in staging" in first.stdout
    assert "registered v1.1.0" in rel(repo, "register", built["B"]).stdout  # --bump minor
    rel(repo, "promote", "v1.1.0", "staging")
    tag = rel(repo, "promote", "v1.1.0", "prod").stdout.split("(tag ")[1].rstrip(")\n")
    proc = gate(repo, tag)
    assert proc.returncode == 0, proc.stdout
    assert "no change against the version in the stage now" in proc.stdout
    # GTO itself reads the same tags.
    from gto import api

    assert {v["version"] for v in api.show(str(repo), "imgclf")} == {"v1.0.0", "v1.1.0"}
    assert api.parse_tag(tag) == {"name": "imgclf", "stage": "prod", "action": ANY,
                                  "counter": 4}  # fmt: skip
    shown = rel(repo, "show").stdout
    assert "prod     v1.1.0" in shown and "staging  v1.1.0" in shown
    rows = {line.split()[0]: line.split() for line in shown.splitlines()[3:] if line}
    assert rows["v1.1.0"][2] == "staging,prod" and rows["v1.0.0"][2] == "-"
    accuracy = float(rows["v1.0.0"][3])
    assert 0.5 < accuracy <= 1 and rows["v1.0.0"][3:] == rows["v1.1.0"][3:]


def test_a_likely_worse_promotion_is_refused_with_the_reason(built: dict, repo: Path) -> None:
    rel(repo, "register", built["A"], "--version", "v1.0.0")
    rel(repo, "promote", "v1.0.0", "staging")
    rel(repo, "register", built["C"], "--version", "v2.0.0")
    tag = rel(repo, "promote", "v2.0.0", "staging").stdout.split("(tag ")[1].rstrip(")\n")
    # The release workflow's gate step itself, as the runner runs it.
    (script,) = [s["run"] for s in load("release.yaml")["jobs"]["gate"]["steps"]
                 if s.get("id") == "gate"]  # fmt: skip
    summary, output = repo / "summary.md", repo / "output.txt"
    env = {**tool_env(repo), **IDENTITY, "TAG": tag, "ALLOW_DATA_CHANGE": "false",
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)}  # fmt: skip
    env["PATH"] = f"{BIN}:{env['PATH']}"
    proc = run(["bash", "-e", "-c", script], repo, check=False, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Release gate: refused" in proc.stdout
    assert "likely worse than the version in the stage now" in proc.stdout
    assert "McNemar p = " in proc.stdout and "→ **likely worse**" in proc.stdout
    assert summary.read_text() == (repo / "release-gate" / "gate.md").read_text()
    assert summary.read_text() in proc.stdout
    assert "verdict=refused\nversion=v2.0.0\nstage=staging\n" in output.read_text()


def test_stages_go_in_order_and_releases_come_from_main(built: dict, repo: Path) -> None:
    rel(repo, "register", built["A"], "--version", "v1.0.0")
    proc = rel(repo, "promote", "v1.0.0", "prod", check=False)
    assert proc.returncode == 2 and "never in staging: promote it to staging first" in proc.stderr
    # A tag made without the CLI (plain gto) is caught by the gate all the same.
    run(["gto", "assign", "imgclf", "--version", "v1.0.0", "--stage", "prod"], repo,
        env={**tool_env(repo), **IDENTITY})  # fmt: skip
    proc = gate(repo, "imgclf#prod#1")
    assert proc.returncode == 1 and "out of order" in proc.stdout
    # A commit that is not on main.
    git(repo, "checkout", "-qb", "side")
    git(repo, "commit", "-q", "--allow-empty", "-m", "side work")
    rel(repo, "register", "HEAD", "--version", "v9.0.0")
    proc = gate(repo, "imgclf@v9.0.0")
    assert proc.returncode == 1 and "is not on origin/main" in proc.stdout


def test_rollback_puts_the_previous_prod_version_back(built: dict, repo: Path) -> None:
    for version, commit in (("v1.0.0", built["A"]), ("v2.0.0", built["C"])):
        rel(repo, "register", commit, "--version", version)
        rel(repo, "promote", version, "staging")
        rel(repo, "promote", version, "prod")
    out = rel(repo, "rollback").stdout
    assert out.startswith("rolled prod back to v1.0.0 (tag imgclf#prod#")
    tag = out.split("(tag ")[1].rstrip(")\n")
    proc = gate(repo, tag)
    assert proc.returncode == 0 and "rollback: v1.0.0 was in prod before" in proc.stdout
    assert "prod     v1.0.0" in rel(repo, "show").stdout


def test_the_live_check_against_real_servers(built: dict, repo: Path, tmp_path: Path) -> None:
    rel(repo, "register", built["A"], "--version", "v1.0.0")
    rel(repo, "promote", "v1.0.0", "staging")
    rel(repo, "promote", "v1.0.0", "prod")
    release = {"IMGCLF_MODEL_VERSION": "v1.0.0", "IMGCLF_MODEL_STAGE": "prod"}
    good, worse = Path(built["good"]), Path(built["worse"])
    with uvicorn_server({"IMGCLF_MODEL_DIR": str(good), **release}, tmp_path / "a.log") as s:
        import httpx

        body = httpx.get(s.url + "/model").json()
        assert body["release"] == {"version": "v1.0.0", "stage": "prod"}
        ok = rel(repo, "check-live", "--endpoint", f"prod={s.url}", check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "prod: ok: serves v1.0.0" in ok.stdout
        # The staging URL answers with a prod image: a mismatch too.
        mixed = rel(repo, "check-live", "--endpoint", f"staging={s.url}", check=False)
        assert mixed.returncode == 1 and "image built for stage 'prod'" in mixed.stdout
    with uvicorn_server({"IMGCLF_MODEL_DIR": str(worse), **release}, tmp_path / "b.log") as s:
        out = tmp_path / "live.md"
        bad = rel(repo, "check-live", "--endpoint", f"prod={s.url}", "--out", str(out),
                  check=False)  # fmt: skip
        assert bad.returncode == 1
        assert "prod: MISMATCH: model sha256" in bad.stdout and "is not v1.0.0's" in bad.stdout
        assert "| prod | " in out.read_text() and "❌" in out.read_text()
