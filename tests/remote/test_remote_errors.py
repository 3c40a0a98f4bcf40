"""A remote that is down, a missing bucket, missing credentials: each says so, and what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imgclf.pipeline.remote import RemoteInfo, classify
from tests.support import ROOT, free_port, git, imgclf, init_dvc_repo, run


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """git + dvc repo with the committed .dvc/config and one small tracked file."""
    repo = init_dvc_repo(tmp_path / "repo")
    shutil.copy2(ROOT / ".dvc/config", repo / ".dvc/config")
    (repo / "data.txt").write_text("hello\n")
    run(["dvc", "add", "-q", "data.txt"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo


def local_remote(repo: Path, url: str, endpoint: str, anonymous: bool = True) -> None:
    """Point DVC at a test remote via .dvc/config.local, leaving the committed config alone."""
    run(["dvc", "remote", "add", "--local", "-d", "storage", url], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", endpoint], repo)
    if anonymous:
        anon = ["allow_anonymous_login", "true"]
        run(["dvc", "remote", "modify", "--local", "storage", *anon], repo)


def no_login(tmp_path: Path) -> dict[str, str]:
    """An environment with no gcloud login to fall back on."""
    return {"HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}


def test_committed_placeholder_bucket_is_named(tiny: Path, tmp_path: Path) -> None:
    proc = imgclf(tiny, "remote-check", check=False, **no_login(tmp_path))
    assert proc.returncode == 3
    assert "placeholder bucket (gs://imgclf-CHANGE-ME/dvcstore)" in proc.stderr
    assert "dvc remote modify gcs url gs://<your-bucket>/dvcstore" in proc.stderr


def test_remote_down(tiny: Path) -> None:
    local_remote(tiny, "gs://b/dvcstore", f"http://127.0.0.1:{free_port()}")
    for command in ("remote-check", "push", "pull"):
        proc = imgclf(tiny, command, check=False)
        assert proc.returncode == 3, proc.stderr
        assert "remote is down or unreachable: cannot connect to 127.0.0.1" in proc.stderr
        assert "fix: check the network (or that the storage emulator is running)" in proc.stderr


def test_missing_bucket(tiny: Path, emulator: str) -> None:
    local_remote(tiny, "gs://nosuch/dvcstore", emulator)
    proc = imgclf(tiny, "push", check=False)
    assert proc.returncode == 3
    assert "missing bucket: gs://nosuch does not exist" in proc.stderr
    assert "gcloud storage buckets create gs://nosuch" in proc.stderr
    # DVC's own message is the cryptic one the wrapper exists for; it is still classified.
    raw = run(["dvc", "push"], tiny, check=False)
    assert raw.returncode != 0
    problem = classify(raw.stdout + raw.stderr)
    assert problem is not None and problem.kind == "missing-bucket", raw.stderr


def test_missing_credentials(tiny: Path, emulator: str, tmp_path: Path) -> None:
    local_remote(tiny, "gs://b/dvcstore", emulator, anonymous=False)
    proc = imgclf(tiny, "pull", check=False, **no_login(tmp_path))
    assert proc.returncode == 3
    assert "missing credentials for gs://b/dvcstore" in proc.stderr
    assert "GOOGLE_APPLICATION_CREDENTIALS" in proc.stderr
    missing = str(tmp_path / "nope.json")
    proc = imgclf(
        tiny, "push", check=False, GOOGLE_APPLICATION_CREDENTIALS=missing, **no_login(tmp_path)
    )
    assert proc.returncode == 3
    expected = f"GOOGLE_APPLICATION_CREDENTIALS points to {missing}, which does not exist"
    assert expected in proc.stderr


def test_working_remote_is_reported_ok(tiny: Path, emulator: str) -> None:
    local_remote(tiny, "gs://b/dvcstore", emulator)
    out = imgclf(tiny, "remote-check").stdout
    assert "remote 'storage' (gs://b/dvcstore)" in out and "OK" in out
    assert git(tiny, "status", "--porcelain").stdout == "", "only .dvc/config.local changed"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("ERROR: unexpected error - b/my-bucket/o", "missing-bucket"),
        ("Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed]", "unreachable"),
        ("DefaultCredentialsError: Could not automatically determine credentials", "credentials"),
        ("401 Anonymous caller does not have storage.objects.list access", "credentials"),
        ("403 sa@x.iam does not have storage.objects.create access", "permission"),
        ("ERROR: failed to push data to the cloud - 2 files failed to upload", None),
    ],
)
def test_classify_dvc_errors(text: str, kind: str | None) -> None:
    info = RemoteInfo("gcs", "gs://my-bucket/dvcstore", {})
    problem = classify(text, info)
    assert (problem.kind if problem else None) == kind
