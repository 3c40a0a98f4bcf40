"""An object changed in the bucket is refused on pull: the committed `verify = true` at work.

The committed ``.dvc/config`` is used as is (its ``gcs`` remote, ``verify = true``); only
the URL and endpoint are pointed at the emulator through ``.dvc/config.local``. After a
push, the stored object is overwritten with other bytes — what an attacker with write
access to the bucket, or a corrupted upload, would leave — and a fresh pull must not
check it out. The same pull with ``verify`` turned off does check the tampered bytes out,
which is what the setting protects against.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, git, imgclf, init_dvc_repo, run, tool_env

REAL = b"the model that was evaluated\n"
EVIL = b"a model someone swapped in\n"


def repo_on_emulator(tmp_path: Path, emulator: str, prefix: str) -> Path:
    """git + DVC repo with the committed .dvc/config, `gcs` pointed at the emulator."""
    repo = init_dvc_repo(tmp_path / "repo")
    shutil.copy2(ROOT / ".dvc/config", repo / ".dvc/config")
    for option, value in (("url", f"gs://b/{prefix}"), ("endpointurl", emulator),
                          ("allow_anonymous_login", "true")):  # fmt: skip
        run(["dvc", "remote", "modify", "--local", "gcs", option, value], repo)
    (repo / "models").mkdir()
    (repo / "models/model.onnx").write_bytes(REAL)
    run(["dvc", "add", "-q", "models/model.onnx"], repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "model")
    imgclf(repo, "push")
    return repo


def overwrite_in_bucket(repo: Path, emulator: str, prefix: str) -> None:
    """Replace every stored object under the prefix with other bytes (same names).

    In a subprocess with the tools' environment: gcsfs reads its probe switch
    (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false) at import, else each call waits 60 s.
    """
    script = (
        "import gcsfs, sys\n"
        "fs = gcsfs.GCSFileSystem(endpoint_url=sys.argv[1], token='anon')\n"
        "objects = fs.find(sys.argv[2])\n"
        "assert objects, 'the push stored nothing'\n"
        "for obj in objects:\n"
        "    fs.pipe(obj, sys.argv[3].encode())\n"
    )
    args = [sys.executable, "-c", script, emulator, f"b/{prefix}", EVIL.decode()]
    subprocess.run(args, cwd=repo, env=tool_env(repo), check=True, timeout=120)


def fresh_pull(repo: Path) -> object:
    shutil.rmtree(repo / ".dvc/cache")
    (repo / "models/model.onnx").unlink()
    return imgclf(repo, "pull", check=False)


def test_committed_config_verifies_downloads() -> None:
    text = (ROOT / ".dvc/config").read_text()
    section = text.split("['remote \"gcs\"']", 1)[1]
    assert "verify = true" in section


def test_tampered_object_is_not_checked_out(tmp_path: Path, emulator: str) -> None:
    repo = repo_on_emulator(tmp_path, emulator, "verify-on")
    overwrite_in_bucket(repo, emulator, "verify-on")
    proc = fresh_pull(repo)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "dvc pull could not check out some outputs" in proc.stderr
    assert "does not hash to dvc.lock" in proc.stderr
    assert "do not trust the remote's copy" in proc.stderr
    assert not (repo / "models/model.onnx").exists(), "the tampered bytes reached the workspace"


def test_without_verify_the_tampered_object_would_be_used(tmp_path: Path, emulator: str) -> None:
    """The control: what `verify = true` prevents."""
    repo = repo_on_emulator(tmp_path, emulator, "verify-off")
    run(["dvc", "remote", "modify", "--local", "gcs", "verify", "false"], repo)
    overwrite_in_bucket(repo, emulator, "verify-off")
    proc = fresh_pull(repo)
    if proc.returncode != 0:
        pytest.fail(f"pull without verify failed: {proc.stderr}")
    assert (repo / "models/model.onnx").read_bytes() == EVIL
