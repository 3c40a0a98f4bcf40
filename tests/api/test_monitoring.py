"""Monitoring end to end: a real uvicorn server records into real SQLite, drift-report judges.

One server serves five phases of traffic, each a window of the report:

* ``heldout`` — the validation split's image files, untouched (never in the reference,
  which is the test split): no section may report drift;
* ``dark``, ``blurred``, ``resized`` — the same files darkened, blurred, upscaled 4×:
  drift on the features that corruption moves, and not on the ones it leaves alone;
* ``unseen`` — letters, a class the digits model never saw: the predicted classes and
  the confidence shift.

Then the HTML report is opened in headless Chromium and screenshotted, and the sampled
uploads go through ``imgclf collect`` into an ImageFolder.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFilter
from typer.testing import CliRunner

from imgclf.cli import app
from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree
from tests.api.server import uvicorn_server
from tests.api.test_page_browser import browser  # noqa: F401 - the shared Chromium fixture

pytestmark = pytest.mark.slow


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _letter(i: int) -> bytes:
    """A white letter on black at the digits' 8×8 size: a class the model never saw."""
    img = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(img).text((4, 2), "ABCEFHKLMNPRTUVWXY"[i % 18], fill=255)
    return _png(img.resize((8, 8), Image.Resampling.BILINEAR))


PHASES: dict[str, Callable[[Image.Image, int], bytes]] = {
    "heldout": lambda img, _: _png(img),
    "dark": lambda img, _: _png(img.point(lambda v: v // 2)),
    "blurred": lambda img, _: _png(img.filter(ImageFilter.GaussianBlur(1))),
    "resized": lambda img, _: _png(img.resize((32, 32), Image.Resampling.NEAREST)),
    "unseen": lambda _, i: _letter(i),
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@pytest.fixture(scope="module")
def served(project: ProjectTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Serve every phase through one monitored server; the windows, db, samples, /metrics."""
    tmp = tmp_path_factory.mktemp("monitoring")
    with (project.prepared / "index.csv").open() as fh:
        files = [project.raw / r["path"] for r in csv.DictReader(fh) if r["split"] == "val"]
    db, samples = tmp / "requests.db", tmp / "samples"
    env = {
        "IMGCLF_MODEL_DIR": str(project.model_dir),
        **TEST_LIMITS,
        "IMGCLF_MONITOR_DB": str(db),
        "IMGCLF_SAMPLE_DIR": str(samples),
        "IMGCLF_SAMPLE_RATE": "0.05",
    }
    windows: dict[str, tuple[str, str]] = {}
    with uvicorn_server(env, tmp / "uvicorn.log") as server, httpx.Client(timeout=30) as client:
        for name, make in PHASES.items():
            bodies = [make(Image.open(path), i) for i, path in enumerate(files)]
            start = time.time()
            for i in range(0, len(bodies), 8):
                chunk = [("files", (f"{j}.png", b)) for j, b in enumerate(bodies[i : i + 8])]
                r = client.post(server.url + "/predict/batch", files=chunk)
                assert r.status_code == 200 and all(x["ok"] for x in r.json()["results"])
            windows[name] = (_iso(start), _iso(time.time()))
            time.sleep(0.01)
        metrics = client.get(server.url + "/metrics").text
    # The server has exited (SIGTERM): its shutdown flushed every record.
    return {"db": db, "samples": samples, "windows": windows, "n": len(files), "metrics": metrics}


@pytest.fixture(scope="module")
def reports(
    served: dict[str, Any], project: ProjectTree, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """``imgclf drift-report`` for each phase's window (in-process: Evidently loads once)."""
    out: dict[str, dict[str, Any]] = {}
    for name, (since, until) in served["windows"].items():
        folder = tmp_path_factory.mktemp(f"report-{name}")
        reference = project.model_dir / "reference.json"
        args = ["drift-report", "--since", since, "--until", until, "--db", str(served["db"]),
                "--reference", str(reference), "--out", str(folder)]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        data = json.loads((folder / "drift.json").read_text())
        data["folder"], data["output"] = folder, result.output
        out[name] = data
    return out


def _drifted(report: dict[str, Any], section: str) -> set[str]:
    (s,) = [s for s in report["sections"] if s["title"] == section]
    return {c["column"] for c in s["checks"] if c["drifted"]}


def test_everything_served_is_recorded(served: dict[str, Any]) -> None:
    total = served["n"] * len(PHASES)
    assert f"imgclf_prediction_confidence_count {float(total)}" in served["metrics"]
    import sqlite3

    with sqlite3.connect(served["db"]) as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == total


def test_held_out_images_raise_no_alarm(reports: dict[str, dict[str, Any]]) -> None:
    report = reports["heldout"]
    assert report["current_rows"] > 200
    assert not report["drift"], report["output"]
    assert [s["verdict"] for s in report["sections"]] == ["no drift"] * 4
    assert "No drift detected" in (report["folder"] / "drift-report.md").read_text()


@pytest.mark.parametrize(
    ("phase", "moved", "still"),
    [
        ("dark", {"brightness", "contrast"}, {"width", "height", "format"}),
        ("blurred", {"sharpness", "contrast"}, {"brightness", "width", "height", "format"}),
        ("resized", {"width", "height"}, {"format", "aspect"}),
    ],
)
def test_corruptions_drift_on_the_features_they_move(
    reports: dict[str, dict[str, Any]], phase: str, moved: set[str], still: set[str]
) -> None:
    drifted = _drifted(reports[phase], "Input features")
    assert moved <= drifted, reports[phase]["output"]
    assert not still & drifted, reports[phase]["output"]
    md = (reports[phase]["folder"] / "drift-report.md").read_text()
    assert "**Drift detected**" in md and "Input features | ⚠️ DRIFT in" in md


def test_an_unseen_class_shifts_predictions_and_confidence(
    reports: dict[str, dict[str, Any]],
) -> None:
    report = reports["unseen"]
    assert _drifted(report, "Predicted classes") == {"predicted"}
    assert _drifted(report, "Confidence") == {"confidence"}
    assert _drifted(report, "Embedding") == {"embedding"}


def test_html_report_in_a_browser(
    browser,  # noqa: F811 - the fixture imported above
    reports: dict[str, dict[str, Any]],
) -> None:
    from selenium.webdriver.common.by import By

    page = reports["dark"]["folder"] / "drift-report.html"
    browser.set_window_size(1300, 1800)
    browser.get(page.as_uri())
    summary = browser.find_element(By.ID, "imgclf-summary")
    assert "Drift detected" in summary.text and "DRIFT in brightness" in summary.text
    rows = summary.find_elements(By.CSS_SELECTOR, "tr.drift")
    assert {r.text.split(" DRIFT")[0] for r in rows} >= {"Input features"}
    # Evidently's own widgets rendered (inline scripts, no network).
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Drift in column 'brightness'" in body and "Data drift detected" in body
    shot = reports["dark"]["folder"] / "drift-report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_sampled_uploads_become_an_image_folder(served: dict[str, Any], tmp_path: Path) -> None:
    files = [p for p in served["samples"].rglob("*.png")]
    assert 0 < len(files) < served["n"] * len(PHASES) * 0.2  # about 5 %
    out = tmp_path / "data" / "raw" / "served"
    base = ["collect", "--out", str(out), "--db", str(served["db"]),
            "--samples", str(served["samples"])]  # fmt: skip
    assert CliRunner().invoke(app, base).exit_code == 0
    result = CliRunner().invoke(app, [*base, "--labels", "predicted"])
    assert result.exit_code == 0, result.output
    copied = [p for p in out.rglob("*.png")]
    assert len(copied) == len(files)
    assert {p.parent.parent for p in copied} == {out}


def test_overhead_bench_runs(project: ProjectTree) -> None:
    """bench/bench_monitor.py --quick: the three servers answer, the table is printed."""
    import subprocess
    import sys

    from tests.support import ROOT, tool_env

    results = (ROOT / "bench" / "RESULTS.md").read_bytes()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_monitor.py"), "--quick",
         "--model-dir", str(project.model_dir)],
        env=tool_env(ROOT), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| digits 8×8 PNG |")]
    assert [r.split("|")[2].strip() for r in rows] == ["off", "monitor", "monitor + 1 % samples"]
    assert all(r.split("|")[4].strip() == "0" for r in rows), "errors in the quick run"
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results  # --quick records nothing
