"""Prometheus metrics for the API, and the ASGI middleware that records them.

One registry per app instance (not the global default) so tests and the
benchmark can build several apps in one process. Endpoint and method labels
come from fixed lists, never from the raw request, so a scanner hitting random
URLs with random methods cannot blow up the metric cardinality.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ENDPOINTS = frozenset(
    {
        *("/", "/predict", "/predict/batch", "/health", "/ready", "/model", "/metrics"),
        *("/openapi.json", "/docs", "/redoc"),
    }
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Milliseconds matter here: the digits model answers in about one.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0)  # fmt: skip

CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


class Telemetry:
    """The app's metrics: requests, latency, predictions, rejected inputs, model info.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (``IMGCLF_PROCESSES`` > 1 sets it for its
    workers, :mod:`imgclf.serving.processes`), counters, histograms and the queue gauge
    live in that directory and ``/metrics`` adds up every process's values, whichever
    process answers; the model's info and the ``process_*`` metrics are the answering
    process's own (the same model everywhere).
    """

    content_type = CONTENT_TYPE_LATEST
    # Seconds between two readings of the work queue into the shared gauge (multiprocess).
    QUEUE_EVERY_S = 1.0

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        # What only this process knows; the same registry as the rest in one process.
        self.local = CollectorRegistry() if self.multiprocess_dir else self.registry
        # Memory and CPU of the server process: how a decompression bomb would show up.
        ProcessCollector(registry=self.local)
        self.requests = Counter(
            "imgclf_http_requests",
            "HTTP requests by endpoint, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgclf_http_request_duration_seconds",
            "Time from request start to the end of the response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "imgclf_predictions",
            "Images classified, by predicted class.",
            ["label"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "imgclf_rejected_inputs",
            "Uploads refused with a 4xx, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "imgclf_inference_duration_seconds",
            "onnxruntime time per call (one image or one batch).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.call_images = Histogram(
            "imgclf_model_call_images",
            "Images per model call: requests decoded at the same time share one call "
            "(IMGCLF_COALESCE_IMAGES); under load the mean rises above one.",
            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.ood = Counter(
            "imgclf_ood_inputs",
            "Images the out-of-distribution check flagged (IMGCLF_OOD=flag) or refused "
            "(refuse), by reason: an input check (brightness, size, …) or 'features'.",
            ["reason"],
            registry=self.registry,
        )
        self.model = Info("imgclf_model", "The served model artifact.", registry=self.local)
        self.session_fallbacks = Counter(
            "imgclf_session_fallbacks",
            "Model loads at which the fast onnxruntime session disagreed with evaluate's "
            "golden batch, so the portable (evaluated) session serves instead.",
            registry=self.registry,
        )
        self.queue = Gauge(
            "imgclf_work_jobs",
            "Decode+inference jobs running or queued in the work pool (all processes).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # Monitoring (imgclf.monitoring.recorder): the running confidence distribution, and what the
        # recorder wrote or had to drop.
        self.confidence = Histogram(
            "imgclf_prediction_confidence",
            "Confidence (top-class probability) of the answers given.",
            buckets=CONFIDENCE_BUCKETS,
            registry=self.registry,
        )
        self.monitor_records = Counter(
            "imgclf_monitor_records", "Predictions written to IMGCLF_MONITOR_DB.",
            registry=self.registry,
        )  # fmt: skip
        self.monitor_dropped = Counter(
            "imgclf_monitor_dropped",
            "Predictions not recorded (queue full or database error); never the answer itself.",
            registry=self.registry,
        )
        self.monitor_samples = Counter(
            "imgclf_monitor_samples", "Uploads kept in IMGCLF_SAMPLE_DIR.", registry=self.registry
        )
        self.monitor_samples_skipped = Counter(
            "imgclf_monitor_samples_skipped",
            "Uploads drawn for sampling but not kept: IMGCLF_SAMPLE_MAX_BYTES reached.",
            registry=self.registry,
        )
        # Fleet shipping (imgclf.monitoring.shipping): shards closed, uploaded, failed tries
        # (closed - uploaded: waiting in the spool).
        self.monitor_shards = Counter(
            "imgclf_monitor_shards", "Shards of records closed (IMGCLF_MONITOR_URL).",
            registry=self.registry,
        )  # fmt: skip
        self.monitor_shards_uploaded = Counter(
            "imgclf_monitor_shards_uploaded", "Shards uploaded to IMGCLF_MONITOR_URL.",
            registry=self.registry,
        )  # fmt: skip
        self.monitor_upload_failures = Counter(
            "imgclf_monitor_upload_failures",
            "Shard uploads that failed (each is retried; the answers never wait on it).",
            registry=self.registry,
        )
        self.monitor_shards_dropped = Counter(
            "imgclf_monitor_shards_dropped",
            "Oldest waiting shards deleted unshipped: the spool was over "
            "IMGCLF_MONITOR_SPOOL_MAX_BYTES (the bucket unreachable for long).",
            registry=self.registry,
        )
        self.monitor_records_dropped_unshipped = Counter(
            "imgclf_monitor_records_dropped_unshipped",
            "Records in the shards counted by imgclf_monitor_shards_dropped.",
            registry=self.registry,
        )
        self.disconnects = Counter(
            "imgclf_client_disconnects",
            "Requests whose client went away before the answer (also counted as status 499).",
            ["endpoint"],
            registry=self.registry,
        )

    def set_model(self, info: dict[str, Any]) -> None:
        self.model.info({k: str(v) for k, v in info.items()})

    def watch_queue(self, jobs: Callable[[], int]) -> None:
        """Report ``jobs()`` as the queue gauge: read at each scrape in one process; in
        multiprocess mode read every :data:`QUEUE_EVERY_S` by a daemon thread into the
        shared gauge (a scrape cannot call into the other processes)."""
        if not self.multiprocess_dir:
            self.queue.set_function(jobs)
            return

        def sample() -> None:
            while True:
                self.queue.set(jobs())
                time.sleep(self.QUEUE_EVERY_S)

        threading.Thread(target=sample, name="imgclf-queue-gauge", daemon=True).start()

    def render(self) -> bytes:
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(shared, path=self.multiprocess_dir)
        return generate_latest(shared) + generate_latest(self.local)


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500  # what the client sees if the app dies before answering
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.telemetry.latency.labels(endpoint).observe(time.perf_counter() - start)
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.telemetry.requests.labels(endpoint, method, str(status)).inc()
