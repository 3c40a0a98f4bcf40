"""API throughput and latency: ``/predict`` served by onnxruntime (ours) vs torch eager.

Measures, on loopback, req/s, images/s, p50/p90/p99/max latency, the server's CPU per
request and the load client's own CPU share for ``/predict`` (one image) and
``/predict/batch`` (``--batch-size`` images) at each concurrency level. Baseline: the
same app (:mod:`torch_server`: same upload parsing and preprocessing) with the model in
torch eager instead of onnxruntime, measured in the same run, one server at a time so
they do not compete for the CPU. Goal: onnxruntime ``/predict`` at concurrency 8 has
p99 <= 15 ms with zero errors. Load: :mod:`loadgen` (closed-loop keep-alive client);
every answer must be a 200 identical to the first one.

``--scenario photos`` is the photo-model scenario instead (224 px mobilenet_v3_small and
resnet18 on real-size JPEG/PNG files, ``imgclf serve`` vs a seed-style app vs the
in-process ceiling): see :mod:`photo_bench`.

    python bench/bench_api.py                     # ~3 min; replaces the "api" section
    python bench/bench_api.py --quick             # seconds; records nothing
    python bench/bench_api.py --scenario photos   # ~8 min; replaces the "photos" section
    python bench/bench_api.py --scenario photos --quick   # ~1 min, a small CNN
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import common
import loadgen
import results
from common import BENCH, ROOT

GOAL_P99_MS, GOAL_CONCURRENCY = 15.0, 8


@dataclass
class Row:
    """One (backend, endpoint, concurrency) load run."""

    backend: str
    endpoint: str
    concurrency: int
    images_per_request: int
    load: loadgen.Load

    def cells(self) -> list[str]:
        r = self.load
        return [self.backend, self.endpoint, str(self.concurrency), str(r.requests),
                str(r.errors), f"{r.rps:.0f}", f"{r.rps * self.images_per_request:.0f}",
                f"{r.pct(50):.2f}", f"{r.pct(90):.2f}", f"{r.pct(99):.2f}",
                f"{r.latencies_ms.max():.2f}", f"{r.server_cpu_ms:.3f}",
                f"{r.client_share:.0%}"]  # fmt: skip


# Server CPU per request (user + system time of the server process, from /proc): far
# less sensitive than req/s to other jobs sharing the machine, so revisions compare fairly.
# The client's CPU share (its CPU ÷ wall × cores) says what the load generator cost.
HEADER = ["backend", "endpoint", "concurrency", "requests", "errors", "req/s", "images/s",
          "p50 ms", "p90 ms", "p99 ms", "max ms", "server CPU ms/req",
          "client CPU share"]  # fmt: skip


def start_server(
    backend: str, model_dir: Path, port: int, max_batch: int, src: Path = ROOT / "src"
) -> subprocess.Popen:
    env = common.server_env(model_dir, src, IMGCLF_MAX_BATCH=str(max(32, max_batch)))
    if backend == "onnxruntime":
        cmd = common.uvicorn_cmd(port)
    else:
        cmd = [sys.executable, str(BENCH / "torch_server.py"), "--model-dir", str(model_dir),
               "--port", str(port)]  # fmt: skip
    return common.start_ready(cmd, port, env, timeout=60)


def run_backend(backend: str, args: argparse.Namespace, image: bytes) -> list[Row]:
    port = common.free_port()
    proc = start_server(backend, args.model_dir, port, args.batch_size, args.src)
    rows: list[Row] = []
    try:
        for endpoint, field, count in (("/predict", "file", 1),
                                       ("/predict/batch", "files", args.batch_size)):  # fmt: skip
            request = loadgen.multipart_request(endpoint, field, image, count, port)
            loadgen.run(port, request, 4, requests=args.warmup)
            for concurrency in args.concurrency:
                load = loadgen.run(port, request, concurrency, requests=args.requests,
                                   server_pid=proc.pid)  # fmt: skip
                rows.append(Row(backend, endpoint, concurrency, count, load))
                print("| " + " | ".join(rows[-1].cells()) + " |", flush=True)
    finally:
        common.stop(proc)
    return rows


def load_line() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


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
    parser.add_argument("--quick", action="store_true", help="a few hundred requests")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="code to serve, e.g. another revision's src/")  # fmt: skip
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
        "--ours-set",
        action="append",
        default=[],
        metavar="IMGCLF_VAR=VALUE",
        help="a setting for ours' server only, e.g. IMGCLF_PROCESSES=2",
    )
    photos.add_argument(
        "--work",
        type=Path,
        default=BENCH / ".work",
        help="generated photos and trained models (reused when current)",
    )
    results.add_options(parser)
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

    start_load = load_line()
    print(f"machine: {common.machine()}\n{common.versions()}\n", flush=True)
    print(common.table(HEADER, []), flush=True)
    rows = [r for b in args.backends.split(",") for r in run_backend(b, args, image)]

    goal = [r for r in rows if r.backend == "onnxruntime" and r.endpoint == "/predict"
            and r.concurrency == GOAL_CONCURRENCY]  # fmt: skip
    lines = [
        f"- software: {common.versions()}",
        f"- {args.requests} requests per row after {args.warmup} warm-up requests; "
        f"/predict/batch sends {args.batch_size} images per request; image "
        f"{len(image)} bytes; one uvicorn worker, onnxruntime/torch 1 intra-op thread; "
        "client and server share the machine's cores.",
        f"- load average at the start {start_load}, at the end {load_line()} (1 / 5 / 15 min)",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    if goal:
        g = goal[0].load
        ok = g.pct(99) <= GOAL_P99_MS and g.errors == 0
        lines.append(
            f"- goal (onnxruntime /predict, concurrency {GOAL_CONCURRENCY}: p99 <= "
            f"{GOAL_P99_MS:g} ms, 0 errors over {g.requests} requests): "
            f"{'met' if ok else 'NOT met'} (p99 {g.pct(99):.2f} ms, {g.errors} errors)"
        )
    body = "\n".join(lines) + "\n\n" + common.table(HEADER, [r.cells() for r in rows])
    results.report(args, "api", "API: onnxruntime vs torch eager, digits (bench_api.py)", body,
                   "python bench/bench_api.py")  # fmt: skip
    return 1 if sum(r.load.errors for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
