"""The errors llamaherd reports, in the worker and the control plane alike.

Every refusal is one of these, raised where the problem is found with a message that names
it (the field, the counts, what to do). They carry a transport-neutral `kind`; each front
door maps kinds to its own statuses in one place (common.grpc_errors for gRPC, both ways;
the gateway's HTTP error handler for the OpenAI envelope), so no other module imports grpc
to report an error.
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


class LlamaherdError(Exception):
    """Base of every error llamaherd reports to a client."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LlamaherdError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(LlamaherdError):
    kind = ErrorKind.NOT_FOUND


class AlreadyExists(LlamaherdError):
    kind = ErrorKind.ALREADY_EXISTS


class PermissionDenied(LlamaherdError):
    kind = ErrorKind.PERMISSION_DENIED


class ResourceExhausted(LlamaherdError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class FailedPrecondition(LlamaherdError):
    kind = ErrorKind.FAILED_PRECONDITION


class Unavailable(LlamaherdError):
    kind = ErrorKind.UNAVAILABLE


class Internal(LlamaherdError):
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
