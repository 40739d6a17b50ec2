"""Errors of the gateway, and the one place that maps them to HTTP and from worker statuses.

The gateway raises the same transport-neutral errors as the worker (common.errors), so the
gRPC front door reuses the worker's interceptor unchanged; this module adds what HTTP needs:
status codes, OpenAI's error envelope, and the reverse mapping of a worker's gRPC status.
"""

from __future__ import annotations

from typing import Any

import grpc

from common.errors import (
    ErrorKind,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    WorkerError,
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


def http_status(error: WorkerError) -> int:
    return HTTP_STATUS[error.kind][0]


def openai_envelope(error: WorkerError) -> dict[str, Any]:
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


FROM_GRPC: dict[grpc.StatusCode, type[WorkerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def from_worker_status(code: grpc.StatusCode, details: str | None, node: str) -> WorkerError:
    """A worker's refusal as the gateway's error. Refusals of the request itself (bad
    argument, queue full) pass through as they are; failures are attributed to the node."""
    kind = FROM_GRPC.get(code, Internal)
    text = details or code.name
    if kind in (Unavailable, Internal):
        return kind(f"worker {node} failed: {text}")
    return kind(text)
