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
workers, so the whole server stays within what one process was allowed (the queue of
waiting requests is each worker's own, and a share of bodies in flight is never below one
largest request: :func:`per_process`); work threads default to the cores per worker
plus one. Monitoring needs nothing: every process has
its own replica id and SQLite is shared with WAL (:mod:`imgclf.monitoring.recorder`).

The port is bound at start and listens once the workers are ready. The parent
restarts a worker that dies (and says so in the log), stops when a worker cannot start at
all (it never said READY and nobody serves: a missing model, the same exit as one
process), and on SIGTERM or SIGINT closes the port, lets every worker finish its
requests (uvicorn's graceful shutdown) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
from imgclf.serving.edge import raise_file_limit
from imgclf.serving.settings import Settings, usable_cores

log = logging.getLogger("imgclf.serving")

# A worker that dies sooner than this after it started is restarted only after a pause
# (a crash loop must not eat the CPU the other workers serve with).
RESTART_PAUSE_S = 1.0
# Seconds a worker gets to finish its requests after SIGTERM before it is killed.
GRACE_S = 30.0
# At start the port opens when every worker is ready (a request must not find half the
# budgets missing), or after this many seconds with at least one ready. Until then it is
# bound but not listening: a client is refused at once, as by one process loading its
# model, instead of waiting in the kernel's queue for a server that may never come.
STARTUP_WAIT_S = 60.0
# Connections accepted in one go before the parent looks at signals and workers again
# (a flood must not keep it from SIGTERM, or from a restarted worker's READY).
ACCEPT_BATCH = 256
# After a failed accept (out of file descriptors, ENOBUFS) the port is left alone this
# long: it stays readable, and retrying at once would spin on one core.
ACCEPT_PAUSE_S = 0.1
# sendmsg errors that mean the worker's end is gone (its exit is handled when it is
# reaped). Any other (ETOOMANYREFS: too many sockets in flight for this user; ENOBUFS)
# is the moment's, not the worker's: that connection goes to the next worker or is closed.
_GONE = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNREFUSED})
_READY = b"R"


def cores() -> int:
    """CPUs this server may use (affinity and the container's quota)."""
    return usable_cores()


def per_process(settings: Settings, n: int) -> Settings:
    """One worker's share of ``settings`` when ``n`` workers serve together.

    Every bound on memory or work is divided (rounded up), so ``n`` workers together
    hold no more than one process would, with two exceptions. Bodies in flight: a share
    never falls below one largest request (``IMGCLF_MAX_REQUEST_BYTES``), or no such
    request could be admitted at all, so with more than ``budget / max request`` workers
    (4 with the defaults) the total is ``n`` × the largest request. And the queue: each worker keeps
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

    from imgclf.serving.edge import protocol_for

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
    ready: bool = False  # takes connections now
    served: bool = False  # said READY once: it started, whatever happened after


def serve_processes(settings: Settings, host: str, port: int, access_log: bool = True) -> int:
    """Serve with ``settings.processes`` workers behind one port; returns the exit code."""
    n = settings.server_processes
    share = per_process(settings, n)
    ctx = multiprocessing.get_context("fork")
    opened = RawArray("q", n)  # connections handed to worker i (written here only)
    closed = RawArray("q", n)  # connections worker i finished (written by it only)
    metrics_dir = tempfile.mkdtemp(prefix="imgclf-metrics-")
    listener = _bound(host, port)  # listen() once a worker is ready (STARTUP_WAIT_S)
    listening = False
    accept_after = 0.0  # a failed accept pauses the port until then (ACCEPT_PAUSE_S)
    warned_until = 0.0  # a failed hand-over is logged at most every 10 s
    # Sockets in flight to busy workers count against this user's open-file limit.
    raise_file_limit(settings.max_open_connections + 256)
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
        nonlocal warned_until
        ready = [i for i, w in enumerate(workers) if w is not None and w.ready]
        for i in sorted(ready, key=lambda i: opened[i] - closed[i]):
            w = workers[i]
            assert w is not None
            try:
                socket.send_fds(w.channel, [b"c"], [conn.fileno()])
            except BlockingIOError:  # its channel is full: it is stuck, try the next
                continue
            except OSError as exc:
                if exc.errno in _GONE:  # that worker is going away; its exit is handled below
                    w.ready = False
                elif time.monotonic() >= warned_until:
                    warned_until = time.monotonic() + 10.0
                    log.warning("could not hand a connection to worker %d: %s", i, exc)
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
            if any_ready and not listening:
                listener.listen(2048)
                listening = True
            wanted = any_ready and time.monotonic() >= accept_after
            if wanted and not accepting:
                sel.register(listener, selectors.EVENT_READ, ("accept", -1))
                accepting = True
            elif not wanted and accepting:
                sel.unregister(listener)
                accepting = False
            deadlines = list(pending_restart.values()) + ([opened_at] if opened_at else [])
            if accept_after > time.monotonic():
                deadlines.append(accept_after)
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, _ in sel.select(timeout):
                kind, i = key.data
                if kind == "accept":
                    for _ in range(ACCEPT_BATCH):
                        try:
                            conn, _ = listener.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:  # e.g. out of file descriptors: keep serving
                            log.warning("accept failed: %s", exc)
                            accept_after = time.monotonic() + ACCEPT_PAUSE_S
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
                        w.ready = w.served = True
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
                    if not w.served and not any(x is not None and x.ready for x in workers):
                        # It never served and nobody does: the model or the settings are
                        # wrong, and every restart would fail the same way.
                        log.error("worker %d could not start (exit code %s): stopping",
                                  i, w.process.exitcode)  # fmt: skip
                        code = w.process.exitcode or 1
                        stopping.append(0)
                        break
                    log.error("worker %d (pid %s) exited with code %s: restarting it",
                              i, w.process.pid, w.process.exitcode)  # fmt: skip
                    # Right away if it served a while; after a pause if it died young or
                    # while loading (a crash loop must not eat the others' CPU).
                    young = not w.served or time.monotonic() < w.started + RESTART_PAUSE_S
                    pending_restart[i] = time.monotonic() + (RESTART_PAUSE_S if young else 0.0)
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


def _bound(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to ``host:port`` but not yet listening (a port in
    use fails here, at start, as with one process)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":  # as socket.create_server: rebind while old sockets linger
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


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
