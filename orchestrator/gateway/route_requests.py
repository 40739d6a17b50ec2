"""The RouteRequest of a relayed request, shared by both front doors.

The OpenAI HTTP API and the gRPC Inference API both end with the same generation protos,
so one function per request kind reads the text routing needs from them; routing itself
(orchestrator.routing) never sees protobuf. The session key travels in the same header on
both doors (an HTTP header, gRPC metadata); the HTTP API also takes OpenAI's `user` field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from llamaherd.v1 import generation_pb2 as gen_pb

from orchestrator.routing import request as rr
from orchestrator.routing.request import RouteRequest, session_key

# The header (HTTP) or metadata key (gRPC) that names a client's session.
SESSION_HEADER = "x-session-id"
# The request header that pins an HTTP generation to one node (llamaherd capacity measures
# one node through the gateway); it passes the gateway's API key check like any request.
PIN_HEADER = "x-llamaherd-node"


def for_generate(request: gen_pb.GenerateRequest, session: str | None = None) -> RouteRequest:
    """A text completion's RouteRequest."""
    return rr.for_prompt(request.model, request.prompt, session)


def for_chat(request: gen_pb.ChatRequest, session: str | None = None) -> RouteRequest:
    """A chat's RouteRequest."""
    messages = [(m.role, m.content) for m in request.messages]
    return rr.for_chat(request.model, messages, session)


def for_embed(request: gen_pb.EmbedRequest, session: str | None = None) -> RouteRequest:
    """An embedding's RouteRequest."""
    return rr.for_embed(request.model, list(request.inputs), session)


def for_generation(
    request: gen_pb.GenerateRequest | gen_pb.ChatRequest, session: str | None = None
) -> RouteRequest:
    """The RouteRequest of either streamed kind."""
    if isinstance(request, gen_pb.ChatRequest):
        return for_chat(request, session)
    return for_generate(request, session)


def continued(
    request: gen_pb.GenerateRequest | gen_pb.ChatRequest, text: str, tokens: int
) -> gen_pb.GenerateRequest | gen_pb.ChatRequest:
    """`request` picked up after `text` (from `tokens` tokens) has been generated, for
    another replica to continue a stream: a completion's prompt is extended by the text, a
    chat's reply starts with it (ChatRequest.assistant_prefix); same sampling settings, and
    max_tokens reduced by what was generated (kept at 1 or more: a reply cut exactly at its
    limit gets one token more rather than none)."""
    if not text and not tokens:
        return request
    copy = type(request)()
    copy.CopyFrom(request)
    if isinstance(copy, gen_pb.ChatRequest):
        copy.assistant_prefix += text
    else:
        copy.prompt += text
    if copy.sampling.HasField("max_tokens"):
        copy.sampling.max_tokens = max(copy.sampling.max_tokens - tokens, 1)
    return copy


def resumable(request: gen_pb.GenerateRequest | gen_pb.ChatRequest) -> bool:
    """Whether a stream of `request` can continue elsewhere from its partial text: not
    under an output constraint, whose grammar would start again from its root; not with
    n > 1 (one continuation cannot resume n sequences from their different texts), nor
    with logprobs (a continuation's first tokens are scored after the prefix, not as they
    were sampled), nor with tools (calls already parsed out of the text are not in the
    prefix a continuation sees). Those are retried only before their first chunk."""
    if request.constraint.WhichOneof("kind") is not None or request.n > 1:
        return False
    if request.sampling.HasField("top_logprobs"):
        return False
    return not (isinstance(request, gen_pb.ChatRequest) and len(request.tools) > 0)


def http_session(headers: Mapping[str, str], user: str | None) -> str | None:
    """The session key of an HTTP request: the session header, else OpenAI's `user` field.
    `headers` must look keys up without regard to case, as HTTP headers are."""
    return session_key((headers.get(SESSION_HEADER), user))


def grpc_session(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The session key in a gRPC call's invocation metadata, if the client sent one (gRPC
    lower-cases metadata keys on the wire)."""
    values = (v for k, v in metadata or () if k == SESSION_HEADER and isinstance(v, str))
    return session_key(values)


def http_pinned(route: RouteRequest, headers: Mapping[str, str]) -> RouteRequest:
    """`route` pinned to the node the PIN_HEADER names, if the request sent one."""
    node = (headers.get(PIN_HEADER) or "").strip()
    return dataclasses.replace(route, node=node) if node else route
