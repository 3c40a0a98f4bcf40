"""Cross-request batching (imgclf.serving.coalesce) with real threads and a real event loop.

The model call is a function that records what it was given and can be held on an
Event, so the tests decide when a call is busy instead of hoping for a race.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from imgclf.serving.coalesce import Coalescer, Part


class Model:
    """A stand-in model call: answers each part with (its payload, the call's size)."""

    def __init__(self, hold_first: bool = False, fail: bool = False) -> None:
        self.calls: list[list[Any]] = []
        self.threads: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail = fail

    def __call__(self, parts: list[Part]) -> list[Any]:
        self.calls.append([p.payload for p in parts])
        self.threads.append(threading.current_thread().name)
        self.started.set()
        assert self.release.wait(10)
        if self.fail:
            raise RuntimeError("model exploded")
        return [(p.payload, len(parts)) for p in parts]


def run_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    return loop, thread


@pytest.fixture
def loop() -> Any:
    loop, thread = run_loop()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def part(loop: asyncio.AbstractEventLoop, payload: Any, images: int = 1) -> Part:
    future = asyncio.run_coroutine_threadsafe(_future(), loop).result(5)
    return Part(images, payload, future, loop)


async def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


def answer(loop: asyncio.AbstractEventLoop, p: Part) -> Any:
    """The part's answer, awaited on its loop (raises what the model call raised)."""

    async def wait() -> Any:
        return await p.future

    return asyncio.run_coroutine_threadsafe(wait(), loop).result(10)


def in_thread(fn: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=fn, name=name)
    t.start()
    return t


def busy(loop: Any, model: Model, **options: int) -> tuple[Coalescer, threading.Thread, Part]:
    """A coalescer whose first call (part "first", thread "runner") is running, held."""
    c = Coalescer(model, **options)
    first = part(loop, "first")
    runner = in_thread(lambda: c.submit(first), "runner")
    assert model.started.wait(5)
    return c, runner, first


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_lone_request_is_answered_at_once_in_its_own_thread(loop: Any) -> None:
    model = Model()
    c = Coalescer(model, max_images=8, runners=2)
    p = part(loop, "a")
    in_thread(lambda: c.submit(p), "worker-0").join(5)
    assert answer(loop, p) == ("a", 1)
    assert model.threads == ["worker-0"] and c.calls == 1 and c.waiting == 0


def test_requests_ready_while_the_model_is_busy_share_the_next_call(loop: Any) -> None:
    model = Model(hold_first=True)
    c, runner, _ = busy(loop, model, max_images=8, runners=2, second_runner_from=99)
    later = [part(loop, f"r{i}") for i in range(3)]
    for p in later:  # other work threads: they queue their images and go back to decoding
        in_thread(lambda p=p: c.submit(p), "other").join(5)
    assert c.waiting == 3 and len(model.calls) == 1
    model.release.set()
    runner.join(5)
    assert model.calls == [["first"], ["r0", "r1", "r2"]]
    assert [answer(loop, p) for p in later] == [(f"r{i}", 3) for i in range(3)]
    assert model.threads == ["runner", "runner"]  # the runner took them when its call ended


def test_a_call_takes_at_most_max_images_oldest_first_but_never_splits_a_request(
    loop: Any,
) -> None:
    model = Model(hold_first=True)
    c, runner, _ = busy(loop, model, max_images=4, runners=1)
    sizes = {"a": 3, "b": 2, "c": 1, "big": 6, "d": 1}
    parts = [part(loop, name, n) for name, n in sizes.items()]
    for p in parts:
        c.submit(p)  # runners=1 and one is busy: every part waits
    model.release.set()
    runner.join(5)
    assert model.calls == [["first"], ["a"], ["b", "c"], ["big"], ["d"]]
    assert all(answer(loop, p)[0] == p.payload for p in parts)


def test_a_second_runner_starts_when_enough_requests_wait(loop: Any) -> None:
    """A slow model must not leave a core idle: with two parts waiting while one call
    runs, the thread that queued the second one runs them itself."""
    model = Model(hold_first=True)
    c, runner, first = busy(loop, model, max_images=8, runners=2, second_runner_from=2)
    a, b = part(loop, "a"), part(loop, "b")
    c.submit(a)  # one waiting: back to decoding
    assert c.waiting == 1
    second = in_thread(lambda: c.submit(b), "second")
    wait_until(lambda: len(model.calls) == 2)
    # Both calls run at once: the first is still held.
    assert model.calls == [["first"], ["a", "b"]] and model.threads == ["runner", "second"]
    model.release.set()
    runner.join(5)
    second.join(5)
    assert answer(loop, a) == ("a", 2) and answer(loop, first) == ("first", 1)


def test_a_request_that_stopped_waiting_is_dropped_not_computed(loop: Any) -> None:
    model = Model(hold_first=True)
    c, runner, _ = busy(loop, model, max_images=8, runners=1)
    gone, kept = part(loop, "gone"), part(loop, "kept")
    c.submit(gone)
    c.submit(kept)
    loop.call_soon_threadsafe(gone.future.cancel)  # its request timed out
    wait_until(gone.future.cancelled)
    model.release.set()
    runner.join(5)
    assert model.calls == [["first"], ["kept"]]
    assert answer(loop, kept) == ("kept", 1)


def test_a_failing_call_answers_every_request_with_the_error_and_the_next_call_runs(
    loop: Any,
) -> None:
    model = Model(fail=True)
    c = Coalescer(model, max_images=8, runners=1)
    p = part(loop, "x")
    c.submit(p)
    with pytest.raises(RuntimeError, match="model exploded"):
        answer(loop, p)
    model.fail = False
    q = part(loop, "y")
    c.submit(q)  # no runner was left counted: this one runs at once
    assert answer(loop, q) == ("y", 1)
