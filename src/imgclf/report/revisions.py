"""Files and diffs at any git revision: what the PR reports compare.

Metrics are git-tracked, so a base revision's files come from ``git show`` (no remote
needed in CI); a DVC-cached file at that revision comes through DVC's API. DVC's own
``metrics diff`` / ``params diff`` give the changed values. Shared by the model report
(:mod:`imgclf.report.pr_report`) and the dataset report (:mod:`imgclf.report.data_changes`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgclf.jsonio import expand
from imgclf.pipeline.git import commit_of, git_run


class ReportError(RuntimeError):
    """A problem the user must fix (unknown revision, no metrics in the workspace)."""


def resolve_revision(root: Path, rev: str) -> str:
    """The commit a revision names; a clear error for shallow clones and typos."""
    commit = commit_of(root, rev)
    if commit is None:
        raise ReportError(
            f"unknown git revision {rev!r}: fetch it first (git fetch origin {rev.split('/')[-1]};"
            " in GitHub Actions checkout with fetch-depth: 0)"
        )
    return commit


def read_at(root: Path, path: str, rev: str | None) -> str | None:
    """A file's text in the workspace (``rev=None``) or at a git revision; None if absent.

    Git first (metrics are git-tracked, so no remote is needed in CI); if the file is a
    DVC-cached output at that revision, DVC's API fetches it from the cache or remote.
    """
    if rev is None:
        file = root / path
        return file.read_text() if file.is_file() else None
    proc = git_run(root, "show", f"{rev}:{path}")
    if proc.returncode == 0:
        return proc.stdout
    try:
        import dvc.api

        return dvc.api.read(path, repo=str(root), rev=rev)
    except Exception:  # noqa: BLE001 - any DVC failure means "not available at that revision"
        return None


def json_at(root: Path, path: str, rev: str | None) -> dict[str, Any] | None:
    """A JSON file at a revision, flat (headline and ``detail`` merged); None if unusable."""
    text = read_at(root, path, rev)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return expand(data) if isinstance(data, dict) else None


def workspace_json(root: Path, path: str, target: str = "") -> dict[str, Any]:
    """A metrics file of the workspace, or a clear error saying what to run to get it."""
    data = json_at(root, path, None)
    if data is None:
        command = f"dvc repro {target}".strip()
        raise ReportError(f"{path} is missing in the workspace: run `{command}` first")
    return data


def _strip(diff: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """DVC's diff keyed by repo-relative file; DVC prints paths relative to the cwd."""
    out: dict[str, dict[str, Any]] = {}
    for path, entries in diff.get("diff", {}).items():
        out[Path(path).as_posix().removeprefix("./")] = entries
    return out


def dvc_diffs(root: Path, base: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``dvc metrics diff <base> --all`` and ``dvc params diff <base>``, via DVC's API."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        metrics = repo.metrics.diff(a_rev=base, all=True)
        params = repo.params.diff(a_rev=base)
    return _strip(metrics), _strip(params)


def rows_by(data: dict[str, Any], key: str, name: str) -> dict[str, dict[str, Any]]:
    """A detail table stored as a list of rows (DVC does not tabulate lists) as a mapping.

    Revisions written before issue 10 stored a mapping: it is returned as it is, so a
    report against an old base still compares class by class.
    """
    rows = data.get(key) or {}
    if isinstance(rows, dict):
        return rows
    return {str(r.get(name)): r for r in rows if isinstance(r, dict)}


def image_sizes(data: dict[str, Any]) -> dict[str, Any]:
    """``{min_width: …, median_height: …}`` from either layout of ``image_size``."""
    sizes = data.get("image_size") or {}
    if isinstance(sizes, dict):
        return sizes
    return {f"{s}_{r.get('side')}": r.get(s) for r in sizes for s in ("min", "median", "max")}
