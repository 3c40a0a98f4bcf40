"""The HTTP API: routes and error handling around :class:`imgclf.serving.service.Service`.

What ``evaluate`` scored is exactly what answers here: the model is loaded by
:class:`imgclf.artifact.predictor.Predictor` (onnxruntime, no torch, file checked against
the card's hash) and every upload goes through
:func:`imgclf.data.preprocessing.preprocess`, the function that produced the
evaluated test arrays. This module only speaks HTTP: the contract is in
:mod:`imgclf.serving.schemas`, the work and its limits in :mod:`imgclf.serving.service`.

Run it with ``imgclf serve`` / ``make serve`` (which also applies the connection
cap), or ``uvicorn imgclf.serving.app:create_app --factory`` (configuration: ``IMGCLF_*``
environment variables, see :mod:`imgclf.serving.settings`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from imgclf.data.preprocessing import ImageError
from imgclf.serving.admission import (
    UNLIMITED,
    BodyBudget,
    BodyBudgetExceededError,
    BodyHold,
    ClientLimitMiddleware,
    parse_networks,
)
from imgclf.serving.ood_hooks import Scored
from imgclf.serving.prometheus_metrics import ENDPOINTS, MetricsMiddleware
from imgclf.serving.schemas import (
    ERROR_RESPONSES,
    RETRY_AFTER_S,
    BatchOut,
    PredictionOut,
    status_for,
    upload_body,
)
from imgclf.serving.service import Backend, Service, ServiceUnavailableError
from imgclf.serving.settings import Settings
from imgclf.serving.uploads import Limits, RequestRejectedError, Upload, read_uploads

log = logging.getLogger("imgclf.serving.app")

# Room for the multipart boundary and part headers around a single file.
MULTIPART_OVERHEAD = 64 * 1024
# nginx's code for "client closed the request": what /metrics counts for a client
# that went away mid-upload (no answer can reach it; it is not a server error).
CLIENT_CLOSED = 499


def _index_html() -> str:
    page = resources.files("imgclf.serving").joinpath("static/index.html")
    return page.read_text(encoding="utf-8")


_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def page_headers(page: str) -> dict[str, str]:
    """Security headers for the upload page: it is self-contained (inline script and
    style, no CDN), so nothing else is allowed, and its one script only by its hash.

    ``script-src 'unsafe-inline'`` would let any injected ``<script>`` run; a hash
    allows exactly the script we ship (docs/serving-edge.md).
    """
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
        for m in _SCRIPT.findall(page)
    )
    scripts = hashes or "'none'"
    return {
        "Content-Security-Policy": f"default-src 'none'; script-src {scripts}; "
        "style-src 'unsafe-inline'; img-src blob: data:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


# Probes are never refused by the request cap: they must say "alive" whatever the load.
PROBES = UNLIMITED


class RequestCapMiddleware:
    """At most ``limit`` requests in the app at once (probes excepted); past it, JSON 503.

    ``imgclf serve`` also sets uvicorn's ``limit_concurrency`` (which counts idle
    connections too); this cap holds however the app is started, e.g. by the
    container's plain ``uvicorn`` command, and answers in the API's own format.
    """

    def __init__(self, app: ASGIApp, limit: int, service: Service) -> None:
        self.app = app
        self.limit = limit
        self.service = service
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in PROBES:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            self.service.reject("overloaded")
            response = JSONResponse(
                {"detail": f"more than {self.limit} requests in progress (IMGCLF_MAX_CONNECTIONS)",
                 "reason": "overloaded"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"},
            )  # fmt: skip
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def configure_logging() -> None:
    """Give ``imgclf.*`` loggers a handler: uvicorn configures only its own.

    Without it the one-line notes (model loaded, client disconnected) would be
    lost, and only warnings would reach the log through Python's last resort.
    """
    logger = logging.getLogger("imgclf")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _require_model(service: Service) -> Backend:
    if service.backend is None:
        raise ServiceUnavailableError("not_ready", service.error or "model is loading")
    return service.backend


def _install_error_handlers(app: FastAPI, service: Service) -> None:
    """Every failure becomes a JSON answer with a ``reason``; none is a bare 500."""

    def error(reason: str, message: str) -> JSONResponse:
        service.reject(reason)
        return JSONResponse({"detail": message, "reason": reason}, status_code=status_for(reason))

    @app.exception_handler(RequestRejectedError)
    async def rejected(_: Request, exc: RequestRejectedError) -> JSONResponse:
        return error(exc.reason, str(exc))

    @app.exception_handler(ImageError)
    async def bad_image(_: Request, exc: ImageError) -> JSONResponse:
        return error(exc.reason, str(exc))

    @app.exception_handler(ServiceUnavailableError)
    async def unavailable(_: Request, exc: ServiceUnavailableError) -> JSONResponse:
        # overloaded may come before the body was read: the connection stays open and
        # uvicorn's parser drops the body's bytes (closing with unread data would reset it).
        headers = {} if exc.reason == "not_ready" else {"Retry-After": str(RETRY_AFTER_S)}
        if exc.reason != "not_ready":
            service.reject(exc.reason)
        return JSONResponse(
            {"detail": str(exc), "reason": exc.reason}, status_code=503, headers=headers
        )

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _: ClientDisconnect) -> Response:
        # Nobody is left to read an answer: count it, one log line, no traceback.
        path = request.url.path
        service.telemetry.disconnects.labels(path if path in ENDPOINTS else "other").inc()
        log.info("client disconnected during %s %s", request.method, path)
        return Response(status_code=CLIENT_CLOSED)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the app. ``uvicorn imgclf.serving.app:create_app --factory`` reads ``IMGCLF_*``.

    ``backend`` replaces the onnxruntime model (the benchmark's torch-eager twin).
    """
    settings = settings or Settings.from_env()
    configure_logging()
    service = Service(settings, backend)
    page = _index_html()
    headers_for_page = page_headers(page)
    bodies = BodyBudget(settings.max_body_bytes_in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.load)
        yield
        service.pool.shutdown()
        if service.monitor is not None:  # flush what was recorded before exiting
            service.monitor.close()

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
    app.add_middleware(RequestCapMiddleware, limit=settings.max_connections, service=service)
    # Outside the request cap: a client over its own share is told so (429) before it
    # takes one of the shared slots.
    app.add_middleware(
        ClientLimitMiddleware,
        rate=settings.client_rate,
        burst=settings.client_burst_size,
        max_active=settings.client_active_limit,
        proxies=parse_networks(settings.trusted_proxies),
        on_reject=service.reject,
    )
    app.add_middleware(MetricsMiddleware, telemetry=service.telemetry)
    _install_error_handlers(app, service)

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

    def _admit(request: Request, limits: Limits) -> BodyHold:
        """Refuse before reading the body when the work queue is full or the bodies in
        flight would exceed IMGCLF_MAX_BODY_BYTES_IN_FLIGHT; else hold the budget."""
        pool = service.pool
        if pool.jobs >= pool.capacity:
            raise ServiceUnavailableError(
                "overloaded",
                f"server is busy ({pool.workers} workers and {pool.capacity - pool.workers} "
                "queued requests): retry after the Retry-After delay",
            )
        try:
            declared = int(request.headers.get("content-length", "0"))
        except ValueError:
            declared = 0  # read_uploads answers malformed_request
        # A declared length over the limit is refused without being kept: hold nothing.
        hold = BodyHold(bodies, declared if 0 <= declared <= limits.max_body_bytes else 0)
        if not hold.start():
            raise ServiceUnavailableError(
                "overloaded",
                "request bodies in memory are at their limit (IMGCLF_MAX_BODY_BYTES_IN_FLIGHT): "
                "retry after the Retry-After delay",
            )
        return hold

    async def _uploads(
        request: Request, field: str, limits: Limits, hold: BodyHold
    ) -> list[Upload]:
        """The request's files under ``field``, read under the limits and the body deadline."""
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                stream = hold.meter(request.stream())
                uploads = await read_uploads(request.headers, stream, (field,), limits)
        except BodyBudgetExceededError:
            raise ServiceUnavailableError(
                "overloaded",
                "request bodies in memory are at their limit (IMGCLF_MAX_BODY_BYTES_IN_FLIGHT): "
                "retry after the Retry-After delay",
            ) from None
        except TimeoutError:
            raise RequestRejectedError(
                "body_timeout",
                f"the request body did not arrive within {settings.body_timeout_s:g} s "
                "(IMGCLF_BODY_TIMEOUT_S)",
            ) from None
        if not uploads:
            raise RequestRejectedError(
                "missing_file", f"no multipart field named '{field}' in the request"
            )
        return uploads

    def _deadline() -> float:
        return asyncio.get_running_loop().time() + settings.request_timeout_s

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded", responses={503: ERROR_RESPONSES[503]})
    async def ready() -> dict[str, Any]:
        version = _require_model(service).version
        return {"ready": True, "model_version": version, "session": service.session}

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
        return HTMLResponse(page, headers=headers_for_page)

    @app.post(
        "/predict",
        summary="Classify one image (multipart field `file`)",
        response_model=PredictionOut,
        responses=ERROR_RESPONSES,
        openapi_extra=upload_body(batch=False, max_batch=1),
    )
    async def predict(request: Request) -> Response:
        deadline = _deadline()
        version = _require_model(service).version
        hold = _admit(request, single)
        try:
            uploads = await _uploads(request, "file", single, hold)
            if uploads[0].error is not None:
                raise uploads[0].error
            (result,) = await service.classify_async([uploads[0].data], deadline)
        finally:
            hold.release()
        if isinstance(result, ImageError):
            raise result
        return _answer({**service.answer(result), "model_version": version})

    @app.post(
        "/predict/batch",
        summary=f"Classify up to IMGCLF_MAX_BATCH ({settings.max_batch}) images (field `files`)",
        response_model=BatchOut,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        openapi_extra=upload_body(batch=True, max_batch=settings.max_batch),
    )
    async def predict_batch(request: Request) -> Response:
        deadline = _deadline()
        version = _require_model(service).version
        hold = _admit(request, several)
        try:
            uploads = await _uploads(request, "files", several, hold)
            ok = [u for u in uploads if u.error is None]
            results = iter(await service.classify_async([u.data for u in ok], deadline))
        finally:
            hold.release()
        items: list[dict[str, Any]] = []
        for upload in uploads:
            outcome: Scored | ImageError | RequestRejectedError
            outcome = upload.error if upload.error is not None else next(results)
            if isinstance(outcome, ImageError | RequestRejectedError):
                service.reject(outcome.reason)
                items.append(
                    {
                        "filename": upload.filename,
                        "ok": False,
                        "status": status_for(outcome.reason),
                        "reason": outcome.reason,
                        "detail": str(outcome),
                    }
                )
            else:
                items.append({"filename": upload.filename, "ok": True, **service.answer(outcome)})
        # As response_model_exclude_none=True wrote it: no null fields in an item.
        results = [{k: v for k, v in item.items() if v is not None} for item in items]
        return _answer({"model_version": version, "results": results})

    return app


def _answer(body: dict[str, Any]) -> Response:
    """A prediction's 200 (``/predict``, ``/predict/batch``), serialised here, not by FastAPI.

    The body is built by :meth:`Service.answer` from plain ``str``, ``int``, ``float``,
    ``bool`` and ``list`` values, so FastAPI validating it against ``PredictionOut`` or
    ``BatchOut`` again on every request only cost the event loop's thread, the one every
    request waits on (the models still document the answers in ``/docs``; tests check
    served bodies against them). Compact JSON, keys in the models' order, as FastAPI
    writes it.
    """
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(text.encode(), media_type="application/json")


def run(settings: Settings, host: str, port: int, access_log: bool = True) -> None:
    """Serve in this one process with uvicorn behind :mod:`imgclf.serving.edge`
    (``imgclf serve``, ``make serve`` and the container's ``python -m imgclf.serving`` come
    here through :func:`imgclf.serving.processes.serve` when one process serves; with
    several, each worker runs the same app and edge).

    The edge gives every connection a request-head deadline, a head size cap and a
    ceiling on open sockets; uvicorn's ``limit_concurrency`` is not used (it counts idle
    sockets, so a few hundred silent ones locked everyone out, probes included): the
    app's own cap (``IMGCLF_MAX_CONNECTIONS`` requests in progress, probes exempt) and
    the per-client limits bound the work. Forwarded headers are read by the app only
    from ``IMGCLF_TRUSTED_PROXIES`` (uvicorn's own proxy handling is off). See
    docs/serving-edge.md.
    """
    import uvicorn

    from imgclf.serving.edge import protocol_for, raise_file_limit

    app = create_app(settings)
    raise_file_limit(settings.max_open_connections + 256)
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=access_log,
        http=protocol_for(settings, on_reject=app.state.service.reject),
        timeout_keep_alive=max(1, round(settings.keep_alive_s)),
        proxy_headers=False,
        server_header=False,
    )
