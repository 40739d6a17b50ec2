"""The OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions, /v1/embeddings,
/v1/models, plus /health, /v1/cluster for dashboards and /metrics (Prometheus, every node).

Routes translate (orchestrator.gateway.openai_schema) and relay through the Router; errors
are turned into OpenAI's envelope in one handler. A streamed request waits for its first
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

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeAlias, TypeVar

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
from orchestrator.gateway.errors import BadRequest, http_headers, http_status, openai_envelope
from orchestrator.gateway.json_body import parse_json, read_body
from orchestrator.gateway.metrics import cluster_metrics
from orchestrator.gateway.route_requests import (
    continued,
    for_chat,
    for_embed,
    for_generate,
    http_session,
    resumable,
)
from orchestrator.gateway.router import Completed, OpenGeneration, Progress, Router
from orchestrator.routing.request import RouteRequest
from orchestrator.worker_client import WorkerClient, WorkerStream

log = logging.getLogger(__name__)

NODE_HEADER = "x-llamaherd-node"
RETRIED_HEADER = "x-llamaherd-retried-from"
MIGRATION_MEMBER = "llamaherd"
DEFAULT_BODY_TIMEOUT_S = 20.0
CLIENT_GONE = 499  # nginx's "client closed request": never sent, only logged
Chunks = AsyncGenerator[tuple[NodeId, gen_pb.GenerationChunk], None]
GenerationRequest: TypeAlias = gen_pb.GenerateRequest | gen_pb.ChatRequest
T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected before its response started."""


def build_app(
    router: Router, created_unix_s: int, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
) -> Starlette:
    """The ASGI app; `body_timeout_s` bounds how long a client may take to send a body."""
    api = OpenAIRoutes(router, created_unix_s, body_timeout_s)
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
        call = oa.parse_chat(await self._json_body(request))
        route = for_chat(call.request, http_session(request.headers, call.user))
        rid = _request_id(request)

        def open_call(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
            chat = continued(call.request, sent.text, sent.tokens)
            assert isinstance(chat, gen_pb.ChatRequest)
            return worker.chat(chat, rid)

        return await self._generation(
            request, route, call.request, open_call, call.model, call.stream,
            call.include_usage, "chat",
        )  # fmt: skip

    async def completions(self, request: Request) -> Response:
        call = oa.parse_completion(await self._json_body(request))
        route = for_generate(call.request, http_session(request.headers, call.user))
        rid = _request_id(request)

        def open_call(worker: WorkerClient, sent: Progress) -> WorkerStream[gen_pb.GenerationChunk]:
            generate = continued(call.request, sent.text, sent.tokens)
            assert isinstance(generate, gen_pb.GenerateRequest)
            return worker.generate(generate, rid)

        return await self._generation(
            request, route, call.request, open_call, call.model, call.stream,
            call.include_usage, "text",
        )  # fmt: skip

    async def embeddings(self, request: Request) -> Response:
        call = oa.parse_embeddings(await self._json_body(request))
        route = for_embed(call.request, http_session(request.headers, call.user))
        reply, node = await _unless_gone(
            request,
            self._router.unary(
                route, lambda worker: worker.embed(call.request, _request_id(request))
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

    async def _json_body(self, request: Request) -> Any:
        length = request.headers.get("content-length")
        declared = int(length) if length and length.isdigit() else None
        raw = await read_body(request.stream(), declared, self._body_timeout_s)
        return parse_json(raw)

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
            completed = await _unless_gone(request, self._router.complete(route, open_call))
            return _collected(completed, call_id, created, model, kind)
        chunks: Chunks = self._router.stream(route, open_call, resumable=resumable(generation))
        # The first chunk decides the status code: errors before it are real HTTP errors.
        try:
            node, first = await _unless_gone(request, anext(chunks))
        except StopAsyncIteration:
            raise Internal("the worker ended the stream without a result") from None
        except BaseException:
            await chunks.aclose()
            raise
        events = _sse(chunks, node, first, call_id, created, model, kind, include_usage)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={NODE_HEADER: node, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def _unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled (ClientGone raised) when the client disconnects first.

    Starlette reads nothing from the client while a handler runs, so without this a
    non-streaming client that gives up leaves its generation running to the end. Once the
    body is read, the only message the server can still receive is the disconnection."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # our client left, or we are cancelled ourselves
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
    headers: dict[str, str] = {NODE_HEADER: completed.node}
    if completed.retried_from:
        headers[RETRIED_HEADER] = ",".join(completed.retried_from)
    return JSONResponse(body, headers=headers)


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
            node, chunk = await _next_chunk(chunks, node)
    except LlamaherdError as exc:
        log.warning("stream %s ended early: %s", call_id, exc.message)
        yield oa.sse_event(openai_envelope(exc))
    finally:
        # A client that disconnects closes this generator at a yield; closing the relay
        # cancels the worker's call, which stops its generation at the next token.
        await chunks.aclose()
    yield oa.sse_event("[DONE]")


async def _next_chunk(chunks: Chunks, node: NodeId) -> tuple[NodeId, gen_pb.GenerationChunk | None]:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return node, None


def _request_id(request: Request) -> str | None:
    """The client's x-request-id, passed on to the worker; None lets the worker make one."""
    rid = request.headers.get("x-request-id", "")
    return rid if 0 < len(rid) <= 128 else None


async def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LlamaherdError)
    return JSONResponse(
        openai_envelope(exc), status_code=http_status(exc), headers=http_headers(exc)
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.info("client of %s went away; its request was cancelled", request.url.path)
    return Response(status_code=CLIENT_GONE)


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
