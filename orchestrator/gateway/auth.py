"""Optional API key on both front doors: `Authorization: Bearer <key>` (what OpenAI clients
send as their api_key), or `x-api-key: <key>` under /v1/messages (Anthropic's header).
Health checks stay open so load balancers can probe.

Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from common.errors import PermissionDenied
from orchestrator.gateway.anthropic_schema import PATH_PREFIX as ANTHROPIC_PATH_PREFIX
from orchestrator.gateway.anthropic_schema import authentication_error
from orchestrator.gateway.errors import openai_envelope
from orchestrator.gateway.ollama_schema import PATH_PREFIX as OLLAMA_PATH_PREFIX

OPEN_HTTP_PATHS = {"/health", "/", "/dashboard"}
# The dashboard's static page holds no data (orchestrator.dashboard.routes); its data, under
# /v1/dashboard/, needs the key like every other API route.
OPEN_HTTP_PREFIXES = ("/dashboard/",)
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _authorized(header: str | None, key: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].encode(), key.encode())


def _open_path(path: str) -> bool:
    # A path with a dot segment is never open: "/dashboard/../v1/cluster" must not pass as
    # the page (Starlette's routing does not normalise paths; StaticFiles refuses it anyway).
    if "/." in path:
        return False
    return path in OPEN_HTTP_PATHS or path.startswith(OPEN_HTTP_PREFIXES)


def _anthropic_key(raw: bytes | None) -> str | None:
    """Anthropic's clients send the key as `x-api-key: <key>` (its docs, Claude Code with
    ANTHROPIC_API_KEY); taken as the bearer it stands for."""
    return f"Bearer {raw.decode('latin-1')}" if raw is not None else None


def _refusal(header: str | None) -> PermissionDenied:
    if not header:
        return PermissionDenied("this gateway requires an API key: Authorization: Bearer <key>")
    return PermissionDenied("the API key is not valid")


def _refusal_body(path: str, header: str | None) -> dict[str, Any]:
    refusal = _refusal(header)
    if path.startswith(OLLAMA_PATH_PREFIX):
        return {"error": refusal.message}  # Ollama's error shape, as its clients read it
    if path.startswith(ANTHROPIC_PATH_PREFIX):
        return authentication_error(refusal.message)  # Anthropic's, for its clients
    # OpenAI's code either way, so its clients raise AuthenticationError.
    body = openai_envelope(refusal)
    body["error"]["code"] = "invalid_api_key"
    return body


class HttpApiKey:
    """ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streams)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self._app = app
        self._key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _open_path(scope["path"]):
            headers = dict(scope["headers"])
            raw = headers.get(b"authorization")
            header = raw.decode("latin-1") if raw is not None else None
            if header is None and scope["path"].startswith(ANTHROPIC_PATH_PREFIX):
                header = _anthropic_key(headers.get(b"x-api-key"))
            if not _authorized(header, self._key):
                response = JSONResponse(_refusal_body(scope["path"], header), status_code=401)
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)


class GrpcApiKey(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, key: str) -> None:
        self._key = key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_GRPC_PREFIXES):
            return await continuation(details)
        header = dict(details.invocation_metadata or ()).get("authorization")
        if _authorized(header, self._key):
            return await continuation(details)
        message = _refusal(header).message
        code = grpc.StatusCode.UNAUTHENTICATED

        async def deny(request: Any, context: aio.ServicerContext) -> None:
            await context.abort(code, message)

        handler = await continuation(details)
        if handler is not None and handler.unary_stream is not None:

            async def deny_stream(request: Any, context: aio.ServicerContext) -> Any:
                await context.abort(code, message)
                yield  # pragma: no cover - abort raises

            return grpc.unary_stream_rpc_method_handler(
                deny_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            deny,
            request_deserializer=handler.request_deserializer if handler else None,
            response_serializer=handler.response_serializer if handler else None,
        )
