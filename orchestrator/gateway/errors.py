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
    Unavailable,
)


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
    """The worker serving a request failed after its stream had started."""


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
    return HTTP_STATUS[error.kind][0]


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
