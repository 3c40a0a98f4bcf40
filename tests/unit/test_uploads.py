"""Multipart bodies the parser must not spend the event loop on (imgclf.serving.uploads).

Found by a review: with boundary ``a``, a body of ``"\\r\\n--a" + "x"`` repeated cost
python-multipart 0.35 s of CPU per 2 MiB, in Python, on the event loop (``/health``
waited ~100 ms behind one such upload). RFC 2046 forbids the delimiter inside a part, so
more delimiters than parts allowed is refused before the parser sees them. The body is
fed in chunks as the server receives it; delimiters split across chunks count too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from imgclf.serving.uploads import Limits, RequestRejectedError, Upload, read_uploads

LIMITS = Limits(max_file_bytes=10 << 20, max_body_bytes=32 << 20, max_files=32, max_parts=48)


def _part(boundary: bytes, name: str, data: bytes) -> bytes:
    head = f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n\r\n'
    return b"--" + boundary + b"\r\n" + head.encode() + data + b"\r\n"


def _read(
    body: bytes, boundary: bytes, chunk: int, limits: Limits = LIMITS
) -> tuple[list[Upload] | str, int]:
    """(uploads, or the refusal's reason; bytes the parser pulled from the stream)."""
    pulled = [0]

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            pulled[0] += len(body[i : i + chunk])
            yield body[i : i + chunk]

    headers = {"content-type": "multipart/form-data; boundary=" + boundary.decode()}

    async def run() -> list[Upload] | str:
        try:
            return await read_uploads(headers, stream(), ("files",), limits)
        except RequestRejectedError as exc:
            return exc.reason

    return asyncio.run(run()), pulled[0]


@pytest.mark.parametrize("chunk", [65536, 7])  # 7: every delimiter straddles two chunks
def test_a_body_of_fake_delimiters_is_refused_early(chunk: int) -> None:
    boundary = b"a"
    body = _part(boundary, "x", b"\r\n--ax" * ((2 << 20) // 6)) + b"--a--\r\n"
    result, pulled = _read(body, boundary, chunk)
    assert result == "too_many_parts"
    assert pulled <= max(chunk, 64 * 8), pulled  # stopped within the first delimiters


@pytest.mark.parametrize("chunk", [65536, 5])
def test_a_body_with_the_most_parts_allowed_still_parses(chunk: int) -> None:
    """The counter must not count a delimiter twice at a chunk seam."""
    boundary = b"XyZ0123456789"
    limits = Limits(max_file_bytes=1 << 20, max_body_bytes=1 << 20, max_files=8, max_parts=8)
    body = b"".join(_part(boundary, f"f{i}.png", b"\x89PNG" + bytes([i]) * 50) for i in range(8))
    result, _ = _read(body + b"--" + boundary + b"--\r\n", boundary, chunk, limits)
    assert isinstance(result, list) and [u.filename for u in result] == [
        f"f{i}.png" for i in range(8)
    ]


def test_too_many_files_is_still_answered_as_such() -> None:
    """30 files where 8 are allowed (and 24 parts): the collector's own ``too_many_files``
    (422, what the schema's maxItems promises; schemathesis checks it), not the delimiter
    count's 413, even though the whole body arrives in one chunk."""
    boundary = b"b0undary"
    limits = Limits(max_file_bytes=1 << 20, max_body_bytes=1 << 20, max_files=8, max_parts=24)
    body = b"".join(_part(boundary, f"f{i}.png", b"\x89PNG") for i in range(30))
    result, _ = _read(body + b"--" + boundary + b"--\r\n", boundary, 1 << 20, limits)
    assert result == "too_many_files"
