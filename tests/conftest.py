"""Fixtures shared by every test group (helpers live in :mod:`tests.support`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SHRINK, clone_of, copy_repo, git, merge, reproduce

# Tests talk to loopback only: never let google-auth probe the GCE metadata server.
os.environ.setdefault("NO_GCE_CHECK", "true")


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    """Make as many shrunk repo copies as a test needs."""
    counter = iter(range(100))

    def make(params: dict[str, Any] | None = None) -> Path:
        return copy_repo(tmp_path / f"repo{next(counter)}", merge(SHRINK, params or {}))

    return make


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's one shrunk repo after a real ``dvc repro``, outputs committed on main.

    Shared by the pipeline, lock-check, report and API tests, so it is read-only: a test
    that changes a repo (``exp run``, params edits, commits) takes a ``repro_clone``. At
    the end of the session it must be as built, else the test order could decide results.
    """
    repo = reproduce(tmp_path_factory.mktemp("reproduced") / "repo")
    head = git(repo, "rev-parse", "HEAD").stdout
    yield repo
    changed = git(repo, "status", "--porcelain").stdout
    assert (changed, git(repo, "rev-parse", "HEAD").stdout) == ("", head), (
        f"a test changed the shared reproduced repo (use repro_clone):\n{changed}"
    )


@pytest.fixture
def repro_clone(reproduced_repo: Path, tmp_path: Path) -> Path:
    """A private copy of ``reproduced_repo`` (workspace, git history, DVC cache) to change."""
    return clone_of(reproduced_repo, tmp_path / "repo")


def pytest_report_header() -> str:
    from tests.api.modelfactory import describe_model

    return describe_model()
