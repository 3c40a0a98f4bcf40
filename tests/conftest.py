"""Fixtures shared by every test group (helpers live in :mod:`tests.support`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import SHRINK, copy_repo, merge

# Tests talk to loopback only: never let google-auth probe the GCE metadata server.
os.environ.setdefault("NO_GCE_CHECK", "true")


@pytest.fixture
def repo_factory(tmp_path: Path) -> Callable[..., Path]:
    """Make as many shrunk repo copies as a test needs."""
    counter = iter(range(100))

    def make(params: dict[str, Any] | None = None) -> Path:
        return copy_repo(tmp_path / f"repo{next(counter)}", merge(SHRINK, params or {}))

    return make
