"""Requests per second of the API under different HTTP servers (the choice in
docs/serving-edge.md was made with this script).

Why a script of its own: the choice of server must not make serving slower, so
each candidate runs the same app, model and load (``/predict`` with one small
PNG, keep-alive, a fixed concurrency) on the same machine. The client uses raw
keep-alive sockets, not httpx, so that on a 2-core machine it costs as little
CPU as possible and the server is what is measured.

    python -m tests.api.serverbench --model-dir models --image data/raw/digits/5/0005.png
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.api.hostile import multipart, read_response
from tests.support import ROOT, free_port, http_ok, tool_env, wait_until

APP = "imgclf.serving.app:create_app"
# name → command line (``{port}`` filled in); each runs the app with one worker process.
CANDIDATES: dict[str, list[str]] = {
    "edge (uvicorn+httptools+imgclf.serving.edge)": [
        "-m", "imgclf.serving", "--host", "127.0.0.1", "--port", "{port}", "--no-access-log"],
    "uvicorn+httptools (no edge limits)": [
        "-m", "uvicorn", APP, "--factory", "--http", "httptools", "--port", "{port}",
        "--no-access-log"],
    "uvicorn+h11": [
        "-m", "uvicorn", APP, "--factory", "--http", "h11", "--port", "{port}", "--no-access-log"],
    "granian (asgi)": [
        "-m", "granian", "--interface", "asgi", "--factory", APP, "--port", "{port}",
        "--workers", "1", "--no-access-log", "--http", "1"],
    "hypercorn (uvloop)": [
        "-m", "hypercorn", "--worker-class", "uvloop", "--bind", "127.0.0.1:{port}",
        f"{APP}()"],
}  # fmt: skip


def _request(port: int, image: bytes) -> bytes:
    body = multipart("file", [("x.png", image)], "bench")
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary=bench\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def load(port: int, image: bytes, requests: int, concurrency: int) -> tuple[float, int]:
    """``requests`` POSTs over ``concurrency`` keep-alive connections: (req/s, errors)."""
    raw = _request(port, image)
    per = requests // concurrency
    errors: list[int] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for _ in range(per):
                sock.sendall(raw)
                status, _ = read_response(sock, timeout=30)
                if status != 200:
                    errors.append(status)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * concurrency / (time.perf_counter() - start), len(errors)


def measure(name: str, args: list[str], env: dict[str, str], image: bytes, n: int, c: int,
            rounds: int) -> list[float]:  # fmt: skip
    port = free_port()
    cmd = [sys.executable, *(a.replace("{port}", str(port)) for a in args)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited before it was ready")
            return http_ok(f"http://127.0.0.1:{port}/ready", timeout=1)

        wait_until(ready, 60, f"{name} ready", every=0.2)
        load(port, image, 100, c)  # warm-up
        out = []
        for _ in range(rounds):
            rate, errors = load(port, image, n, c)
            if errors:
                raise RuntimeError(f"{name}: {errors} errors")
            out.append(rate)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="candidate names to run (substring match)")
    a = parser.parse_args()
    # Rate limits off for the measurement: one client address sends everything here.
    env = {**tool_env(ROOT), "IMGCLF_MODEL_DIR": str(a.model_dir), "IMGCLF_CLIENT_RATE": "0"}
    cpu = platform.processor() or "?"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print(f"CPU: {cpu}, {os.cpu_count()} cores; /predict, {a.requests} requests, "
          f"concurrency {a.concurrency}, {a.rounds} rounds")  # fmt: skip
    image = a.image.read_bytes()
    for name, args in CANDIDATES.items():
        if a.only and not any(o in name for o in a.only):
            continue
        rates = measure(name, args, env, image, a.requests, a.concurrency, a.rounds)
        print(f"| {name} | min {min(rates):.0f} | median {statistics.median(rates):.0f} req/s |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
