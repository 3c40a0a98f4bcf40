"""Helpers every test group shares: real subprocesses, real git, temp copies of the repo.

One place for them, so the pipeline, API, report and remote tests all copy the
repository, shrink params and call tools the same way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
# Shrinks the *real* params.yaml to a quick CPU run instead of inventing a second config.
SHRINK: dict[str, Any] = {"epochs": 2}


def tool_env(repo: Path, **extra: str) -> dict[str, str]:
    """The venv's tools first, the copy's own ``src``, DVC quiet, gcsfs without its probe."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # The copy's own code; for repos without one (hand-made fixtures), this checkout's.
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), str(ROOT / "src")])
    env["DVC_NO_ANALYTICS"] = "1"
    env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    env["NO_GCE_CHECK"] = "true"
    # No real credentials, no emulator from the caller, no proxy: only loopback traffic.
    for key in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "HTTPS_PROXY",
                "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):  # fmt: skip
        env.pop(key, None)
    env.update(extra)
    return env


def run(
    args: list[str],
    cwd: Path,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a real command; on unexpected failure show its output."""
    proc = subprocess.run(
        args, cwd=cwd, env=env or tool_env(cwd), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{tail}")
    return proc


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """git with a throwaway identity (CI machines have none)."""
    return run(["git", *GIT_ID, *args], repo, check=check)


def imgclf(repo: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """The project's CLI, from the copy's own source."""
    return run([sys.executable, "-m", "imgclf.cli", *args], repo, check=check,
               env=tool_env(repo, **env))  # fmt: skip


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (nested sections update key by key)."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else value
    return out


def copy_repo(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """A temp git repo (branch main) with this checkout's files (uncommitted edits too).

    ``params`` are deep-merged into the real params.yaml, then everything is
    committed so ``dvc exp run`` and ``imgclf report`` have a baseline.
    """
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    dest.mkdir(parents=True, exist_ok=True)
    for rel in files:
        src = ROOT / rel
        if src.is_file() and not src.is_symlink() and not rel.startswith("tests/"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if params:
        real = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(merge(real, params), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "baseline")
    return dest


def free_port() -> int:
    """A loopback port nothing listens on (for a server, the emulator, or a 'down' remote)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
