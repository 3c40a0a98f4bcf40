"""Helpers every test group shares: real subprocesses, real git, temp copies of the repo.

One place for them, so the pipeline, API, report and remote tests all copy the
repository, shrink params and call tools the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
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


def in_ci() -> bool:
    """True where ``CI`` says so (GitHub Actions sets ``CI=true``; docs/testing.md)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing_tool(reason: str) -> NoReturn:
    """A system tool a test needs is not here: skip locally, **fail** under ``CI=true``.

    CI installs every tool (``.github/workflows/ci.yaml``), so there a missing one is a
    broken runner, not a reason to report green without running the test.
    """
    if in_ci():
        pytest.fail(f"CI=true and {reason} (CI must install it: docs/testing.md)", pytrace=False)
    pytest.skip(reason)


def holds_within(check: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes; whether it held (for asserts
    that add their own message, where :func:`wait_until` fails with a fixed one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               every: float = 0.1) -> None:  # fmt: skip
    """Poll an observable ``condition`` until it holds; fail saying ``what`` at the deadline.

    The replacement for ``sleep(n)`` as synchronisation: on 2 shared cores any fixed
    sleep is either too short (flaky) or too long (slow).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:.0f} s")
        time.sleep(every)


def http_ok(url: str, timeout: float = 2) -> bool:
    """``GET url`` answers 200 (a refused or reset connection is just 'not yet')."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.TransportError:
        return False


def init_dvc_repo(repo: Path) -> Path:
    """An empty git repo (branch main) with ``dvc init`` done: the hand-made fixtures' base."""
    repo.mkdir(parents=True, exist_ok=True)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["dvc", "init", "-q"], repo)
    return repo


def reproduce(dest: Path) -> Path:
    """A shrunk copy of the checkout after a real ``dvc repro``, its outputs committed on main.

    Built once per session (the ``reproduced_repo`` fixture and the API tests' model);
    tests that change a repo work in a :func:`clone_of` it.
    """
    copy_repo(dest, SHRINK)
    run(["dvc", "repro", "--quiet"], dest)
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "shrunk dvc repro")
    return dest


def clone_of(repo: Path, dest: Path) -> Path:
    """A private copy of a repo — git history, DVC cache, workspace — for a test to change.

    DVC's state database (``.dvc/tmp``) holds absolute paths; the clone rebuilds its own.
    """

    def state(folder: str, names: list[str]) -> set[str]:
        return {"tmp"} & set(names) if Path(folder).name == ".dvc" else set()

    shutil.copytree(repo, dest, symlinks=True, ignore=state)
    return dest


@contextlib.contextmanager
def gcs_emulator() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of an in-memory gcp-storage-emulator holding bucket ``b``.

    The one emulator of the suite (the remote tests and the fleet's shipping use it): real
    gs:// traffic over loopback, stopped on exit. Skips when it is not installed.
    """
    server_mod = pytest.importorskip(
        "gcp_storage_emulator.server", reason="pip install -r requirements-dev.txt"
    )
    port = free_port()
    server = server_mod.create_server("127.0.0.1", port, in_memory=True, default_bucket="b")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
