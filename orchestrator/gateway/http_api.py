"""The OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models, plus /health, /v1/cluster for dashboards and /metrics (Prometheus, every node);
and on the same port Ollama's API under /api (orchestrator.gateway.ollama_api).

Routes translate (orchestrator.gateway.openai_schema) and relay through the Router
(orchestrator.gateway.http_relay); errors are turned into OpenAI's envelope in one handler,
or into Ollama's `{"error": "..."}` under /api. A streamed request waits for its first
chunk before answering, so a refusal (unknown model, no worker, bad sampling value) still
gets its real status code; a failure after that point arrives as an SSE error event, which
the official clients raise as an APIError.

A stream that moves to another worker mid-reply (orchestrator.gateway.router) says so in
the first chunk after the move, in an extra member
`"llamaherd": {"migrated_from": NODE, "migrated_to": NODE}`; a non-streaming reply that
was restarted elsewhere names the failed nodes in the `x-llamaherd-retried-from` header.
Until a response starts, the client's disconnection is watched: work for a client that
went away is cancelled at once, which frees the worker's slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from llamaherd.v1 import generation_pb2 as gen_pb
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from common.errors import Internal, LlamaherdError
from orchestrator.cluster.types import NodeId
from orchestrator.cluster.view import view_to_json
from orchestrator.gateway import anthropic_schema, ollama_schema, views
from orchestrator.gateway import openai_schema as oa
from orchestrator.gateway.anthropic_api import AnthropicRoutes
from orchestrator.gateway.errors import BadRequest, http_headers, http_status, openai_envelope
from orchestrator.gateway.http_relay import (
    CLIENT_GONE,
    NODE_HEADER,
    STREAM_HEADERS,
    Chunks,
    ClientGone,
    GenerationRequest,
    completed_headers,
    first_chunk,
    json_body,
    next_chunk,
    open_generation,
    request_id,
    unless_gone,
)
from orchestrator.gateway.metrics import cluster_metrics
from orchestrator.gateway.ollama_api import OllamaRoutes
from orchestrator.gateway.route_requests import (
    for_chat,
    for_embed,
    for_generate,
    http_pinned,
    http_session,
    resumable,
)
from orchestrator.gateway.router import Completed, OpenGeneration, Router
from orchestrator.routing.request import RouteRequest

log = logging.getLogger(__name__)

MIGRATION_MEMBER = "llamaherd"
DEFAULT_BODY_TIMEOUT_S = 20.0


def build_app(
    router: Router, created_unix_s: int, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
) -> Starlette:
    """The ASGI app; `body_timeout_s` bounds how long a client may take to send a body."""
    api = OpenAIRoutes(router, created_unix_s, body_timeout_s)
    ollama = OllamaRoutes(router, created_unix_s, body_timeout_s)
    anthropic = AnthropicRoutes(router, body_timeout_s)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", api.chat, methods=["POST"]),
            Route("/v1/completions", api.completions, methods=["POST"]),
            Route("/v1/embeddings", api.embeddings, methods=["POST"]),
            Route("/v1/models", api.models, methods=["GET"]),
            Route("/v1/models/{model:path}", api.model, methods=["GET"]),
            Route("/v1/cluster", api.cluster, methods=["GET"]),
            Route("/health", api.health, methods=["GET"]),
            Route("/metrics", api.metrics, methods=["GET"]),
            *ollama.routes(),
            *anthropic.routes(),
        ],
        exception_handlers={
            ClientGone: _client_gone,
            LlamaherdError: _error_response,
            404: _not_found,
            405: _method_not_allowed,
            Exception: _internal_error,
        },
    )


class OpenAIRoutes:
    def __init__(self, router: Router, created_unix_s: int, body_timeout_s: float) -> None:
        self._router = router
        self._created = created_unix_s
        self._body_timeout_s = body_timeout_s

    async def chat(self, request: Request) -> Response:
        call = oa.parse_chat(await json_body(request, self._body_timeout_s))
        route = for_chat(call.request, http_session(request.headers, call.user))
        route = http_pinned(route, request.headers)
        open_call = open_generation(call.request, request_id(request))
        return await self._generation(
            request, route, call.request, open_call, call.model, call.stream,
            call.include_usage, "chat",
        )  # fmt: skip

    async def completions(self, request: Request) -> Response:
        call = oa.parse_completion(await json_body(request, self._body_timeout_s))
        route = for_generate(call.request, http_session(request.headers, call.user))
        route = http_pinned(route, request.headers)
        open_call = open_generation(call.request, request_id(request))
        return await self._generation(
            request, route, call.request, open_call, call.model, call.stream,
            call.include_usage, "text",
        )  # fmt: skip

    async def embeddings(self, request: Request) -> Response:
        call = oa.parse_embeddings(await json_body(request, self._body_timeout_s))
        route = for_embed(call.request, http_session(request.headers, call.user))
        reply, node = await unless_gone(
            request,
            self._router.unary(
                route, lambda worker: worker.embed(call.request, request_id(request))
            ),
        )
        body = oa.embeddings_response(call.model, reply, call.encoding_format)
        return JSONResponse(body, headers={NODE_HEADER: node})

    async def models(self, request: Request) -> Response:
        return JSONResponse(oa.models_list(self._models()))

    async def model(self, request: Request) -> Response:
        alias = request.path_params["model"]
        for entry in oa.models_list(self._models())["data"]:
            if entry["id"] == alias:
                return JSONResponse(entry)
        raise self._router.not_served(alias)

    async def cluster(self, request: Request) -> Response:
        return JSONResponse(view_to_json(views.cluster_status(self._router)))

    async def health(self, request: Request) -> Response:
        ready = self._models().models
        body = {"status": "ok" if ready else "no_models", "models": [m.alias for m in ready]}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(cluster_metrics(self._router), media_type=CONTENT_TYPE_LATEST)

    def _models(self) -> Any:
        return views.cluster_models(self._router.snapshot, self._created)

    async def _generation(
        self,
        request: Request,
        route: RouteRequest,
        generation: GenerationRequest,
        open_call: OpenGeneration,
        model: str,
        stream: bool,
        include_usage: bool,
        kind: str,
    ) -> Response:
        call_id = oa.new_call_id("chatcmpl" if kind == "chat" else "cmpl")
        created = int(time.time())
        if not stream:
            completed = await unless_gone(request, self._router.complete(route, open_call))
            return _collected(completed, call_id, created, model, kind)
        chunks: Chunks = self._router.stream(route, open_call, resumable=resumable(generation))
        node, first = await first_chunk(request, chunks)
        events = _sse(chunks, node, first, call_id, created, model, kind, include_usage)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={NODE_HEADER: node, **STREAM_HEADERS},
        )


def _collected(completed: Completed, call_id: str, created: int, model: str, kind: str) -> Response:
    if not completed.chunks:
        raise Internal("the worker ended the stream without a result")
    last = completed.chunks[-1]
    text = "".join(chunk.text for chunk in completed.chunks)
    if kind == "chat":
        body = oa.chat_completion(
            call_id, created, model, text, last.finish_reason, last.usage, last.timings
        )
    else:
        body = oa.text_completion(
            call_id, created, model, text, last.finish_reason, last.usage, last.timings
        )
    return JSONResponse(body, headers=completed_headers(completed))


async def _sse(
    chunks: Chunks,
    node: NodeId,
    first: gen_pb.GenerationChunk,
    call_id: str,
    created: int,
    model: str,
    kind: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    chat = kind == "chat"
    if chat:
        yield oa.sse_event(oa.chat_chunk(call_id, created, model, role=True))
    chunk: gen_pb.GenerationChunk | None = first
    serving = node
    moved: dict[str, str] | None = None  # told with the next chunk sent
    try:
        while chunk is not None:
            if node != serving:
                moved = {"migrated_from": serving, "migrated_to": node}
                serving = node
            finish = oa.finish_reason_name(chunk.finish_reason)
            if chunk.text or finish:
                if chat:
                    payload = oa.chat_chunk(
                        call_id, created, model, text=chunk.text or None, finish_reason=finish
                    )
                else:
                    payload = oa.completion_chunk(
                        call_id, created, model, text=chunk.text, finish_reason=finish
                    )
                if finish:
                    payload["timings"] = oa.timings_dict(chunk.usage, chunk.timings)
                if moved is not None:
                    payload[MIGRATION_MEMBER] = moved
                    moved = None
                yield oa.sse_event(payload)
            if finish:
                if include_usage:
                    name = "chat.completion.chunk" if chat else "text_completion"
                    yield oa.sse_event(oa.usage_chunk(call_id, created, model, chunk.usage, name))
                break
            node, chunk = await next_chunk(chunks, node)
    except LlamaherdError as exc:
        log.warning("stream %s ended early: %s", call_id, exc.message)
        yield oa.sse_event(openai_envelope(exc))
    finally:
        # A client that disconnects closes this generator at a yield; closing the relay
        # cancels the worker's call, which stops its generation at the next token.
        await chunks.aclose()
    yield oa.sse_event("[DONE]")


def _error_body(
    request: Request, error: LlamaherdError, status: int | None = None
) -> dict[str, Any]:
    """The error in the shape of the API the request was for; `status` when it is not the
    error's own (a route or method that does not exist)."""
    if request.url.path.startswith(ollama_schema.PATH_PREFIX):
        return ollama_schema.error_body(error)
    if request.url.path.startswith(anthropic_schema.PATH_PREFIX):
        return anthropic_schema.error_body(error, status)
    return openai_envelope(error)


async def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LlamaherdError)
    return JSONResponse(
        _error_body(request, exc), status_code=http_status(exc), headers=http_headers(exc)
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.info("client of %s went away; its request was cancelled", request.url.path)
    return Response(status_code=CLIENT_GONE)


async def _not_found(request: Request, exc: Exception) -> Response:
    error = BadRequest(
        f"no route {request.method} {request.url.path}; the API lives under /v1 "
        "(Ollama's under /api)"
    )
    return JSONResponse(_error_body(request, error, 404), status_code=404)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    error = BadRequest(f"{request.method} is not allowed on {request.url.path}")
    return JSONResponse(_error_body(request, error, 405), status_code=405)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    error = Internal("internal error in the gateway; see its log")
    return JSONResponse(_error_body(request, error), status_code=500)
