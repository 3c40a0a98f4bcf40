"""The GitHub workflows: actionlint-clean, and the promises the PR loop depends on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, missing_tool

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yaml"))


def actionlint() -> str | None:
    """The actionlint binary of this venv (requirements-dev.txt), else one on PATH."""
    here = Path(sys.executable).parent / "actionlint"
    return str(here) if here.exists() else shutil.which("actionlint")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / ".github/workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in workflow["jobs"].values() for s in job["steps"]]


def step_running(all_steps: list[dict[str, Any]], command: str) -> int:
    """Index of the first step whose script runs ``command`` (annotation texts ignored)."""
    for i, step in enumerate(all_steps):
        lines = step.get("run", "").splitlines()
        if any(command in line and "::" not in line for line in lines):
            return i
    raise AssertionError(f"no step runs {command!r}")


def test_the_workflows_exist() -> None:
    names = {p.name for p in WORKFLOWS}
    assert names >= {"ci.yaml", "cml.yaml", "data.yaml", "docker.yaml", "dvc-push.yaml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint(path: Path) -> None:
    binary = actionlint()
    if binary is None:
        missing_tool("actionlint not installed: pip install -r requirements-dev.txt")
    proc = subprocess.run(
        [binary, "-no-color", "-oneline", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cml_workflow_promises() -> None:
    wf = load("cml.yaml")
    assert set(wf["on"]) == {"pull_request"}
    assert wf["permissions"] == {}
    assert wf["jobs"]["report"]["permissions"] == {"contents": "read"}
    assert wf["jobs"]["comment"]["permissions"] == {"pull-requests": "write"}
    assert wf["jobs"]["images"]["permissions"] == {"contents": "write"}
    assert wf["jobs"]["comment"]["env"]["REPORT"] == "model-report/report.md"
    assert "pull_request.number" in wf["concurrency"]["group"]
    all_steps = steps(wf)
    checkout = next(s for s in all_steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    setup = next(s for s in all_steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"
    runs = "\n".join(s.get("run", "") for s in all_steps)
    assert "pip install -r requirements.txt" in runs
    assert "GCP_READER_KEY" in (ROOT / ".github/workflows/cml.yaml").read_text()
    assert "::notice" in runs, "a missing secret skips the pull with a notice"
    wanted = [
        "imgclf pull",
        "dvc repro",
        "imgclf check-lock",
        'imgclf report --base "origin/$BASE_REF"',
        "gh api",  # the pictures, committed to the report-images branch
        "$IMAGES_COMMIT/$IMAGES_FOLDER",  # … and linked by that commit's SHA
        'cml comment update "$REPORT"',
    ]
    order = [step_running(all_steps, w) for w in wanted]
    assert order == sorted(order), "pull → repro → lock check → report → pictures → comment"
    (build,) = [s for s in all_steps if s.get("id") == "report"]
    assert "--images model-report/images --out model-report/body.md" in build["run"]
    assert '--watermark-title="imgclf model report"' in runs
    assert "exit 1" in runs, "a stale dvc.lock fails the job"
    assert "--publish" not in runs.replace("--no-publish", ""), "no upload to a public host"


def test_data_workflow_triggers_on_data_and_prepare() -> None:
    wf = load("data.yaml")
    paths = wf["on"]["pull_request"]["paths"]
    assert "data/**.dvc" in paths and "src/imgclf/data/prepare.py" in paths
    assert wf["permissions"] == {}
    runs = "\n".join(s.get("run", "") for s in steps(wf))
    assert "imgclf data-report" in runs
    assert "--images data-report/images --out data-report/data-report.md" in runs
    assert 'cml comment update "$REPORT"' in runs
    assert wf["jobs"]["comment"]["env"]["REPORT"] == "data-report/data-report.md"


def test_docker_workflow_smoke_tests_and_pushes_with_the_workflow_token() -> None:
    wf = load("docker.yaml")
    assert wf["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    all_steps = steps(wf)
    runs = "\n".join(s.get("run", "") for s in all_steps)
    assert "docker build -f dockerfiles/api.dockerfile" in runs
    assert "localhost:8000/health" in runs and "localhost:8000/predict" in runs
    verify = step_running(all_steps, "imgclf verify-model")
    assert "--evaluated metrics/evaluate.json" in all_steps[verify]["run"]
    pull, build = step_running(all_steps, "imgclf pull"), step_running(all_steps, "docker build")
    assert pull < verify < build, "the pulled model is verified before it goes into the image"
    (push,) = [s for s in all_steps if "docker push" in s.get("run", "")]
    assert "GITHUB_TOKEN" in push["env"], "the workflow token, not a stored password"
    # Release and DVC-writer jobs do not restore the pip cache ci.yaml writes (poisoning).
    for name in ("docker.yaml", "dvc-push.yaml", "drift.yaml"):
        for step in steps(load(name)):
            assert "cache" not in step.get("with", {}), name


def test_ci_workflow_runs_make_test_with_pip_cache() -> None:
    wf = load("ci.yaml")
    assert {"push", "pull_request"} <= set(wf["on"])
    all_steps = steps(wf)
    assert any(s.get("run", "").strip() == "make test" for s in all_steps)
    setup = next(s for s in all_steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"


def test_drift_workflow_reports_daily_and_files_one_issue() -> None:
    """Scheduled; the report job reads only; the issue job writes issues with gh alone."""
    wf = load("drift.yaml")
    assert "schedule" in wf["on"] and "workflow_dispatch" in wf["on"]
    report, issue = wf["jobs"]["report"], wf["jobs"]["issue"]
    assert report["permissions"] == {"contents": "read"}
    assert issue["permissions"] == {"issues": "write"} and issue["needs"] == "report"
    assert issue["if"] == "needs.report.outputs.drift == 'true'"
    runs = step_running(report["steps"], "imgclf drift-report")
    assert 'drift-report.md >> "$GITHUB_STEP_SUMMARY"' in report["steps"][runs]["run"]
    # Issue 24: the report reads the fleet's shards from the bucket with the read-only
    # key, in that step only, on main only, in an environment restricted to main.
    assert '--db "$MONITOR_URL"' in report["steps"][runs]["run"]
    assert "GCP_READER_KEY" in str(report["steps"][runs]["env"])
    assert [i for i, s in enumerate(report["steps"]) if "GCP_READER_KEY" in str(s)] == [runs]
    assert report["if"] == "github.ref == 'refs/heads/main'"
    assert report["environment"] == "production-read"
    script = "\n".join(s.get("run", "") for s in issue["steps"])
    assert "gh issue comment" in script and "gh issue create" in script  # one issue, updated
    # The drift report installs no torch: only the monitoring requirements and DVC.
    install = report["steps"][step_running(report["steps"], "pip install")]["run"]
    assert "-r requirements-monitor.txt" in install and "-r requirements.txt" not in install
