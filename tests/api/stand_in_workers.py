"""``serve_processes`` (the real parent) with stand-in workers, run as its own process.

Usage: ``python -m tests.api.stand_in_workers PORT CONTROL_DIR [--refuse N]``

A stand-in worker has no app and no model: it says READY, then answers every socket the
parent hands it with ``hi`` and closes it. What it does is steered by files in
CONTROL_DIR, so a test can make a worker "load" for a while (``loading``: seconds in the
file) at the moment it wants. ``--refuse N`` makes the parent's first N hand-overs fail
with ETOOMANYREFS, as when a user's sockets in flight exceed its open-file limit.

Why stand-ins: the cases the parent must survive (a serving worker dying while another
is still loading, a hand-over refused by the kernel, a port asked for before anyone is
ready) need timings the real app cannot be made to produce on demand; the real app
behind the real parent has its own tests (test_processes.py).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from imgclf.serving import processes
from imgclf.serving.settings import Settings


def stand_in(index: int, channel: socket.socket, closed: Any, settings: Settings,
             metrics_dir: str, access_log: bool,
             inherited: list[socket.socket]) -> None:  # fmt: skip
    """A worker that loads for ``CONTROL_DIR/loading`` seconds, then answers ``hi``."""
    for sock in inherited:
        sock.close()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    loading = CONTROL / "loading"
    if loading.exists():
        time.sleep(float(loading.read_text() or 0))
    channel.send(processes._READY)
    while True:
        msg, fds, _, _ = socket.recv_fds(channel, 64, 64)
        if not msg:
            os._exit(0)
        for fd in fds:
            with socket.socket(fileno=fd) as conn:
                conn.sendall(b"hi")
            closed[index] += 1


CONTROL = Path()


def main() -> int:
    global CONTROL
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("control", type=Path)
    parser.add_argument("--refuse", type=int, default=0)
    args = parser.parse_args()
    CONTROL = args.control
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    processes._worker_main = stand_in
    if args.refuse:
        real, left = socket.send_fds, [args.refuse]

        def send_fds(*a: Any, **k: Any) -> int:
            if left[0] > 0:
                left[0] -= 1
                raise OSError(errno.ETOOMANYREFS, os.strerror(errno.ETOOMANYREFS))
            return real(*a, **k)

        socket.send_fds = send_fds  # type: ignore[assignment]
    return processes.serve_processes(Settings(processes=2), "127.0.0.1", args.port, False)


if __name__ == "__main__":
    sys.exit(main())
