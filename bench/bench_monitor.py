"""What recording costs the API: req/s with monitoring off vs on, as a ratio within one run.

Three real uvicorn servers on the same model: monitoring off, ``IMGCLF_MONITOR_DB``
on, and on with 1 % of uploads sampled to disk. The load alternates between them in
rounds (off, on, sampled, off, on, …), so a change in the machine's load during the run
hits all three alike; the ratio of their summed req/s is the overhead. Server CPU per
request (from /proc) is reported too: it is less sensitive to neighbours than req/s.

Two uploads: the 8×8 digits PNG (inference is tiny, so the recorder's share is the
largest it can be) and a 600×400 photo-like JPEG (decoding dominates, as in real use).

    python bench/bench_monitor.py             # appends to bench/RESULTS.md
    python bench/bench_monitor.py --quick     # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_api
import common
import numpy as np
from common import ROOT

GOAL_OVERHEAD = 0.05  # recording may cost at most 5 % of req/s
MODES = {
    "off": {},
    "monitor": {"IMGCLF_MONITOR_DB": "{tmp}/monitor.db"},
    "monitor + 1 % samples": {
        "IMGCLF_MONITOR_DB": "{tmp}/sampled.db",
        "IMGCLF_SAMPLE_DIR": "{tmp}/samples",
        "IMGCLF_SAMPLE_RATE": "0.01",
    },
}


def lscpu_line() -> str:
    """`lscpu` model name and core count, and the load average now."""
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {len(os.sched_getaffinity(0))} cores usable, load average {load}"


def photo() -> bytes:
    """A 600×400 JPEG with texture (so it decodes like a photo, not like a flat block)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:400, 0:600]
    base = np.stack([x * 0.4, y * 0.6, (x + y) * 0.2], -1) + rng.normal(0, 20, (400, 600, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def start(mode: str, model_dir: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = bench_api.free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "IMGCLF_MODEL_DIR": str(model_dir)}
    env |= {k: v.format(tmp=tmp) for k, v in MODES[mode].items()}
    cmd = [sys.executable, "-m", "uvicorn", "imgclf.api:create_app", "--factory",
           "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server ({mode}) exited with {proc.returncode}")
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server ({mode}) not ready after 60 s")


def measure(args: argparse.Namespace, image_name: str, image: bytes, tmp: Path) -> list[list]:
    """Rounds of load on each mode in turn; one table row per mode.

    The order of the modes rotates from round to round, and the ratio to "off" is taken
    per round and then the median: a neighbour's burst of CPU use lands in one round
    and moves one ratio, not the result.
    """
    servers = {mode: start(mode, args.model_dir, tmp) for mode in MODES}
    modes = list(MODES)
    runs: dict[str, list[tuple[float, float, int]]] = {m: [] for m in modes}  # rps, cpu, errors
    try:
        for _, port in servers.values():  # warm-up
            request = bench_api.multipart_request("/predict", "file", image, 1, port)
            asyncio.run(bench_api._load(port, request, args.warmup, 4))
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                proc, port = servers[mode]
                request = bench_api.multipart_request("/predict", "file", image, 1, port)
                cpu = bench_api.cpu_seconds(proc.pid)
                _, errors, seconds = asyncio.run(
                    bench_api._load(port, request, args.requests, args.concurrency)
                )
                cpu = (bench_api.cpu_seconds(proc.pid) - cpu) / args.requests
                runs[mode].append((args.requests / seconds, cpu, errors))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=30)
    rows = []
    for mode in modes:
        rps = [x[0] for x in runs[mode]]
        ratios = [a / b[0] for a, b in zip(rps, runs["off"], strict=True)]
        cpu = [x[1] / b[1] for x, b in zip(runs[mode], runs["off"], strict=True)]
        rows.append([
            image_name, mode, args.requests * args.rounds, sum(x[2] for x in runs[mode]),
            f"{np.median(rps):.0f}", f"{np.median(ratios):.3f}",
            f"{min(ratios):.3f}–{max(ratios):.3f}",
            f"{1000 * np.median([x[1] for x in runs[mode]]):.3f}", f"{np.median(cpu):.3f}",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Monitoring overhead on /predict.")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--requests", type=int, default=1000, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="a few hundred requests, not kept")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.warmup = 100, 1, 20
    if not (args.model_dir / "model.onnx").is_file():
        print(f"{args.model_dir}/model.onnx missing: run `dvc repro` first", file=sys.stderr)
        return 2
    raw = args.model_dir.resolve().parent / "data" / "raw" / "digits"
    digits = next(iter(sorted(raw.glob("*/*.png"))), None)
    images = {"digits 8×8 PNG": digits.read_bytes()} if digits else {}
    images["600×400 JPEG"] = photo()
    start_line = lscpu_line()
    rows: list[list] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, image in images.items():
            rows += measure(args, name, image, Path(tmp))
    worst = min(float(r[5]) for r in rows if r[1] != "off")
    verdict = "met" if worst >= 1 - GOAL_OVERHEAD else "NOT met"
    header = ["upload", "mode", "requests", "errors", "req/s (median)", "req/s ratio to off",
              "range of rounds", "server CPU ms/req", "CPU ratio to off"]  # fmt: skip
    lines = [
        f"- machine (lscpu): {start_line}; at the end: {lscpu_line().rsplit(', ', 1)[1]}",
        f"- {args.rounds} rounds × {args.requests} /predict requests per mode, concurrency "
        f"{args.concurrency}; the modes take turns within each round (order rotating), ratios "
        "to off are per round, then the median; one uvicorn worker each",
        f"- goal (recording costs < {GOAL_OVERHEAD:.0%} of req/s): {verdict} "
        f"(lowest median req/s ratio {worst:.3f})",
        "",
        common.table(header, rows),
    ]
    body = "\n".join(lines)
    common.report(
        "Monitoring overhead (bench_monitor.py)", body, None if args.quick else common.RESULTS
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
