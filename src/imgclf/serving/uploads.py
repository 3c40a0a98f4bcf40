"""Read multipart uploads into memory under hard limits.

Why not FastAPI's ``UploadFile``: Starlette's form parser spools files over
1 MiB to a temporary file on disk and only lets us check the size after the
whole body was received. Here the body is streamed through python-multipart's
push parser chunk by chunk, so

* nothing ever touches the disk,
* a request or file over its limit is refused while it is being received
  (never buffered beyond the limit), and a ``Content-Length`` over the limit is
  refused before a byte of the body is read,
* a batch file over the per-file limit only fails that file.

The declared filename and content type are kept for the response but never
trusted: :func:`imgclf.data.preprocessing.sniff` decides the format from the leading bytes
when the image is opened. How long the body may take to arrive is the
caller's deadline (``IMGCLF_BODY_TIMEOUT_S`` in the API).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header


class RequestRejectedError(Exception):
    """The request (not one image in it) is unusable; ``reason`` picks the HTTP status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Upload:
    """One file part of the form, in memory. ``error`` is set when it went over its limit."""

    field: str
    filename: str | None
    declared_type: str | None
    data: bytearray = field(default_factory=bytearray)
    error: RequestRejectedError | None = None


@dataclass(frozen=True)
class Limits:
    """Bounds for one request: bytes per file, bytes for the body, number of files."""

    max_file_bytes: int
    max_body_bytes: int
    max_files: int
    # Past the limit we keep reading (and discarding) up to this much so the
    # client, which is usually still sending, gets the 413 instead of a reset.
    drain_bytes: int = 8 * 1024 * 1024
    # Non-file form fields and part headers: small, bounded.
    max_parts: int = 64


class _Collector:
    """python-multipart callbacks that assemble parts and enforce the limits as data arrives."""

    def __init__(self, fields: tuple[str, ...], limits: Limits) -> None:
        self.fields = fields
        self.limits = limits
        self.uploads: list[Upload] = []
        self.parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""
        self._current: Upload | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.limits.max_parts:
            raise RequestRejectedError(
                "too_many_parts", f"more than {self.limits.max_parts} form parts"
            )
        self._headers, self._name, self._value, self._current = {}, b"", b"", None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in self.fields:
            return  # other fields are read and dropped (the body limit still counts them)
        if len(self.uploads) >= self.limits.max_files:
            raise RequestRejectedError(
                "too_many_files", f"at most {self.limits.max_files} file(s) per request"
            )
        filename = options.get(b"filename")
        if filename is None:
            # A plain form field, not a file: the schema says binary file, say so clearly.
            raise RequestRejectedError(
                "not_a_file",
                f"field {name!r} must be a file upload with a filename "
                f"(e.g. curl -F {name}=@image.png)",
            )
        declared = self._headers.get(b"content-type")
        self._current = Upload(
            field=name,
            filename=filename.decode("utf-8", "replace"),
            declared_type=declared.decode("latin-1") if declared else None,
        )
        self.uploads.append(self._current)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._current
        if upload is None or upload.error is not None:
            return
        if len(upload.data) + (end - start) > self.limits.max_file_bytes:
            upload.error = RequestRejectedError(
                "too_large", f"file is larger than {self.limits.max_file_bytes} bytes"
            )
            upload.data = bytearray()  # free what we had; the rest is discarded
            return
        upload.data += data[start:end]

    def on_part_end(self) -> None:
        self._current = None


def _declared_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise RequestRejectedError("malformed_request", "Content-Length is not a number") from None


async def _drain(stream: AsyncIterator[bytes], budget: int) -> None:
    """Discard what the client is still sending, up to ``budget`` bytes."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > budget:
            return


async def read_uploads(
    headers: Mapping[str, str],
    stream: AsyncIterator[bytes],
    fields: tuple[str, ...],
    limits: Limits,
) -> list[Upload]:
    """Parse a ``multipart/form-data`` body into :class:`Upload` s named one of ``fields``.

    Raises :class:`RequestRejectedError` for a request that is not multipart, is
    malformed, is over the body limit or holds too many files. A file over the
    per-file limit is returned with ``error`` set instead (one bad file in a
    batch must not fail the others).
    """
    content_type, options = parse_options_header(headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise RequestRejectedError(
            "not_multipart",
            f"expected a multipart/form-data upload (e.g. curl -F file=@image.png), got {shown}",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestRejectedError("malformed_request", "multipart/form-data without a boundary")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        # RFC 2046 allows 70 characters; the parser refuses more than 256.
        raise RequestRejectedError(
            "malformed_request",
            f"multipart boundary is {len(boundary)} bytes long, at most {MAX_BOUNDARY_LENGTH} "
            "are accepted (RFC 2046 says 70)",
        )
    declared = _declared_length(headers)
    too_large = RequestRejectedError(
        "too_large", f"request body is larger than {limits.max_body_bytes} bytes"
    )
    if declared is not None and declared > limits.max_body_bytes:
        # With "Expect: 100-continue" (curl, for bodies over 1 MiB) the client has
        # not sent the body yet: answering now costs nothing.
        expects = headers.get("expect", "").lower() == "100-continue"
        if not expects and declared <= limits.max_body_bytes + limits.drain_bytes:
            await _drain(stream, declared)
        raise too_large

    collector = _Collector(fields, limits)
    received = 0
    # Every part needs one delimiter and RFC 2046 forbids it inside a part's data, so a
    # body with more than max_parts + 1 is refused before the parser sees them: each one
    # followed by anything but CRLF or "--" costs python-multipart a step in Python, on
    # the event loop (0.35 s of CPU per 2 MiB of "\r\n--a" + "x" with boundary "a";
    # /health waited ~100 ms behind one such upload).
    delimiter, delimiters, seam = b"\r\n--" + boundary, 0, b""
    limit = limits.max_parts + 1  # one per part, and the closing one
    try:
        # Inside the try: whatever python-multipart refuses is a 400, never a 500.
        parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
        async for chunk in stream:
            received += len(chunk)
            if received > limits.max_body_bytes:
                await _drain(stream, limits.drain_bytes)
                raise too_large
            # Whole delimiters in the chunk, and those across its start (the previous
            # chunk's last bytes cannot hold a whole one, so none is counted twice).
            window = seam + chunk
            found = window.count(delimiter)
            if delimiters + found > limit:
                # The parser gets the body up to the first delimiter over the limit, so
                # a request with too many *files* still gets its own answer (422) from
                # the collector; then the rest is refused without being parsed.
                cut = _nth(window, delimiter, limit - delimiters + 1) - len(seam)
                if cut > 0:
                    parser.write(chunk[:cut])
                raise RequestRejectedError(
                    "too_many_parts", f"more than {limits.max_parts} form parts"
                )
            delimiters += found
            seam = window[-(len(delimiter) - 1) :]
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        # The parser's own text is not part of the contract (the reason code is).
        raise RequestRejectedError("malformed_request", "malformed multipart body") from None
    if collector._current is not None:
        raise RequestRejectedError("malformed_request", "multipart body ended inside a part")
    return collector.uploads


def _nth(data: bytes, needle: bytes, n: int) -> int:
    """Where the ``n``-th (1-based) non-overlapping ``needle`` starts in ``data``; -1 if fewer."""
    at = -len(needle)
    for _ in range(n):
        at = data.find(needle, at + len(needle))
        if at < 0:
            return -1
    return at
