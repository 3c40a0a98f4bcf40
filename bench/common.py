"""Shared by the bench scripts: machine description and the RESULTS.md appender."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

# The same setting as stages/train.py, before torch loads (numerics: see bench_numerics.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # bench scripts run from a checkout, like stages/
RESULTS = Path(__file__).with_name("RESULTS.md")


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


def report(title: str, body: str, results: Path | None) -> None:
    """Print, and append to RESULTS.md (or ``results``) with machine and date."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title}\n\n{stamp} — {machine()}\n\n{body}\n"
    print(text)
    if results is not None:
        with results.open("a") as fh:
            fh.write(text)
