"""Property-based fuzzing of the whole OpenAPI schema against the real server: no 5xx, ever.

Schemathesis generates requests from ``/openapi.json`` (valid and invalid:
wrong types, missing fields, random bytes as images, odd methods). The
server's own Prometheus counters prove how many requests arrived and that
none was answered with a 5xx, and the process must still be healthy after.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.server import ServerProcess
from tests.support import ROOT, tool_env

pytestmark = pytest.mark.slow
MIN_REQUESTS = 500


def request_counts(url: str) -> dict[str, float]:
    """``status`` → number of requests the server has answered with it."""
    counts: dict[str, float] = {}
    for m in re.finditer(r'^imgclf_http_requests_total\{.*status="(\d+)"\} (\S+)$',
                         httpx.get(url + "/metrics").text, re.M):  # fmt: skip
        counts[m.group(1)] = counts.get(m.group(1), 0) + float(m.group(2))
    return counts


def test_fuzzing_the_schema_never_gives_5xx(server: ServerProcess, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (requirements-dev.txt)")
    before = request_counts(server.url)
    proc = subprocess.run(
        [exe, "run", f"{server.url}/openapi.json",
         # An image API cannot promise that schema-valid bytes are an image, so the
         # "schema-valid request accepted" check does not apply; every other one does.
         "--checks", "all", "--exclude-checks", "positive_data_acceptance",
         "--max-examples", "300", "--seed", "7", "--workers", "1",
         "--generation-database", "none", "--no-color", "--request-timeout", "30"],
        cwd=tmp_path, env=tool_env(ROOT), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    after = request_counts(server.url)
    sent = sum(after.values()) - sum(before.values()) - 1  # minus the first /metrics call
    assert sent >= MIN_REQUESTS, f"only {sent} generated requests reached the server"
    server_errors = {s: n for s, n in after.items() if s.startswith("5")}
    assert not server_errors, server_errors
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").status_code == 200
    assert server.alive()
