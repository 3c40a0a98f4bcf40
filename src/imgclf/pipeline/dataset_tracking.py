"""Is ``data.dataset`` something a fresh copy of the repository will have?

Why (issue 10): a folder copied into ``data/raw/`` works with ``dvc repro`` in the
workspace, but queued experiments (``dvc exp run --queue``) run in a temporary copy
that holds only git- and DVC-tracked files, and CI runs in a clone: both then fail in
``prepare`` with DVC's ``[Errno 2] No such file or directory: …/.dvc/tmp/exps/…``.
``params_check`` asks this module first and says what to run instead.

A dataset counts as tracked when a fresh copy can rebuild it: a ``.dvc`` file covers it
(``dvc add``), a stage of ``dvc.yaml`` outputs it (the built-in digits), or git tracks
files in it. Plain file reads and one ``git ls-files``: no DVC import (~1 s) here.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from imgclf.errors import PrepareError
from imgclf.pipeline.git import git_lists


class UntrackedDatasetError(PrepareError):
    """``data.dataset`` (or ``model.weights``) would be missing in a queued run or a clone."""


def _covers(out: str, path: PurePosixPath) -> bool:
    out_path = PurePosixPath(out.rstrip("/"))
    return out_path == path or out_path in path.parents


def stage_outs(dvc_yaml: Path) -> list[str]:
    """Every ``outs`` path of every stage (interpolated ``${…}`` paths are skipped)."""
    if not dvc_yaml.is_file():
        return []
    stages: dict[str, Any] = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    paths = []
    for stage in stages.values():
        for out in (stage or {}).get("outs") or []:
            name = out if isinstance(out, str) else next(iter(out), "")
            if name and "${" not in name:
                paths.append(name)
    return paths


def dvc_file_for(root: Path, path: PurePosixPath) -> Path | None:
    """The ``<dir>.dvc`` file (from ``dvc add``) that tracks ``path`` or a parent of it."""
    for candidate in [path, *path.parents][:-1]:  # [:-1]: not the repository root itself
        dvc_file = root / candidate.parent / f"{candidate.name}.dvc"
        if not dvc_file.is_file():
            continue
        try:
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
        except yaml.YAMLError:
            continue
        if any(str(o.get("path", "")).rstrip("/") == candidate.name for o in outs):
            return dvc_file
    return None


def check_dataset_tracked(
    dataset: str, root: Path = Path(), key: str = "data.dataset"
) -> str | None:
    """Raise :class:`UntrackedDatasetError` if a fresh copy would lack ``dataset``.

    ``key`` names the param in the message: the same holds for ``model.weights``.

    Returns a note (or None) for the softer case of a ``.dvc`` file that git does not
    know yet (DVC's ``core.autostage`` normally stages it): the workspace works, a
    clone would not.
    Outside a DVC repository, or for a path outside the repository, it does nothing:
    then there is no queue or clone whose contents we could reason about.
    """
    root = root.resolve()
    if not (root / ".dvc").is_dir():
        return None
    raw = Path(dataset)
    absolute = raw if raw.is_absolute() else root / raw
    try:
        rel = PurePosixPath(absolute.resolve().relative_to(root).as_posix())
    except ValueError:
        return None
    if any(_covers(out, rel) for out in stage_outs(root / "dvc.yaml")):
        return None
    dvc_file = dvc_file_for(root, rel)
    if dvc_file is not None:
        shown = dvc_file.relative_to(root).as_posix()
        if git_lists(root, "--", shown) is False:
            return (
                f"note: {shown} is not in git yet: `git add {shown}` and commit it, so that "
                "queued experiments, CI and other clones can `dvc pull` the dataset"
            )
        return None
    if git_lists(root, "--", str(rel)):
        return None
    missing = "" if absolute.is_dir() else " does not exist here and"
    raise UntrackedDatasetError(
        f"{key} '{rel}'{missing} is neither tracked by DVC (`dvc add`) nor the output "
        "of a stage: `dvc repro` may work in this workspace, but queued experiments "
        "(`dvc exp run --queue`, which run in a temporary copy) and CI will not have it. "
        f"Run `dvc add {rel}`, then commit the .dvc file: "
        f"`git add {rel}.dvc {rel.parent}/.gitignore && git commit -m 'Track {rel.name}'`."
    )
