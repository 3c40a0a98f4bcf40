"""The benchmark and the Locust file run (briefly), so they cannot rot unnoticed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.modelfactory import ProjectTree
from tests.api.server import ServerProcess
from tests.support import ROOT, tool_env

pytestmark = pytest.mark.slow


def test_bench_quick_runs_both_backends(project: ProjectTree, tmp_path: Path) -> None:
    """Both backends over real HTTP; the quick run replaces the "api" section of the file
    it is given (and nothing else), never bench/RESULTS.md."""
    image = next(iter(sorted(project.raw.glob("*/*.png"))))
    real = (ROOT / "bench" / "RESULTS.md").read_bytes()
    out = tmp_path / "RESULTS.md"
    out.write_text("# R\n\n<!-- bench:api -->\nold\n<!-- /bench:api -->\n\nafter\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_api.py"), "--quick",
         "--model-dir", str(project.model_dir), "--image", str(image), "--results", str(out)],
        env=tool_env(ROOT), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(("| onnxruntime", "| torch"))]
    assert len(rows) == 2 * (2 * 2 * 3)  # printed live and in the section: backends × endpoints × c
    assert all(ln.split("|")[5].strip() == "0" for ln in rows), "errors in the quick run"
    shares = [float(ln.split("|")[13].strip().rstrip("%")) for ln in rows]
    assert all(0 < s <= 100 for s in shares), "the client's CPU share is measured"
    text = out.read_text()
    assert "old" not in text and text.count("<!-- bench:api -->") == 1 and "after" in text
    assert (
        "| onnxruntime | /predict | 8 |" in text and "- re-run: `python bench/bench_api.py`" in text
    )
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == real


def test_locustfile_runs_headless(server: ServerProcess, project: ProjectTree) -> None:
    exe = shutil.which("locust", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("locust is not installed (requirements-dev.txt)")
    image = next(iter(sorted(project.raw.glob("*/*.png"))))
    proc = subprocess.run(
        [exe, "-f", str(ROOT / "bench" / "locustfile.py"), "--host", server.url, "--headless",
         "-u", "2", "-r", "2", "-t", "2s", "--only-summary", "--exit-code-on-error", "1"],
        env={**tool_env(ROOT), "IMGCLF_BENCH_IMAGE": str(image), "IMGCLF_BENCH_BATCH": "4"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "/predict/batch" in proc.stdout + proc.stderr
