"""Errors of the gateway, and the one place that maps them to HTTP.

The gateway raises the same transport-neutral errors as the worker (common.errors), so the
gRPC front door reuses the worker's interceptor unchanged; this module adds what HTTP needs:
status codes and OpenAI's error envelope. A worker's own gRPC status arrives already turned
into these errors by the worker client (orchestrator.worker_client).
"""

from __future__ import annotations

from typing import Any

from common.errors import (
    ErrorKind,
    InvalidArgument,
    LlamaherdError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

# What a 429 asks the client to wait before trying again: a queue slot frees as soon as one
# request ends, which takes seconds, so the shortest delay the header can say.
RETRY_AFTER_S = 1


class BadRequest(InvalidArgument):
    """A malformed request field; `param` names it as OpenAI's envelope does."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotServed(NotFound):
    """No node in the cluster has this alias, loaded or loading."""

    def __init__(self, alias: str, available: list[str]) -> None:
        listing = ", ".join(repr(a) for a in sorted(available)) or "none"
        super().__init__(f"model {alias!r} is not served by this cluster (available: {listing})")
        self.alias = alias


class UpstreamFailed(Unavailable):
    """The worker serving a request failed after its stream had started, and no other
    replica could continue it."""


class Overloaded(ResourceExhausted):
    """Every replica that could serve the request has a full queue: come back shortly."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


HTTP_STATUS = {
    ErrorKind.INVALID_ARGUMENT: (400, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.ALREADY_EXISTS: (409, "invalid_request_error"),
    ErrorKind.PERMISSION_DENIED: (403, "permission_error"),
    ErrorKind.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    ErrorKind.FAILED_PRECONDITION: (400, "invalid_request_error"),
    ErrorKind.UNAVAILABLE: (503, "service_unavailable"),
    ErrorKind.INTERNAL: (500, "server_error"),
}


def http_status(error: LlamaherdError) -> int:
    """The HTTP status of an error: its kind's, unless the error names its own (408)."""
    own: int | None = getattr(error, "http_status", None)
    return own or HTTP_STATUS[error.kind][0]


def http_headers(error: LlamaherdError) -> dict[str, str]:
    """Headers an error response carries: Retry-After on every 429, whoever refused."""
    if error.kind is ErrorKind.RESOURCE_EXHAUSTED:
        return {"Retry-After": str(getattr(error, "retry_after_s", RETRY_AFTER_S))}
    if http_status(error) == 408:  # the body never came whole: the connection is unusable
        return {"Connection": "close"}
    return {}


def openai_envelope(error: LlamaherdError) -> dict[str, Any]:
    """OpenAI's `{"error": {...}}` body for an error."""
    _, kind = HTTP_STATUS[error.kind]
    code: str | None = error.kind.value
    if isinstance(error, ModelNotServed):
        code = "model_not_found"
    return {
        "error": {
            "message": error.message,
            "type": kind,
            "param": getattr(error, "param", None),
            "code": code,
        }
    }
