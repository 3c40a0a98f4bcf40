"""Loopback benchmark of the API: onnxruntime (what we serve) vs. torch eager, same app.

For each backend a real uvicorn server is started (one at a time, so they do
not compete for the CPU), then ``/predict`` (one image) and ``/predict/batch``
(``--batch-size`` images) are hammered at each concurrency level by a small
asyncio HTTP/1.1 client with keep-alive connections. The client is deliberately
minimal (prebuilt request bytes, no HTTP library) so that on a 2-core machine
most of the CPU goes to the server being measured.

Every response must be a 200 whose body is byte-identical to the first one
(same image, same model: same answer); anything else counts as an error.

    python bench/bench_api.py                 # full run, appends to bench/RESULTS.md
    python bench/bench_api.py --quick         # seconds; what the test runs

``--scenario photos`` measures photo models on real-size images instead (224 px
mobilenet_v3_small and resnet18, ``imgclf serve`` vs a seed-style app vs the
in-process ceiling): see :mod:`photo_bench`.

    python bench/bench_api.py --scenario photos           # ~8 min, appends to RESULTS.md
    python bench/bench_api.py --scenario photos --quick   # ~40 s, small CNN, not recorded
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import common
import numpy as np
from common import ROOT

BENCH = Path(__file__).resolve().parent
GOAL_P99_MS, GOAL_CONCURRENCY = 15.0, 8


@dataclass
class Result:
    backend: str
    endpoint: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    images_per_request: int
    server_cpu_s: float = float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")
        )

    def row(self) -> str:
        return (
            f"| {self.backend} | {self.endpoint} | {self.concurrency} | {self.requests} | "
            f"{self.errors} | {self.rps:.0f} | {self.rps * self.images_per_request:.0f} | "
            f"{self.pct(50):.2f} | {self.pct(90):.2f} | {self.pct(99):.2f} | "
            f"{self.latencies_ms.max():.2f} | {1000 * self.server_cpu_s / self.requests:.3f} |"
        )


# Server CPU per request (user + system time of the server process, from /proc): far
# less sensitive than req/s to other jobs sharing the machine, so revisions compare fairly.
HEADER = (
    "| backend | endpoint | concurrency | requests | errors | req/s | images/s | p50 ms | "
    "p90 ms | p99 ms | max ms | server CPU ms/req |\n" + "|---" * 12 + "|"
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def multipart_request(path: str, field: str, image: bytes, count: int, port: int) -> bytes:
    """A complete HTTP/1.1 keep-alive request uploading ``count`` copies of ``image``."""
    boundary = uuid.uuid4().hex
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="img{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + image
        + b"\r\n"
        for i in range(count)
    )
    body = parts + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _load(port: int, request: bytes, total: int, concurrency: int) -> tuple[list, int, float]:
    """Send ``total`` requests over ``concurrency`` connections; latencies in ms, errors."""
    latencies: list[float] = []
    errors = 0
    remaining = total
    expected: list[bytes] = []

    async def worker() -> None:
        nonlocal remaining, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    writer.write(request)
                    status, body = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                if not expected and status == 200:
                    expected.append(body)
                if status != 200 or body != expected[0]:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    backend: str, model_dir: Path, port: int, max_batch: int, src: Path = ROOT / "src"
) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "IMGCLF_MODEL_DIR": str(model_dir),
        "IMGCLF_MAX_BATCH": str(max(32, max_batch)),
    }
    if backend == "onnxruntime":
        cmd = [sys.executable, "-m", "uvicorn", "imgclf.serving.app:create_app", "--factory",
               "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    else:
        cmd = [sys.executable, str(BENCH / "torch_server.py"), "--model-dir", str(model_dir),
               "--port", str(port)]  # fmt: skip
    return common.start_ready(cmd, port, env, timeout=60)


def run_backend(backend: str, args: argparse.Namespace, image: bytes) -> list[Result]:
    port = free_port()
    proc = start_server(backend, args.model_dir, port, args.batch_size, args.src)
    results: list[Result] = []
    try:
        for endpoint, field, count in (("/predict", "file", 1),
                                       ("/predict/batch", "files", args.batch_size)):  # fmt: skip
            request = multipart_request(endpoint, field, image, count, port)
            asyncio.run(_load(port, request, args.warmup, 4))
            for concurrency in args.concurrency:
                cpu = cpu_seconds(proc.pid)
                lat, errors, seconds = asyncio.run(_load(port, request, args.requests, concurrency))
                results.append(Result(backend, endpoint, concurrency, args.requests, errors,
                                      seconds, np.array(lat), count,
                                      cpu_seconds(proc.pid) - cpu))  # fmt: skip
                print(results[-1].row(), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return results


def machine() -> str:
    """The shared machine line plus the load average, since client and server share cores."""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{common.machine()}, load average at start {load}"


def versions() -> str:
    import onnxruntime

    out = [f"python {platform.python_version()}", f"onnxruntime {onnxruntime.__version__}"]
    try:
        import torch

        out.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(out)


def default_image() -> Path:
    digits = ROOT / "data" / "raw" / "digits"
    return next(iter(sorted(digits.glob("*/*.png"))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark /predict and /predict/batch.")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--image", type=Path, help="image to upload [a digits test PNG]")
    parser.add_argument("--requests", type=int, default=10_000, help="per configuration")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32])  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backends", default="onnxruntime,torch")
    parser.add_argument("--quick", action="store_true", help="a few hundred requests, no file")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="code to serve, e.g. another revision's src/")  # fmt: skip
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--note", default="", help="free text for the results section")
    parser.add_argument(
        "--scenario",
        choices=["digits", "photos"],
        default="digits",
        help="photos: 224 px photo models on real-size JPEG/PNG files",
    )
    photos = parser.add_argument_group("photos scenario")
    photos.add_argument("--models", default="mobilenet_v3_small,resnet18")
    photos.add_argument("--seconds", type=float, default=6.0, help="per row and server")
    photos.add_argument("--rounds", type=int, default=3, help="slices a row's time is cut in")
    photos.add_argument("--train-images", type=int, default=160)
    photos.add_argument(
        "--work",
        type=Path,
        default=BENCH / ".work",
        help="generated photos and trained models (reused when current)",
    )
    args = parser.parse_args(argv)
    if args.scenario == "photos":
        import photo_bench

        if args.quick:
            args.models, args.concurrency, args.seconds = "small_cnn", [GOAL_CONCURRENCY], 0.6
            args.rounds = 2
            args.train_images = 48
        return photo_bench.run(args)
    if args.quick:
        args.requests, args.warmup = 100, 20
    image = (args.image or default_image()).read_bytes()

    env = machine()
    print(f"machine: {env}\n{versions()}\n\n{HEADER}", flush=True)
    results = [r for b in args.backends.split(",") for r in run_backend(b, args, image)]

    goal = [r for r in results if r.backend == "onnxruntime" and r.endpoint == "/predict"
            and r.concurrency == GOAL_CONCURRENCY]  # fmt: skip
    verdict = ""
    if goal:
        g = goal[0]
        ok = g.pct(99) <= GOAL_P99_MS and g.errors == 0
        verdict = (
            f"goal (onnxruntime /predict, concurrency {GOAL_CONCURRENCY}: p99 <= "
            f"{GOAL_P99_MS:g} ms, 0 errors over {g.requests} requests): "
            f"{'met' if ok else 'NOT met'} (p99 {g.pct(99):.2f} ms, {g.errors} errors)"
        )
        print(verdict)
    errors = sum(r.errors for r in results)
    if not args.quick:
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = [
            f"\n## {when}\n",
            f"- machine: {env}",
            f"- software: {versions()}",
            f"- {args.requests} requests per row after {args.warmup} warm-up requests; "
            f"/predict/batch sends {args.batch_size} images per request; image "
            f"{len(image)} bytes; one uvicorn worker, onnxruntime/torch 1 intra-op thread; "
            "client and server share the machine's cores.",
        ]
        end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        section.append(f"- load average at the end: {end_load} (1 / 5 / 15 min)")
        if args.note:
            section.append(f"- note: {args.note}")
        if verdict:
            section.append(f"- {verdict}")
        section += ["", HEADER, *(r.row() for r in results), ""]
        new = not args.out.exists()
        with args.out.open("a") as fh:
            if new:
                fh.write("# API benchmark results\n\nWritten by `python bench/bench_api.py`.\n")
            fh.write("\n".join(section))
        print(f"appended to {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
