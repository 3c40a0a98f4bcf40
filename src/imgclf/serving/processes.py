"""Several server processes behind one port, each connection handed to the least busy one.

Why: one server process on 2 cores leaves 0.2–0.25 of them idle, because its threads
wait for the GIL (the event loop, the OOD verdict and preprocessing's Python hold it
~2 ms per request; docs/serving-speed.md). Two processes, each with its own GIL, served
1.25–1.35× one process on the photo workload *when the connections were split evenly*.
A shared listening socket (``uvicorn --workers``) does not split them evenly: whichever
process wakes first takes the connection, and 8 keep-alive connections ended up 5/3 or
6/2, which served no more than one process.

So with ``IMGCLF_PROCESSES=N`` (N > 1) the parent process here owns the listening socket
and does nothing but accept: each new connection is passed (``SCM_RIGHTS`` over a Unix
socket pair) to the ready worker with the fewest open connections, counted in shared
memory (the parent adds, the worker's edge protocol subtracts when a connection ends).
Each worker is a complete ``imgclf serve`` (uvicorn behind :mod:`imgclf.serving.edge`,
the app, the model, its golden-batch check) that never listens itself.

What is shared or divided (:func:`per_process`): ``/metrics`` adds up every worker's
counters and histograms (prometheus_client's multiprocess mode, one directory per
server); the budgets that bound memory and work (requests in progress, open sockets,
bodies in flight, work threads, per-client rate/burst/active) are divided among the
workers, so the whole server never exceeds what one process was allowed (the queue of
waiting requests is each worker's own); work threads default to the cores per worker
plus one. Monitoring needs nothing: every process has
its own replica id and SQLite is shared with WAL (:mod:`imgclf.monitoring.recorder`).

The parent restarts a worker that dies (and says so in the log), stops when a worker
cannot start at all (a missing model: the same exit as one process), and on SIGTERM or
SIGINT closes the port, lets every worker finish its requests (uvicorn's graceful
shutdown) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.sharedctypes import RawArray
from typing import Any

from imgclf.serving import app as single
from imgclf.serving.settings import Settings, usable_cores

log = logging.getLogger("imgclf.serving")

# A worker that dies sooner than this after it started is restarted only after a pause
# (a crash loop must not eat the CPU the other workers serve with).
RESTART_PAUSE_S = 1.0
# Seconds a worker gets to finish its requests after SIGTERM before it is killed.
GRACE_S = 30.0
# At start the port opens when every worker is ready (a request must not find half the
# budgets missing), or after this many seconds with at least one ready.
STARTUP_WAIT_S = 60.0
_READY = b"R"


def cores() -> int:
    """CPUs this server may use (affinity and the container's quota)."""
    return usable_cores()


def per_process(settings: Settings, n: int) -> Settings:
    """One worker's share of ``settings`` when ``n`` workers serve together.

    Every bound on memory or work is divided (rounded up), so ``n`` workers together
    never hold more than one process would, except the queue: each worker keeps
    ``IMGCLF_MAX_QUEUE`` (what waits holds only its body, which the divided body budget
    bounds; a divided queue refused slow uploads that one process would have queued,
    because connections, not jobs, are what the dispatcher balances). ``client_rate``
    and the explicit per-client caps are divided too, which is stricter than one process
    for a client whose connections all land on one worker (the dispatcher spreads a
    client's connections like any others).
    Work threads: ``IMGCLF_WORKERS`` divided too (each thread may hold a decoded image),
    by default the cores per worker plus one (3 per process on 2 cores would be 6
    threads fighting for 2 cores). What cannot be divided: each worker's own resident
    memory at rest (the app and the model, ~150 MiB for the photo models).
    """
    if n <= 1:
        return settings

    def share(value: int) -> int:
        return max(1, math.ceil(value / n))

    active = settings.client_max_active
    return replace(
        settings,
        processes=1,
        workers=share(settings.workers) if settings.workers else max(1, cores() // n) + 1,
        max_connections=share(settings.max_connections),
        max_open_connections=share(settings.max_open_connections),
        max_body_bytes_in_flight=max(
            settings.max_request_bytes, math.ceil(settings.max_body_bytes_in_flight / n)
        ),
        client_rate=settings.client_rate / n,
        client_burst=share(settings.client_burst) if settings.client_burst else 0,
        client_max_active=None if active is None else share(active) if active else 0,
    )


def serve(settings: Settings, host: str, port: int, access_log: bool = True) -> None:
    """What ``imgclf serve`` and ``python -m imgclf.serving`` run: one process
    (:func:`imgclf.serving.app.run`) or :func:`serve_processes`, by ``IMGCLF_PROCESSES``."""
    if settings.server_processes <= 1:
        single.run(settings, host, port, access_log)
        return
    single.configure_logging()  # the parent's notes (a worker restarted), same format
    code = serve_processes(settings, host, port, access_log)
    if code:
        raise SystemExit(code)


# --- the worker ------------------------------------------------------------------------


def _counted(protocol: type, closed: Any, index: int) -> type:
    """``protocol`` that adds one to ``closed[index]`` when a connection ends."""

    class Counted(protocol):  # type: ignore[misc, valid-type]
        def connection_lost(self, exc: Exception | None) -> None:
            closed[index] += 1
            super().connection_lost(exc)

    return Counted


def _worker_main(index: int, channel: socket.socket, closed: Any, settings: Settings,
                 metrics_dir: str, access_log: bool,
                 inherited: list[socket.socket]) -> None:  # fmt: skip
    """One worker: the app and uvicorn, fed connections by the parent over ``channel``."""
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only; it stops us once
    # The parent's handlers, inherited through fork, would swallow the parent's SIGTERM
    # until uvicorn installs its own (a worker stopped while loading the model ran on).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)  # the parent's, inherited through fork
    # The parent's sockets, inherited through fork: the port (only the parent accepts),
    # its signal pipe, and the other workers' channels (held here, a worker would never
    # see the end of its own channel if the parent died).
    for sock in inherited:
        sock.close()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    import prometheus_client.values as values

    # The parent may have imported prometheus_client already (single-process value class).
    values.ValueClass = values.MultiProcessValue()

    import uvicorn
    from uvicorn.server import Server

    from imgclf.serving.edge import protocol_for, raise_file_limit

    app = single.create_app(settings)
    raise_file_limit(settings.max_open_connections + 256)
    protocol = _counted(protocol_for(settings, on_reject=app.state.service.reject), closed, index)
    config = uvicorn.Config(
        app,
        access_log=access_log,
        http=protocol,
        timeout_keep_alive=max(1, round(settings.keep_alive_s)),
        proxy_headers=False,
        server_header=False,
    )

    class HandedServer(Server):
        """uvicorn's server, taking accepted sockets from the parent instead of listening."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                sys.exit(3)  # uvicorn's STARTUP_FAILURE
            loop = asyncio.get_running_loop()
            cfg = self.config

            def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> Any:
                return cfg.http_protocol_class(  # type: ignore[call-arg]
                    config=cfg, server_state=self.server_state,
                    app_state=self.lifespan.state, _loop=_loop,
                )  # fmt: skip

            def adopted(task: asyncio.Task) -> None:
                if not task.cancelled() and task.exception() is not None:
                    closed[index] += 1  # never became a connection: not open any more

            def receive() -> None:
                while True:
                    try:
                        msg, fds, _, _ = socket.recv_fds(channel, 64, 64)
                    except BlockingIOError:
                        return
                    except OSError:
                        msg, fds = b"", []
                    if not msg:  # the parent is gone: stop like on SIGTERM
                        loop.remove_reader(channel.fileno())
                        self.should_exit = True
                        return
                    for fd in fds:
                        sock = socket.socket(fileno=fd)
                        task = loop.create_task(loop.connect_accepted_socket(create_protocol, sock))
                        task.add_done_callback(adopted)

            channel.setblocking(False)
            loop.add_reader(channel.fileno(), receive)
            self.servers = []
            self.started = True
            channel.send(_READY)

    HandedServer(config).run()


# --- the parent ------------------------------------------------------------------------


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    channel: socket.socket
    started: float
    ready: bool = False


def serve_processes(settings: Settings, host: str, port: int, access_log: bool = True) -> int:
    """Serve with ``settings.processes`` workers behind one port; returns the exit code."""
    n = settings.server_processes
    share = per_process(settings, n)
    ctx = multiprocessing.get_context("fork")
    opened = RawArray("q", n)  # connections handed to worker i (written here only)
    closed = RawArray("q", n)  # connections worker i finished (written by it only)
    metrics_dir = tempfile.mkdtemp(prefix="imgclf-metrics-")
    listener = socket.create_server((host, port), backlog=2048)
    listener.setblocking(False)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    sel = selectors.DefaultSelector()
    workers: list[_Worker | None] = [None] * n

    def start(i: int) -> None:
        # SEQPACKET: one message per connection handed over, its fd attached to it.
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent_end.setblocking(False)
        opened[i] = closed[i] = 0
        inherited = [listener, wake_r, wake_w, parent_end]
        inherited += [w.channel for w in workers if w is not None]
        process = ctx.Process(
            target=_worker_main,
            args=(i, child_end, closed, share, metrics_dir, access_log, inherited),
            name=f"imgclf-serve-{i}",
        )
        process.start()
        child_end.close()
        workers[i] = _Worker(process, parent_end, time.monotonic())
        sel.register(parent_end, selectors.EVENT_READ, ("channel", i))
        sel.register(process.sentinel, selectors.EVENT_READ, ("exit", i))

    def forget(i: int) -> _Worker:
        w = workers[i]
        assert w is not None
        for key in (w.channel, w.process.sentinel):
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(key)
        w.channel.close()
        workers[i] = None
        return w

    def hand_over(conn: socket.socket) -> None:
        """Pass ``conn`` to the ready worker with the fewest open connections."""
        ready = [i for i, w in enumerate(workers) if w is not None and w.ready]
        for i in sorted(ready, key=lambda i: opened[i] - closed[i]):
            w = workers[i]
            assert w is not None
            try:
                socket.send_fds(w.channel, [b"c"], [conn.fileno()])
            except BlockingIOError:  # its channel is full: it is stuck, try the next
                continue
            except OSError:  # that worker is going away; its exit is handled below
                w.ready = False
                continue
            opened[i] += 1
            return
        # No worker can take it now (all restarting): it is closed; the client retries.

    sel.register(wake_r, selectors.EVENT_READ, ("signal", -1))
    accepting = False
    code = 0
    log.info("serving on http://%s:%d with %d processes", host, port, n)
    try:
        for i in range(n):
            start(i)
        pending_restart: dict[int, float] = {}
        opened_at = time.monotonic() + STARTUP_WAIT_S
        while not stopping:
            ready_now = [w is not None and w.ready for w in workers]
            if all(ready_now) or time.monotonic() >= opened_at:
                opened_at = 0.0  # from now on: whoever is ready serves (restarts included)
            any_ready = any(ready_now) and not opened_at
            if any_ready and not accepting:
                sel.register(listener, selectors.EVENT_READ, ("accept", -1))
                accepting = True
            elif not any_ready and accepting:
                sel.unregister(listener)
                accepting = False
            deadlines = list(pending_restart.values()) + ([opened_at] if opened_at else [])
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in sel.select(timeout):
                kind, i = key.data
                if kind == "accept":
                    while True:
                        try:
                            conn, _ = listener.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:  # e.g. out of file descriptors: keep serving
                            log.warning("accept failed: %s", exc)
                            break
                        with conn:
                            hand_over(conn)
                elif kind == "signal":
                    with contextlib.suppress(BlockingIOError):
                        wake_r.recv(4096)
                elif kind == "channel":
                    w = workers[i]
                    if w is None:
                        continue
                    try:
                        data = w.channel.recv(64)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if _READY in data:
                        w.ready = True
                    if not data:
                        w.ready = False
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(w.channel)
                elif kind == "exit":
                    w = workers[i]
                    if w is None:
                        continue
                    forget(i)
                    w.process.join()
                    _mark_dead(w.process.pid, metrics_dir)
                    if not w.ready and not any(x is not None and x.ready for x in workers):
                        # It never served and nobody does: the model or the settings are
                        # wrong, and every restart would fail the same way.
                        log.error("worker %d could not start (exit code %s): stopping",
                                  i, w.process.exitcode)  # fmt: skip
                        code = w.process.exitcode or 1
                        stopping.append(0)
                        break
                    log.error("worker %d (pid %s) exited with code %s: restarting it",
                              i, w.process.pid, w.process.exitcode)  # fmt: skip
                    soon = w.started + RESTART_PAUSE_S
                    pending_restart[i] = max(time.monotonic(), soon)
            now = time.monotonic()
            for i, when in list(pending_restart.items()):
                if when <= now and not stopping:
                    del pending_restart[i]
                    start(i)
    finally:
        listener.close()
        _stop(workers, sel)
        signal.set_wakeup_fd(-1)
        for s, handler in old.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def _mark_dead(pid: int | None, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges from ``/metrics`` (its counters stay: they only
    ever grow)."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)


def _stop(workers: list[_Worker | None], sel: selectors.BaseSelector) -> None:
    """SIGTERM every worker (uvicorn finishes the requests in progress), then wait."""
    alive = [w for w in workers if w is not None and w.process.is_alive()]
    for w in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.process.pid or 0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for w in alive:
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            log.error("worker pid %s did not stop within %g s: killing it", w.process.pid, GRACE_S)
            w.process.kill()
            w.process.join()
    for w in workers:
        if w is not None:
            w.channel.close()
    sel.close()
