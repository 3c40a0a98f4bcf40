"""Requests decoded at the same time share a model call, and no answer depends on its company.

A real server (three work threads, the default ``IMGCLF_COALESCE_IMAGES``), real test
images over HTTP: each image's answer alone first, then the same images 16 requests at
a time. ``/metrics`` says how many model calls the concurrent requests took.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree
from tests.api.server import uvicorn_server


def calls_and_images(client: httpx.Client) -> tuple[float, float]:
    """(model calls, images they held) so far, from ``imgclf_model_call_images``."""
    text = client.get("/metrics").text

    def sample(name: str) -> float:
        found = re.search(rf"(?m)^{name} (\S+)$", text)
        assert found, f"{name} missing from /metrics"
        return float(found.group(1))

    return sample("imgclf_model_call_images_count"), sample("imgclf_model_call_images_sum")


def test_concurrent_requests_share_calls_and_get_the_answers_they_get_alone(
    project: ProjectTree, test_split_files: list[Path], tmp_path: Path
) -> None:
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS, "IMGCLF_WORKERS": "3"}
    files = [(p.name, p.read_bytes()) for p in test_split_files[:48]]
    log = tmp_path / "uvicorn.log"
    with (
        uvicorn_server(env, log) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        alone = [client.post("/predict", files={"file": f}).json() for f in files]
        assert all("label" in a for a in alone), alone[:2]
        calls0, images0 = calls_and_images(client)

        def post(f: tuple[str, bytes]) -> dict:
            return client.post("/predict", files={"file": f}).json()

        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(post, files * 4))
        calls1, images1 = calls_and_images(client)
    # Every field of every answer, the OOD score included: the same bytes as alone.
    assert together == alone * 4
    assert images1 - images0 == len(together)
    # 16 requests in flight on three threads: some decoded while a call ran, and joined
    # the next one (one call per request would mean the server never batched).
    assert calls1 - calls0 < len(together), (calls1 - calls0, len(together))
