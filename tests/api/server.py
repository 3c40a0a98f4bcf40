"""Start the API as a real server process on a free loopback port (not TestClient).

The bad-input, fuzzing and browser tests must see what a client sees: HTTP
parsing, streaming bodies, connection handling, and a process that must still
be alive afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import ROOT, free_port, tool_env, wait_until


class ServerProcess:
    """A running ``python -m imgclf.serving`` (uvicorn behind the edge) and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The processes that serve: the workers of an ``IMGCLF_PROCESSES`` parent (the
        default on a multi-core Linux machine), else the server process itself. Memory and
        socket checks must look at these: the parent only accepts and holds nothing."""
        return children(self.proc.pid) or [self.proc.pid]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc), in pid order."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def _wait_ready(server: ServerProcess, path: str, timeout: float) -> None:
    def answers() -> bool:
        if not server.alive():
            raise RuntimeError(f"server exited early:\n{server.log_tail()}")
        try:
            return httpx.get(server.url + path, timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, timeout, f"answering {path}")
    except AssertionError as err:
        raise RuntimeError(f"server {err}:\n{server.log_tail()}") from None


@contextmanager
def uvicorn_server(
    env: dict[str, str], log: Path, wait_path: str = "/ready", timeout: float = 60
) -> Iterator[ServerProcess]:
    """Run the API with ``IMGCLF_*`` settings in ``env``; stop it (SIGTERM) on exit."""
    port = free_port()
    # What `imgclf serve` and the container run (uvicorn behind imgclf.serving.edge),
    # not a plain `uvicorn` command that would skip the edge's deadlines and limits.
    args = [sys.executable, "-m", "imgclf.serving", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log"]  # fmt: skip
    with _serving(args, port, env, log, wait_path, timeout) as server:
        yield server


@contextmanager
def cli_server(
    model_dir: Path, log: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[ServerProcess]:
    """``imgclf serve --model-dir`` (what ``make serve`` runs), ready on a free port."""
    port = free_port()
    args = [sys.executable, "-m", "imgclf.cli", "serve", "--port", str(port),
            "--model-dir", str(model_dir), "--no-access-log"]  # fmt: skip
    with _serving(args, port, env or {}, log, "/ready", timeout) as server:
        yield server


@contextmanager
def _serving(
    args: list[str], port: int, env: dict[str, str], log: Path, wait_path: str, timeout: float
) -> Iterator[ServerProcess]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env={**tool_env(ROOT), **env}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        _wait_ready(server, wait_path, timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
