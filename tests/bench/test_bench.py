"""Every bench script runs end to end in --quick mode, so none of them can rot.

Speed is not asserted here (timings live in bench/RESULTS.md); only that the
scripts work and print their tables.
"""

import subprocess
import sys

import pytest

from tests.support import ROOT, tool_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("bench_train.py", "ratio vs baseline"),
        ("bench_gpu.py", "ceiling: random tensors"),
        pytest.param("bench_pipeline.py", "`dvc repro` up to date", marks=pytest.mark.heavy),
        ("bench_selection.py", "| after | 42 | 2/2 |"),
        ("bench_datasets.py", "| digits_few | default |"),
        ("bench_quantize.py", "int8 speed-up (best int8 ÷ fastest fp32)"),
        # dvc add + repro + a queued two-value sweep in a temp git copy: ~1 min idle.
        pytest.param("bench_sweep.py", "2 ok, 0 failed", marks=pytest.mark.heavy),
    ],
)
def test_bench_script_quick_mode(script: str, expected: str) -> None:
    results = (
        (ROOT / "bench" / "RESULTS.md").read_bytes()
        if (ROOT / "bench/RESULTS.md").exists()
        else b""
    )
    proc = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick"],
        cwd=ROOT,
        env=tool_env(ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout
    after = (
        (ROOT / "bench/RESULTS.md").read_bytes() if (ROOT / "bench/RESULTS.md").exists() else b""
    )
    assert after == results  # quick runs are not recorded


def test_photo_generator_is_deterministic(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from make_photos import make_photos

    a = make_photos(tmp_path / "a", images=6, classes=3)
    b = make_photos(tmp_path / "b", images=6, classes=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 6
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_generated_datasets_are_deterministic(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from make_datasets import two_class_25px

    a = two_class_25px(tmp_path / "a", per_class=3)
    b = two_class_25px(tmp_path / "b", per_class=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 6 and {f.parts[0] for f in files} == {"ring", "disc"}
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_photo_scenario_quick_prints_the_table_both_ratios_and_the_verdicts(tmp_path) -> None:
    """The photo scenario end to end: a tiny CNN trained by the real stages, both servers,
    the in-process ceiling, every input; each row carries ours ÷ seed and ours ÷ ceiling."""
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "bench/bench_api.py", "--scenario", "photos", "--quick",
         "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT, env=tool_env(ROOT), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = [c.strip() for c in next(ln for ln in lines if ln.startswith("| model |")).split("|")]
    rows = [[c.strip() for c in ln.split("|")] for ln in lines if ln.startswith("| small_cnn |")]
    assert {r[header.index("input")] for r in rows} == {
        "jpeg_600x400", "jpeg_1920x1080", "jpeg_4000x3000", "png_512x512"
    }  # fmt: skip
    for row in rows:
        assert float(row[header.index("ours ÷ seed")].strip("*×")) > 0, row
        assert float(row[header.index("ours ÷ ceiling")].strip("*")) > 0, row
        assert "errors" not in row[header.index("ours requests")], row
    assert "ours ÷ ceiling on jpeg_600x400 at concurrency 8" in proc.stdout
    assert "ours ÷ seed on jpeg_4000x3000 at concurrency 8" in proc.stdout
    assert "p99 ≤ 3 × p50 on every row" in proc.stdout
    assert not out.exists(), "--quick must not write results"
