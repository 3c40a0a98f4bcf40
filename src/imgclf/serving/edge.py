"""The connection edge: deadlines and size limits that uvicorn does not have.

uvicorn 0.54 with httptools (the fastest server measured here, see
docs/serving-edge.md) has no deadline for receiving a request head, starts its
keep-alive timer only after a first response, accepts a header of any size and
counts silent sockets in ``limit_concurrency``: 600 idle sockets locked every
client out, probes included, and a 48 MiB header was buffered whole. This module
keeps httptools' parser and adds, per connection:

* **a head deadline** (``IMGCLF_HEAD_TIMEOUT_S``) armed at accept and again when a
  response is complete (plus ``IMGCLF_KEEP_ALIVE_S`` of allowed idleness); it is
  disarmed only when a complete request head has been parsed, so neither a silent
  socket, a half-sent head nor bytes trickled after a response keep a connection;
* **a head size cap** (``IMGCLF_MAX_HEAD_BYTES``, request line + headers): past it
  the client gets ``431`` and the connection is closed, before more is buffered;
* **a ceiling on open sockets** (``IMGCLF_MAX_OPEN_CONNECTIONS``): past it a new
  connection is closed at once (file descriptors are finite). Idle sockets no longer
  count against the request cap, so probes and normal clients are served while
  hundreds of them wait for their deadline;
* **a write deadline**: a client that stops reading its answers (the transport's
  buffer over its high-water mark, uvicorn waiting for it to drain, with no timeout of
  its own) is cut off after ``IMGCLF_KEEP_ALIVE_S + IMGCLF_HEAD_TIMEOUT_S`` without
  progress. Before, such a client held a request slot (the request cap) and a socket
  for ever: four of them locked every client out under a cap of 4;
* **a pipeline depth** (:data:`MAX_PIPELINE`): uvicorn queues every request head that
  arrives while one is answered; one 200 KB read of pipelined ``GET`` lines queued
  thousands (14 MiB per connection). Past the depth the connection is aborted.

The protocol is bound to one :class:`~imgclf.serving.settings.Settings` by
:func:`protocol_for`; :func:`imgclf.serving.app.run` and every worker of
:mod:`imgclf.serving.processes` (``imgclf serve``, the container's
``python -m imgclf.serving``) install it. It relies on uvicorn's
``HttpToolsProtocol`` hooks, so ``requirements-serve.txt`` pins uvicorn and
``tests/api/test_edge.py`` fails if a new version moves them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from imgclf.serving.settings import Settings

# Request heads queued behind the one being answered on a connection. Browsers do not
# pipeline and HTTP clients that do keep a few in flight; past this it is a flood.
MAX_PIPELINE = 16


def _response(status: int, phrase: str, reason: str, detail: str) -> bytes:
    """A complete HTTP/1.1 answer in the API's JSON error format, closing the connection."""
    body = json.dumps({"detail": detail, "reason": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a head size cap and a socket ceiling.

    Class attributes are the limits; :func:`protocol_for` makes a subclass with the
    deployment's values. ``on_reject`` counts refusals in ``/metrics`` (the app sets it).
    """

    head_timeout_s: ClassVar[float] = Settings.head_timeout_s
    keep_alive_s: ClassVar[float] = Settings.keep_alive_s
    max_head_bytes: ClassVar[int] = Settings.max_head_bytes
    max_open: ClassVar[int] = Settings.max_open_connections
    on_reject: ClassVar[Callable[[str], None] | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._in_head = True
        self._heads = 0  # complete request heads parsed on this connection
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_open:
            self._reject("too_many_connections")
            transport.abort()
            return
        self._arm(self.head_timeout_s)

    # Timer ------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(seconds, self._head_expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        """No complete request head in time: 408 if some of it came, then close."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            self._reject("head_timeout")
            detail = (
                f"the request head did not arrive within {self.head_timeout_s:g} s "
                "(IMGCLF_HEAD_TIMEOUT_S)"
            )
            self.transport.write(_response(408, "Request Timeout", "head_timeout", detail))
        self._close()

    def _close(self) -> None:
        """Close; abort when answers are still waiting for a client that does not read
        (a plain close would wait for them to be sent, for ever). Defensive: on loopback
        the kernel's buffers took every answer below the write buffer's high-water mark,
        so the tests could not make this path happen; above it the write deadline acts."""
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    # Bytes out --------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The client stopped reading: it has until the write deadline to read again."""
        super().pause_writing()
        if self._write_timer is None:
            limit = self.keep_alive_s + self.head_timeout_s
            self._write_timer = self.loop.call_later(limit, self._write_expired)

    def resume_writing(self) -> None:
        self._stop_write_timer()
        super().resume_writing()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self._reject("write_timeout")
            self.transport.abort()  # uvicorn's send() stops waiting; the slot is freed

    def _reject(self, reason: str) -> None:
        hook = type(self).on_reject
        if hook is not None:
            hook(reason)

    # Bytes in ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what the cap allows: if the head ends inside it, the rest is body
        # (or a pipelined request, fed through this method again).
        self._head_bytes += room
        heads = self._heads
        super().data_received(data[:room])
        if self._heads == heads:
            if not self.transport.is_closing():
                self._too_large()
            return
        if not self.transport.is_closing():
            self.data_received(data[room:])

    def _too_large(self) -> None:
        self._disarm()
        self._reject("head_too_large")
        detail = (
            f"request line and headers are larger than {self.max_head_bytes} bytes "
            "(IMGCLF_MAX_HEAD_BYTES)"
        )
        self.transport.write(
            _response(431, "Request Header Fields Too Large", "head_too_large", detail)
        )
        self.transport.close()
        self.flow.pause_reading()  # nothing more is buffered for this connection

    # Parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._head_timer is None:  # a next request on a kept-alive connection
            self._arm(self.head_timeout_s)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._heads += 1
        self._disarm()
        if self.transport.is_closing():  # cut already; the parser ends its buffer
            return
        if len(self.pipeline) >= MAX_PIPELINE:
            self._reject("pipeline_too_deep")
            self.transport.abort()
            return
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # whatever comes next is the next request's head: count it

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # its head is parsed already: no deadline for it
        super().on_response_complete()
        if not pipelined and self._head_timer is None and not self.transport.is_closing():
            # Idle time before the next head, plus time to send it. Bytes trickled after
            # a response reset uvicorn's keep-alive timer; they cannot extend this one.
            self._arm(self.keep_alive_s + self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_write_timer()
        super().connection_lost(exc)


def protocol_for(settings: Settings, on_reject: Callable[[str], None] | None = None) -> type:
    """An :class:`EdgeProtocol` subclass with this deployment's limits."""
    attrs: dict[str, Any] = {
        "head_timeout_s": settings.head_timeout_s,
        "keep_alive_s": settings.keep_alive_s,
        "max_head_bytes": settings.max_head_bytes,
        "max_open": settings.max_open_connections,
        "on_reject": staticmethod(on_reject) if on_reject is not None else None,
    }
    return type("ConfiguredEdgeProtocol", (EdgeProtocol,), attrs)


def raise_file_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (up to the hard limit).

    The socket ceiling is only a ceiling if the process may open that many files; a
    soft limit of 1024 (common default) would make ``accept`` fail first. Returns the
    soft limit now in force.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
