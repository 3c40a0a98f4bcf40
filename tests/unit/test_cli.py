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
