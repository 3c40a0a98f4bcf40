"""The security policy of the workflows, read from the YAML (docs/pull-requests.md).

Each test states one rule a reviewer would otherwise check by eye, over every workflow
file, so a new workflow or step is held to it too:

* secrets appear only in the ``env`` of the one step that uses them — never workflow- or
  job-level ``env``, never written to ``$GITHUB_ENV``; a key file is deleted by a trap;
* pull-request workflows see the read-only key and ``GITHUB_TOKEN`` only; the writer key
  lives in a main-only job behind an environment;
* least permissions: nothing by default, each job asks; a job that can write (PR comments;
  the drift workflow's issue; the report pictures' branch) runs no project code and checks
  nothing out; the comment step is skipped for fork PRs;
* pictures never leave the repository: only allow-listed PNGs the report links are
  committed, to one branch, through the Git data API; the comment links them by commit
  SHA and nothing is uploaded to CML's public asset host;
* every action is pinned to a full commit SHA with its version in a comment; checkouts
  leave no token in ``.git/config``; no ``${{ … }}`` expression is pasted into a script;
* the CML version and pip installs are pinned.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, git, init_dvc_repo

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.y*ml"))
IDS = [p.name for p in WORKFLOWS]
SECRET = re.compile(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)")
READ_ONLY_SECRETS = {"GCP_READER_KEY", "GITHUB_TOKEN"}
FORK_GUARD = "github.event.pull_request.head.repo.full_name == github.repository"
# What the rules below must find. They loop over matched jobs and steps, so renaming the
# matched thing (a secret, a command, a step) would otherwise let them pass vacuously.
COMMENT_JOBS = {"cml.yaml/comment", "data.yaml/comment"}
KEY_FILE_STEPS = {"cml.yaml": 1, "data.yaml": 1, "docker.yaml": 1, "drift.yaml": 1,
                  "dvc-push.yaml": 2, "release.yaml": 1}  # fmt: skip
WRITER_JOBS = {"cml.yaml/comment", "cml.yaml/images", "data.yaml/comment", "data.yaml/images",
               "docker.yaml/push", "drift.yaml/issue", "live.yaml/issue", "release.yaml/push",
               "release.yaml/deploy", "release.yaml/refuse", "release.yaml/rollout"}  # fmt: skip
PINNED = re.compile(r"^\s*(?:-\s*)?uses:\s*([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # v\d+\.\d+\.\d+$")
CREDENTIAL_WORDS = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL", re.IGNORECASE)
# A command that would run the checked-out project's code (first word of a command).
PROJECT_CODE = re.compile(
    r"(?:^|[;&|(]\s*)(?:imgclf|dvc|make|pip\d*|python\d*|pytest|bash|\./)\b", re.M
)


# Write scopes beyond PR comments, per workflow and job (all of them run no project code,
# test_jobs_that_can_write_run_no_pr_code): the scheduled reports open an issue; a
# release deletes a refused tag, pushes the image with the workflow token and deploys
# through Workload Identity Federation (docs/releases.md).
EXTRA_WRITES = {
    "docker.yaml": {"push": {"packages"}},  # no checkout, no pip: loads the saved image
    "drift.yaml": {"issue": {"issues"}},
    "live.yaml": {"issue": {"issues"}},
    "release.yaml": {
        "refuse": {"contents", "pull-requests"},
        "push": {"packages"},
        "deploy": {"id-token"},
        "rollout": {"id-token"},
    },
}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def triggers(wf: dict[str, Any]) -> set[str]:
    on = wf["on"]
    return {on} if isinstance(on, str) else set(on)


def jobs(wf: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(wf["jobs"].items())


def all_steps(wf: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for _, job in jobs(wf) for s in job.get("steps", [])]


def count_outside_comments(path: Path, text: str) -> int:
    """Lines of the file (YAML comments aside) that mention ``text``: what a rule that
    loops over parsed steps must have seen, so that it cannot pass by matching nothing."""
    lines = path.read_text().splitlines()
    return sum(text in ln for ln in lines if not ln.lstrip().startswith("#"))


def secrets_in(value: Any) -> set[str]:
    """Names of the secrets an (arbitrarily nested) YAML value refers to."""
    return set(SECRET.findall(yaml.safe_dump(value))) if value is not None else set()


@pytest.fixture(params=WORKFLOWS, ids=IDS)
def workflow(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    return request.param, load(request.param)


def test_no_secret_in_workflow_or_job_env(workflow: tuple[Path, dict[str, Any]]) -> None:
    """A workflow- or job-level env is visible to every step, PR code and third parties."""
    _, wf = workflow
    assert not secrets_in(wf.get("env")), "workflow-level env holds a secret"
    for name, job in jobs(wf):
        assert not secrets_in(job.get("env")), f"job {name}: job-level env holds a secret"
        assert "github.token" not in yaml.safe_dump(job.get("env", {}))


def test_secrets_only_in_the_env_of_one_step(workflow: tuple[Path, dict[str, Any]]) -> None:
    """Secrets reach a step through its own env, nowhere else (not `with:`, `if:`, `run:`)."""
    _, wf = workflow
    for name, job in jobs(wf):
        for step in job.get("steps", []):
            outside_env = {k: v for k, v in step.items() if k != "env"}
            assert not secrets_in(outside_env), f"job {name}, step {step.get('name')}"
        users: dict[str, list[str]] = {}
        for step in job.get("steps", []):
            for secret in secrets_in(step.get("env")):
                users.setdefault(secret, []).append(str(step.get("name")))
        for secret, names in users.items():
            assert len(names) == 1, f"job {name}: {secret} is in several steps: {names}"


def test_key_files_live_and_die_inside_their_step(workflow: tuple[Path, dict[str, Any]]) -> None:
    """Written to a fresh temp file, used inline, deleted by an EXIT trap; never exported."""
    path, wf = workflow
    checked = 0
    for step in all_steps(wf):
        keys = [k for k, v in (step.get("env") or {}).items() if "secrets.GCP_" in str(v)]
        checked += bool(keys)
        for key in keys:
            script = step["run"]
            assert 'key="$(mktemp "$RUNNER_TEMP/gcp-key.XXXXXX")"' in script
            assert script.index("trap 'rm -f \"$key\"' EXIT") < script.index(f'"${key}" >')
            assert 'GOOGLE_APPLICATION_CREDENTIALS="$key" imgclf' in script
            assert "export GOOGLE_APPLICATION_CREDENTIALS" not in script
    assert checked == KEY_FILE_STEPS.get(path.name, 0), "steps with a key file"


def test_nothing_is_exported_through_github_env(workflow: tuple[Path, dict[str, Any]]) -> None:
    """$GITHUB_ENV reaches every later step (PR code, third-party tools): keep it unused."""
    _, wf = workflow
    for step in all_steps(wf):
        script = step.get("run", "")
        assert "GITHUB_ENV" not in script, step.get("name")
        for line in script.splitlines():
            if "GITHUB_OUTPUT" in line or "GITHUB_PATH" in line:
                written = line.split(">>")[0]
                assert not CREDENTIAL_WORDS.search(written), f"{step.get('name')}: {line}"


def test_pull_request_workflows_see_only_the_read_only_key() -> None:
    for path in WORKFLOWS:
        wf = load(path)
        if triggers(wf) & {"pull_request", "pull_request_target", "workflow_run"}:
            assert secrets_in(wf) <= READ_ONLY_SECRETS, path.name


def test_no_privileged_pull_request_triggers(workflow: tuple[Path, dict[str, Any]]) -> None:
    """pull_request_target / workflow_run run with secrets and a write token: not used here."""
    _, wf = workflow
    assert not triggers(wf) & {"pull_request_target", "workflow_run"}


def test_the_writer_key_only_on_main_behind_an_environment() -> None:
    users = [p for p in WORKFLOWS if "GCP_WRITER_KEY" in secrets_in(load(p))]
    assert [p.name for p in users] == ["dvc-push.yaml"]
    wf = load(users[0])
    assert triggers(wf) <= {"push", "workflow_dispatch"}
    assert wf["on"]["push"]["branches"] == ["main"]
    for name, job in jobs(wf):
        if "GCP_WRITER_KEY" in secrets_in(job):
            assert job["if"] == "github.ref == 'refs/heads/main'", name
            assert job["environment"] == "dvc-writer", name
            (step,) = [s for s in job["steps"] if "GCP_WRITER_KEY" in secrets_in(s)]
            assert step["run"].index("git diff --quiet -- dvc.lock") < step["run"].index(
                "imgclf push"
            ), "push only outputs that the committed dvc.lock names"


def test_registry_push_uses_the_workflow_token_in_a_job_without_code() -> None:
    """Issue 20: no stored registry password; the push job has no checkout and no pip
    install (the image and the code that built it never run next to the credential)."""
    for path in WORKFLOWS:
        assert "REGISTRY_PASSWORD" not in path.read_text(), path.name
    wf = load(ROOT / ".github/workflows/docker.yaml")
    push = wf["jobs"]["push"]
    assert push["environment"] == "release" and push["permissions"] == {"packages": "write"}
    uses = [s.get("uses", "") for s in push["steps"]]
    runs = "\n".join(s.get("run", "") for s in push["steps"])
    assert not any(u.startswith("actions/checkout") for u in uses) and "pip" not in runs
    (login,) = [s for s in push["steps"] if "GITHUB_TOKEN" in secrets_in(s)]
    assert "--password-stdin" in login["run"] and "docker logout" in login["run"]
    assert 'DOCKER_CONFIG="$(mktemp -d' in login["run"], "the login dies with the step"
    build = wf["jobs"]["api-image"]
    tag_check = "\n".join(s.get("run", "") for s in build["steps"])
    assert "merge-base --is-ancestor" in tag_check and "v[0-9]+" in tag_check


# The one job per workflow that may write contents: it commits the report's pictures to
# the report-images branch (test_pictures_are_published_inside_the_repository_only).
CONTENT_WRITERS = {("cml.yaml", "images"), ("data.yaml", "images")}


def test_least_permissions(workflow: tuple[Path, dict[str, Any]]) -> None:
    path, wf = workflow
    top = wf.get("permissions")
    assert top is not None, "set workflow-level permissions (default token is broad)"
    assert top in ({}, {"contents": "read"}), f"{path.name}: top-level {top}"
    for name, job in jobs(wf):
        perms = job.get("permissions", top)
        assert perms is not None
        writes = {k for k, v in perms.items() if v == "write"}
        if (path.name, name) in CONTENT_WRITERS:
            assert perms == {"contents": "write"}, f"{path.name}/{name}: {perms}"
            continue
        # Comments on PRs; beyond that only the jobs EXTRA_WRITES names, each for one reason.
        allowed = {"pull-requests"} | EXTRA_WRITES.get(path.name, {}).get(name, set())
        assert writes <= allowed, f"{path.name}/{name}: {writes}"
        if "contents" not in allowed:
            assert perms.get("contents", "read") == "read"


def test_jobs_that_can_write_run_no_pr_code(workflow: tuple[Path, dict[str, Any]]) -> None:
    """The write token's job checks nothing out and runs none of the project's code."""
    path, wf = workflow
    writers = {f"{path.name}/{n}" for n, j in jobs(wf)
               if "write" in j.get("permissions", {}).values()}  # fmt: skip
    assert writers == {j for j in WRITER_JOBS if j.startswith(f"{path.name}/")}
    for name, job in jobs(wf):
        if "write" not in job.get("permissions", {}).values():
            continue
        for step in job["steps"]:
            assert not step.get("uses", "").startswith("actions/checkout"), f"{path.name}/{name}"
            assert not PROJECT_CODE.search(step.get("run", "")), f"{path.name}/{name}: {step}"


def test_comment_jobs_are_skipped_for_forks_and_forks_still_get_the_report() -> None:
    guarded = set()
    for path in WORKFLOWS:
        wf = load(path)
        if "pull_request" not in triggers(wf):
            continue  # tag pushes, schedules: no fork's code can reach them
        for name, job in jobs(wf):
            comments = [s for s in job.get("steps", []) if "cml comment" in s.get("run", "")]
            # By what it can do, not by how its step is spelled: a job that may write to
            # pull requests is a comment job, whatever command it posts with.
            if not comments and job.get("permissions", {}).get("pull-requests") != "write":
                continue
            guarded.add(f"{path.name}/{name}")
            assert FORK_GUARD in job.get("if", ""), f"{path.name}/{name}: no fork guard"
            assert "!cancelled()" in job["if"], "a stale-lock failure still gets its comment"
            needs = job["needs"] if isinstance(job["needs"], str) else job["needs"][0]
            report = wf["jobs"][needs]
            runs = "\n".join(s.get("run", "") for s in report["steps"])
            assert '>> "$GITHUB_STEP_SUMMARY"' in runs, "the report is in the job summary"
            uploads = [s for s in report["steps"] if "upload-artifact" in s.get("uses", "")]
            assert uploads, "the report is kept as an artifact"
            notice = [s for s in report["steps"] if s.get("if") == "env.FROM_FORK == 'true'"]
            assert notice and "::notice" in notice[0]["run"]
            assert report["env"]["FROM_FORK"].replace(" ", "") == (
                "${{github.event.pull_request.head.repo.full_name!=github.repository}}"
            )
    assert guarded == COMMENT_JOBS, "the loop above checked what it should (not vacuously)"


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_every_action_is_pinned_to_a_commit_sha(path: Path) -> None:
    uses = [ln for ln in path.read_text().splitlines() if re.match(r"^\s*(-\s*)?uses:", ln)]
    for line in uses:
        if line.split("uses:")[1].strip().startswith("./"):
            continue  # a local action is the repository's own code
        assert PINNED.match(line), f"not pinned to a full SHA with '# vX.Y.Z': {line.strip()}"


def test_checkouts_do_not_persist_credentials(workflow: tuple[Path, dict[str, Any]]) -> None:
    path, wf = workflow
    checkouts = [s for s in all_steps(wf) if s.get("uses", "").startswith("actions/checkout@")]
    assert len(checkouts) == count_outside_comments(path, "actions/checkout@"), "all checked"
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False


def test_no_expressions_inside_scripts(workflow: tuple[Path, dict[str, Any]]) -> None:
    """`${{ github.event.* }}` pasted into a script is shell injection (a branch name, a title):
    values go through env and are quoted as "$VAR"."""
    _, wf = workflow
    for step in all_steps(wf):
        assert "${{" not in step.get("run", ""), step.get("name")


def test_cml_is_a_pinned_version_not_a_floating_action(
    workflow: tuple[Path, dict[str, Any]],
) -> None:
    path, wf = workflow
    for name, job in jobs(wf):
        runs = "\n".join(s.get("run", "") for s in job.get("steps", []))
        if "cml comment" in runs or f"{path.name}/{name}" in COMMENT_JOBS:
            assert re.fullmatch(r"\d+\.\d+\.\d+", job["env"]["CML_VERSION"]), name
            assert "releases/download/v$CML_VERSION/cml-linux-x64" in runs
            assert "sha256sum --check" in runs
        assert not any("setup-cml" in s.get("uses", "") for s in job.get("steps", []))


def test_pip_installs_are_pinned(workflow: tuple[Path, dict[str, Any]]) -> None:
    """Only the project's pinned files, the project itself, or `==` lines taken from them."""
    path, wf = workflow
    from_requirements = re.compile(r"\$\(grep -E '\^\S+==' requirements(-\w+)?\.txt\)")
    lines = [ln for s in all_steps(wf) for ln in s.get("run", "").splitlines()]
    installs = [ln for ln in lines if "pip install" in ln]
    assert len(installs) == count_outside_comments(path, "pip install"), "every one is checked"
    for line in installs:
        args = shlex.split(line.split("pip install", 1)[1])
        skip_next = False
        for arg in args:
            if skip_next:
                skip_next = False
            elif arg in ("-r", "--requirement", "-e", "--editable"):
                skip_next = True
            else:
                ok = arg.startswith("-") or "==" in arg or from_requirements.fullmatch(arg)
                assert ok, f"unpinned pip install argument {arg!r} in: {line.strip()}"


def test_report_step_builds_the_report_without_any_token(tmp_path: Path) -> None:
    """The fork path, run locally: cml.yaml's report step in a real git+DVC repo, with no
    token and no secret in the environment, writes the report, the job summary and the
    `built` output; the fork-notice step prints its notice."""
    from tests.report.test_report_notes import DVC_YAML, write_metrics

    repo = init_dvc_repo(tmp_path / "repo")
    (repo / "params.yaml").write_text("lr: 0.1\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    write_metrics(repo, ["a/1.png", "b/1.png"], [True, True])
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    write_metrics(repo, ["a/1.png", "b/1.png"], [True, False])

    wf = load(ROOT / ".github/workflows/cml.yaml")
    report_job = wf["jobs"]["report"]
    (build,) = [s for s in report_job["steps"] if s.get("id") == "report"]
    (notice,) = [s for s in report_job["steps"] if s.get("if") == "env.FROM_FORK == 'true'"]
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    keep = {k: v for k, v in os.environ.items() if not CREDENTIAL_WORDS.search(k)}
    (repo / "lock-check.txt").write_text("lock check: inputs differ\n  - stage train: …\n")
    env = {**keep, "BASE_REF": "main", "PR_NUMBER": "7", "MISMATCH": "true",
           "LOCK_FAILED": "true", "GITHUB_STEP_SUMMARY": str(summary),
           "GITHUB_OUTPUT": str(output), "FROM_FORK": "true"}  # fmt: skip
    env["PATH"] = f"{Path(os.sys.executable).parent}:{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "-e", "-c", build["run"]], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = (repo / "model-report/report.md").read_text()
    assert report.startswith("> [!CAUTION]")
    # check-lock's verdict, quoted through the escaping module (one code span a line)
    assert "> `lock check: inputs differ`" in report
    assert "## Model report: `PR #7` vs `origin/main`" in report
    # b/1.png broke: its picture is in the artifact, linked from the report; the summary,
    # which cannot show the artifact's files, says where it is instead.
    assert "![test images broken by this change](images/flips-broken.png)" in report
    assert (repo / "model-report/images/flips-broken.png").is_file()
    assert not (repo / "model-report/body.md").exists()
    shown = summary.read_text()
    assert "](images/" not in shown
    assert (
        "_(test images broken by this change: `flips-broken.png` in this run's model-report "
        "artifact)_" in shown
    )
    assert shown.replace(report.split("### In pictures")[0], "") != shown, "same text above"
    assert output.read_text() == "built=true\n"
    fork = subprocess.run(["bash", "-e", "-c", notice["run"]], capture_output=True, text=True)
    assert fork.stdout.startswith("::notice title=Report not posted as a comment::")


def evaluate_if(expression: str, context: dict[str, str]) -> bool:
    """A GitHub `if:` made of `!cancelled()`, `==`, `!=` and `&&` over the given context.

    Deliberately tiny: enough for the comment jobs' conditions; anything else in the
    expression fails the test rather than being guessed at.
    """
    expr = " ".join(expression.split())
    for name, value in sorted(context.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, repr(value))
    expr = expr.replace("!cancelled()", "True").replace("&&", " and ")
    assert re.fullmatch(r"[\w\s'/.\-=!]+", expr), f"unsupported expression: {expr}"
    return bool(eval(expr, {"__builtins__": {}}, {"True": True}))  # checked just above


@pytest.mark.parametrize(("head_repo", "built", "posts"), [
    ("owner/imgclf", "true", True),     # a branch of this repository: the comment is posted
    ("fork/imgclf", "true", False),     # a fork: skipped (the report job printed a notice)
    ("owner/imgclf", "", False),        # no report was built (repro failed): nothing to post
])  # fmt: skip
def test_comment_job_runs_only_for_same_repo_prs_with_a_report(
    head_repo: str, built: str, posts: bool
) -> None:
    for name in ("cml.yaml", "data.yaml"):
        wf = load(ROOT / ".github/workflows" / name)
        job = wf["jobs"]["comment"]
        needs = job["needs"][0]  # [report job, images job]: the report's output decides
        assert job["needs"] == [needs, "images"]
        assert wf["jobs"]["images"]["if"] == job["if"], "pictures published only with a comment"
        context = {
            "github.event.pull_request.head.repo.full_name": head_repo,
            "github.repository": "owner/imgclf",
            f"needs.{needs}.outputs.built": built,
        }
        assert evaluate_if(job["if"], context) is posts, (name, head_repo, built)


# --------------------------------------------------------------------------- pictures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURE_WORKFLOWS = {  # workflow → (artifact folder, report file, the names its report makes)
    "cml.yaml": ("model-report", "model-report/report.md", "MODEL_IMAGES"),
    "data.yaml": ("data-report", "data-report/data-report.md", "DATA_IMAGES"),
}
SHA = "0123456789abcdef0123456789abcdef01234567"


def picture_steps(name: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(images job, its pick step, the comment job's link step) of one workflow."""
    wf = load(ROOT / ".github/workflows" / name)
    images = wf["jobs"]["images"]
    (pick,) = [s for s in images["steps"] if s.get("id") == "pick"]
    (link,) = [s for s in wf["jobs"]["comment"]["steps"] if "IMAGES_COMMIT" in s.get("env", {})]
    return images, pick, link


def run_step(step: dict[str, Any], job: dict[str, Any], cwd: Path, **env: str) -> tuple:
    """A step's script under bash -e with the job's and step's env (no token): (proc, outputs)."""
    output = cwd / "github-output"
    output.write_text("")
    keep = {k: v for k, v in os.environ.items() if not CREDENTIAL_WORDS.search(k)}
    full = {**keep, **job.get("env", {}), **step.get("env", {}), "GITHUB_OUTPUT": str(output),
            "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "owner/imgclf",
            **env}  # fmt: skip
    proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return proc, outputs


@pytest.mark.parametrize("name", sorted(PICTURE_WORKFLOWS))
def test_pictures_are_published_inside_the_repository_only(name: str) -> None:
    """One job may write contents, to one branch, with the report's file names only; no
    CML upload anywhere (CML's --publish sends images to a public asset host)."""
    from imgclf.report import pictures

    wf = load(ROOT / ".github/workflows" / name)
    folder, _, names = PICTURE_WORKFLOWS[name]
    images, _, link = picture_steps(name)
    assert images["permissions"] == {"contents": "write"}
    assert images["needs"] in ("report", "dataset-report")
    assert FORK_GUARD in images["if"], "fork PRs publish nothing (their pictures: artifact)"
    assert not any("checkout" in s.get("uses", "") for s in images["steps"])
    allowed = " ".join(getattr(pictures, names))
    assert images["env"]["ALLOWED_IMAGES"] == allowed, "the allow-list is what the report makes"
    assert link["env"]["ALLOWED_IMAGES"] == allowed
    assert images["env"]["IMAGES_BRANCH"] == "report-images"
    (publish,) = [s for s in images["steps"] if s.get("id") == "publish"]
    script = publish["run"]
    assert set(publish["env"]) == {"GH_TOKEN", "PR_NUMBER", "HEAD_SHA", "FILES"}
    assert publish["env"]["FILES"] == "${{ steps.pick.outputs.files }}", "only picked files"
    # Every API call the token makes, and so every ref it can move.
    calls = re.findall(r'gh api (?:-X (\w+) )?"\$api/([^"]+)"', script)
    endpoints = set(calls)
    assert endpoints == {
        ("", "git/blobs"), ("", "git/trees"), ("", "git/commits"),
        ("", "git/ref/heads/$IMAGES_BRANCH"), ("", "git/commits/$parent"),
        ("PATCH", "git/refs/heads/$IMAGES_BRANCH"), ("POST", "git/refs"),
    }, endpoints  # fmt: skip
    assert script.count("gh api") == len(calls), "every call is one of those"
    assert '-f ref="refs/heads/$IMAGES_BRANCH"' in script, "a new ref is only that branch"
    assert "-F force=false" in script, "never a forced update"
    assert "parents: []" in script, "created as an orphan: no history shared with the code"
    assert 'folder="pr-$PR_NUMBER/$HEAD_SHA"' in script
    assert '[[ "$PR_NUMBER" =~ ^[0-9]+$ && "$HEAD_SHA" =~ ^[0-9a-f]{40}$ ]]' in script
    assert images["outputs"]["commit"] == "${{ steps.publish.outputs.commit }}"
    # The comment: --no-publish, no opt-in variable, linked by commit SHA.
    text = (ROOT / ".github/workflows" / name).read_text()
    assert "CML_PUBLISH_IMAGES" not in text and "publish-url" not in text
    (post,) = [s for s in wf["jobs"]["comment"]["steps"] if "cml comment" in s.get("run", "")]
    assert post["run"].rstrip().endswith("--no-publish")
    runs = "\n".join(s.get("run", "") for _, job in jobs(wf) for s in job.get("steps", []))
    assert "--publish" not in runs.replace("--no-publish", "")
    assert "/blob/$IMAGES_COMMIT/$IMAGES_FOLDER/$name?raw=true" in link["run"]
    assert f"REPORT: {PICTURE_WORKFLOWS[name][1]}" in text
    assert folder in images["steps"][0]["with"]["path"]


def write_png(path: Path, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_SIGNATURE + b"\0" * size)


@pytest.mark.parametrize("name", sorted(PICTURE_WORKFLOWS))
def test_pick_step_publishes_only_allow_listed_pngs_the_report_links(
    name: str, tmp_path: Path
) -> None:
    from imgclf.report import pictures

    folder, report, names = PICTURE_WORKFLOWS[name]
    first, second = getattr(pictures, names)[:2]
    images_dir = tmp_path / folder / "images"
    write_png(images_dir / first)  # allowed, linked: published
    write_png(images_dir / second)  # allowed, but the report does not link it
    write_png(images_dir / "secrets.png")  # not on the allow-list
    write_png(images_dir / "big.png")
    (images_dir / "flips-broken.json").write_text("{}")  # a manifest: stays in the artifact
    (images_dir / "notes.txt").write_text("x")
    lines = [f"![a picture](images/{first})", "![big](images/big.png)",
             "![x](images/secrets.png)"]  # fmt: skip
    (tmp_path / report).write_text("\n".join(lines) + "\n")
    job, pick, _ = picture_steps(name)
    proc, out = run_step(pick, job, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out["files"] == first
    assert "::warning title=Files not published::" in proc.stdout
    assert "secrets.png" not in proc.stdout, "names from the artifact are not echoed"

    # A linked, allowed name that is not a PNG, or a link to it, or too big: not published.
    (images_dir / first).write_bytes(b"<svg onload=alert(1)>")
    assert run_step(pick, job, tmp_path)[1]["files"] == ""
    write_png(images_dir / first, size=10_000)
    assert run_step(pick, job, tmp_path, MAX_IMAGE_BYTES="5000")[1]["files"] == ""
    (images_dir / first).unlink()
    write_png(tmp_path / "elsewhere.png")
    (images_dir / first).symlink_to(tmp_path / "elsewhere.png")
    assert run_step(pick, job, tmp_path)[1]["files"] == ""


@pytest.mark.parametrize("name", sorted(PICTURE_WORKFLOWS))
def test_link_step_links_published_pictures_by_sha_and_nothing_else(
    name: str, tmp_path: Path
) -> None:
    from imgclf.report import pictures

    _, report, names = PICTURE_WORKFLOWS[name]
    first, second = getattr(pictures, names)[:2]
    body = ["## Report", "", f"![one](images/{first})", "", f"![two](images/{second})", "",
            "| `![x](images/secrets.png)` in a cell stays text |"]  # fmt: skip
    (tmp_path / report).parent.mkdir(parents=True)
    (tmp_path / report).write_text("\n".join(body) + "\n")
    job = load(ROOT / ".github/workflows" / name)["jobs"]["comment"]
    _, _, link = picture_steps(name)
    folder = f"pr-7/{SHA}"
    proc, _ = run_step(link, job, tmp_path, IMAGES_COMMIT=SHA[::-1], IMAGES_FOLDER=folder,
                       IMAGES_FILES=f"{first} secrets.png")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / report).read_text().splitlines()
    assert (
        out[2]
        == f"![one](https://github.com/owner/imgclf/blob/{SHA[::-1]}/{folder}/{first}?raw=true)"
    )
    assert out[4] == f"_(two: `{second}` in this run's {report.split('/')[0]} artifact)_"
    assert out[6] == body[6]

    # Publishing failed (no commit): every picture becomes text, the comment still posts.
    (tmp_path / report).write_text("\n".join(body) + "\n")
    proc, _ = run_step(link, job, tmp_path, IMAGES_COMMIT="", IMAGES_FOLDER="", IMAGES_FILES="")
    assert proc.returncode == 0, proc.stderr
    assert "](images/" not in "\n".join((tmp_path / report).read_text().splitlines()[:6])

    # An image line pointing anywhere else (a public host, a file): the step fails.
    for bad in ("![x](https://evil.example/a.png)", "![x](/etc/passwd)", "![x](../a.png)"):
        (tmp_path / report).write_text(f"{body[0]}\n{bad}\n")
        proc, _ = run_step(link, job, tmp_path, IMAGES_COMMIT="", IMAGES_FOLDER="",
                           IMAGES_FILES="")  # fmt: skip
        assert proc.returncode == 1 and "Unexpected image link" in proc.stdout, bad


def fake_gh(tmp_path: Path, branch_exists: bool) -> Path:
    """``gh`` on a PATH of its own: tests/workflows/fake_gh.py with a fresh state file."""
    import json
    import sys

    state = tmp_path / "gh-state.json"
    refs = {"refs/heads/report-images": "p" * 40} if branch_exists else {}
    state.write_text(json.dumps({"refs": refs, "calls": []}))
    script = tmp_path / "bin" / "gh"
    script.parent.mkdir()
    fake = Path(__file__).with_name("fake_gh.py")
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n')
    script.chmod(0o755)
    return state


@pytest.mark.parametrize("branch_exists", [False, True], ids=["first-use", "existing-branch"])
def test_publish_step_commits_the_picked_files_to_one_branch(
    tmp_path: Path, branch_exists: bool
) -> None:
    """cml.yaml's publish step against a stand-in for the GitHub API: blobs of the picked
    files only, a tree under pr-<N>/<head sha>/, an orphan commit (first use) or one on
    top of the branch, and only refs/heads/report-images moved, never forced."""
    import base64
    import json

    wf = load(ROOT / ".github/workflows/cml.yaml")
    job = wf["jobs"]["images"]
    (publish,) = [s for s in job["steps"] if s.get("id") == "publish"]
    write_png(tmp_path / "model-report/images/curves.png")
    write_png(tmp_path / "model-report/images/flips-broken.png", size=3)
    write_png(tmp_path / "model-report/images/other.png")
    state = fake_gh(tmp_path, branch_exists)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "PR_NUMBER": "7",
           "FAKE_GH_STATE": str(state),
           "HEAD_SHA": SHA, "FILES": "curves.png flips-broken.png"}  # fmt: skip
    proc, out = run_step(publish, job, tmp_path, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(state.read_text())
    commit = data["refs"]["refs/heads/report-images"]
    assert set(data["refs"]) == {"refs/heads/report-images"}, "no other ref was touched"
    assert out == {"commit": commit, "folder": f"pr-7/{SHA}",
                   "files": "curves.png flips-broken.png"}  # fmt: skip
    blobs = [c["body"] for c in data["calls"] if c["endpoint"].endswith("git/blobs")]
    assert [base64.b64decode(b["content"]) for b in blobs] == [
        (tmp_path / "model-report/images" / n).read_bytes()
        for n in ("curves.png", "flips-broken.png")
    ]
    (tree,) = [c["body"] for c in data["calls"] if c["endpoint"].endswith("git/trees")]
    assert [e["path"] for e in tree["tree"]] == [f"pr-7/{SHA}/curves.png",
                                                  f"pr-7/{SHA}/flips-broken.png"]  # fmt: skip
    (made,) = [c["body"] for c in data["calls"] if c["endpoint"].endswith("git/commits")]
    writes = [c for c in data["calls"] if c["method"] in ("PATCH", "POST")
              and "git/ref" in c["endpoint"]]  # fmt: skip
    (write,) = writes
    if branch_exists:
        assert made["parents"] == ["p" * 40] and tree["base_tree"] == "t" * 40
        assert write["method"] == "PATCH" and write["fields"]["force"] == "false"
    else:
        assert made["parents"] == [] and "base_tree" not in tree
        assert write["fields"]["ref"] == "refs/heads/report-images"

    # A PR number or SHA that is not one: nothing is called at all.
    state.write_text(json.dumps({"refs": {}, "calls": []}))
    proc, _ = run_step(publish, job, tmp_path, **{**env, "HEAD_SHA": "main; rm -rf /"})
    assert proc.returncode != 0
    assert json.loads(state.read_text())["calls"] == []


# The tests whose system tools ci.yaml installs, and the tool each one needs.
TOOL_TESTS = {"tests/pipeline/test_cross_cpu.py": "qemu-x86_64",
              "tests/api/test_page_browser.py": "chromedriver"}  # fmt: skip


def test_ci_installs_the_tools_the_tests_would_otherwise_skip_without() -> None:
    """Issue 25: the cross-CPU and browser tests skip where their tool is missing, so CI
    installs qemu-user and checks Chrome + its driver before `make test`, keeps GitHub's
    CI=true (under which a missing tool fails those tests), and the tests honour it."""
    wf = load(ROOT / ".github/workflows/ci.yaml")
    (job,) = [j for _, j in jobs(wf) if any(s.get("run", "").strip() == "make test"
                                           for s in j["steps"])]  # fmt: skip
    scripts = [s.get("run", "") for s in job["steps"]]
    before = "\n".join(scripts[: [r.strip() for r in scripts].index("make test")])
    system_deps = re.search(r"^\s*sudo\b.*\bmake system-deps\b", before, re.M)
    apt = re.search(r"^\s*sudo\b.*apt-get install\b.*\bqemu-user\b", before, re.M)
    assert system_deps or apt, "qemu-user is installed before make test"
    assert re.search(r"^\s*qemu-x86_64 -cpu help \| grep -q EPYC-Milan$", before, re.M)
    env = {**(wf.get("env") or {}), **(job.get("env") or {})}
    for var, default in (("IMGCLF_CHROMIUM", "/usr/bin/chromium"),
                         ("IMGCLF_CHROMEDRIVER", "/usr/bin/chromedriver")):  # fmt: skip
        checked = f'test -x "${var}"' in before and var in env
        installed = system_deps or re.search(r"apt-get install\b.*\bchromium-driver\b", before)
        assert checked or (installed and var not in env), f"{var} ({default}) before make test"
    for scope in (wf, job, *job["steps"]):
        assert "CI" not in (scope.get("env") or {}), "GitHub's CI=true must reach the tests"
    assert not re.search(r"\bCI=", "\n".join(scripts)), "GitHub's CI=true must reach the tests"
    for rel, tool in TOOL_TESTS.items():
        source = (ROOT / rel).read_text()
        assert "missing_tool(" in source and tool in source, rel
        assert "pytest.skip(" not in source and "importorskip" not in source, rel
