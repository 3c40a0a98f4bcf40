"""imgclf drift-report: clear errors for bad input, and a quiet report on too little traffic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imgclf.cli import app
from imgclf.evaluation.reference_profile import build_reference
from imgclf.jsonio import write_json
from imgclf.monitoring.drift_report import markdown
from imgclf.monitoring.recorder import Monitor, MonitorConfig, Upload


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """A reference of 40 images and a database with 10 served ones (too few to test)."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    probs = np.tile([0.9, 0.1], (40, 1))
    ref = build_reference(pixels, [8] * 40, [8] * 40, ["PNG"] * 40, probs, np.ones((40, 3)),
                          ["a", "b"], "ab" * 32, seed=0)  # fmt: skip
    write_json(tmp_path / "reference.json", ref)
    db = tmp_path / "m.db"
    monitor = Monitor(MonitorConfig(db=db))
    uploads = [Upload(8, 8, "PNG", None)] * 10
    monitor.observe(uploads, pixels[:10], probs[:10], np.ones((10, 3)), ["a", "b"], "abababababab")
    monitor.close()
    return {"db": db, "reference": tmp_path / "reference.json", "out": tmp_path / "out"}


def _run(setup: dict[str, Path], *args: str) -> tuple[int, str]:
    base = ["drift-report", "--db", str(setup["db"]), "--reference", str(setup["reference"]),
            "--out", str(setup["out"])]  # fmt: skip
    result = CliRunner().invoke(app, [*base, *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "neither a duration"),
        (["--since", "1h", "--until", "2h"], "the window is empty"),
        (["--db", "/nonexistent/m.db"], "does not exist"),
        (["--reference", "/nonexistent/reference.json"], "the evaluate stage writes it"),
    ],
)
def test_bad_input_is_a_clear_error(setup: dict[str, Path], args: list[str], message: str) -> None:
    code, output = _run(setup, *args)
    assert code == 2 and message in output
    assert not setup["out"].exists()


def test_too_little_traffic_is_reported_as_not_tested(setup: dict[str, Path]) -> None:
    code, output = _run(setup, "--since", "1h", "--fail-on-drift")
    assert code == 0, output
    data = json.loads((setup["out"] / "drift.json").read_text())
    assert data["drift"] is False and data["current_rows"] == 10
    verdicts = [s["verdict"] for s in data["sections"]]
    assert all(v.startswith("not tested: 10 served predictions") for v in verdicts)
    assert "Drift report: No drift detected" in (setup["out"] / "drift-report.md").read_text()
    assert "imgclf drift report" in (setup["out"] / "drift-report.html").read_text()


def test_other_model_versions_are_left_out_and_said(setup: dict[str, Path]) -> None:
    """The reference is model abab…; traffic of another model is counted, not compared."""
    ref = json.loads(setup["reference"].read_text())
    ref["model_sha256"] = "cd" * 32
    setup["reference"].write_text(json.dumps(ref))
    code, output = _run(setup, "--since", "1h")
    assert code == 0 and "left out: 10 predictions of other models" in output
    from imgclf.monitoring.drift_report import DriftReport

    report = DriftReport(("a", "b"), "cdcdcdcdcdcd", 0, {"abababababab": 10}, [])
    assert "Left out, served by other model versions: `abababababab` (10)." in markdown(report)


def test_strings_from_the_database_are_inert_in_the_markdown() -> None:
    """Versions and class names come from a file anyone with the volume can write."""
    from imgclf.monitoring.drift_report import Check, DriftReport, Section

    section = Section("Predicted classes", 40, 40)
    section.checks.append(Check("predicted", "constant", 0.0, 0.0, False, "always a|b\n# @team"))
    report = DriftReport(("a", "b"), "v|1\n<img src=x>", 40, {"@x\n# y": 3}, [section])
    md = markdown(report)
    assert "\n# " not in md  # no heading, no raw line break: each string is one code span
    assert "model `v|1\\n<img src=x>`:" in md and "`@x\\n# y` (3)" in md
    (row,) = [ln for ln in md.splitlines() if ln.startswith("| Predicted classes | predicted")]
    assert "`always a\\|b\\n# @team`" in row  # the pipe cannot end the cell


@pytest.mark.slow
def test_a_category_the_reference_never_had_is_drift() -> None:
    """Half the traffic is JPEG where the reference is all PNG; a third class appears."""
    from imgclf.evaluation.reference_profile import Reference
    from imgclf.monitoring.drift_report import build_report
    from imgclf.monitoring.traffic import Traffic

    rng = np.random.default_rng(0)

    def features(n: int, formats: list[str]) -> dict[str, list]:
        return {"brightness": list(rng.normal(0.3, 0.05, n)), "format": formats}

    predicted, confidence = list(rng.choice(["a", "b"], 200)), list(rng.uniform(0.5, 1, 200))
    ref = Reference("ab" * 32, ["a", "b", "c"], features(200, ["PNG"] * 200), predicted,
                    confidence, None, 200)  # fmt: skip
    predicted, confidence = list(rng.choice(["a", "b", "c"], 100)), list(rng.uniform(0.5, 1, 100))
    cur = Traffic(0, 1, "abababababab", features(100, ["PNG", "JPEG"] * 50), predicted, confidence)
    report, _ = build_report(ref, cur)
    verdicts = {s.title: s.verdict for s in report.sections}
    assert verdicts["Input features"] == "DRIFT in format"  # brightness did not move
    assert verdicts["Predicted classes"] == "DRIFT in predicted"
    assert verdicts["Confidence"] == "no drift"
    assert verdicts["Embedding"].startswith("not tested")
