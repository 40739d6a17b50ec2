"""The one place where the worker's errors become gRPC status codes.

A server interceptor wraps every handler: a LlamaherdError ends the call with its mapped code
and its message; anything else is a bug, logged with its traceback and reported as INTERNAL
with the request id so the log line can be found. The process keeps serving either way.
It also parses each request itself: gRPC would answer bytes that are not the request
message (invalid UTF-8 in a string field, a truncated field) with UNKNOWN, which says
nothing; here they get INVALID_ARGUMENT naming the message and the parser's reason.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from common.errors import (
    AlreadyExists,
    ErrorKind,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LlamaherdError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger(__name__)

CODES = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
REQUEST_ID_KEY = "x-request-id"

# A peer's status as our error kind, for clients of our servers (the control plane's worker
# client, a split model's relay): the inverse of CODES (a unit test keeps the two in step),
# plus the codes only gRPC itself produces: a deadline, a call the
# server cancelled, a range. Any other code is the worker's failure: Internal.
ERROR_KINDS: dict[grpc.StatusCode, type[LlamaherdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def error_from_status(code: grpc.StatusCode, details: str | None) -> LlamaherdError:
    """A peer's gRPC status as our error, with its own message (or the code's name when it
    gave none)."""
    return ERROR_KINDS.get(code, Internal)(details or code.name)


def error_from_rpc(exc: aio.AioRpcError) -> LlamaherdError:
    return error_from_status(exc.code(), exc.details())


Unary = Callable[[Any, aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, aio.ServicerContext], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any] | None


def request_id(context: aio.ServicerContext) -> str:
    """The caller's x-request-id, or a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return uuid.uuid4().hex[:16]


async def _abort(context: aio.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, LlamaherdError):
        log.info("%s refused: %s: %s", method, exc.kind.value, exc.message)
        await context.abort(CODES[exc.kind], exc.message)
    incident = uuid.uuid4().hex[:12]
    log.error("%s failed (incident %s)", method, incident, exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error in {method} (incident {incident})"
    )


def _parse(deserializer: Deserializer, raw: Any) -> Any:
    """The request message from its bytes, or InvalidArgument naming the message."""
    if deserializer is None:
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:  # protobuf's DecodeError, or whatever a custom parser raises
        owner = getattr(deserializer, "__self__", None)
        descriptor = getattr(owner, "DESCRIPTOR", None)
        name = getattr(descriptor, "full_name", "") or "message"
        raise InvalidArgument(f"the request is not a valid {name}: {exc}") from None


def _wrap_unary(method: str, behavior: Unary, deserializer: Deserializer = None) -> Unary:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await behavior(_parse(deserializer, request), context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


def _wrap_stream(method: str, behavior: Streaming, deserializer: Deserializer = None) -> Streaming:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(_parse(deserializer, request), context):
                yield response
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


class ErrorInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        # The handler gets the raw bytes (no request_deserializer) and parses them itself.
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler
