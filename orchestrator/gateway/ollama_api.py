"""Ollama's API on the gateway's HTTP port, for clients that speak it (Open WebUI, Home
Assistant, Continue, the `ollama` libraries): /api/chat, /api/generate, /api/embed,
/api/embeddings, /api/tags, /api/ps, /api/show, /api/version.

A thin adapter: ollama_schema turns each body into the OpenAI API's parsed call (the same
generation protos), and the request is relayed exactly as the OpenAI routes relay theirs
(http_relay, the Router's stream/complete/unary), so retries, migrations, cancellation and
errors behave the same. Replies are Ollama's: NDJSON lines while streaming (Ollama's
default), one object otherwise, `{"error": "..."}` on failure (the app's error handlers
use that shape under /api). A stream that fails after its first line ends with an error
line, as Ollama's do. Model management (/api/pull, /api/create, ...) is the catalog's job
on a cluster: those routes answer 501 naming the command to use instead.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Callable

from llamaherd.v1 import generation_pb2 as gen_pb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from common.errors import Internal, LlamaherdError
from orchestrator.cluster.types import NodeId
from orchestrator.gateway import ollama_schema as ol
from orchestrator.gateway.errors import BadRequest, Overloaded
from orchestrator.gateway.http_relay import (
    NODE_HEADER,
    STREAM_HEADERS,
    Chunks,
    completed_headers,
    first_chunk,
    json_body,
    next_chunk,
    open_generation,
    request_id,
    unless_gone,
)
from orchestrator.gateway.route_requests import for_embed, for_generation, http_session, resumable
from orchestrator.gateway.router import Router
from orchestrator.routing import request as rr
from orchestrator.routing.request import RouteRequest

log = logging.getLogger(__name__)

# Options and fields accepted but not applied, with the reason, for clients that wonder.
IGNORED_HEADER = "x-llamaherd-ignored"
NDJSON = "application/x-ndjson"
Clock = Callable[[], float]


class NotSupported(BadRequest):
    """A call that has no meaning on a cluster: 501, with what to do instead."""

    http_status = 501


class OllamaRoutes:
    """The /api routes, relayed through `router`; `created_unix_s` is when the gateway
    started (the models' modified_at)."""

    def __init__(
        self,
        router: Router,
        created_unix_s: int,
        body_timeout_s: float,
        clock: Clock = time.time,
    ) -> None:
        self._router = router
        self._created = ol.timestamp(created_unix_s)
        self._body_timeout_s = body_timeout_s
        self._clock = clock

    def routes(self) -> list[Route]:
        management = [
            Route(path, self.management, methods=["POST", "DELETE"]) for path in ol.MANAGEMENT
        ]
        return [
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings, methods=["POST"]),
            Route("/api/tags", self.tags, methods=["GET"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/version", self.version, methods=["GET"]),
            *management,
        ]

    # ---- generation ---------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        started = self._clock()
        body = await json_body(request, self._body_timeout_s)
        call = ol.parse_chat(body, ol.known_aliases(self._router.snapshot))
        return await self._generation(request, call, started)

    async def generate(self, request: Request) -> Response:
        started = self._clock()
        body = await json_body(request, self._body_timeout_s)
        call = ol.parse_generate(body, ol.known_aliases(self._router.snapshot))
        return await self._generation(request, call, started)

    async def _generation(
        self, request: Request, parsed: ol.GenerationCall, started: float
    ) -> Response:
        self._check_context(parsed.num_ctx, parsed.name, parsed.alias)
        headers = _ignored(parsed.ignored)
        created_at = ol.timestamp(self._clock())
        if parsed.call is None:
            self._require_served(rr.for_chat(parsed.alias, []))
            return JSONResponse(ol.loaded(parsed.kind, parsed.name, created_at), headers=headers)
        generation = parsed.call.request
        route = for_generation(generation, http_session(request.headers, None))
        open_call = open_generation(generation, request_id(request))
        if not parsed.stream:
            completed = await unless_gone(request, self._router.complete(route, open_call))
            if not completed.chunks:
                raise Internal("the worker ended the stream without a result")
            last = completed.chunks[-1]
            text = "".join(c.text for c in completed.chunks)
            reply = ol.final(
                parsed.kind, parsed.name, ol.timestamp(self._clock()), text,
                last.finish_reason, last.usage, last.timings, self._elapsed_ns(started),
                ol.Extras.of(completed.chunks, parsed),
            )  # fmt: skip
            return JSONResponse(reply, headers={**completed_headers(completed), **headers})
        chunks: Chunks = self._router.stream(route, open_call, resumable=resumable(generation))
        node, first = await first_chunk(request, chunks)
        lines = self._lines(chunks, node, first, parsed, started)
        return StreamingResponse(
            lines, media_type=NDJSON, headers={NODE_HEADER: node, **STREAM_HEADERS, **headers}
        )

    async def _lines(
        self,
        chunks: Chunks,
        node: NodeId,
        first: gen_pb.GenerationChunk,
        parsed: ol.GenerationCall,
        started: float,
    ) -> AsyncIterator[bytes]:
        chunk: gen_pb.GenerationChunk | None = first
        seen: list[gen_pb.GenerationChunk] = []  # those with tool call deltas
        try:
            while chunk is not None:
                created_at = ol.timestamp(self._clock())
                extras = ol.Extras.of([chunk], parsed, calls=False)
                if chunk.tool_calls:
                    seen.append(chunk)
                if chunk.finish_reason:
                    # The calls, whole, on a line of their own before the last, as Ollama's.
                    calls = ol.Extras.calls_of(seen)
                    if calls.tool_calls:
                        yield ol.ndjson(ol.chunk(parsed.kind, parsed.name, created_at, "", calls))
                    yield ol.ndjson(
                        ol.final(
                            parsed.kind, parsed.name, created_at, chunk.text,
                            chunk.finish_reason, chunk.usage, chunk.timings,
                            self._elapsed_ns(started), extras,
                        )
                    )  # fmt: skip
                    break
                if chunk.text or extras.thinking or extras.logprobs:
                    yield ol.ndjson(
                        ol.chunk(parsed.kind, parsed.name, created_at, chunk.text, extras)
                    )
                node, chunk = await next_chunk(chunks, node)
        except LlamaherdError as exc:
            log.warning("ollama stream of %s ended early: %s", parsed.name, exc.message)
            yield ol.ndjson(ol.error_body(exc))
        finally:
            # A client that disconnects closes this generator at a yield; closing the relay
            # cancels the worker's call, which stops its generation at the next token.
            await chunks.aclose()

    # ---- embeddings ---------------------------------------------------------------------
    async def embed(self, request: Request) -> Response:
        started = self._clock()
        body = await json_body(request, self._body_timeout_s)
        parsed = ol.parse_embed(body, ol.known_aliases(self._router.snapshot))
        reply, headers = await self._embed(request, parsed)
        payload = ol.embed_reply(parsed.name, reply, parsed.dimensions, self._elapsed_ns(started))
        return JSONResponse(payload, headers=headers)

    async def embeddings(self, request: Request) -> Response:
        body = await json_body(request, self._body_timeout_s)
        parsed = ol.parse_embeddings(body, ol.known_aliases(self._router.snapshot))
        reply, headers = await self._embed(request, parsed)
        return JSONResponse(ol.embeddings_reply(reply), headers=headers)

    async def _embed(
        self, request: Request, parsed: ol.EmbedCall
    ) -> tuple[gen_pb.EmbedResponse | None, dict[str, str]]:
        alias = parsed.alias
        self._check_context(parsed.num_ctx, parsed.name, alias)
        headers = _ignored(parsed.ignored)
        if parsed.call is None:  # no input: Ollama's way to load the model
            self._require_served(rr.for_embed(alias, []))
            return None, headers
        embed = parsed.call.request
        route = for_embed(embed, http_session(request.headers, None))
        rid = request_id(request)
        reply, node = await unless_gone(
            request, self._router.unary(route, lambda worker: worker.embed(embed, rid))
        )
        return reply, {NODE_HEADER: node, **headers}

    # ---- the cluster's models -----------------------------------------------------------
    async def tags(self, request: Request) -> Response:
        return JSONResponse(ol.tags(ol.served(self._router.snapshot), self._created))

    async def ps(self, request: Request) -> Response:
        return JSONResponse(ol.ps(ol.served(self._router.snapshot)))

    async def show(self, request: Request) -> Response:
        name = ol.parse_model_name(await json_body(request, self._body_timeout_s))
        model = ol.find_served(self._router.snapshot, name)
        if model is None:
            raise self._router.not_served(name)
        return JSONResponse(ol.show(model, self._created))

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": ol.OLLAMA_VERSION, "llamaherd": _llamaherd_version()})

    async def management(self, request: Request) -> Response:
        raise NotSupported(ol.refused_management(request.url.path))

    # ---- helpers ------------------------------------------------------------------------
    def _check_context(self, num_ctx: int | None, name: str, alias: str) -> None:
        ol.check_num_ctx(num_ctx, name, ol.replica_context(self._router.snapshot, alias))

    def _require_served(self, route: RouteRequest) -> None:
        """A load request names a model: refused as its generation would be when no replica
        could serve it (a busy one is fine: the model is loaded)."""
        with contextlib.suppress(Overloaded):
            self._router.choose(route, exclude=set())

    def _elapsed_ns(self, started: float) -> int:
        return max(round((self._clock() - started) * 1e9), 0)


def _ignored(ignored: tuple[str, ...]) -> dict[str, str]:
    return {IGNORED_HEADER: "; ".join(ignored)} if ignored else {}


def _llamaherd_version() -> str:
    try:
        return importlib.metadata.version("llamaherd")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"
