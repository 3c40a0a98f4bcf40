"""Every kind of bad upload gets a clear 4xx over real HTTP, and the server stays up."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imgclf.serving.schemas import BatchOut
from tests.api import samples
from tests.api.conftest import TEST_LIMITS
from tests.api.hostile import memory_kib
from tests.api.modelfactory import ProjectTree
from tests.api.server import ServerProcess

MAX_UPLOAD = int(TEST_LIMITS["IMGCLF_MAX_UPLOAD_BYTES"])
MAX_BATCH = int(TEST_LIMITS["IMGCLF_MAX_BATCH"])


@pytest.fixture(scope="module")
def digit(project: ProjectTree) -> Image.Image:
    img = Image.open(next(iter(sorted((project.raw / "3").iterdir()))))
    img.load()
    return img


def post_file(client: httpx.Client, data: bytes, name: str = "x.png", ctype: str = "image/png"):
    return client.post("/predict", files={"file": (name, data, ctype)})


def assert_rejected(resp: httpx.Response, status: int | tuple[int, ...], reason: str) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, resp.text
    body = resp.json()
    assert body["reason"] == reason, body
    assert body["detail"], "a 4xx must say what is wrong"


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda d: b"", 400, "empty"),
        (lambda d: b"hello, I am text pretending to be a PNG", 415, "not_an_image"),
        (lambda d: b"%PDF-1.7\n" + b"0" * 2000, 415, "not_an_image"),
        (lambda d: samples.truncated_png(d), 400, "truncated"),
        (lambda d: samples.corrupt_jpeg(), 400, "corrupt"),
        (lambda d: samples.corrupt_png_header(), (400, 415), "not_an_image"),
        (lambda d: samples.png_bomb(), 413, "too_many_pixels"),
        (lambda d: samples.gif_bomb(), 413, "too_many_pixels"),
    ],
    ids=[
        "empty",
        "text",
        "pdf",
        "truncated_png",
        "corrupt_jpeg",
        "bad_png_header",
        "png_bomb",
        "gif_bomb",
    ],
)
def test_bad_image_is_a_clear_4xx(
    client: httpx.Client, digit: Image.Image, make, status, reason
) -> None:
    """The filename and content-type claim PNG each time: only the content decides."""
    assert_rejected(post_file(client, make(digit)), status, reason)


def peak_rss_since_reset(pids: list[int]) -> Callable[[], int]:
    """Reset the serving processes' peak RSS (``clear_refs`` 5) and return a reader of
    their new peaks over their RSS at reset, in bytes: what a request allocated at its
    worst, not what is still resident once it has been freed."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    start = memory_kib(pids, "VmRSS")
    return lambda: (memory_kib(pids, "VmHWM") - start) * 1024


def test_decompression_bomb_is_refused_without_allocating(
    client: httpx.Client, server: ServerProcess
) -> None:
    """12000×12000 with every row present (144 MB decoded) and 30000×30000 (900 MB):
    refused from the header; the server's *peak* memory stays flat."""
    bombs = [samples.png_bomb(12000, 12000, rows=12000), samples.png_bomb()]
    peak = peak_rss_since_reset(server.pids())
    answers = [post_file(client, bomb) for bomb in bombs for _ in range(2)]
    assert peak() < 50 * 1024 * 1024, f"peak grew {peak() >> 20} MiB"
    for resp in answers:
        assert_rejected(resp, 413, "too_many_pixels")
        assert "image declares" in resp.json()["detail"], "refused from the header"


def test_too_large_by_content_length_is_413(client: httpx.Client) -> None:
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD + 1024)
    assert_rejected(post_file(client, data), 413, "too_large")


def test_too_large_streamed_without_content_length_is_413(api_url: str) -> None:
    """Chunked transfer: no length up front, the limit is enforced while reading."""
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip

    def body() -> Iterator[bytes]:
        yield head + b"\x89PNG\r\n\x1a\n"
        chunk = b"\0" * 65536
        for _ in range((MAX_UPLOAD * 2) // len(chunk)):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    resp = httpx.post(api_url + "/predict", content=body(), headers=headers, timeout=30)
    assert "content-length" not in resp.request.headers
    assert_rejected(resp, 413, "too_large")


def test_missing_field_is_422(client: httpx.Client, digit: Image.Image) -> None:
    resp = client.post("/predict", files={"image": ("a.png", samples.encode(digit, "PNG"))})
    assert_rejected(resp, 422, "missing_file")
    resp = client.post("/predict", data={"file": ""}, files={"other": ("a", b"x")})
    assert resp.status_code in (400, 422), resp.text


def test_not_multipart_is_415(client: httpx.Client, digit: Image.Image) -> None:
    assert_rejected(client.post("/predict", json={"file": "x"}), 415, "not_multipart")
    raw = client.post("/predict", content=samples.encode(digit, "PNG"),
                      headers={"Content-Type": "image/png"})  # fmt: skip
    assert_rejected(raw, 415, "not_multipart")


def test_malformed_multipart_is_400(client: httpx.Client) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    resp = client.post("/predict", content=b"--xyz\r\nno headers end", headers=headers)
    assert resp.status_code in (400, 422), resp.text
    resp = client.post("/predict", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert_rejected(resp, 400, "malformed_request")


def test_two_files_on_single_endpoint_is_422(client: httpx.Client, digit: Image.Image) -> None:
    png = samples.encode(digit, "PNG")
    resp = client.post("/predict", files=[("file", ("a.png", png)), ("file", ("b.png", png))])
    assert_rejected(resp, 422, "too_many_files")


def test_too_many_files_in_batch_is_422(client: httpx.Client, digit: Image.Image) -> None:
    png = samples.encode(digit, "PNG")
    files = [("files", (f"{i}.png", png)) for i in range(MAX_BATCH + 1)]
    assert_rejected(client.post("/predict/batch", files=files), 422, "too_many_files")


def test_batch_isolates_bad_files(client: httpx.Client, digit: Image.Image) -> None:
    """Each bad file gets its own error entry, in order; the good ones are still predicted."""
    png = samples.encode(digit, "PNG")
    files = [
        ("files", ("good1.png", png, "image/png")),
        ("files", ("text.png", b"not an image", "image/png")),
        ("files", ("bomb.png", samples.png_bomb(), "image/png")),
        ("files", ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD + 1), "image/png")),
        ("files", ("trunc.png", samples.truncated_png(digit), "image/png")),
        ("files", ("good2.gif", samples.encode(digit, "GIF"), "application/octet-stream")),
    ]
    resp = client.post("/predict/batch", files=files)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["filename"] for r in results] == [f[1][0] for f in files]
    assert [r["ok"] for r in results] == [True, False, False, False, False, True]
    assert [r.get("status") for r in results[1:5]] == [415, 413, 413, 400]
    assert [r.get("reason") for r in results[1:5]] == [
        "not_an_image", "too_many_pixels", "too_large", "truncated"]  # fmt: skip
    assert results[0]["label"] == results[5]["label"]
    assert results[0]["probabilities"] == results[5]["probabilities"]
    # The app writes this body itself: exactly what BatchOut (no null fields) would write.
    model = BatchOut.model_validate(resp.json(), strict=True)
    assert model.model_dump(exclude_none=True) == resp.json()


def test_rejections_are_counted_and_server_is_healthy(
    client: httpx.Client, server: ServerProcess
) -> None:
    post_file(client, b"nope")
    metrics = client.get("/metrics").text
    assert re.search(r'imgclf_rejected_inputs_total\{reason="not_an_image"\} [1-9]', metrics)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    assert server.alive()
