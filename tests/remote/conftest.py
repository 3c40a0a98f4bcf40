"""A real GCS emulator, in-process on a loopback port (only loopback traffic)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import gcs_emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a gcp-storage-emulator holding the bucket ``b``."""
    with gcs_emulator() as url:
        yield url
