"""``IMGCLF_PROCESSES``: several server processes behind one port (imgclf.serving.processes).

The real server over loopback: connections are spread evenly over the workers (counted
from the kernel's socket tables, not from anything the server says), ``/metrics`` adds up
every worker whichever answers, a killed worker is replaced while the others serve, and
SIGTERM stops the parent and every worker. The division of the budgets is a unit test.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imgclf.serving.processes import cores, per_process
from imgclf.serving.settings import Settings, SettingsError, usable_cores
from tests.api import samples
from tests.api.conftest import TEST_LIMITS
from tests.api.modelfactory import ProjectTree
from tests.api.server import ServerProcess, children, uvicorn_server
from tests.support import holds_within as wait_until

MiB = 1024 * 1024


# --- settings and shares (no server) ------------------------------------------------------


def test_processes_setting_is_read_and_checked() -> None:
    # The default: one per CPU (Linux), the container's quota included.
    assert Settings.from_env({}).server_processes == cores()
    assert Settings.from_env({"IMGCLF_PROCESSES": "3"}).server_processes == 3
    assert Settings.from_env({"IMGCLF_PROCESSES": "1"}).server_processes == 1
    assert Settings.from_env({"IMGCLF_PROCESSES": "0"}).server_processes == cores()
    with pytest.raises(SettingsError, match="IMGCLF_PROCESSES=-1 must be >= 0"):
        Settings.from_env({"IMGCLF_PROCESSES": "-1"})
    with pytest.raises(SettingsError, match="IMGCLF_PROCESSES='two' is not an integer"):
        Settings.from_env({"IMGCLF_PROCESSES": "two"})


def test_auto_processes_follow_the_cpu_quota_not_only_the_affinity(tmp_path: Path) -> None:
    """A container limited to fewer CPUs than its host shows gets one process per CPU of
    its quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded up."""
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path) == affinity  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one process
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{100000 * (affinity + 8)} 100000\n")
    assert usable_cores(tmp_path) == affinity  # a quota above the affinity does not add
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cores(tmp_path) == affinity


def test_every_budget_is_divided_so_the_workers_together_hold_no_more_but_one_body_each() -> None:
    base = Settings()
    assert per_process(base, 1) is base
    two = per_process(base, 2)
    assert two.processes == 1  # a worker does not fork again
    assert two.max_connections == base.max_connections // 2
    assert two.max_open_connections == base.max_open_connections // 2
    assert two.max_queue == base.max_queue  # each worker's own: see per_process
    assert two.max_body_bytes_in_flight == base.max_body_bytes_in_flight // 2
    assert two.workers == max(1, cores() // 2) + 1
    # Off stays off; derived values follow the worker's own share.
    assert (two.client_rate, two.client_burst, two.client_max_active) == (0.0, 0, None)
    assert two.client_active_limit == -(-(two.worker_threads + two.max_queue) // 2)
    three = per_process(
        Settings(
            client_rate=10.0,
            client_burst=7,
            client_max_active=5,
            workers=3,
            max_request_bytes=32 * MiB,
            max_body_bytes_in_flight=40 * MiB,
            max_connections=5,
        ),
        3,
    )
    assert three.client_rate == pytest.approx(10 / 3)
    assert (three.client_burst, three.client_max_active, three.workers) == (3, 2, 1)
    assert three.max_connections == 2  # rounded up, never 0
    # A share never falls below one whole request's body: no request could be admitted.
    assert three.max_body_bytes_in_flight == 32 * MiB
    assert per_process(Settings(client_max_active=0), 2).client_max_active == 0  # 0: off


# --- the real server -----------------------------------------------------------------------


def established_to(pid: int, port: int) -> int:
    """TCP connections to ``port`` that process ``pid`` holds (its fds × the kernel's table)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def requests_counted(text: str) -> float:
    """``/predict`` answers with 200 in a ``/metrics`` text."""
    m = re.search(r'imgclf_http_requests_total\{endpoint="/predict",method="POST",'
                  r'status="200"\} ([0-9.e+]+)', text)  # fmt: skip
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def two(project: ProjectTree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS, "IMGCLF_PROCESSES": "2"}
    log = tmp_path_factory.mktemp("processes") / "server.log"
    with uvicorn_server(env, log) as server:
        # Ready = one worker answers; wait for both, they start at the same time.
        assert wait_until(lambda: len(children(server.proc.pid)) == 2, 30), server.log_tail()
        time.sleep(1.0)
        yield server


@pytest.fixture(scope="module")
def digit(project: ProjectTree) -> bytes:
    img = Image.open(next(iter(sorted((project.raw / "5").iterdir()))))
    return samples.encode(img, "PNG")


def test_connections_are_split_evenly_and_metrics_add_up(two: ServerProcess, digit: bytes) -> None:
    port = int(two.url.rsplit(":", 1)[1])
    workers = children(two.proc.pid)
    assert len(workers) == 2
    before = requests_counted(httpx.get(two.url + "/metrics", timeout=10).text)
    clients = [httpx.Client(base_url=two.url, timeout=30) for _ in range(8)]
    try:
        for c in clients:  # one keep-alive connection each, opened one after the other
            r = c.post("/predict", files={"file": ("d.png", digit, "image/png")})
            assert r.status_code == 200, r.text
        held = sorted(established_to(pid, port) for pid in workers)
        assert held == [4, 4], f"connections per worker: {held}"
        # Whichever worker answers /metrics, it counts the other's requests too.
        for c in clients[:4]:
            assert requests_counted(c.get("/metrics").text) == before + 8
        assert "imgclf_model_info{" in clients[0].get("/metrics").text
    finally:
        for c in clients:
            c.close()
    # Closed connections are counted down: the next ones are split evenly again.
    assert wait_until(lambda: sum(established_to(p, port) for p in workers) == 0, 10)
    clients = [httpx.Client(base_url=two.url, timeout=30) for _ in range(4)]
    try:
        for c in clients:
            assert c.get("/health").status_code == 200
        assert sorted(established_to(pid, port) for pid in workers) == [2, 2]
    finally:
        for c in clients:
            c.close()


def test_a_killed_worker_is_replaced_while_the_other_serves(two: ServerProcess,
                                                            digit: bytes) -> None:  # fmt: skip
    workers = children(two.proc.pid)
    os.kill(workers[0], signal.SIGKILL)
    # Served throughout: new connections go to the live worker.
    for _ in range(5):
        r = httpx.post(two.url + "/predict", files={"file": ("d.png", digit, "image/png")},
                       timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text

    def replaced() -> bool:
        now = children(two.proc.pid)
        return len(now) == 2 and workers[0] not in now and workers[1] in now

    assert wait_until(replaced, 30), two.log_tail()
    assert "exited with code -9: restarting it" in two.log_tail(), two.log_tail()
    assert two.alive()


def test_sigterm_stops_the_parent_and_every_worker(project: ProjectTree, tmp_path: Path) -> None:
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS, "IMGCLF_PROCESSES": "2"}
    with uvicorn_server(env, tmp_path / "server.log") as server:
        assert wait_until(lambda: len(children(server.proc.pid)) == 2, 30), server.log_tail()
        workers = children(server.proc.pid)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0, server.log_tail()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert "Traceback" not in server.log_tail(100_000), server.log_tail()


def test_workers_stop_when_the_parent_is_killed(project: ProjectTree, tmp_path: Path) -> None:
    """No orphans: a worker sees its channel end when the parent dies (SIGKILL, OOM) and
    stops like on SIGTERM (each worker closes the fds it inherited, so nobody else holds
    the parent's end open)."""
    env = {"IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS, "IMGCLF_PROCESSES": "2"}
    with uvicorn_server(env, tmp_path / "server.log") as server:
        assert wait_until(lambda: len(children(server.proc.pid)) == 2, 30), server.log_tail()
        workers = children(server.proc.pid)
        server.proc.kill()
        server.proc.wait(timeout=10)
        gone = wait_until(lambda: not [p for p in workers if Path(f"/proc/{p}").exists()], 30)
        assert gone, server.log_tail()


def test_sigterm_while_the_workers_load_stops_them_at_once(
    project: ProjectTree, tmp_path: Path
) -> None:
    """A SIGTERM before the workers are ready stops everything (the handlers a worker
    inherited from the parent once swallowed it until uvicorn's own were installed, and
    the worker served on for 30 s until it was killed)."""
    import subprocess
    import sys

    from tests.support import ROOT, free_port, tool_env

    env = {**tool_env(ROOT), "IMGCLF_MODEL_DIR": str(project.model_dir), **TEST_LIMITS,
           "IMGCLF_PROCESSES": "2"}  # fmt: skip
    args = [sys.executable, "-m", "imgclf.serving", "--port", str(free_port()), "--no-access-log"]
    with (tmp_path / "log").open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        assert wait_until(lambda: len(children(proc.pid)) == 2, 30)
        workers = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "log").read_text()
    assert wait_until(lambda: not [p for p in workers if Path(f"/proc/{p}").exists()], 10), log
    assert "did not stop" not in log, log
