"""What the API says: response models, rejection reasons and their HTTP statuses.

No behaviour here, only the contract, so the OpenAPI document, the routes and
the tests read one table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# The one place where a rejection reason becomes an HTTP status. Reasons come from
# ImageError (preprocessing), RequestRejectedError (uploads) and the service's limits.
REASON_STATUS: dict[str, int] = {
    # the request as a whole
    "not_multipart": 415,
    "malformed_request": 400,
    "missing_file": 422,
    "not_a_file": 422,
    "too_many_files": 422,  # the schema's maxItems: a validation error, like FastAPI's
    "too_many_parts": 413,
    "too_large": 413,
    "body_timeout": 408,  # the body did not arrive within IMGCLF_BODY_TIMEOUT_S
    # the server, not the request
    "overloaded": 503,  # every worker busy and the queue full: retry after Retry-After
    "timeout": 503,  # not answered within IMGCLF_REQUEST_TIMEOUT_S
    "not_ready": 503,
    # one image
    "empty": 400,
    "not_an_image": 415,
    "unsupported_mode": 415,
    "corrupt": 400,
    "truncated": 400,
    "unreadable": 400,
    "too_many_pixels": 413,
    "too_many_bytes": 413,  # over the request's decode budget (IMGCLF_MAX_DECODE_BYTES)
    "out_of_distribution": 422,  # IMGCLF_OOD=refuse and the image is unlike the training data
}
# Seconds a client should wait before retrying an "overloaded" or "timeout" 503.
RETRY_AFTER_S = 1


def status_for(reason: str) -> int:
    """HTTP status for a rejection reason (400 for any reason not listed)."""
    return REASON_STATUS.get(reason, 400)


class PredictionOut(BaseModel):
    """One image's answer. ``in_distribution`` false: the image does not look like the
    training images, so the label is a guess (docs/ood.md); null when IMGCLF_OOD=off."""

    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]
    in_distribution: bool | None = None
    ood_score: float | None = None  # 1.0 is the threshold; above it: flagged
    ood_reasons: list[str] = []
    model_version: str


class BatchItem(BaseModel):
    """One file of a batch: a prediction (``ok``) or that file's own error."""

    filename: str | None = None
    ok: bool
    label: str | None = None
    index: int | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    in_distribution: bool | None = None
    ood_score: float | None = None
    ood_reasons: list[str] | None = None
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
        (408, "the request body was not received in time (body_timeout)"),
        (413, "file or request too large, too many pixels, or over the decode budget"),
        (415, "not multipart/form-data, or the content is not a supported image"),
        (
            422,
            "the file field is missing or not a file, too many files, or (IMGCLF_OOD=refuse) "
            "the image is out of distribution",
        ),
        (503, "model not loaded, server overloaded (see Retry-After), or timed out"),
    )
}


def upload_body(batch: bool, max_batch: int) -> dict[str, Any]:
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
