"""The OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models, plus /health, /v1/cluster for dashboards and /metrics (Prometheus, every node).

Routes translate (orchestrator.gateway.openai_schema) and relay through the Router; errors
are turned into OpenAI's envelope in one handler. A streamed request waits for its first
chunk before answering, so a refusal (unknown model, no worker, bad sampling value) still
gets its real status code; a failure after that point arrives as an SSE error event, which
the official clients raise as an APIError.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
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
from orchestrator.gateway import openai_schema as oa
from orchestrator.gateway import views
from orchestrator.gateway.errors import BadRequest, http_status, openai_envelope
from orchestrator.gateway.metrics import cluster_metrics
from orchestrator.gateway.route_requests import for_chat, for_embed, for_generate, http_session
from orchestrator.gateway.router import Router

log = logging.getLogger(__name__)

NODE_HEADER = "x-llamaherd-node"
MAX_BODY_BYTES = 16 * 1024 * 1024
Chunks = AsyncGenerator[tuple[NodeId, gen_pb.GenerationChunk], None]


def build_app(router: Router, created_unix_s: int) -> Starlette:
    api = OpenAIRoutes(router, created_unix_s)
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
        ],
        exception_handlers={
            LlamaherdError: _error_response,
            404: _not_found,
            405: _method_not_allowed,
            Exception: _internal_error,
        },
    )


class OpenAIRoutes:
    def __init__(self, router: Router, created_unix_s: int) -> None:
        self._router = router
        self._created = created_unix_s

    async def chat(self, request: Request) -> Response:
        call = oa.parse_chat(await _json_body(request))
        route = for_chat(call.request, http_session(request.headers, call.user))
        chunks: Chunks = self._router.stream(
            route, lambda worker: worker.chat(call.request, _request_id(request))
        )
        return await self._generation(chunks, call.model, call.stream, call.include_usage, "chat")

    async def completions(self, request: Request) -> Response:
        call = oa.parse_completion(await _json_body(request))
        route = for_generate(call.request, http_session(request.headers, call.user))
        chunks: Chunks = self._router.stream(
            route, lambda worker: worker.generate(call.request, _request_id(request))
        )
        return await self._generation(chunks, call.model, call.stream, call.include_usage, "text")

    async def embeddings(self, request: Request) -> Response:
        call = oa.parse_embeddings(await _json_body(request))
        route = for_embed(call.request, http_session(request.headers, call.user))
        reply, node = await self._router.unary(
            route, lambda worker: worker.embed(call.request, _request_id(request))
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
        self, chunks: Chunks, model: str, stream: bool, include_usage: bool, kind: str
    ) -> Response:
        call_id = oa.new_call_id("chatcmpl" if kind == "chat" else "cmpl")
        created = int(time.time())
        # The first chunk decides the status code: errors before it are real HTTP errors.
        try:
            node, first = await anext(chunks)
        except StopAsyncIteration:
            raise Internal("the worker ended the stream without a result") from None
        except BaseException:
            await chunks.aclose()
            raise
        if not stream:
            try:
                return await _collect(chunks, first, node, call_id, created, model, kind)
            finally:
                await chunks.aclose()
        events = _sse(chunks, first, call_id, created, model, kind, include_usage)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={NODE_HEADER: node, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _collect(
    chunks: Chunks,
    first: gen_pb.GenerationChunk,
    node: NodeId,
    call_id: str,
    created: int,
    model: str,
    kind: str,
) -> Response:
    parts = [first.text]
    last = first
    async for _, chunk in chunks:
        parts.append(chunk.text)
        last = chunk
    text = "".join(parts)
    if kind == "chat":
        body = oa.chat_completion(
            call_id, created, model, text, last.finish_reason, last.usage, last.timings
        )
    else:
        body = oa.text_completion(
            call_id, created, model, text, last.finish_reason, last.usage, last.timings
        )
    return JSONResponse(body, headers={NODE_HEADER: node})


async def _sse(
    chunks: Chunks,
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
    try:
        while chunk is not None:
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
                yield oa.sse_event(payload)
            if finish:
                if include_usage:
                    name = "chat.completion.chunk" if chat else "text_completion"
                    yield oa.sse_event(oa.usage_chunk(call_id, created, model, chunk.usage, name))
                break
            chunk = await _next_chunk(chunks)
    except LlamaherdError as exc:
        log.warning("stream %s ended early: %s", call_id, exc.message)
        yield oa.sse_event(openai_envelope(exc))
    finally:
        # A client that disconnects closes this generator at a yield; closing the relay
        # cancels the worker's call, which stops its generation at the next token.
        await chunks.aclose()
    yield oa.sse_event("[DONE]")


async def _next_chunk(chunks: Chunks) -> gen_pb.GenerationChunk | None:
    try:
        _, chunk = await anext(chunks)
    except StopAsyncIteration:
        return None
    return chunk


async def _json_body(request: Request) -> Any:
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        raise BadRequest(f"request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def _request_id(request: Request) -> str | None:
    """The client's x-request-id, passed on to the worker; None lets the worker make one."""
    rid = request.headers.get("x-request-id", "")
    return rid if 0 < len(rid) <= 128 else None


async def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LlamaherdError)
    return JSONResponse(openai_envelope(exc), status_code=http_status(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    error = BadRequest(f"no route {request.method} {request.url.path}; the API lives under /v1")
    return JSONResponse(openai_envelope(error), status_code=404)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    error = BadRequest(f"{request.method} is not allowed on {request.url.path}")
    return JSONResponse(openai_envelope(error), status_code=405)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    error = Internal("internal error in the gateway; see its log")
    return JSONResponse(openai_envelope(error), status_code=500)
