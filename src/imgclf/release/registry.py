"""The model registry: versions and stages as git tags in GTO's format, read and written.

Why git tags: a version is a commit (its ``dvc.lock`` names the exact model), a stage is
a tag on that commit, so the registry needs no server and DVC Studio reads the same tags.
The artifact's name comes from ``dvc.yaml``'s ``artifacts:`` section, so DVC
(``dvc artifacts get``), Studio and these commands agree on it. Tags look like
``imgclf@v1.2.0`` (a version) and ``imgclf#prod#7`` (a promotion; GTO's counter orders
them). Stages go in :data:`STAGES` order: a version reaches prod only after staging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imgclf.pipeline.git import commit_of

# Promotion order: a version must have been in each earlier stage first.
STAGES = ("staging", "prod")


class ReleaseError(RuntimeError):
    """A registry action the user must fix (unknown version, wrong stage, no artifact)."""


@dataclass(frozen=True)
class Promotion:
    """One stage event: ``version`` assigned to (or, ``removed``, taken off) ``stage``."""

    tag: str
    stage: str
    version: str
    commit: str
    counter: int
    removed: bool = False


@dataclass(frozen=True)
class Version:
    """A registered version and the commit it names."""

    version: str
    commit: str
    tag: str


def artifact_name(root: Path) -> str:
    """The one ``type: model`` artifact ``dvc.yaml`` declares (its ``artifacts:`` section)."""
    path = root / "dvc.yaml"
    try:
        artifacts = (yaml.safe_load(path.read_text()) or {}).get("artifacts") or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ReleaseError(f"cannot read {path}: {exc}") from None
    models = [name for name, spec in artifacts.items() if (spec or {}).get("type") == "model"]
    if len(models) != 1:
        raise ReleaseError(
            f"dvc.yaml must declare exactly one artifact of type model under artifacts: "
            f"(found {models or 'none'})"
        )
    return models[0]


def _state(root: Path) -> Any:
    from gto.registry import GitRegistry

    with GitRegistry.from_url(str(root)) as reg:
        return reg.get_state()


def versions(root: Path, name: str | None = None) -> list[Version]:
    """Registered (not deregistered) versions, newest first by semver."""
    name = name or artifact_name(root)
    artifact = _state(root).artifacts.get(name)
    if artifact is None:
        return []
    out = [
        Version(v.version, v.commit_hexsha, v.registrations[-1].tag)
        for v in artifact.versions
        if v.is_registered and v.registrations
    ]
    return sorted(out, key=lambda v: _semver_key(v.version), reverse=True)


def _semver_key(version: str) -> tuple[int, ...]:
    core = version.lstrip("v").split("-")[0].split("+")[0]
    try:
        return tuple(int(p) for p in core.split("."))
    except ValueError:
        return (0,)


def history(root: Path, name: str | None = None) -> dict[str, list[Promotion]]:
    """Every stage's assignments and unassignments, oldest first (GTO's tag counter)."""
    name = name or artifact_name(root)
    artifact = _state(root).artifacts.get(name)
    out: dict[str, list[Promotion]] = {}
    if artifact is None:
        return out
    for version in artifact.versions:
        for stage, vstage in version.stages.items():
            for event, removed in [(e, False) for e in vstage.assignments] + [
                (e, True) for e in vstage.unassignments
            ]:
                out.setdefault(stage, []).append(
                    Promotion(
                        event.tag,
                        stage,
                        version.version,
                        event.commit_hexsha,
                        _counter(event.tag),
                        removed,
                    )
                )
    for events in out.values():
        events.sort(key=lambda p: p.counter)
    return out


def _counter(tag: str) -> int:
    from gto.api import parse_tag

    return int(parse_tag(tag).get("counter", 0))


def occupant(events: list[Promotion], before: int | None = None) -> Promotion | None:
    """Who holds a stage after ``events`` (only those with a counter below ``before``)."""
    current = None
    for event in events:
        if before is not None and event.counter >= before:
            break
        current = None if event.removed else event
    return current


def current(root: Path, name: str | None = None) -> dict[str, Promotion | None]:
    """Each stage of :data:`STAGES` (and any other used) → the version in it now."""
    stages = history(root, name)
    return {stage: occupant(stages.get(stage, [])) for stage in (*STAGES, *sorted(stages))}


def register(
    root: Path, rev: str = "HEAD", version: str | None = None, bump: str = "patch",
    push: bool = False,
) -> Version:  # fmt: skip
    """Tag ``rev`` as a new version (``version``, or the latest one bumped)."""
    from gto import api
    from gto.exceptions import GTOException

    name = artifact_name(root)
    commit = commit_of(root, rev)
    if commit is None:
        raise ReleaseError(f"unknown git revision {rev!r}")
    flags = {"bump_major": bump == "major", "bump_minor": bump == "minor",
             "bump_patch": bump == "patch"}  # fmt: skip
    if version is not None:
        flags = {}
    try:
        event = api.register(str(root), name, commit, version=version, push=push, **flags)
    except GTOException as exc:
        raise ReleaseError(str(exc)) from None
    return Version(event.version, commit, event.tag)


def find_version(root: Path, version: str, name: str | None = None) -> Version:
    """A registered version by name (``v1.2.0``), or a clear error listing the known ones."""
    known = versions(root, name)
    for v in known:
        if v.version == version:
            return v
    listed = ", ".join(v.version for v in known) or "none yet: imgclf release register"
    raise ReleaseError(f"version {version!r} is not registered (registered: {listed})")


def order_problem(events: dict[str, list[Promotion]], version: str, stage: str,
                  before: int | None = None) -> str | None:  # fmt: skip
    """Why ``version`` may not enter ``stage`` yet (None: it may): stages go in order."""
    if stage not in STAGES:
        return f"unknown stage {stage!r}: one of {', '.join(STAGES)}"
    index = STAGES.index(stage)
    if index == 0:
        return None
    earlier = STAGES[index - 1]
    been = [
        p for p in events.get(earlier, [])
        if p.version == version and not p.removed and (before is None or p.counter < before)
    ]  # fmt: skip
    if not been:
        return f"{version} was never in {earlier}: promote it to {earlier} first"
    return None


def promote(
    root: Path, version: str, stage: str, push: bool = False, again: bool = False
) -> Promotion:
    """Assign ``stage`` to a registered ``version`` (a new ``name#stage#N`` tag).

    ``again``: the version held the stage before (a rollback); GTO still counts that old
    assignment, so the new tag is forced, and its higher counter makes it current.
    """
    from gto import api
    from gto.exceptions import GTOException

    name = artifact_name(root)
    found = find_version(root, version, name)
    problem = order_problem(history(root, name), version, stage)
    if problem:
        raise ReleaseError(problem)
    try:
        event = api.assign(str(root), name, stage, version=version, push=push, force=again)
    except GTOException as exc:
        raise ReleaseError(str(exc)) from None
    return Promotion(event.tag, stage, version, found.commit, _counter(event.tag))


def rollback(root: Path, stage: str = "prod", push: bool = False) -> Promotion:
    """Put the version that held ``stage`` before the current one back in it."""
    events = history(root).get(stage, [])
    now = occupant(events)
    if now is None:
        raise ReleaseError(f"no version is in {stage}: nothing to roll back")
    earlier = [p for p in events if not p.removed and p.version != now.version]
    if not earlier:
        raise ReleaseError(f"{now.version} is the only version {stage} has had")
    return promote(root, earlier[-1].version, stage, push=push, again=True)


def git_identity_missing(root: Path) -> bool:
    """True when git has no user.name/email here (GTO's annotated tags need one)."""
    if os.environ.get("GIT_COMMITTER_NAME") and os.environ.get("GIT_COMMITTER_EMAIL"):
        return False
    from imgclf.pipeline.git import git_run

    return any(git_run(root, "config", key).returncode != 0 for key in ("user.name", "user.email"))
