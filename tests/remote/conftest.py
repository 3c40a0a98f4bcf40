"""A real GCS emulator, in-process on a loopback port (only loopback traffic)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import free_port


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a gcp-storage-emulator holding the bucket ``b``."""
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
