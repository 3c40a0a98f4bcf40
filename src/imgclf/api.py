"""The HTTP API: the evaluated ONNX artifact behind FastAPI, hardened against bad uploads.

What ``evaluate`` scored is exactly what answers here: the model is loaded by
:class:`imgclf.predictor.Predictor` (onnxruntime, no torch) and every upload
goes through :func:`imgclf.preprocessing.preprocess`, the function that
produced the evaluated test arrays.

Run it with ``imgclf serve`` / ``make serve``, or
``uvicorn imgclf.api:create_app --factory`` (configuration: ``IMGCLF_*``
environment variables, see :mod:`imgclf.settings`).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel

from imgclf.preprocessing import ImageError, PreprocessSpec, preprocess
from imgclf.settings import Settings
from imgclf.telemetry import MetricsMiddleware, Telemetry
from imgclf.uploads import (
    SUPPORTED_FORMATS,
    Limits,
    RequestRejectedError,
    Upload,
    read_uploads,
    sniff,
)

log = logging.getLogger("imgclf.api")

# The one place where a rejection reason becomes an HTTP status. Reasons come from
# ImageError (preprocessing), RequestRejectedError (uploads) and the checks below.
REASON_STATUS: dict[str, int] = {
    # the request as a whole
    "not_multipart": 415,
    "malformed_request": 400,
    "missing_file": 422,
    "not_a_file": 422,
    "too_many_files": 422,  # the schema's maxItems: a validation error, like FastAPI's
    "too_many_parts": 413,
    "too_large": 413,
    # one image
    "empty": 400,
    "not_an_image": 415,
    "corrupt": 400,
    "truncated": 400,
    "too_many_pixels": 413,
}
# Room for the multipart boundary and part headers around a single file.
MULTIPART_OVERHEAD = 64 * 1024
# Uploads decoding to at most this many pixels in total, for a model whose input is
# at most INLINE_MAX_INPUT pixels a side, are classified on the event loop (well under
# a millisecond, less than the thread hop costs); anything bigger goes to the thread
# pool so that a 40 MP photo or a ResNet forward pass cannot stall other requests.
INLINE_MAX_PIXELS = 512 * 512
INLINE_MAX_INPUT = 64


def status_for(reason: str) -> int:
    """HTTP status for a rejection reason (400 for any reason not listed)."""
    return REASON_STATUS.get(reason, 400)


class Backend(Protocol):
    """What the API needs from a model: the onnxruntime Predictor, or bench's torch twin."""

    card: dict[str, Any]
    classes: list[str]
    spec: PreprocessSpec

    @property
    def version(self) -> str: ...

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray: ...


class PredictionOut(BaseModel):
    """One image's answer."""

    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]
    model_version: str


class BatchItem(BaseModel):
    """One file of a batch: a prediction (``ok``) or that file's own error."""

    filename: str | None = None
    ok: bool
    label: str | None = None
    index: int | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    status: int | None = None
    reason: str | None = None
    detail: str | None = None


class BatchOut(BaseModel):
    """Results in the order the files were sent."""

    model_version: str
    results: list[BatchItem]


class ErrorOut(BaseModel):
    """Every 4xx/503 this API produces itself: a message and a machine-readable reason."""

    detail: str
    reason: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "corrupt, truncated or empty image, or malformed multipart body"),
        (413, "file or request too large, or too many pixels"),
        (415, "not multipart/form-data, or the content is not a supported image"),
        (422, "the file field is missing or not a file, or too many files"),
        (503, "the model is not loaded"),
    )
}


def _upload_body(batch: bool, max_batch: int) -> dict[str, Any]:
    """OpenAPI request body for a multipart upload we parse ourselves (see uploads.py)."""
    binary = {"type": "string", "format": "binary"}
    if batch:
        prop = {"files": {"type": "array", "items": binary, "minItems": 1, "maxItems": max_batch}}
        required = ["files"]
    else:
        prop, required = {"file": binary}, ["file"]
    schema = {"type": "object", "properties": prop, "required": required}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


class Service:
    """The loaded model and everything derived from it; lives on ``app.state.service``."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.telemetry = Telemetry()
        self.backend: Backend | None = backend
        self.spec: PreprocessSpec | None = None
        self.error: str | None = None
        self.model_info: dict[str, Any] = {}

    def load(self) -> None:
        """Load the artifact (unless one was injected); on failure stay up and report not ready."""
        try:
            if self.backend is None:
                from imgclf.predictor import Predictor

                self.backend = Predictor(self.settings.model_dir, threads=self.settings.threads)
            card = self.backend.card
            # The server's pixel limit can only be stricter than the one the model was built with.
            limit = min(self.settings.max_pixels, self.backend.spec.max_pixels)
            self.spec = replace(self.backend.spec, max_pixels=limit)
            self.backend.predict_proba(np.zeros((1, *self.input_shape()), np.uint8))  # warm-up
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
            self.backend, self.error = None, f"{type(exc).__name__}: {exc}"
            log.error("model not loaded: %s", self.error)

    def input_shape(self) -> tuple[int, int, int]:
        assert self.spec is not None
        return (self.spec.image_size, self.spec.image_size, self.spec.channels)

    def _describe(self, card: dict[str, Any]) -> dict[str, Any]:
        """The card plus what only the deployment knows: evaluation metrics, git revision."""
        metrics: dict[str, Any] | None = None
        path = self.settings.evaluation_file
        if path.is_file():
            metrics = json.loads(path.read_text())
        match = None if metrics is None else metrics.get("model_sha256") == card.get("model_sha256")
        if match is False:
            log.warning("%s was computed for another model than the one served", path)
        s = self.settings
        return {
            **card,
            "version": self.backend.version if self.backend else "",
            "git_revision": s.git_revision,
            "metrics": metrics,
            "metrics_match_model": match,
            "limits": {
                "max_upload_bytes": s.max_upload_bytes,
                "max_request_bytes": s.max_request_bytes,
                "max_pixels": self.spec.max_pixels if self.spec else s.max_pixels,
                "max_batch": s.max_batch,
                "formats": list(SUPPORTED_FORMATS),
            },
        }

    def pixels(self, data: bytearray) -> np.ndarray:
        """Sniff, then the shared :func:`preprocess`; every failure is an :class:`ImageError`."""
        assert self.spec is not None
        if not data:
            raise ImageError("empty", "the file is empty")
        if sniff(data) is None:
            raise ImageError(
                "not_an_image",
                "content is not a supported image (" + ", ".join(SUPPORTED_FORMATS) + "); "
                "the filename and Content-Type are not trusted",
            )
        try:
            return preprocess(io.BytesIO(data), self.spec)
        except ImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise a zoo of types on fuzzed files
            log.warning("decoder failed on an upload: %r", exc)
            raise ImageError("corrupt", f"image cannot be decoded: {exc}") from None

    def is_cheap(self, uploads: list[bytearray]) -> bool:
        """Whether decoding all ``uploads`` is small work (header-only look, no decode)."""
        if self.spec is None or self.spec.image_size > INLINE_MAX_INPUT:
            return False
        total = 0
        for data in uploads:
            if sniff(data) is None:
                continue  # rejected without decoding
            try:
                width, height = Image.open(io.BytesIO(data)).size
            except Exception:  # noqa: BLE001 - classify() reports it properly
                continue
            total += width * height
        return total <= INLINE_MAX_PIXELS

    async def classify_async(self, uploads: list[bytearray]) -> list[np.ndarray | ImageError]:
        if self.is_cheap(uploads):
            return self.classify(uploads)
        return await run_in_threadpool(self.classify, uploads)

    def classify(self, uploads: list[bytearray]) -> list[np.ndarray | ImageError]:
        """Probabilities per upload, or that upload's error; one model call for the batch."""
        assert self.backend is not None
        out: list[np.ndarray | ImageError] = []
        good: list[np.ndarray] = []
        for data in uploads:
            try:
                good.append(self.pixels(data))
                out.append(good[-1])
            except ImageError as exc:
                out.append(exc)
        if good:
            with self.telemetry.inference.time():
                probs = iter(self.backend.predict_proba(np.stack(good)))
            out = [r if isinstance(r, ImageError) else next(probs) for r in out]
        return out

    def answer(self, probs: np.ndarray) -> dict[str, Any]:
        assert self.backend is not None
        index = int(np.argmax(probs))
        label = self.backend.classes[index]
        self.telemetry.predictions.labels(label).inc()
        return {
            "label": label,
            "index": index,
            "confidence": float(probs[index]),
            "probabilities": dict(zip(self.backend.classes, map(float, probs), strict=True)),
        }

    def reject(self, reason: str) -> None:
        self.telemetry.rejected.labels(reason).inc()


def _error(service: Service, reason: str, message: str) -> JSONResponse:
    service.reject(reason)
    return JSONResponse({"detail": message, "reason": reason}, status_code=status_for(reason))


class _NotReadyError(Exception):
    """The model is not loaded (yet, or it failed): 503, the process itself is fine."""


def _require_model(service: Service) -> Backend:
    if service.backend is None:
        raise _NotReadyError(service.error or "model is loading")
    return service.backend


def _index_html() -> str:
    return resources.files("imgclf").joinpath("static/index.html").read_text(encoding="utf-8")


# The page is self-contained (inline script and style, no CDN): allow nothing else.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src blob: data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the app. ``uvicorn imgclf.api:create_app --factory`` reads ``IMGCLF_*``.

    ``backend`` replaces the onnxruntime model (the benchmark's torch-eager twin).
    """
    settings = settings or Settings.from_env()
    service = Service(settings, backend)
    page = _index_html()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.load)
        yield

    app = FastAPI(
        title="imgclf",
        summary="Image classification with the evaluated ONNX artifact.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(MetricsMiddleware, telemetry=service.telemetry)

    @app.exception_handler(RequestRejectedError)
    async def rejected(_: Request, exc: RequestRejectedError) -> JSONResponse:
        return _error(service, exc.reason, str(exc))

    @app.exception_handler(ImageError)
    async def bad_image(_: Request, exc: ImageError) -> JSONResponse:
        return _error(service, exc.reason, str(exc))

    @app.exception_handler(_NotReadyError)
    async def not_ready(_: Request, exc: _NotReadyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "reason": "not_ready"}, status_code=503)

    single = Limits(
        max_file_bytes=settings.max_upload_bytes,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        max_files=1,
    )
    several = Limits(
        max_file_bytes=settings.max_upload_bytes,
        max_body_bytes=settings.max_request_bytes,
        max_files=settings.max_batch,
        max_parts=settings.max_batch + 16,
    )

    async def _uploads(request: Request, field: str, limits: Limits) -> list[Upload]:
        """The request's files under ``field`` (limits enforced while reading), or a 422."""
        uploads = await read_uploads(request.headers, request.stream(), (field,), limits)
        if not uploads:
            raise RequestRejectedError(
                "missing_file", f"no multipart field named '{field}' in the request"
            )
        return uploads

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded", responses={503: ERROR_RESPONSES[503]})
    async def ready() -> dict[str, Any]:
        return {"ready": True, "model_version": _require_model(service).version}

    @app.get("/model", summary="The model card, evaluation metrics and provenance",
             responses={503: ERROR_RESPONSES[503]})  # fmt: skip
    async def model() -> dict[str, Any]:
        _require_model(service)
        return service.model_info

    @app.get("/metrics", summary="Prometheus metrics",
             response_class=Response, responses={200: {"content": {"text/plain": {}}}})  # fmt: skip
    async def metrics() -> Response:
        return Response(service.telemetry.render(), media_type=service.telemetry.content_type)

    @app.get("/", summary="Upload page", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.post(
        "/predict",
        summary="Classify one image (multipart field `file`)",
        response_model=PredictionOut,
        responses=ERROR_RESPONSES,
        openapi_extra=_upload_body(batch=False, max_batch=1),
    )
    async def predict(request: Request) -> dict[str, Any]:
        version = _require_model(service).version
        uploads = await _uploads(request, "file", single)
        if uploads[0].error is not None:
            raise uploads[0].error
        (result,) = await service.classify_async([uploads[0].data])
        if isinstance(result, ImageError):
            raise result
        return {**service.answer(result), "model_version": version}

    @app.post(
        "/predict/batch",
        summary=f"Classify up to IMGCLF_MAX_BATCH ({settings.max_batch}) images (field `files`)",
        response_model=BatchOut,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        openapi_extra=_upload_body(batch=True, max_batch=settings.max_batch),
    )
    async def predict_batch(request: Request) -> dict[str, Any]:
        version = _require_model(service).version
        uploads = await _uploads(request, "files", several)
        ok = [u for u in uploads if u.error is None]
        results = iter(await service.classify_async([u.data for u in ok]))
        items: list[dict[str, Any]] = []
        for upload in uploads:
            outcome: np.ndarray | ImageError | RequestRejectedError
            outcome = upload.error if upload.error is not None else next(results)
            if isinstance(outcome, ImageError | RequestRejectedError):
                service.reject(outcome.reason)
                status = status_for(outcome.reason)
                items.append(
                    {
                        "filename": upload.filename,
                        "ok": False,
                        "status": status,
                        "reason": outcome.reason,
                        "detail": str(outcome),
                    }
                )
            else:
                items.append({"filename": upload.filename, "ok": True, **service.answer(outcome)})
        return {"model_version": version, "results": items}

    return app


def run(settings: Settings, host: str, port: int, access_log: bool = True) -> None:
    """Serve with uvicorn (what ``imgclf serve`` and ``make serve`` call)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log)
