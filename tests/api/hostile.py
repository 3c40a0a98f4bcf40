"""Hostile inputs and clients for the API tests, made by the test (nothing downloaded).

Each generator reproduces one finding of issue 9: files that are cheap to send
and expensive to open, files whose magic bytes lie, and clients that send
their body too slowly or hang up half-way.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from tests.api.samples import _png_chunk, encode


def com_marker_jpeg(markers: int) -> bytes:
    """A valid 8×8 JPEG with ``markers`` empty COM segments (4 bytes each) after SOI.

    Pillow parses every marker in Python when it opens the file: ~1.5 s per MB.
    """
    good = encode(Image.new("L", (8, 8), 128), "JPEG")
    return good[:2] + b"\xff\xfe\x00\x02" * markers + good[2:]


def ztxt_png(digit: Image.Image, chunks: int = 60) -> bytes:
    """A small valid PNG carrying ``chunks`` zTXt chunks that each inflate to 1 MB.

    ~1 kB per chunk on the wire; Pillow inflates them all (up to 64 MB by default)
    while *opening* the file, before a single pixel is decoded.
    """
    png = encode(digit, "PNG")
    text = zlib.compress(b"\0" * (1024 * 1024 - 1), 9)
    extra = b"".join(_png_chunk(b"zTXt", b"k%d\0\0" % i + text) for i in range(chunks))
    ihdr_end = 8 + 25  # signature + IHDR chunk
    return png[:ihdr_end] + extra + png[ihdr_end:]


def wide_png(size: int = 6324) -> bytes:
    """A 16-bit grayscale ``size``×``size`` PNG: ~0.35 MB sent, 80 MB decoded (40 MP)."""
    rows = np.zeros((size, size), dtype=np.uint16)
    rows[::97, :] = 65535  # a few lines so it is not entirely flat
    return encode(Image.fromarray(rows), "PNG", compress_level=9)


def pcd_impostor(magic: bytes) -> bytes:
    """Starts like a PNG/JPEG (``magic``) but is not one; Pillow's PCD plugin accepts it.

    Without ``formats=``, once the PNG/JPEG plugin gives up, Pillow tries every
    other plugin: PCD needs only ``PCD_`` at offset 2048 and decodes a 768×512
    RGB image from what follows.
    """
    data = bytearray(magic + b"\0" * (2048 - len(magic)))
    data += b"PCD_" + b"\0" * 1535
    data += b"\x80" * (96 * 2048 + 768 * 512 * 3 // 2 + 4096 - len(data))
    return bytes(data)


def lab_tiff() -> bytes:
    """A valid LAB-mode TIFF: Pillow opens it but cannot convert it to L or RGB."""
    return encode(Image.new("LAB", (32, 32), (50, 0, 0)), "TIFF")


def multipart(field: str, files: list[tuple[str, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body, built by hand (to control the boundary)."""
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for name, data in files
    )
    return parts + f"--{boundary}--\r\n".encode()


def raw_request(url: str, path: str, body_length: int, boundary: str = "hostile") -> bytes:
    """Request line and headers of a multipart POST announcing ``body_length`` bytes."""
    host = urlsplit(url).netloc
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def read_response(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """Status and body of the one response on ``sock`` (``Connection`` may close after it)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def trickle(url: str, path: str, seconds: float, every: float = 0.2) -> tuple[int, bytes, float]:
    """A slow client: headers, then a few bytes of body every ``every`` s, for ``seconds``.

    Returns the status and body the server answered with, and when (seconds
    after the headers); raises ``TimeoutError`` if it never answers.
    """
    body_length = 1024 * 1024
    with connect(url) as sock:
        sock.sendall(raw_request(url, path, body_length))
        start = time.monotonic()
        sock.sendall(b"--hostile\r\n")
        sock.setblocking(False)
        while time.monotonic() - start < seconds:
            try:
                sock.sendall(b"x" * 8)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server answered
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            time.sleep(every)
        sock.setblocking(True)
        status, body = read_response(sock, timeout=max(1.0, seconds))
        return status, body, time.monotonic() - start


def hang_up(url: str, path: str, sent: int = 100_000) -> None:
    """A client that announces 1 MB, sends ``sent`` bytes of it and closes the connection."""
    with connect(url) as sock:
        sock.sendall(raw_request(url, path, 1024 * 1024))
        sock.sendall(b"--hostile\r\nContent-Disposition: form-data; name=\"file\"; "
                     b"filename=\"a.png\"\r\n\r\n\x89PNG\r\n\x1a\n")  # fmt: skip
        sock.sendall(b"\0" * sent)
        # Reset only once the server's kernel has every byte (nothing left unsent here),
        # so the server sees the head and part of the body, then the reset.
        wait_sent(sock, timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def wait_sent(sock: socket.socket, timeout: float) -> None:
    """Poll until the peer has acknowledged every byte written to ``sock`` (Linux
    ``SIOCOUTQ``: bytes not yet acknowledged), or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if unsent == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{unsent} bytes still unacknowledged after {timeout} s")
        time.sleep(0.005)


@dataclass
class HealthProbe:
    """Polls ``/health`` from its own thread; latencies in ms while it runs."""

    url: str
    every: float = 0.01
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def _loop(self, stop: threading.Event) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    resp = client.get("/health")
                    if resp.status_code != 200:
                        self.failures.append(f"{resp.status_code} {resp.text}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append((time.perf_counter() - start) * 1000)
                time.sleep(self.every)

    @contextmanager
    def running(self) -> Iterator[HealthProbe]:
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(stop,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not self.latencies and time.monotonic() < deadline:
            time.sleep(0.005)  # the probe is up and answered once: measure from here
        try:
            yield self
        finally:
            stop.set()
            thread.join(10)

    def worst(self) -> float:
        return max(self.latencies, default=float("nan"))

    def median(self) -> float:
        return float(np.median(self.latencies)) if self.latencies else float("nan")

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99)) if self.latencies else float("nan")


_PROBE_SCRIPT = """
import json, sys, time, httpx
url, seconds, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
out, failures = [], []
with httpx.Client(base_url=url, timeout=5) as client:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            r = client.get("/health")
            if r.status_code != 200:
                failures.append(r.status_code)
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
        out.append((time.perf_counter() - start) * 1000)
        time.sleep(every)
print(json.dumps({"latencies": out, "failures": failures}))
"""


def probe_in_process(url: str, seconds: float, every: float = 0.02) -> subprocess.Popen[str]:
    """A /health poller in its own process (the load's client threads cannot delay it).

    ``json.loads(proc.communicate()[0])`` gives ``latencies`` (ms) and ``failures``.
    """
    args = [sys.executable, "-c", _PROBE_SCRIPT, url, str(seconds), str(every)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def while_probing(url: str, action: Callable[[], object]) -> tuple[object, HealthProbe]:
    """Run ``action`` while ``/health`` is polled; its result and the probe.

    The probe keeps going until it has answered a few more times after ``action``
    (polled, with a deadline), so the last moments of the load are measured too.
    """
    probe = HealthProbe(url, every=0.005)
    with probe.running():
        result = action()
        seen = len(probe.latencies) + len(probe.failures)
        deadline = time.monotonic() + 10
        while len(probe.latencies) + len(probe.failures) < seen + 3:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
    return result, probe


def memory_kib(pid: int | list[int], key: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, from /proc, in KiB; of several
    (a server's workers, ``ServerProcess.pids``) the sum, which bounds their peak together
    from above."""
    if isinstance(pid, list):
        return sum(memory_kib(one, key) for one in pid)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)
