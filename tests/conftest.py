"""Fixtures shared by every test group: real repo copies, real images, real dvc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Shrinks the *real* params.yaml to a quick CPU run instead of inventing a second config.
SHRINK: dict[str, Any] = {"epochs": 2}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (nested sections update key by key)."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if nested else value
    return out


def tool_env(repo: Path) -> dict[str, str]:
    """Environment for subprocesses: the venv's tools first, the copy's own ``src``."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo / "src")
    env["DVC_NO_ANALYTICS"] = "1"
    env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a real command in ``cwd``; on unexpected failure show its output."""
    proc = subprocess.run(
        args, cwd=cwd, env=tool_env(cwd), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{output}")
    return proc


def copy_repo(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """A temp git repo holding the tracked files of this checkout (plus uncommitted edits).

    ``params`` are deep-merged into the real params.yaml, then everything is
    committed so ``dvc exp run`` has a baseline.
    """
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if params:
        real = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(merge(real, params), sort_keys=False))
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"],
    ):
        run(cmd, dest)
    return dest


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    """Make as many shrunk repo copies as a test needs."""
    counter = iter(range(100))

    def make(params: dict[str, Any] | None = None) -> Path:
        dest = tmp_path / f"repo{next(counter)}"
        dest.mkdir()
        return copy_repo(dest, merge(SHRINK, params or {}))

    return make
