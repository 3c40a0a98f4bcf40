"""Cross-request batching: one model call for the requests decoded at the same time.

Why: a model call has costs paid per call, not per image — onnxruntime's per-run
overhead, and the OOD flag's ~25 numpy operations, each of which lets go of the GIL and
must take it back while the event loop and the other work thread want it too. Under
load those hand-offs, not arithmetic, are what the server spends beyond the in-process
ceiling (docs/serving-speed.md). Requests that are ready together share them.

How: a work thread that has decoded a request's images hands them to :meth:`Coalescer.submit`:

* with no model call running, the thread becomes the *runner* and answers at once: a lone
  request never waits for company;
* with one running, the images wait, and the thread goes back to decoding the next
  request; whichever runner ends its call takes everything waiting (up to ``max_images``
  images, oldest first) into its next call;
* when ``second_runner_from`` parts wait while runners are busy, the thread becomes one
  more runner (up to ``runners``), so a slow model (resnet18: 40 ms a call) still keeps
  every core busy.

A runner goes on while parts wait and returns to decoding when none do. Each request is
answered through its asyncio future on the event loop; a request that timed out
(its future cancelled) is dropped from the queue instead of being computed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Part:
    """One request's decoded images, waiting for a model call; ``payload`` is the caller's."""

    images: int
    payload: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the event loop: answer ``future`` unless its request stopped waiting (timeout)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Coalescer:
    """Joins waiting :class:`Part` s into one call of ``run`` (parts → one result per part)."""

    def __init__(
        self,
        run: Callable[[list[Part]], list[Any]],
        max_images: int,
        runners: int,
        second_runner_from: int = 2,
    ) -> None:
        self._run = run
        self.max_images = max(1, max_images)
        self.runners = max(1, runners)
        self.second_runner_from = max(1, second_runner_from)
        self._lock = threading.Lock()
        self._waiting: deque[Part] = deque()
        self._running = 0
        self.calls = 0  # model calls made (a test and the bench read calls vs requests)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, part: Part) -> None:
        """Queue ``part``; run model calls in this thread when it should (see module doc)."""
        with self._lock:
            self._waiting.append(part)
            busy = self._running
            if busy and (busy >= self.runners or len(self._waiting) < self.second_runner_from):
                return  # a runner takes it when its call ends
            self._running += 1
        try:
            while True:
                with self._lock:
                    group = self._take()
                    if not group:
                        self._running -= 1
                        return
                self._call(group)
        except BaseException:  # never leave a runner counted that is not running
            with self._lock:
                self._running -= 1
            raise

    def _take(self) -> list[Part]:
        """Oldest waiting parts up to ``max_images`` images (at least one part); parts whose
        request stopped waiting are dropped. Called with the lock held."""
        group: list[Part] = []
        images = 0
        while self._waiting:
            part = self._waiting[0]
            if part.future.cancelled():
                self._waiting.popleft()
                continue
            if group and images + part.images > self.max_images:
                break
            group.append(self._waiting.popleft())
            images += part.images
        return group

    def _call(self, group: list[Part]) -> None:
        """One call of ``run`` for ``group``; every part is answered, whatever happens."""
        self.calls += 1
        try:
            results = self._run(group)
        except Exception as exc:  # noqa: BLE001 - the requests get it; the runner goes on
            for part in group:
                part.loop.call_soon_threadsafe(_resolve, part.future, None, exc)
            return
        for part, result in zip(group, results, strict=True):
            part.loop.call_soon_threadsafe(_resolve, part.future, result, None)
