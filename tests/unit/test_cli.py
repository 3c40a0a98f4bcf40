"""The `imgclf` console command: clear messages and exit codes on bad input."""

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, tool_env

IMGCLF = str(Path(sys.executable).parent / "imgclf")


def imgclf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMGCLF, *args], cwd=cwd, env=tool_env(ROOT), capture_output=True, text=True
    )


def test_predict_without_a_model_says_how_to_get_one(tmp_path: Path) -> None:
    proc = imgclf("predict", "x.png", "--model-dir", str(tmp_path / "models"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.onnx not found: run `dvc repro` (or `dvc pull`)" in proc.stderr


def test_check_params_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text().replace("\nlr:", "\nlearning_rate:"))
    proc = imgclf("check-params", str(bad), cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown key 'learning_rate'. Did you mean 'lr'?" in proc.stderr
    ok = imgclf("check-params", str(ROOT / "params.yaml"), cwd=tmp_path)
    assert ok.returncode == 0 and "is valid" in ok.stdout


def test_a_missing_extra_is_one_line_that_says_what_to_install(tmp_path: Path) -> None:
    """After `make install` alone (no monitor extra) `imgclf drift-report` used to die with
    a ModuleNotFoundError traceback. The missing package is simulated the way Python sees
    one that is not installed: ``sys.modules[name] = None`` makes its import fail."""
    code = (
        "import sys; sys.modules['evidently'] = None\n"
        "from imgclf.cli import app\n"
        "app(['drift-report', '--db', sys.argv[1]])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "none.db")],
        capture_output=True, text=True, env=tool_env(ROOT), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: this command needs the 'monitor' extra (the drift report (Evidently, pandas); "
        "missing: evidently): pip install -e '.[monitor]'"
    ]
    assert "Traceback" not in proc.stderr


def test_extras_are_the_requirements_files() -> None:
    """`pip install -e '.[serve]'` / `'.[monitor]'` install exactly the pinned files."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = config["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    assert extras == {
        "serve": {"file": ["requirements-serve.txt"]},
        "monitor": {"file": ["requirements-monitor.txt"]},
    }
    for spec in extras.values():
        for name in spec["file"]:
            lines = [ln for ln in (ROOT / name).read_text().splitlines() if ln.strip()]
            # setuptools reads plain requirement lines only: no -r includes, no options.
            assert not [ln for ln in lines if ln.lstrip().startswith("-")], name
