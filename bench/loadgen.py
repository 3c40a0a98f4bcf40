"""The one HTTP load generator of the benches: closed-loop keep-alive clients on loopback.

Every HTTP bench (``bench_api.py``, its photo scenario in ``photo_bench.py``,
``bench_monitor.py``) drives its servers through :func:`run`, so they all measure the
same way: ``concurrency`` connections, each sending its next request as soon as the
previous answer arrived (closed loop, HTTP/1.1 keep-alive, prebuilt request bytes, no
HTTP library, so that on a 2-core machine most of the CPU goes to the server being
measured). A :class:`Load` carries what every table reports: latency percentiles,
req/s, errors, the server's CPU time and the client's own CPU share (this process's
CPU time ÷ (wall time × usable cores)), so a result says what the client cost.

Every response must be a 200 whose body is byte-identical to the first one (same
image, same model: same answer); anything else counts as an error.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"


def cores() -> int:
    """CPU cores this process may run on (what the client's share is taken of)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its live descendants (uvicorn's worker processes)."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(tree_cpu_seconds(int(c)) for c in children)


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``IMGCLF_PROCESSES`` workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for c in children for p in _tree(int(c))]


def thread_counters(pid: int) -> dict[str, tuple[float, int]]:
    """Per thread of process ``pid`` and its descendants: (CPU seconds, voluntary context
    switches), with each process's main thread (a server's event loop; a dispatching
    parent's accept loop) under ``"loop"`` and the others summed under ``"other"`` (work
    threads, onnxruntime's, the recorder's). Linux /proc; {} elsewhere.

    A voluntary switch is a sleep: waiting for the GIL, for work, for the socket. Each
    sleep and wake-up costs CPU (0.2 ms on the 2-core VM the benches run on), so their
    number per request says where a server loses time that no profile of its code shows.
    """
    out = {"loop": (0.0, 0), "other": (0.0, 0)}
    tick = os.sysconf("SC_CLK_TCK")
    if not Path(f"/proc/{pid}/task").is_dir():
        return {}
    for proc in _tree(pid):
        try:
            tasks = [t.name for t in Path(f"/proc/{proc}/task").iterdir()]
        except OSError:  # the process ended meanwhile
            continue
        for tid in tasks:
            try:
                stat = Path(f"/proc/{proc}/task/{tid}/stat").read_text().rsplit(")", 1)[1]
                status = Path(f"/proc/{proc}/task/{tid}/status").read_text()
            except OSError:  # the thread ended meanwhile
                continue
            fields = stat.split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            sleeps = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
            key = "loop" if tid == str(proc) else "other"
            out[key] = (out[key][0] + cpu, out[key][1] + sleeps)
    return out


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
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Load:
    """One load run against one server."""

    latencies_ms: np.ndarray  # one per answered request (errors included)
    errors: int
    seconds: float  # wall time of the run
    client_cpu_s: float  # this process's CPU time during the run
    server_cpu_s: float = float("nan")  # the server's process tree, when its pid was given
    cores: int = 1
    # The server process's threads during the run (thread_counters): CPU s and sleeps.
    loop_cpu_s: float = float("nan")
    loop_sleeps: int = 0
    other_cpu_s: float = float("nan")
    other_sleeps: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.requests else float("nan")

    @property
    def client_share(self) -> float:
        """The client's CPU ÷ (wall time × cores): the part of the machine it took."""
        return self.client_cpu_s / (self.seconds * self.cores) if self.seconds else 0.0

    @property
    def server_cpu_ms(self) -> float:
        """Server CPU ms per request."""
        return 1000 * self.server_cpu_s / max(1, self.requests)

    def per_request(self) -> dict[str, float]:
        """The server's event loop and other threads: CPU ms and sleeps per request."""
        n = max(1, self.requests)
        return {
            "loop_cpu_ms": 1000 * self.loop_cpu_s / n,
            "loop_sleeps": self.loop_sleeps / n,
            "other_cpu_ms": 1000 * self.other_cpu_s / n,
            "other_sleeps": self.other_sleeps / n,
        }


def merge(parts: list[Load]) -> Load:
    """Several slices of load on the same server as one run."""
    return Load(
        np.concatenate([p.latencies_ms for p in parts]),
        sum(p.errors for p in parts),
        sum(p.seconds for p in parts),
        sum(p.client_cpu_s for p in parts),
        sum(p.server_cpu_s for p in parts),
        parts[0].cores,
        sum(p.loop_cpu_s for p in parts),
        sum(p.loop_sleeps for p in parts),
        sum(p.other_cpu_s for p in parts),
        sum(p.other_sleeps for p in parts),
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def _drive(
    port: int, request: bytes, concurrency: int, requests: int | None, seconds: float | None
) -> tuple[list[float], int, float]:
    """Keep ``concurrency`` requests in flight until ``requests`` were sent, or for
    ``seconds`` and at least one request per connection; (latencies ms, errors, wall s)."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    expected: list[bytes] = []
    start = time.perf_counter()

    def more() -> bool:
        if requests is not None:
            return sent < requests
        return time.perf_counter() - start < (seconds or 0.0) or sent < concurrency

    async def worker() -> None:
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while more():
                sent += 1
                t0 = time.perf_counter()
                try:
                    writer.write(request)
                    status, body = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                if not expected and status == 200:
                    expected.append(body)
                if status != 200 or body != expected[0]:
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def run(
    port: int,
    request: bytes,
    concurrency: int,
    *,
    requests: int | None = None,
    seconds: float | None = None,
    server_pid: int | None = None,
) -> Load:
    """Closed-loop load on ``127.0.0.1:port``: a fixed number of ``requests``, or
    ``seconds`` of it; the server's CPU is measured when ``server_pid`` is given."""
    if (requests is None) == (seconds is None):
        raise ValueError("give either requests or seconds")
    server0 = tree_cpu_seconds(server_pid) if server_pid else float("nan")
    threads0 = thread_counters(server_pid) if server_pid else {}
    client0 = time.process_time()
    lat, errors, wall = asyncio.run(_drive(port, request, concurrency, requests, seconds))
    client = time.process_time() - client0
    server = tree_cpu_seconds(server_pid) - server0 if server_pid else float("nan")
    load = Load(np.array(lat), errors, wall, client, server, cores())
    threads = thread_counters(server_pid) if server_pid else {}
    if threads0 and threads:
        # Threads that ended during the run drop out: their CPU is then in server_cpu_s only.
        d = {k: (threads[k][0] - threads0[k][0], threads[k][1] - threads0[k][1]) for k in threads}
        load.loop_cpu_s, load.loop_sleeps = d["loop"]
        load.other_cpu_s, load.other_sleeps = d["other"]
    return load
