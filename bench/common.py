"""Shared by the bench scripts: paths, the machine line, the one server launcher, tables.

One place for what every benchmark needs besides its own measurement, so the scripts
describe the machine, start servers and print tables the same way. The HTTP load client
is :mod:`loadgen`; writing a scenario's section of RESULTS.md is :mod:`results`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

# The same setting as stages/train.py, before torch loads (numerics: see bench_numerics.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # bench scripts run from a checkout, like stages/
BENCH = Path(__file__).resolve().parent


def machine() -> str:
    """CPU model, cores, GPU: what a reader needs to compare numbers."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    load = "load " + "/".join(f"{x:.1f}" for x in os.getloadavg())  # inflates wall clock
    return (
        f"{cpu} ({isa}), {os.cpu_count()} cores, {gpu}, Python {platform.python_version()}, {load}"
    )


def start_ready(cmd: list[str], port: int, env: dict[str, str], timeout: float = 120) -> Any:
    """Start a server process and return it once ``GET /ready`` on ``port`` answers 200.

    One launcher for every bench that runs servers (ours, the seed-style app, torch's):
    a raw socket, so it works before any HTTP client is imported and measures nothing.
    """
    import socket
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} not ready after {timeout:.0f} s")


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table (what both the terminal and RESULTS.md show)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def free_port() -> int:
    """A free TCP port on loopback (for a server this bench starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(model_dir: Path, src: Path = ROOT / "src", **extra: str) -> dict[str, str]:
    """The environment of a served model: ``src`` importable, ``IMGCLF_MODEL_DIR`` set."""
    return {**os.environ, "PYTHONPATH": str(src), "IMGCLF_MODEL_DIR": str(model_dir), **extra}


def uvicorn_cmd(port: int) -> list[str]:
    """The API app under uvicorn (one worker, no access log): what the digits benches serve."""
    return [sys.executable, "-m", "uvicorn", "imgclf.serving.app:create_app", "--factory",
            "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip


def stop(*procs: Any) -> None:
    """Terminate servers started by :func:`start_ready` and wait for them."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def versions() -> str:
    """Python, onnxruntime and torch versions (what served and timed the model)."""
    out = [f"python {platform.python_version()}"]
    for name in ("onnxruntime", "torch"):
        with contextlib.suppress(ImportError):
            out.append(f"{name} {__import__(name).__version__}")
    return ", ".join(out)


def run_tree(tree: Path, raw: Path, work: Path, params: dict) -> dict:
    """prepare → train → evaluate of checkout ``tree`` (its stage scripts, no DVC) on the
    ImageFolder ``raw``, in the new folder ``work``; the model card and the evaluation."""
    import json
    import subprocess

    import yaml

    from imgclf.jsonio import expand

    work.mkdir(parents=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    py = sys.executable
    steps = [
        [py, str(tree / "stages/prepare.py"), str(raw), "prepared", "prepare.json"],
        [py, str(tree / "stages/train.py"), "prepared", "models", "train"],
        [py, str(tree / "stages/evaluate.py"), "prepared", "models", "metrics"],
    ]
    for args in steps:
        subprocess.run(args, cwd=work, env=env, check=True, capture_output=True, text=True)
    card = json.loads((work / "models/model.json").read_text())
    evaluated = json.loads((work / "metrics/evaluate.json").read_text())
    return {"card": card, "eval": expand(evaluated)}  # flat: headline + detail


def copy_checkout(dest: Path) -> None:
    """A fresh clone's state in ``dest``: this checkout's tracked files, one commit."""
    import shutil
    import subprocess

    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if not (ROOT / rel).is_file():  # deleted in the work tree, not yet committed
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "b"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
