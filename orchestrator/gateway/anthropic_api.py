"""Anthropic's Messages API on the gateway's HTTP port, for clients that speak it (the
`anthropic` SDKs, coding agents): POST /v1/messages and POST /v1/messages/count_tokens.

A thin adapter: anthropic_schema turns each body into the OpenAI API's parsed chat (the
same generation protos), and the request is relayed exactly as the OpenAI routes relay
theirs (http_relay, the Router's stream/complete/unary), so retries, migrations,
cancellation and errors behave the same. Replies are Anthropic's: a Message object, or its
server-sent events while streaming (message_start, ping, then per content block -- thinking,
text, tool_use -- content_block_start, content_block_delta, content_block_stop; then
message_delta, message_stop), and
`{"type": "error", ...}` on failure (the app's error handlers use that shape under
/v1/messages). A stream that fails after it started ends with an `error` event, as
Anthropic's do. Counting tokens renders the chat through the model's template on a worker
(the Worker API's Tokenize with a chat), so the count is what a generation would read.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from llamaherd.v1 import generation_pb2 as gen_pb
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from common.errors import Internal, LlamaherdError
from orchestrator.cluster.types import NodeId
from orchestrator.gateway import anthropic_schema as an
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
from orchestrator.gateway.route_requests import for_chat, http_session, resumable
from orchestrator.gateway.router import Router

log = logging.getLogger(__name__)


class AnthropicRoutes:
    """The /v1/messages routes, relayed through `router`."""

    def __init__(self, router: Router, body_timeout_s: float) -> None:
        self._router = router
        self._body_timeout_s = body_timeout_s

    def routes(self) -> list[Route]:
        return [
            Route(an.PATH_PREFIX, self.messages, methods=["POST"]),
            Route(f"{an.PATH_PREFIX}/count_tokens", self.count_tokens, methods=["POST"]),
        ]

    async def messages(self, request: Request) -> Response:
        parsed = an.parse_messages(await json_body(request, self._body_timeout_s))
        call = parsed.call
        route = for_chat(call.request, http_session(request.headers, call.user))
        open_call = open_generation(call.request, request_id(request))
        message_id = an.new_message_id()
        if not parsed.stream:
            completed = await unless_gone(request, self._router.complete(route, open_call))
            if not completed.chunks:
                raise Internal("the worker ended the stream without a result")
            body = an.message(message_id, parsed.model, completed.chunks, parsed.thinking)
            return JSONResponse(body, headers=completed_headers(completed))
        chunks: Chunks = self._router.stream(route, open_call, resumable=resumable(call.request))
        node, first = await first_chunk(request, chunks)
        events = _events(chunks, node, first, an.MessageStream(message_id, parsed.model,
                                                               parsed.thinking))  # fmt: skip
        return StreamingResponse(
            events, media_type="text/event-stream", headers={NODE_HEADER: node, **STREAM_HEADERS}
        )

    async def count_tokens(self, request: Request) -> Response:
        call = an.parse_count_tokens(await json_body(request, self._body_timeout_s))
        route = for_chat(call.request, http_session(request.headers, call.user))
        tokenize = gen_pb.TokenizeRequest(model=call.model, chat=call.request)
        rid = request_id(request)
        reply, node = await unless_gone(
            request, self._router.unary(route, lambda worker: worker.tokenize(tokenize, rid))
        )
        return JSONResponse({"input_tokens": len(reply.tokens)}, headers={NODE_HEADER: node})


async def _events(
    chunks: Chunks, node: NodeId, first: gen_pb.GenerationChunk, stream: an.MessageStream
) -> AsyncIterator[bytes]:
    for event in stream.start():
        yield event
    chunk: gen_pb.GenerationChunk | None = first
    try:
        while chunk is not None:
            for event in stream.chunk(chunk):
                yield event
            if chunk.finish_reason:
                break
            node, chunk = await next_chunk(chunks, node)
    except LlamaherdError as exc:
        log.warning("anthropic stream %s ended early: %s", stream.message_id, exc.message)
        yield an.sse("error", an.error_body(exc))
    finally:
        # A client that disconnects closes this generator at a yield; closing the relay
        # cancels the worker's call, which stops its generation at the next token.
        await chunks.aclose()
