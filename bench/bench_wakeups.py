"""What a sleep and a wake-up cost on this machine: the price of every thread hand-off.

The API answers a request with an event loop and a pool of work threads (issue 18,
docs/serving-speed.md): each request wakes a work thread, wakes the loop back, and every
wait for the GIL is another sleep. On bare metal a sleep and wake-up costs a few
microseconds; on a virtual machine it can cost a hundred times more, and then it, not
the code, sets what is left between the server and the in-process ceiling. This bench
measures it, in CPU time of the thread that sleeps (``time.thread_time``):

* ``asyncio.sleep`` of 0.05, 1 and 5 ms under uvloop (the server's loop): one sleep in
  epoll, one wake-up by the timer (0 s: the baseline, no sleep);
* a hand-off from the loop to a ``ThreadPoolExecutor`` and back, the job itself GIL-free
  (0.2 or 5 ms ``time.sleep``): what the loop pays per request to keep decoding off itself;
* a ping-pong between two threads over ``threading.Event``, the main thread sleeping
  0.2 or 5 ms on a futex each round: what a wait for the GIL costs.

On the 2-core VM the benches run on, the price grows with the length of an idle epoll
wait (about 4 % of it), while futex sleeps stay cheap: read it per row.

    python bench/bench_wakeups.py            # ~15 s; replaces the "wakeups" section
    python bench/bench_wakeups.py --quick    # a few hundred rounds; records nothing
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import results
from common import table


async def _loop_sleeps(rounds: int, seconds: float) -> float:
    """Loop-thread CPU ms per ``asyncio.sleep(seconds)``."""
    await asyncio.sleep(0)
    start = time.thread_time()
    for _ in range(rounds):
        await asyncio.sleep(seconds)
    return 1000 * (time.thread_time() - start) / rounds


async def _hand_offs(rounds: int, job_s: float) -> float:
    """Loop-thread CPU ms per job handed to a work thread and awaited (job: GIL-free
    ``time.sleep(job_s)``, so the loop sleeps that long in epoll)."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(pool, time.sleep, job_s)
        start = time.thread_time()
        for _ in range(rounds):
            await loop.run_in_executor(pool, time.sleep, job_s)
        return 1000 * (time.thread_time() - start) / rounds


def _ping_pong(rounds: int, delay_s: float) -> float:
    """CPU ms of the main thread per round trip with a second thread over two Events,
    the other thread holding the answer back ``delay_s`` (the main thread sleeps on a
    futex that long, as a thread waiting for the GIL does)."""
    ping, pong = threading.Event(), threading.Event()

    def other() -> None:
        for _ in range(rounds):
            ping.wait()
            ping.clear()
            time.sleep(delay_s)
            pong.set()

    thread = threading.Thread(target=other)
    thread.start()
    start = time.thread_time()
    for _ in range(rounds):
        ping.set()
        pong.wait()
        pong.clear()
    cpu = time.thread_time() - start
    thread.join()
    return 1000 * cpu / rounds


def _uvloop_run(coro: object) -> float:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def measure(rounds: int) -> list[list[str]]:
    rows: list[list[object]] = [
        ["asyncio.sleep(0) under uvloop (no sleep: the baseline)",
         _uvloop_run(_loop_sleeps(rounds, 0))],
    ]  # fmt: skip
    for ms in (0.05, 1.0, 5.0):
        rows.append([f"asyncio.sleep({ms:g} ms) under uvloop (epoll, timer wake-up)",
                     _uvloop_run(_loop_sleeps(rounds, ms / 1000))])  # fmt: skip
    for ms in (0.2, 5.0):
        rows.append([f"hand-off to a work thread and back (job: {ms:g} ms, GIL-free)",
                     _uvloop_run(_hand_offs(rounds, ms / 1000))])  # fmt: skip
    for ms in (0.2, 5.0):
        rows.append([f"thread ping-pong, the main thread sleeps {ms:g} ms on a futex",
                     _ping_pong(rounds, ms / 1000)])  # fmt: skip
    return [[name, f"{ms:.3f}"] for name, ms in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 rounds; records nothing")
    results.add_options(parser)
    args = parser.parse_args(argv)
    rows = measure(200 if args.quick else args.rounds)
    for name, ms in rows:
        print(f"{ms:>8} ms CPU  {name}", flush=True)
    body = (
        "CPU time of the thread that sleeps, per round (`time.thread_time`; the sleeping "
        "itself costs no CPU, the going to sleep and the waking up do). Read against the "
        "photos section's thread table: each request's sleeps times this is what the "
        "server pays that the in-process ceiling does not.\n\n"
        + table(["what", "CPU ms per round"], rows)
    )
    results.report(
        args, "wakeups", "What a sleep and a wake-up cost", body, "python bench/bench_wakeups.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
