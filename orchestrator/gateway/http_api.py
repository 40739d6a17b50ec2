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

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

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
    json_body,
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
T = TypeVar("T")

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
        generation = _Generation(
            route, call.request, open_generation(call.request, request_id(request))
        )
        call_id, created = oa.new_call_id("chatcmpl"), int(time.time())
        logprobs = call.request.sampling.HasField("top_logprobs")
        if not call.stream:
            completed = await self._complete(request, [generation])
            body = oa.chat_completion(call_id, created, call.model, completed[0].chunks, logprobs)
            return JSONResponse(body, headers=completed_headers(completed[0]))
        encoder = oa.ChatStream(call_id, created, call.model, max(call.request.n, 1), logprobs)
        return await self._stream(request, [generation], encoder, call.include_usage)

    async def completions(self, request: Request) -> Response:
        call = oa.parse_completion(await json_body(request, self._body_timeout_s))
        session = http_session(request.headers, call.user)
        generations = [
            _Generation(
                http_pinned(for_generate(r, session), request.headers), r,
                open_generation(r, request_id(request)),
            )
            for r in call.requests
        ]  # fmt: skip
        call_id, created = oa.new_call_id("cmpl"), int(time.time())
        logprobs = call.request.sampling.HasField("top_logprobs")
        if not call.stream:
            completed = await self._complete(request, generations)
            body = oa.text_completion(
                call_id, created, call.model, [c.chunks for c in completed], call.n,
                call.echoed, logprobs,
            )  # fmt: skip
            return JSONResponse(body, headers=_headers(completed))
        encoder = oa.CompletionStream(
            call_id, created, call.model, len(generations), call.n, call.echoed, logprobs
        )
        return await self._stream(request, generations, encoder, call.include_usage)

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

    async def _complete(self, request: Request, generations: list[_Generation]) -> list[Completed]:
        """Each generation whole (a completion's prompts side by side), or the first error."""
        tasks = [
            asyncio.ensure_future(self._router.complete(g.route, g.open_call)) for g in generations
        ]
        return await unless_gone(request, _all(tasks))

    async def _stream(
        self,
        request: Request,
        generations: list[_Generation],
        events: _Events,
        include_usage: bool,
    ) -> Response:
        """The generations' chunks merged into one SSE stream, answered once each has its
        first chunk (so a refusal still gets its real status code)."""
        streams: list[Chunks] = [
            self._router.stream(g.route, g.open_call, resumable=resumable(g.request))
            for g in generations
        ]
        firsts = [asyncio.ensure_future(_first(s)) for s in streams]
        try:
            started = await unless_gone(request, _all(firsts))
        except BaseException:
            for stream in streams:
                await stream.aclose()
            raise
        body = _sse(streams, started, events, include_usage)
        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={NODE_HEADER: started[0][0], **STREAM_HEADERS},
        )


@dataclass(frozen=True)
class _Generation:
    """One generation of a request (a completion's prompts are one each)."""

    route: RouteRequest
    request: GenerationRequest
    open_call: OpenGeneration


class _Events(Protocol):
    """An API's stream encoder (openai_schema.ChatStream, CompletionStream)."""

    def start(self) -> list[dict[str, Any]]: ...

    def payload(self, generation: int, chunk: gen_pb.GenerationChunk) -> dict[str, Any] | None: ...

    @property
    def done(self) -> bool: ...

    def usage(self) -> dict[str, Any]: ...


def _headers(completed: list[Completed]) -> dict[str, str]:
    """The first prompt's node (routing's pick for the others is in the worker logs), and
    every node that failed one of the generations first."""
    retried = sorted({node for c in completed for node in c.retried_from})
    return completed_headers(Completed([], completed[0].node, retried))


async def _all(tasks: Sequence[asyncio.Future[T]]) -> list[T]:
    """Every task's result, in order; on the first failure the others are cancelled (a
    completion's other prompts stop generating) and that failure is raised."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _first(chunks: Chunks) -> tuple[NodeId, gen_pb.GenerationChunk]:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise Internal("the worker ended the stream without a result") from None


async def _merged(
    streams: list[Chunks],
) -> AsyncGenerator[tuple[int, NodeId, gen_pb.GenerationChunk], None]:
    """The chunks of several relayed streams as they arrive, each with its stream's
    position; one stream is read in place."""
    if len(streams) == 1:
        async for node, chunk in streams[0]:
            yield 0, node, chunk
        return
    queue: asyncio.Queue[tuple[int, NodeId, gen_pb.GenerationChunk] | int | BaseException]
    queue = asyncio.Queue()

    async def pump(i: int, chunks: Chunks) -> None:
        try:
            async for node, chunk in chunks:
                await queue.put((i, node, chunk))
            await queue.put(i)  # this stream ended
        except LlamaherdError as exc:
            await queue.put(exc)

    pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(streams)
        while running:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, int):
                running -= 1
                continue
            yield item
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _sse(
    streams: list[Chunks],
    started: list[tuple[NodeId, gen_pb.GenerationChunk]],
    events: _Events,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    serving = [node for node, _ in started]
    call_id = ""
    merged = _merged(streams)

    def encoded(i: int, node: NodeId, chunk: gen_pb.GenerationChunk) -> bytes | None:
        payload = events.payload(i, chunk)
        if payload is None:
            return None
        if node != serving[i]:
            # Told with the first chunk sent after the move.
            payload[MIGRATION_MEMBER] = {"migrated_from": serving[i], "migrated_to": node}
            serving[i] = node
        return oa.sse_event(payload)

    try:
        for payload in events.start():
            call_id = payload["id"]
            yield oa.sse_event(payload)
        for i, (node, chunk) in enumerate(started):
            event = encoded(i, node, chunk)
            if event is not None:
                yield event
        if not events.done:
            async for i, node, chunk in merged:
                event = encoded(i, node, chunk)
                if event is not None:
                    yield event
                if events.done:
                    break
        if include_usage and events.done:
            yield oa.sse_event(events.usage())
    except LlamaherdError as exc:
        log.warning("stream %s ended early: %s", call_id, exc.message)
        yield oa.sse_event(openai_envelope(exc))
    finally:
        # A client that disconnects closes this generator at a yield; closing the relays
        # cancels the workers' calls, which stops their generation at the next token
        # (the merge first, which stops the tasks reading them).
        await merged.aclose()
        for stream in streams:
            await stream.aclose()
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
