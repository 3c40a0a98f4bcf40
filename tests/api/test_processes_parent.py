"""The parent of several server processes, when workers crash, refuse or are not ready.

``serve_processes`` is the real one, in its own process, over loopback; the workers are
stand-ins (tests/api/stand_in_workers.py: no model, they answer ``hi``) because these
cases need timings the real app cannot produce on demand. Each test failed before the
fix it guards: the server exited when a serving worker died while the other was still
loading; one refused hand-over retired every live worker for good (the port stayed bound
and nothing was accepted again); the port took connections before any worker was ready.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.server import children
from tests.support import ROOT, free_port, holds_within


class Parent:
    """The parent process, its port and the stand-ins' control folder."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.port, self.control = free_port(), tmp_path
        self.log = tmp_path / "parent.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
        cmd = [sys.executable, "-m", "tests.api.stand_in_workers", str(self.port), str(tmp_path)]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stderr=log)
        assert holds_within(lambda: "serving on" in self.text(), 10), self.text()

    def text(self) -> str:
        return self.log.read_text()

    def ask(self, timeout: float = 1.0) -> bytes | str:
        """What a client gets: ``b"hi"``, ``b""`` (closed), or the error's name."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as c:
                return c.recv(2)
        except OSError as exc:
            return type(exc).__name__

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self.workers():  # none should be left; never leak one into the suite
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def parent(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Parent]:
    (tmp_path / "loading").write_text(str(getattr(request, "param", {}).get("load", 0)))
    server = Parent(tmp_path, *getattr(request, "param", {}).get("args", ()))
    yield server
    server.stop()


@pytest.mark.parametrize("parent", [{"load": 2.5}], indirect=True)
def test_the_port_refuses_until_a_worker_is_ready(parent: Parent) -> None:
    """Bound at once (a port in use fails at start) but not listening while the workers
    load: a client is refused, not parked in the kernel's queue; then it is served."""
    assert parent.ask() == "ConnectionRefusedError"
    assert holds_within(lambda: parent.ask() == b"hi", 15), parent.text()


def test_a_serving_worker_that_dies_while_the_other_loads_is_restarted(
    parent: Parent,
) -> None:
    """Worker 0 crashes and restarts (loading for 3 s); worker 1, which was serving,
    crashes while a connection waits for the parent. The parent hands that connection to
    the dead worker (EPIPE), and must still restart it, not stop as if it never started."""
    assert holds_within(lambda: parent.ask() == b"hi", 10), parent.text()
    first, second = parent.workers()
    (parent.control / "loading").write_text("3")
    os.kill(first, signal.SIGKILL)
    assert holds_within(lambda: len(parent.workers()) == 2 and first not in parent.workers(), 5)
    parent.proc.send_signal(signal.SIGSTOP)  # the parent is busy a moment ...
    try:
        waiting = socket.create_connection(("127.0.0.1", parent.port))  # ... a client waits
        os.kill(second, signal.SIGKILL)  # and the serving worker dies meanwhile
        time.sleep(0.3)
    finally:
        parent.proc.send_signal(signal.SIGCONT)
    waiting.close()
    time.sleep(1.5)
    assert parent.proc.poll() is None, parent.text()
    assert "could not start" not in parent.text()
    assert holds_within(lambda: parent.ask() == b"hi", 15), parent.text()
    assert "worker 1" in parent.text() and "restarting it" in parent.text()


@pytest.mark.parametrize("parent", [{"args": ("--refuse", "4")}], indirect=True)
def test_a_refused_hand_over_does_not_retire_the_workers(parent: Parent) -> None:
    """ETOOMANYREFS (a user's sockets in flight over its open-file limit) four times: the
    connections of that moment are closed, the workers stay in service, it is logged."""
    answers = []
    assert holds_within(lambda: answers.append(parent.ask()) or answers[-1] == b"hi", 15), (
        answers,
        parent.text(),
    )
    assert b"" in answers  # a refused one was closed, not left hanging
    assert "could not hand a connection" in parent.text()
    assert all(parent.ask() == b"hi" for _ in range(5))
