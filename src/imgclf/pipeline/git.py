"""Git at a revision: the few read-only questions the lock check, the reports and the
dataset check ask of the repository, answered in one place.

Every helper runs ``git`` in ``root`` and never raises for "not there": a missing file
at a revision is ``None``, a failing ``git`` (not a repository, unknown revision) is
``None`` or an empty answer, so each caller decides what that means for its user.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``git ARGS`` in ``root``, text output, never raising on a non-zero exit."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def git_bytes(root: Path, ref: str, path: str) -> bytes | None:
    """A file's exact bytes at ``ref`` (``git show ref:path``); None if absent."""
    proc = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True, check=False
    )
    return proc.stdout if proc.returncode == 0 else None


def git_text(root: Path, ref: str, path: str) -> str | None:
    """A file's text at ``ref`` (undecodable bytes replaced); None if absent."""
    data = git_bytes(root, ref, path)
    return None if data is None else data.decode("utf-8", errors="replace")


def git_files(root: Path, ref: str, folder: str) -> list[str] | None:
    """Paths of the files under ``folder`` at ``ref``; None when git fails."""
    proc = git_run(root, "ls-tree", "-r", "--name-only", ref, "--", folder)
    return proc.stdout.splitlines() if proc.returncode == 0 else None


def commit_of(root: Path, rev: str) -> str | None:
    """The commit a revision names; None for a typo or a revision a shallow clone lacks."""
    proc = git_run(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_lists(root: Path, *args: str) -> bool | None:
    """True if ``git ls-files ARGS`` lists something; None when git cannot tell."""
    try:
        proc = git_run(root, "ls-files", *args)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    return bool(proc.stdout.strip())
