"""The release and live workflows: what they run, with which inputs, and a dry run of the
deploy commands (the deployment itself cannot run here).

The push and deploy steps' scripts are run for real with stand-ins for ``docker`` and
``gcloud`` on ``PATH`` that record their arguments, so the commands a reviewer approves
(deploy by digest, the canary share, all traffic after the second approval) are checked
as bash runs them, not as they read.
"""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT
from tests.workflows.test_workflows import load

DIGEST = "ghcr.io/owner/imgclf-api@sha256:" + "ab" * 32


def step(wf: dict[str, Any], job: str, step_id: str) -> dict[str, Any]:
    (found,) = [s for s in wf["jobs"][job]["steps"] if s.get("id") == step_id]
    return found


def fake_tools(bin_dir: Path, log: Path) -> None:
    """``docker`` and ``gcloud`` that log their argv; ``gcloud run services describe``
    fails when $NEW_SERVICE is set (a first deploy)."""
    bin_dir.mkdir()
    scripts = {
        "gcloud": f"""#!/bin/bash
echo "gcloud $*" >> {log}
if [ "$1 $2 $3" = "run services describe" ] && [ -n "$NEW_SERVICE" ]; then exit 1; fi
""",
        "docker": f"""#!/bin/bash
echo "docker $*" >> {log}
case "$1" in
  load) cat > /dev/null ;;
  login) read -r secret; echo "login-secret-length ${{#secret}}" >> {log} ;;
  inspect) echo "{DIGEST}" ;;
esac
""",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run_step(script: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "calls.log"
    fake_tools(tmp_path / "bin", log)
    full = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
            "RUNNER_TEMP": str(tmp_path), "GITHUB_OUTPUT": str(tmp_path / "output"),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), **env}  # fmt: skip
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return proc, log.read_text() if log.exists() else ""


def test_release_triggers_inputs_and_job_chain() -> None:
    wf = load("release.yaml")
    assert wf["on"]["push"] == {"tags": ["imgclf@*", "imgclf#*"]}
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert inputs["tag"]["required"] is True
    assert inputs["allow_data_change"] == {**inputs["allow_data_change"], "type": "boolean",
                                           "default": False}  # fmt: skip
    assert wf["concurrency"] == {"group": "release", "cancel-in-progress": False}
    jobs = wf["jobs"]
    gate = jobs["gate"]
    assert gate["permissions"] == {"contents": "read"}
    checkout = gate["steps"][0]["with"]
    assert checkout["fetch-depth"] == 0 and checkout["fetch-tags"] is True
    script = step(wf, "gate", "gate")["run"]
    assert 'imgclf release gate "$TAG"' in script and "--main origin/main" in script
    assert '[ "$ALLOW_DATA_CHANGE" = "true" ]' in script  # the override only when asked
    # Refused: tag deleted (not-comparable keeps it); both get the PR comment.
    refuse = jobs["refuse"]
    assert "needs.gate.outputs.verdict == 'refused'" in refuse["if"]
    assert "needs.gate.outputs.verdict == 'not-comparable'" in refuse["if"]
    delete = next(s for s in refuse["steps"] if s.get("name") == "Delete the refused tag")
    assert delete["if"] == "env.VERDICT == 'refused'"
    assert 'gh api -X DELETE "repos/$GH_REPO/git/refs/tags/${TAG//#/%23}"' in delete["run"]
    # Only a passed promotion is built, from the promoted commit, version and stage inside.
    image = jobs["image"]
    assert image["if"] == "needs.gate.outputs.verdict == 'pass' && needs.gate.outputs.stage != ''"
    assert image["steps"][0]["with"]["ref"] == "${{ needs.gate.outputs.commit }}"
    runs = "\n".join(s.get("run", "") for s in image["steps"])
    for arg in ('GIT_REVISION="$COMMIT"', 'MODEL_VERSION="$VERSION"', 'MODEL_STAGE="$STAGE"'):
        assert f"--build-arg {arg}" in runs
    assert "imgclf verify-model" in runs and '["release"]' in runs
    assert jobs["push"]["needs"] == ["gate", "image"]
    assert jobs["deploy"]["needs"] == ["gate", "push"]
    assert jobs["deploy"]["environment"] == "${{ needs.gate.outputs.stage }}"
    assert jobs["deploy"]["env"]["IMAGE"] == "${{ needs.push.outputs.image }}"
    assert jobs["rollout"]["environment"] == "prod"
    assert jobs["rollout"]["needs"] == ["gate", "deploy"]


def test_the_push_step_tags_version_and_stage_and_outputs_the_digest(tmp_path: Path) -> None:
    wf = load("release.yaml")
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "imgclf-api.tar.gz").write_bytes(gzip.compress(b"tar"))
    proc, calls = run_step(step(wf, "push", "push")["run"], tmp_path, VERSION="v1.2.0",
                           STAGE="prod", GH_TOKEN="t0ken", ACTOR="bot", OWNER="Owner")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "docker login ghcr.io --username bot --password-stdin" in calls
    assert "login-secret-length 5" in calls and "t0ken" not in calls
    for tag in ("v1.2.0", "prod"):
        assert f"docker push ghcr.io/owner/imgclf-api:{tag}" in calls
    assert calls.rstrip().endswith("docker logout ghcr.io")
    assert (tmp_path / "output").read_text() == f"image={DIGEST}\n"


@pytest.mark.parametrize(("stage", "new", "expected"), [
    ("prod", "", [
        f"gcloud run deploy imgclf-api-prod --image {DIGEST} --region r1 --tag v1-2-0 "
        "--no-traffic --quiet",
        "gcloud run services update-traffic imgclf-api-prod --region r1 --to-tags v1-2-0=10 "
        "--quiet",
    ]),
    ("staging", "", [
        "gcloud run services update-traffic imgclf-api-staging --region r1 --to-tags "
        "v1-2-0=100 --quiet",
    ]),
    ("staging", "1", [  # a first deploy: the service does not exist yet
        f"gcloud run deploy imgclf-api-staging --image {DIGEST} --region r1 --tag v1-2-0 --quiet",
    ]),
])  # fmt: skip
def test_deploy_dry_run(tmp_path: Path, stage: str, new: str, expected: list[str]) -> None:
    wf = load("release.yaml")
    proc, calls = run_step(step(wf, "deploy", "deploy")["run"], tmp_path, IMAGE=DIGEST,
                           VERSION="v1.2.0", STAGE=stage, SERVICE="imgclf-api", REGION="r1",
                           CANARY_PERCENT="10", NEW_SERVICE=new)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for line in expected:
        assert line in calls.splitlines(), calls


def test_deploy_refuses_an_image_that_is_not_pinned_by_digest(tmp_path: Path) -> None:
    wf = load("release.yaml")
    proc, calls = run_step(step(wf, "deploy", "deploy")["run"], tmp_path,
                           IMAGE="ghcr.io/owner/imgclf-api:prod", VERSION="v1.2.0", STAGE="prod",
                           SERVICE="imgclf-api", REGION="r1", CANARY_PERCENT="10")  # fmt: skip
    assert proc.returncode == 1 and "not pinned by digest" in proc.stdout
    assert calls == ""


def test_rollout_sends_all_prod_traffic_to_the_version(tmp_path: Path) -> None:
    wf = load("release.yaml")
    proc, calls = run_step(step(wf, "rollout", "rollout")["run"], tmp_path, VERSION="v1.2.0",
                           SERVICE="imgclf-api", REGION="r1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert calls.splitlines() == [
        "gcloud run services update-traffic imgclf-api-prod --region r1 --to-tags v1-2-0=100 "
        "--quiet"
    ]


def test_live_workflow_checks_each_configured_stage_and_opens_one_issue() -> None:
    wf = load("live.yaml")
    assert set(wf["on"]) == {"schedule", "workflow_dispatch"}
    script = step(wf, "check", "check")["run"]
    assert 'imgclf release check-live "${args[@]}"' in script
    assert '--endpoint "prod=$PROD_URL"' in script and '--endpoint "staging=$STAGING_URL"' in script
    issue = wf["jobs"]["issue"]
    assert issue["permissions"] == {"issues": "write"}
    assert "needs.check.outputs.mismatch == 'true'" in issue["if"]
    assert "gh issue create" in issue["steps"][-1]["run"]
    assert (ROOT / "docs" / "releases.md").is_file()
