"""API fixtures: one real model for the session, one real uvicorn server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.modelfactory import ProjectTree, project_for
from tests.api.server import ServerProcess, uvicorn_server

# Small limits keep the "too large" tests fast; the huge-JPEG test still fits.
TEST_LIMITS = {
    "IMGCLF_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
    "IMGCLF_MAX_REQUEST_BYTES": str(8 * 1024 * 1024),
    "IMGCLF_MAX_BATCH": "8",
    "IMGCLF_MAX_PIXELS": "40000000",
    "IMGCLF_GIT_REVISION": "0123456789abcdef0123456789abcdef01234567",
}


@pytest.fixture
def anyio_backend() -> str:
    """In-process tests run the app as uvicorn does: on asyncio (the work pool awaits
    its thread futures with asyncio, so trio is not a backend the service supports)."""
    return "asyncio"


@pytest.fixture(scope="session")
def project(request: pytest.FixtureRequest) -> ProjectTree:
    """models/, metrics/ and data/ of the session's shrunk ``dvc repro`` (or, with
    ``IMGCLF_TEST_MODEL=checkout``, of the checkout): see tests/api/modelfactory.py."""
    return project_for(request)


@pytest.fixture(scope="session")
def server(
    project: ProjectTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The API as a real uvicorn process; asserts it is still alive after all tests."""
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS}
    log = tmp_path_factory.mktemp("server") / "uvicorn.log"
    with uvicorn_server(env, log) as proc:
        yield proc
        assert proc.alive(), f"the API process died:\n{proc.log_tail()}"
        assert "Traceback" not in proc.log_tail(100_000), proc.log_tail()


@pytest.fixture(scope="session")
def api_url(server: ServerProcess) -> str:
    return server.url


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def test_split_files(project: ProjectTree) -> list[Path]:
    """The raw image files of the evaluated test split, in evaluate's order."""
    import csv

    with (project.prepared / "index.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    rows.sort(key=lambda r: int(r["position"]))
    return [project.raw / r["path"] for r in rows]
