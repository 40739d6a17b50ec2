"""Domain errors of the worker.

Every refusal the worker makes is one of these, raised where the problem is found with a
message that names it (the field, the counts, what to do). They carry a transport-neutral
`kind`; the gRPC interceptor (common.grpc_errors) is the one place that turns kinds into
status codes, so no other module imports grpc to report an error.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class WorkerError(Exception):
    """Base of every error the worker reports to a client."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(WorkerError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(WorkerError):
    kind = ErrorKind.NOT_FOUND


class AlreadyExists(WorkerError):
    kind = ErrorKind.ALREADY_EXISTS


class PermissionDenied(WorkerError):
    kind = ErrorKind.PERMISSION_DENIED


class ResourceExhausted(WorkerError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class FailedPrecondition(WorkerError):
    kind = ErrorKind.FAILED_PRECONDITION


class Unavailable(WorkerError):
    kind = ErrorKind.UNAVAILABLE


class Internal(WorkerError):
    kind = ErrorKind.INTERNAL


class ModelNotFound(NotFound):
    def __init__(self, alias: str, available: Iterable[str]) -> None:
        names = sorted(available)
        listing = ", ".join(repr(n) for n in names) if names else "none"
        super().__init__(f"model {alias!r} is not loaded on this worker (loaded: {listing})")
        self.alias = alias


class InvalidModelFile(InvalidArgument):
    """The file is not a usable GGUF: wrong magic, truncated, corrupt metadata."""


class ModelLoadFailed(FailedPrecondition):
    """llama.cpp refused a file that passed our own checks (e.g. an unknown architecture)."""
