"""The bench toolkit holds together: no import cycle, one load generator that measures
what it claims, RESULTS.md sections replaced in place, and every bench script runs end to
end in --quick mode (real stage scripts, real servers over HTTP, real files), so none of
them can rot.

Speed is not asserted here (timings live in bench/RESULTS.md); only that the scripts
work, print their tables, replace their own section of a results file and nothing else,
and never touch bench/RESULTS.md in a quick run.
"""

from __future__ import annotations

import ast
import asyncio
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, tool_env

BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
import results  # noqa: E402

# Every script in bench/ and the test that runs it (its own quick mode or, for the helpers,
# the quick run that exercises it). A new script without an entry fails the test below.
COVERED_BY = {
    "ab_serve.py": "test_ab_serve_* here",
    "bench_api.py": "tests/api/test_bench.py (digits) and the photos test here",
    "bench_datasets.py": "quick run here",
    "bench_dvc_files.py": "quick run here (heavy)",
    "bench_label_issues.py": "quick run here",
    "bench_near_dups.py": "quick run here",
    "bench_prepare.py": "quick run here",
    "bench_gpu.py": "quick run here",
    "bench_monitor.py": "tests/api/test_monitoring.py::test_overhead_bench_runs",
    "bench_numerics.py": "quick run here",
    "bench_pipeline.py": "quick run here (heavy)",
    "bench_quantize.py": "quick run here",
    "bench_selection.py": "quick run here",
    "bench_sweep.py": "quick run here (heavy)",
    "bench_train.py": "quick run here",
    "bench_wakeups.py": "quick run here",
    "common.py": "every quick run",
    "loadgen.py": "test_loadgen_* here and every HTTP quick run",
    "results.py": "test_results_* here and every quick run",
    "locustfile.py": "tests/api/test_bench.py::test_locustfile_runs_headless",
    "make_datasets.py": "test_generators_run_from_the_command_line",
    "make_photos.py": "test_generators_run_from_the_command_line",
    "photo_bench.py": "the photos test here",
    "photo_models.py": "the photos and quantize quick runs",
    "seed_app.py": "the photos test here (it is the seed server)",
    "torch_server.py": "tests/api/test_bench.py (the torch backend)",
}


def _bench_imports() -> dict[str, set[str]]:
    """bench module → the bench modules it imports (anywhere in the file, lazy ones too)."""
    modules = {p.stem for p in BENCH.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in BENCH.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
        graph[path.stem] = names & modules
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_find_cycle_finds_one_and_only_real_ones() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycle_in_bench() -> None:
    graph = _bench_imports()
    assert "loadgen" in graph["photo_bench"] and "bench_api" not in graph["photo_bench"]
    assert find_cycle(graph) == []


def test_every_bench_module_says_its_job_and_is_covered() -> None:
    files = sorted(p.name for p in BENCH.glob("*.py"))
    assert files == sorted(COVERED_BY), "a bench script without a test (add it to COVERED_BY)"
    for name in files:
        doc = ast.get_docstring(ast.parse((BENCH / name).read_text())) or ""
        assert len(doc) > 40, f"{name}: the module docstring must say what it is for"
        if name.startswith("bench_"):
            source = (BENCH / name).read_text()
            assert "--quick" in source and "--quick" in doc, f"{name}: no documented --quick"
            assert "results.report(" in source, f"{name}: does not replace its own section"


# --- the load generator -------------------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A real HTTP/1.1 keep-alive server on loopback that answers every request with the
    same body, except that the 5th request of a connection gets a different one."""
    body = b'{"label": "x"}'
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                n += 1
                out = body if n != 5 else b'{"label": "y"}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.sockets[0].getsockname()[1]
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_loadgen_counts_requests_errors_percentiles_and_the_clients_cpu(echo_server) -> None:
    port = echo_server
    request = loadgen.multipart_request("/predict", "file", b"\x89PNG...", 1, port)
    load = loadgen.run(port, request, 1, requests=8)
    assert load.requests == 8
    assert load.errors == 1  # the connection's 5th answer differed from the first answer
    assert loadgen.run(port, request, 2, requests=4).errors == 0
    assert 0 < load.pct(50) <= load.pct(99) <= load.latencies_ms.max()
    assert load.rps > 0 and 0 <= load.client_share <= 1
    timed = loadgen.run(port, request, 3, seconds=0.2)
    assert timed.seconds >= 0.2 and timed.requests >= 3
    both = loadgen.merge([load, timed])
    assert both.requests == load.requests + timed.requests
    assert both.errors == load.errors + timed.errors
    with pytest.raises(ValueError, match="either"):
        loadgen.run(port, request, 1)


def test_loadgen_measures_the_servers_cpu_when_given_its_pid(echo_server) -> None:
    port = echo_server
    request = loadgen.multipart_request("/predict", "file", b"x", 1, port)
    import os

    load = loadgen.run(port, request, 1, requests=20, server_pid=os.getpid())
    assert load.server_cpu_s >= 0 and load.server_cpu_ms >= 0  # here: this process


# --- RESULTS.md sections ------------------------------------------------------------------

SCENARIOS = ["api", "photos", "pipeline", "train", "numerics", "selection", "datasets",
             "sweep", "monitor", "quantize", "gpu", "prepare", "near_dups", "label_issues",
             "dvc_files", "wakeups", "serve_ab", "serve_ab_digits"]  # fmt: skip


def _section(text: str, name: str) -> str:
    match = re.search(
        re.escape(results.begin(name)) + ".*?" + re.escape(results.end(name)), text, re.S
    )
    return match.group(0) if match else ""


def test_results_replace_swaps_one_section_and_keeps_the_rest() -> None:
    old = "# Head\n\n" + results.begin("a") + "\nA1\n" + results.end("a") + "\n\n"
    old += results.begin("b") + "\nB1\n" + results.end("b") + "\n\nfooter\n"
    new_a = results.begin("a") + "\nA2\n" + results.end("a") + "\n"
    text = results.replace(old, "a", new_a)
    assert "A1" not in text and text.count("A2") == 1 and "B1" in text and "footer" in text
    assert results.replace(text, "a", new_a) == text  # idempotent
    text = results.replace(text, "c", results.begin("c") + "\nC\n" + results.end("c") + "\n")
    assert text.rstrip().endswith(results.end("c")) and text.count(results.begin("c")) == 1
    assert results.replace("", "x", "S\n").startswith("# Benchmark results")


def test_results_section_has_title_machine_date_and_rerun(tmp_path: Path) -> None:
    text = results.section("demo", "Demo", "| a |\n|---|\n| 1 |", "python bench/demo.py")
    assert text.startswith(results.begin("demo") + "\n## Demo\n")
    assert re.search(r"- machine: .*\d+ cores.*; \d{4}-\d\d-\d\d \d\d:\d\d UTC", text)
    assert "- re-run: `python bench/demo.py`" in text
    path = tmp_path / "R.md"
    results.write(path, "demo", text)
    results.write(path, "demo", text.replace("| 1 |", "| 2 |"))
    assert path.read_text().count(results.begin("demo")) == 1 and "| 2 |" in path.read_text()


def test_results_md_holds_one_current_section_per_scenario() -> None:
    text = (BENCH / "RESULTS.md").read_text()
    for name in SCENARIOS:
        assert text.count(results.begin(name)) == 1, name
        assert text.count(results.end(name)) == 1, name
        part = _section(text, name)
        assert part, name
        assert "\n- machine: " in part and re.search(r"\d{4}-\d\d-\d\d", part), name
        assert "\n- re-run: `python bench/" in part, name
    assert len(re.findall(r"^<!-- bench:\w+ -->$", text, re.M)) == len(SCENARIOS)


def test_quick_never_targets_the_real_results_file() -> None:
    import argparse

    quick = argparse.Namespace(quick=True, no_record=False, results=None)
    assert results.target(quick) is None
    quick.results = results.RESULTS
    assert results.target(quick) is None
    full = argparse.Namespace(quick=False, no_record=False, results=None)
    assert results.target(full) == results.RESULTS
    full.no_record = True
    assert results.target(full) is None


# --- every script, for real, in quick mode ------------------------------------------------


@pytest.fixture(scope="module")
def photo_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One work folder for the photo benches: the small CNN is trained once for both."""
    return tmp_path_factory.mktemp("photo-work")


def run_quick(script: str, args: list[str], tmp_path: Path, scenario: str) -> str:
    """Run ``bench/SCRIPT --quick`` against a copy of RESULTS.md; check that only the
    scenario's own section changed and that bench/RESULTS.md did not; return stdout."""
    real = (BENCH / "RESULTS.md").read_bytes()
    copy = tmp_path / "RESULTS.md"
    shutil.copy(BENCH / "RESULTS.md", copy)
    proc = subprocess.run(
        [sys.executable, f"bench/{script}", *args, "--quick", "--results", str(copy)],
        cwd=ROOT, env=tool_env(ROOT), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (BENCH / "RESULTS.md").read_bytes() == real  # quick runs are not recorded there
    before, after = real.decode(), copy.read_text()
    assert _section(after, scenario) != _section(before, scenario)
    assert "(quick)" in _section(after, scenario)
    for name in SCENARIOS:
        assert after.count(results.begin(name)) == 1, name
        if name != scenario:
            assert _section(after, name) == _section(before, name), name
    return proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "scenario", "expected"),
    [
        ("bench_train.py", "train", "ratio vs baseline"),
        ("bench_gpu.py", "gpu", "ceiling: random tensors"),
        # Two trainings per numerics setting (~35 s on 2 cores): `make test-all` runs it.
        pytest.param(
            "bench_numerics.py",
            "numerics",
            "| digits default (small_cnn, 8 px, early stop) |",
            marks=pytest.mark.heavy,
        ),
        pytest.param(
            "bench_pipeline.py", "pipeline", "`dvc repro` up to date", marks=pytest.mark.heavy
        ),
        # Trains the selection rule's before/after pair (~35 s on 2 cores): `make test-all`.
        pytest.param(
            "bench_selection.py", "selection", "| after | 42 | 2/2 |", marks=pytest.mark.heavy
        ),
        ("bench_datasets.py", "datasets", "| digits_few | default |"),
        # dvc add + repro + a queued two-value sweep in a temp git copy: ~1 min idle.
        pytest.param("bench_sweep.py", "sweep", "2 ok, 0 failed", marks=pytest.mark.heavy),
        # The stage's row, then the training row (epoch vs model-only) on the same photos.
        # ... and in the stage's row, the write ceiling's per-run ratio and the system CPU.
        ("bench_prepare.py", "prepare", ("| 300 | small_cnn, batch ", "(system in each run: ")),
        ("bench_near_dups.py", "near_dups", "sources whole in one split"),
        ("bench_label_issues.py", "label_issues", "| digits_few (300 × 8×8) | 10% |"),
        ("bench_wakeups.py", "wakeups", "| hand-off to a work thread and back"),
        # 8 dvc commands against the gs emulator in two temp repos: ~1 min on a busy machine.
        pytest.param(
            "bench_dvc_files.py", "dvc_files", "| 120 loose JPEGs |", marks=pytest.mark.heavy
        ),
    ],
)
def test_bench_script_quick_mode(
    script: str, scenario: str, expected: str | tuple[str, ...], tmp_path
) -> None:
    out = run_quick(script, [], tmp_path, scenario)
    for text in (expected,) if isinstance(expected, str) else expected:
        assert text in out


@pytest.mark.slow
def test_quantize_quick(photo_work: Path, tmp_path: Path) -> None:
    out = run_quick("bench_quantize.py", ["--work", str(photo_work)], tmp_path, "quantize")
    assert "int8 speed-up (best int8 ÷ fastest fp32)" in out
    assert "| small_cnn |" in out


@pytest.mark.slow
def test_photo_scenario_quick_prints_the_table_both_ratios_and_the_verdicts(
    photo_work: Path, tmp_path: Path
) -> None:
    """The photo scenario end to end: a tiny CNN trained by the real stages, both servers,
    the in-process ceiling, every input; each row carries ours ÷ seed and ours ÷ ceiling."""
    out = run_quick("bench_api.py", ["--scenario", "photos", "--work", str(photo_work)],
                    tmp_path, "photos")  # fmt: skip
    lines = out.splitlines()
    header = [c.strip() for c in next(ln for ln in lines if ln.startswith("| model |")).split("|")]
    rows = [[c.strip() for c in ln.split("|")] for ln in lines if ln.startswith("| small_cnn |")]
    rows = [r for r in rows if len(r) == len(header)]  # not the model-only table's rows
    assert {r[header.index("input")] for r in rows} == {
        "jpeg_600x400", "jpeg_1920x1080", "jpeg_4000x3000", "png_512x512"
    }  # fmt: skip
    for row in rows:
        assert float(row[header.index("ours ÷ seed")].strip("*×")) > 0, row
        assert float(row[header.index("ours ÷ ceiling")].strip("*")) > 0, row
        assert "errors" not in row[header.index("ours requests")], row
        # Whole percent: a row of a few big requests can round to 0 %.
        assert 0 <= float(row[header.index("client CPU share (ours)")].rstrip("%")) <= 100, row
    assert "ours ÷ ceiling on jpeg_600x400 at concurrency 8" in out
    assert "ours ÷ seed on jpeg_4000x3000 at concurrency 8" in out
    assert "p99 ≤ 3 × p50 on every row" in out
    # Where ours' server CPU goes by thread: read from /proc for every row, the event
    # loop and the work threads each spend CPU and sleep (the loop waits for the work).
    threads = [[c.strip() for c in ln.split("|")] for ln in lines if ln.startswith("| small_cnn |")]
    threads = [r for r in threads if len(r) == 10]  # "| a | … | h |" splits into 10
    assert {r[2] for r in threads} == {r[header.index("input")] for r in rows}, out[-3000:]
    for row in threads:
        loop_cpu, loop_sleeps, other_cpu, other_sleeps = map(float, row[5:9])
        assert loop_cpu > 0 and loop_sleeps > 0 and other_cpu > 0 and other_sleeps > 0, row
    # Issue 18: model-only speed of both session kinds, the server's and evaluate's.
    only = re.search(r"model only, batch 1, one thread: small_cnn: portable (\d+) img/s, "
                     r"fast (\d+) img/s", out)  # fmt: skip
    assert only and int(only[1]) > 0 and int(only[2]) > 0, out[-2000:]


@pytest.mark.slow
def test_ab_serve_quick_compares_two_variants_side_by_side(
    photo_work: Path, tmp_path: Path
) -> None:
    """Two real servers from this checkout, one with the OOD flag off: both rows, the
    first is the ratio's baseline, each shows its settings and answered without errors."""
    args = ["--work", str(photo_work), "--variant", "base=src", "--variant", "off=src",
            "--set", "off:IMGCLF_OOD=off"]  # fmt: skip
    out = run_quick("ab_serve.py", args, tmp_path, "serve_ab")
    header = [c.strip() for c in next(ln for ln in out.splitlines()
                                      if ln.startswith("| variant |")).split("|")]  # fmt: skip
    rows = {r[1]: r for r in ([c.strip() for c in ln.split("|")] for ln in out.splitlines())
            if len(r) == len(header) and r[1] in {"base", "off"}}  # fmt: skip
    assert set(rows) == {"base", "off"}, out[-2000:]
    assert rows["base"][header.index("÷ first")] == "1.000"
    assert rows["base"][header.index("settings")] == "defaults"
    assert rows["off"][header.index("settings")] == "IMGCLF_OOD=off"
    for row in rows.values():
        assert row[header.index("errors")] == "0", row
        assert float(row[header.index("server CPU ms/req")]) > 0, row
        assert float(row[header.index("loop sleeps/req")]) > 0, row


@pytest.mark.parametrize(
    ("variants", "settings", "message"),
    [
        (["a=src"], [], "at least two --variant"),
        (["a=src", "a=src"], [], "given twice"),
        (["a", "b=src"], [], "expected NAME=SRC"),
        (["a=src", "b=bench"], [], "has no imgclf package"),
        (["a=src", "b=src"], ["c:IMGCLF_OOD=off"], "no --variant named 'c'"),
        (["a=src", "b=src"], ["b:PATH=/tmp"], "expected NAME:IMGCLF_VAR=VALUE"),
    ],
)
def test_ab_serve_refuses_a_bad_variant_with_its_reason(
    variants: list[str], settings: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ab_serve

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match=re.escape(message)):
        ab_serve.parse_variants(variants, settings)


def test_ab_serve_settings_reach_their_variant_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import ab_serve

    monkeypatch.chdir(ROOT)
    a, b = ab_serve.parse_variants(["a=src", "b=src"], ["b:IMGCLF_OOD=off", "b:IMGCLF_WORKERS=4"])
    assert a.env == {} and b.env == {"IMGCLF_OOD": "off", "IMGCLF_WORKERS": "4"}
    assert a.src == b.src == ROOT / "src"


def test_generators_run_from_the_command_line(tmp_path: Path) -> None:
    commands = [
        ["make_photos.py", str(tmp_path / "p"), "--images", "3", "--classes", "3"],
        ["make_datasets.py", str(tmp_path / "d"), "two_class_25px"],
    ]
    for script, *args in commands:
        proc = subprocess.run(
            [sys.executable, f"bench/{script}", *args],
            cwd=ROOT, env=tool_env(ROOT), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "p").rglob("*.jpg"))) == 3
    assert len(list((tmp_path / "d" / "two_class_25px").rglob("*.png"))) == 200


def test_photo_generator_is_deterministic(tmp_path: Path) -> None:
    from make_photos import make_photos

    a = make_photos(tmp_path / "a", images=6, classes=3)
    b = make_photos(tmp_path / "b", images=6, classes=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 6
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_generated_datasets_are_deterministic(tmp_path: Path) -> None:
    from make_datasets import two_class_25px

    a = two_class_25px(tmp_path / "a", per_class=3)
    b = two_class_25px(tmp_path / "b", per_class=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 6 and {f.parts[0] for f in files} == {"ring", "disc"}
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_prepare_write_ceiling_writes_the_prepared_bytes_in_rows(tmp_path: Path) -> None:
    """The write ceiling puts at least as many bytes as the stage wrote into new files,
    whole rows of the stage's size, split over the processes (the bench divides by it)."""
    import bench_prepare

    nbytes = 5 * bench_prepare.ROW_BYTES + 1  # not a whole number of rows
    seconds = bench_prepare.write_ceiling(nbytes, 2, tmp_path / "w")
    sizes = sorted(f.stat().st_size for f in (tmp_path / "w").iterdir())
    assert seconds > 0
    assert sizes == [3 * bench_prepare.ROW_BYTES, 3 * bench_prepare.ROW_BYTES]
    assert sum(sizes) >= nbytes
