"""The cluster's join token and node keys: who may register with the coordinator and call a
worker's API.

A cluster has one random secret, the join token (as k3s's or Ray's). The coordinator
requires it on its worker registry, a worker that has one requires it on its Worker API, and
every cluster client sends it as `authorization: Bearer <token>` metadata. Only the gRPC
health service stays open, for probes. Each worker also sends its node key (metadata
`llamaherd-node-key`) when it registers: the coordinator binds the node id to it, so no other
process, token or not, can take over a live worker's id (orchestrator.cluster.state). Where
the secrets come from: common.cluster_secrets.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio
from pydantic import SecretStr

from common import cluster_tls
from common.cluster_tls import TlsFiles

AUTHORIZATION_KEY = "authorization"
NODE_KEY_KEY = "llamaherd-node-key"
# Probes (load balancers, systemd, `grpc_health_probe`) need no secret and learn nothing.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
REFUSAL = "missing or wrong cluster token"

Metadata = tuple[tuple[str, str], ...]


# ---- the client side --------------------------------------------------------------------------
def bearer(token: SecretStr) -> str:
    return f"Bearer {token.get_secret_value()}"


def auth_metadata(token: SecretStr | None) -> Metadata:
    """The metadata to send with each call: none without a token."""
    return ((AUTHORIZATION_KEY, bearer(token)),) if token is not None else ()


class _SyncDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    """A call's details with the token added (grpc's own type is abstract)."""

    def __init__(self, details: grpc.ClientCallDetails, pairs: Metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = [*(details.metadata or ()), *pairs]
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = getattr(details, "compression", None)


class TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the cluster token to every call of a synchronous channel."""

    def __init__(self, token: SecretStr) -> None:
        self._pairs = auth_metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncDetails(details, self._pairs)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def sync_channel(
    address: str,
    token: SecretStr | None,
    options: Sequence[tuple[str, Any]] = (),
    tls: TlsFiles | None = None,
) -> grpc.Channel:
    """A synchronous channel (mutual TLS when `tls` is given) that sends `token` (when
    given) with every call."""
    channel = cluster_tls.sync_channel(address, tls, options)
    if token is None:
        return channel
    return grpc.intercept_channel(channel, TokenClientInterceptor(token))


def _aio_details(details: aio.ClientCallDetails, pairs: Metadata) -> aio.ClientCallDetails:
    metadata = aio.Metadata(*(details.metadata or ()), *pairs)
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files each interceptor under the first call shape it implements, so each shape
# needs an object of its own.
class _AioUnaryUnary(aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, pairs: Metadata) -> None:
        self._pairs = pairs

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._pairs), request)


class _AioUnaryStream(aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, pairs: Metadata) -> None:
        self._pairs = pairs

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, self._pairs), request)


class _AioStreamUnary(aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, pairs: Metadata) -> None:
        self._pairs = pairs

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self._pairs), requests)


class _AioStreamStream(aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, pairs: Metadata) -> None:
        self._pairs = pairs

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, self._pairs), requests)


def aio_interceptors(token: SecretStr | None) -> list[aio.ClientInterceptor]:
    """Client interceptors for `aio.insecure_channel(..., interceptors=...)` that send the
    token with every call of every shape (none without a token). Hot paths may pass
    `auth_metadata` per call instead, which costs nothing per streamed message."""
    if token is None:
        return []
    pairs = auth_metadata(token)
    return [_AioUnaryUnary(pairs), _AioUnaryStream(pairs), _AioStreamUnary(pairs),
            _AioStreamStream(pairs)]  # fmt: skip


# ---- the server side ----------------------------------------------------------------------------
def presented_token_ok(metadata: Sequence[tuple[str, Any]] | None, token: SecretStr) -> bool:
    """Whether the call's metadata carries `authorization: Bearer <token>` (constant time)."""
    header = next((v for k, v in metadata or () if k == AUTHORIZATION_KEY), None)
    if not isinstance(header, str):
        return False
    return hmac.compare_digest(header.encode(), bearer(token).encode())


def metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    value = next((v for k, v in metadata or () if k == key), None)
    return value if isinstance(value, str) else None


class ClusterTokenInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call without the cluster token with UNAUTHENTICATED ("missing or wrong
    cluster token": never what was sent), except the health service's."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_METHOD_PREFIXES) or presented_token_ok(
            details.invocation_metadata, self._token
        ):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        return _refusing(handler)


async def _deny(request: Any, context: aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses before reading any request."""
    shape = (handler.request_streaming, handler.response_streaming)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[shape]
    return make(
        _deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
