"""The same weights on any x86-64 CPU: train natively and on emulated CPUs, compare bytes.

``qemu-x86_64 -cpu MODEL`` runs the real stage scripts as on another CPU: its CPUID
(vendor, instruction sets, cache sizes) is what torch, oneDNN, MKL and onnxruntime see
when they pick kernels. An AMD and an Intel model, both AVX2 without AVX-512, are
compared with this machine, whatever it is. Emulation is 40-60x slower, so the run is
tiny (a 250-image slice of the digits, two epochs) but goes through every numeric step
of the default pipeline: BatchNorm, dropout, AdamW with one-cycle, the ONNX export and
onnxruntime scoring through the :class:`Predictor` that ``evaluate`` and the API use
(``evaluate``'s metrics are plain counting and numpy float64 sums of those numbers).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, merge, missing_tool, run, tool_env

pytestmark = pytest.mark.slow

CPUS = ("EPYC-Milan", "Haswell")  # AMD Zen 3, Intel 4th gen: AVX2, no AVX-512
PER_CLASS = 25
SHRUNK = {"epochs": 2, "batch_size": 32, "data": {"dataset": "raw"}}
OUTPUTS = ("models/model.onnx", "probabilities.npy")
# What evaluate computes with onnxruntime, without its sklearn/matplotlib start-up
# (a minute under emulation).
SCORE = """
import sys
from pathlib import Path
import numpy as np
from imgclf.data.prepared_files import load_split
from imgclf.artifact.predictor import Predictor
out = Path(sys.argv[1])
images, _ = load_split(Path("prepared"), "test")
np.save(out / "probabilities.npy", Predictor(out / "models").predict_proba(images, 256))
"""


def emulator() -> list[str] | None:
    """The command prefix that runs a program as on another CPU, or None if none is here."""
    qemu = shutil.which("qemu-x86_64")
    if qemu:
        return [qemu, "-cpu"]
    script = ROOT.parent / "shared" / "tools" / "other-cpu.sh"  # installs qemu-user (root)
    if script.is_file():
        return ["bash", str(script), "--cpu"]
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny digits ImageFolder, params shrunk from the real file, prepared natively."""
    from imgclf.data.digits import write_digits

    work = tmp_path_factory.mktemp("xcpu")
    full = work / "full"
    write_digits(full)
    for cls in sorted(p for p in full.iterdir() if p.is_dir()):
        (work / "raw" / cls.name).mkdir(parents=True)
        for png in sorted(cls.glob("*.png"))[:PER_CLASS]:
            shutil.copy2(png, work / "raw" / cls.name / png.name)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), SHRUNK)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, str(ROOT / "stages/prepare.py"), "raw", "prepared", "prepare.json"], work)
    return work


def pipeline(work: Path, name: str, prefix: list[str]) -> subprocess.Popen[str]:
    """Train, then score the test split, into ``work/name``; both under ``prefix``."""
    out = work / name
    (work / "score.py").write_text(SCORE)
    py = " ".join([*prefix, sys.executable])
    cmd = f"{py} {ROOT / 'stages/train.py'} prepared {out}/models {out}/live && {py} score.py {out}"
    log = (work / f"{name}.log").open("w")
    env = tool_env(work)
    env["PYTHONPATH"] = str(ROOT / "src")
    return subprocess.Popen(
        ["bash", "-c", cmd], cwd=work, env=env, stdout=log, stderr=log, text=True
    )


def test_default_numerics_give_the_same_bytes_on_other_cpus(workdir: Path) -> None:
    prefix = emulator()
    if prefix is None:
        missing_tool("no CPU emulator: install qemu-user (make system-deps) to run this test")
    jobs = {"native": pipeline(workdir, "native", [])}
    for cpu in CPUS:
        jobs[cpu] = pipeline(workdir, cpu, [*prefix, cpu])
    for name, proc in jobs.items():
        code = proc.wait(timeout=600)
        log = (workdir / f"{name}.log").read_text()
        assert code == 0, f"{name} failed:\n{log[-3000:]}"
    card = (workdir / "native/models/model.json").read_text()
    assert '"numerics": "portable-cpu"' in card
    for rel in OUTPUTS:
        native = (workdir / "native" / rel).read_bytes()
        for cpu in CPUS:
            assert (workdir / cpu / rel).read_bytes() == native, f"{rel} differs on {cpu}"


# golden.json holds the portable session's answers; evaluate.json also the fast session's
# agreement with them, as a CPU-independent bound (imgclf.artifact.agreement).
EVALUATED = ("models/ood.json", "models/reference.json", "models/golden.json",
             "metrics/evaluate.json", "metrics/predictions.csv")  # fmt: skip


@pytest.mark.heavy
def test_evaluate_stage_writes_the_same_bytes_on_an_avx2_cpu(workdir: Path) -> None:
    """The whole evaluate stage — metrics, the reference profile, the OOD statistics
    (numpy, BLAS matmuls, sklearn's baseline), the golden batch and the fast session's
    agreement bound — natively and on an emulated AVX2 CPU.

    These bytes are in dvc.lock too. About 2 minutes under emulation (sklearn's import
    and the generated OOD sets), hence `heavy`; measured once by hand on 2026-11-30 on the
    full digits default as well (AMD Zen 4 AVX-512 vs emulated EPYC-Milan: identical).
    """
    prefix = emulator()
    if prefix is None:
        missing_tool("no CPU emulator: install qemu-user (make system-deps) to run this test")
    env = tool_env(workdir)
    env["PYTHONPATH"] = str(ROOT / "src")
    models = workdir / "eval-model"
    if not (models / "model.onnx").exists():
        train = [sys.executable, str(ROOT / "stages/train.py"), "prepared", str(models), "live"]
        subprocess.run(train, cwd=workdir, env=env, check=True, capture_output=True)
    for name, pre in (("eval-native", []), ("eval-EPYC-Milan", [*prefix, "EPYC-Milan"])):
        shutil.copytree(models, workdir / name / "models")
        cmd = [*pre, sys.executable, str(ROOT / "stages/evaluate.py"), "prepared",
               f"{name}/models", f"{name}/metrics"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in EVALUATED:
        native = (workdir / "eval-native" / rel).read_bytes()
        assert (workdir / "eval-EPYC-Milan" / rel).read_bytes() == native, rel
