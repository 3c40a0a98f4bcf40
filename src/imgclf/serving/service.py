"""The serving service: the loaded model, and bounded decode + inference work.

Everything that costs CPU or memory per request lives here, with its bound:

* every decode and inference runs in :class:`WorkPool`, a fixed number of
  threads (one per core plus one by default) with a bounded queue; a request that finds
  the queue full gets ``503 overloaded`` at once instead of piling up, and the
  event loop never parses attacker-controlled bytes, so ``/health`` and
  ``/ready`` answer in milliseconds whatever the load;
* one request may allocate at most ``IMGCLF_MAX_DECODE_BYTES`` of decoded
  pixels, summed over the files of a batch and counting bytes per pixel
  (:class:`imgclf.data.preprocessing.DecodeBudget`);
* a request not answered within ``IMGCLF_REQUEST_TIMEOUT_S`` gets ``503
  timeout``; work already started finishes in its thread (Python threads cannot
  be killed) but keeps holding its pool slot, so the bound still holds.

The model file is checked against the card's ``model_sha256`` when loaded
(:class:`imgclf.artifact.predictor.Predictor`); what ``/ready`` says about a failed load
never contains a server path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from imgclf.data.features import noted_source
from imgclf.data.preprocessing import (
    SUPPORTED_FORMATS,
    DecodeBudget,
    ImageError,
    PreprocessSpec,
    preprocess,
)
from imgclf.jsonio import expand
from imgclf.monitoring.recorder import SourceBudget, Upload
from imgclf.serving import ood_hooks as oodserve
from imgclf.serving.coalesce import Coalescer, Part
from imgclf.serving.prometheus_metrics import Telemetry
from imgclf.serving.recording import open_monitor
from imgclf.serving.settings import Settings

log = logging.getLogger("imgclf.serving.app")
T = TypeVar("T")


class Backend(Protocol):
    """What the API needs from a model: the onnxruntime Predictor, or bench's torch twin."""

    card: dict[str, Any]
    classes: list[str]
    spec: PreprocessSpec

    @property
    def version(self) -> str: ...

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


class ServiceUnavailableError(Exception):
    """A 503: the server (not the request) cannot answer now; ``reason`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Worker threads run at a lower CPU priority than the event loop's thread (Linux
# schedules threads individually): when decodes keep every core busy, the loop still
# gets the CPU at once to answer /health, /ready and to read other requests.
WORKER_NICENESS = 5


def _lower_priority() -> None:
    """Thread initializer: renice this worker thread (a no-op where not supported)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)


class WorkPool:
    """A fixed set of worker threads and a bounded queue in front of them.

    Admission is decided on the event loop, before anything is queued: at most
    ``workers + max_queue`` jobs exist at any time. A job's slot is given back
    when the job really ends (or is cancelled before it started), not when the
    request stops waiting for it, so a timed-out request cannot let more work in
    than the threads can do. The count is only touched on the event loop's
    thread (no lock on the hot path: the thread hop is most of this class's cost).
    """

    def __init__(self, workers: int, max_queue: int) -> None:
        self.workers = workers
        self.capacity = workers + max_queue
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="imgclf-work", initializer=_lower_priority
        )
        self._jobs = 0

    @property
    def jobs(self) -> int:
        """Jobs running or queued now."""
        return self._jobs

    def _release(self) -> None:
        self._jobs -= 1

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """``fn(*args)`` in a worker thread; 503 when the queue is full or ``timeout`` passes."""
        if self._jobs >= self.capacity:
            raise ServiceUnavailableError(
                "overloaded",
                f"server is busy ({self.workers} workers and {self.capacity - self.workers} "
                "queued requests): retry after the Retry-After delay",
            )
        self._jobs += 1
        try:
            job = self._executor.submit(fn, *args)
        except BaseException:  # e.g. RuntimeError after shutdown: give the slot back
            self._release()
            raise
        waiter = asyncio.wrap_future(job)
        try:
            async with asyncio.timeout(max(timeout, 0.001)):
                result = await waiter
                if isinstance(result, asyncio.Future):
                    # The job queued a model call (imgclf.serving.coalesce): the slot and
                    # the deadline cover it too; on timeout the call is dropped, not made.
                    result = await result
        except BaseException as exc:
            # Timed out or cancelled: the job was cancelled if it had not started; if it
            # runs, its slot is given back (on this loop's thread) only when it ends.
            if job.done():
                self._release()
            else:
                loop = asyncio.get_running_loop()
                job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
            if isinstance(exc, TimeoutError):
                raise ServiceUnavailableError(
                    "timeout", "the request was not answered within IMGCLF_REQUEST_TIMEOUT_S"
                ) from None
            raise
        self._release()
        return result

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# Absolute paths in a message ("/srv/models/model.onnx", "C:\\models\\x") → their last part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])*([^\s'\"/\\]*)")


def public_message(exc: BaseException) -> str:
    """What clients may read about a failed model load: the problem, never a server path.

    ``ModelNotFoundError: model.onnx not found: …`` or ``ModelIntegrityError: model.onnx
    does not match its card: …``; the message with its full paths goes to the log.
    """
    return f"{type(exc).__name__}: " + _ABSOLUTE_PATH.sub(r"\1", str(exc))


@dataclass(eq=False)
class _Decoded:
    """One request's uploads after decoding (:meth:`Service._decode`)."""

    out: list[Any] = field(default_factory=list)  # per upload: its ImageError, or None
    pixels: np.ndarray | None = None  # (k, H, W, C): the uploads that decoded, in order
    sources: list[bytearray] = field(default_factory=list)  # their bytes (OOD: size, colour)
    info: list[tuple[int, int, str]] = field(default_factory=list)  # … as the decode saw them
    accepted: list[Upload] = field(default_factory=list)  # what monitoring records besides pixels


class Service:
    """The loaded model and everything derived from it; lives on ``app.state.service``."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.telemetry = Telemetry()
        self.backend: Backend | None = backend
        self.spec: PreprocessSpec | None = None
        self.error: str | None = None
        self.model_info: dict[str, Any] = {}
        # Which session answers and why (imgclf.artifact.agreement); None for an injected backend.
        self.session: dict[str, Any] | None = None
        self.ood: oodserve.Detector | None = None  # the OOD flag's statistics (imgclf.ood.detector)
        self.pool = WorkPool(settings.worker_threads, settings.max_queue)
        # Requests decoded at the same time share one model call (imgclf.serving.coalesce).
        self.coalescer = Coalescer(
            self._score, settings.coalesce_images, runners=settings.worker_threads
        )
        self.telemetry.watch_queue(lambda: self.pool.jobs)
        # What is served, recorded off the request path (IMGCLF_MONITOR_DB; None: off).
        self.monitor = open_monitor(settings, self.telemetry)

    def load(self) -> None:
        """Load (and verify) the artifact unless one was injected; on failure report not ready."""
        try:
            if self.backend is None:
                self.backend = self._load_predictor()
            card = self.backend.card
            # The server's pixel limit can only be stricter than the one the model was built with.
            limit = min(self.settings.max_pixels, self.backend.spec.max_pixels)
            self.spec = replace(self.backend.spec, max_pixels=limit)
            self.backend.predict_proba(np.zeros((1, *self.input_shape()), np.uint8))  # warm-up
            s = self.settings
            self.ood = oodserve.load(s.ood, s.model_dir, card.get("model_sha256", ""))
            self.model_info = self._describe(card)
            self.telemetry.set_model(
                {
                    "version": self.backend.version,
                    "model_sha256": card.get("model_sha256", ""),
                    "architecture": card.get("model", {}).get("name", ""),
                    "classes": len(self.backend.classes),
                    "dataset_fingerprint": card.get("dataset", {}).get("fingerprint", ""),
                    "git_revision": self.settings.git_revision or "",
                }
            )
            self.error = None
            log.info("model %s loaded from %s", self.backend.version, self.settings.model_dir)
        except Exception as exc:  # noqa: BLE001 - any load failure means "not ready", not a crash
            self.backend, self.error = None, public_message(exc)
            # The full story (paths included) goes to the server's log only.
            log.error("model not loaded from %s: %s", self.settings.model_dir, exc)

    def _load_predictor(self) -> Backend:
        """The fastest session that answers like the evaluated model (golden batch), else
        the evaluated session itself; the choice is logged, counted and shown."""
        from imgclf.artifact.agreement import load_served

        s = self.settings
        predictor, check = load_served(s.model_dir, s.threads, s.session)
        self.session = check.as_json()
        if check.status == "fallback":
            self.telemetry.session_fallbacks.inc()
            log.warning("session: %s", check.detail)
        else:
            log.info("session: %s (%s)", check.session, check.detail)
        return predictor

    def input_shape(self) -> tuple[int, int, int]:
        assert self.spec is not None
        return (self.spec.image_size, self.spec.image_size, self.spec.channels)

    def _describe(self, card: dict[str, Any]) -> dict[str, Any]:
        """The card plus what only the deployment knows: evaluation metrics, git revision,
        the registry version and stage it was built for."""
        metrics: dict[str, Any] | None = None
        path = self.settings.evaluation_file
        if path.is_file():
            metrics = expand(json.loads(path.read_text()))
        match = None if metrics is None else metrics.get("model_sha256") == card.get("model_sha256")
        if match is False:
            log.warning("%s was computed for another model than the one served", path)
        s = self.settings
        return {
            **card,
            "version": self.backend.version if self.backend else "",
            "git_revision": s.git_revision,
            "release": {"version": s.model_version, "stage": s.model_stage},
            "metrics": metrics,
            "metrics_match_model": match,
            "ood": oodserve.describe(s.ood, self.ood),
            "session": self.session,
            "limits": {
                "max_upload_bytes": s.max_upload_bytes,
                "max_request_bytes": s.max_request_bytes,
                "max_pixels": self.spec.max_pixels if self.spec else s.max_pixels,
                "max_decode_bytes": s.max_decode_bytes,
                "max_batch": s.max_batch,
                "formats": list(SUPPORTED_FORMATS),
                "workers": self.pool.workers,
                "max_queue": s.max_queue,
                "body_timeout_s": s.body_timeout_s,
                "request_timeout_s": s.request_timeout_s,
            },
        }

    def pixels(self, data: bytearray, budget: DecodeBudget) -> np.ndarray:
        """The shared :func:`preprocess` (which sniffs); every failure is an :class:`ImageError`."""
        assert self.spec is not None
        if not data:
            raise ImageError("empty", "the file is empty")
        try:
            return preprocess(data, self.spec, budget)
        except ImageError as exc:
            # Messages are fixed texts; the decoder's own words (the suppressed context)
            # go to the log only (docs/serving-edge.md).
            if exc.__context__ is not None:
                log.info("upload refused (%s): %r", exc.reason, exc.__context__)
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise a zoo of types on fuzzed files
            # The decoder's text goes to the log only: the reason code is the contract.
            log.warning("decoder failed on an upload: %r", exc)
            raise ImageError("corrupt", "image cannot be decoded") from None

    async def classify_async(
        self, uploads: list[bytearray], deadline: float
    ) -> list[oodserve.Scored | ImageError]:
        """:meth:`classify` in the work pool, answered by ``deadline`` (loop time) or 503."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        return await self.pool.run(self.classify, uploads, loop, timeout=remaining)

    def classify(
        self, uploads: list[bytearray], loop: asyncio.AbstractEventLoop
    ) -> list[oodserve.Scored | ImageError] | asyncio.Future[list[Any]]:
        """Probabilities and OOD verdict per upload, or that upload's error (IMGCLF_OOD=refuse
        turns an OOD upload into its error).

        Runs in a worker thread. The files of one request share one decode budget. The
        decoded images join the next model call of
        :class:`~imgclf.serving.coalesce.Coalescer`; the answer is then a future of ``loop``.
        """
        assert self.backend is not None
        decoded = self._decode(uploads)
        if decoded.pixels is None:  # nothing decoded: every upload has its error
            return decoded.out
        future: asyncio.Future[list[Any]] = loop.create_future()
        self.coalescer.submit(Part(len(decoded.pixels), decoded, future, loop))
        return future

    def _decode(self, uploads: list[bytearray]) -> _Decoded:
        """Decode every upload under one budget: the pixels to score and each upload's error."""
        monitor = self.monitor
        # A budget that notes the image each decode opened: its original size and format
        # are what the OOD flag and monitoring need, without parsing the header again.
        budget = SourceBudget(self.settings.max_decode_bytes)
        decoded = _Decoded()
        good: list[np.ndarray] = []
        for data in uploads:
            try:
                good.append(self.pixels(data, budget))
                decoded.sources.append(data)
                decoded.info.append(noted_source(budget.last, data))
                decoded.out.append(None)  # its answer goes here
                if monitor is not None:
                    decoded.accepted.append(monitor.upload(data, budget))
            except ImageError as exc:
                decoded.out.append(exc)
        if good:
            decoded.pixels = good[0][None] if len(good) == 1 else np.stack(good)
        return decoded

    def _score(self, parts: list[Part]) -> list[list[Any]]:
        """One model call (and one OOD verdict pass) for the decoded images of ``parts``
        (each a :class:`_Decoded`); each part's answers, in its uploads' order."""
        assert self.backend is not None
        items: list[_Decoded] = [p.payload for p in parts]
        pixels = [d.pixels for d in items if d.pixels is not None]
        batch = pixels[0] if len(pixels) == 1 else np.concatenate(pixels)
        sources = [s for d in items for s in d.sources]
        info = [i for d in items for i in d.info]
        self.telemetry.call_images.observe(len(batch))
        with self.telemetry.inference.time():
            probs, embedding = self._infer(batch)
        monitor = self.monitor
        if monitor is not None:  # queued for the writer thread: microseconds here
            backend = self.backend
            accepted = [a for d in items for a in d.accepted]
            monitor.observe(accepted, batch, probs, embedding, backend.classes, backend.version)
        mode, telemetry = self.settings.ood, self.telemetry
        scored = iter(
            oodserve.judge(self.ood, mode, telemetry, batch, probs, embedding, sources, info)
        )
        return [[r if isinstance(r, ImageError) else next(scored) for r in d.out] for d in items]

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities, plus the embedding (same pass) when monitoring records it or the
        OOD flag measures its distance."""
        assert self.backend is not None
        wanted = self.monitor is not None or self.ood is not None
        return oodserve.infer(self.backend, batch, wanted)

    def answer(self, result: oodserve.Scored) -> dict[str, Any]:
        assert self.backend is not None
        probs = result.probs
        index = int(np.argmax(probs))
        label = self.backend.classes[index]
        self.telemetry.predictions.labels(label).inc()
        self.telemetry.confidence.observe(float(probs[index]))
        return {
            "label": label,
            "index": index,
            "confidence": float(probs[index]),
            "probabilities": dict(zip(self.backend.classes, map(float, probs), strict=True)),
            **result.ood_json(),
        }

    def reject(self, reason: str) -> None:
        self.telemetry.rejected.labels(reason).inc()
