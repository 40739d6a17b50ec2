"""Both front doors' requests to RouteRequests: the text routing reads and the session key."""

from __future__ import annotations

from llamaherd.v1 import generation_pb2 as gen_pb
from starlette.datastructures import Headers

from orchestrator.gateway import openai_schema as schema
from orchestrator.gateway.route_requests import (
    SESSION_HEADER,
    for_chat,
    for_embed,
    for_generate,
    for_generation,
    grpc_session,
    http_session,
)
from orchestrator.routing import request as rr
from orchestrator.routing.request import RouteRequest

MESSAGES = [("system", "Be brief."), ("user", "Hi")]


def chat_request() -> gen_pb.ChatRequest:
    messages = [gen_pb.ChatMessage(role=role, content=text) for role, text in MESSAGES]
    return gen_pb.ChatRequest(model="gemma", messages=messages)


def test_generate_request_routes_on_its_prompt() -> None:
    request = gen_pb.GenerateRequest(model="gemma", prompt="Once upon a time")
    assert for_generate(request, "s") == rr.for_prompt("gemma", "Once upon a time", "s")
    assert for_generate(request, "s").prompt_tokens == 4


def test_chat_request_routes_on_its_messages_in_order() -> None:
    assert for_chat(chat_request(), None) == rr.for_chat("gemma", MESSAGES)
    reversed_chat = gen_pb.ChatRequest(model="gemma", messages=chat_request().messages[::-1])
    assert for_chat(reversed_chat).prefix != for_chat(chat_request()).prefix


def test_for_generation_tells_the_two_streamed_kinds_apart() -> None:
    prompt = gen_pb.GenerateRequest(model="gemma", prompt="Hi")
    assert for_generation(prompt) == for_generate(prompt)
    assert for_generation(chat_request()) == for_chat(chat_request())


def test_embed_request_routes_to_embedding_replicas() -> None:
    request = for_embed(gen_pb.EmbedRequest(model="e", inputs=["abcd", "efgh"]), "s")
    assert request == RouteRequest("e", "embed", prompt_tokens=2, session="s")


def test_http_session_header_wins_over_the_openai_user_field() -> None:
    with_header = Headers({"X-Session-Id": "tab-7"})  # HTTP header names ignore case
    assert http_session(with_header, "alice") == "tab-7"
    assert http_session(Headers({}), "alice") == "alice"
    assert http_session(Headers({SESSION_HEADER: ""}), "alice") == "alice"
    assert http_session(Headers({}), None) is None


def test_openai_user_field_reaches_the_route_request() -> None:
    body = {"model": "gemma", "user": "alice", "messages": [{"role": "user", "content": "Hi"}]}
    call = schema.parse_chat(body)
    assert for_chat(call.request, http_session(Headers({}), call.user)).session == "alice"


def test_grpc_session_comes_from_the_metadata_key() -> None:
    metadata = (("x-request-id", "r1"), (SESSION_HEADER, "tab-7"))
    assert grpc_session(metadata) == "tab-7"
    assert grpc_session((("x-request-id", "r1"),)) is None
    assert grpc_session(None) is None
    # Binary metadata (keys ending -bin) arrives as bytes: not a session key.
    assert grpc_session(((SESSION_HEADER, b"\x00"),)) is None
