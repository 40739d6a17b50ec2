"""Anthropic Messages bodies to the chat protos and back, pure: what each field becomes, the
refusals with their precise messages, and the reply and event shapes the official client
parses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic._models import construct_type_unchecked
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import (
    Message,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStreamEvent,
)
from llamaherd.v1 import generation_pb2 as gen_pb

from common.errors import Internal
from orchestrator.gateway import anthropic_schema as an
from orchestrator.gateway.errors import BadRequest, ModelNotServed, Overloaded, UpstreamFailed

HI = [{"role": "user", "content": "Hi"}]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 16, "messages": HI, **fields}


def refusal(parse: Any, value: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(value)
    return info.value


def test_a_body_becomes_the_chat_request_it_means():
    parsed = an.parse_messages(body(
        system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief.",
                                                  "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                  {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "More?"}],
        temperature=0.5, top_p=0.9, top_k=20, stop_sequences=["\n\n", "END"], stream=True,
        metadata={"user_id": "alice"},
    ))  # fmt: skip
    assert parsed.model == "m" and parsed.stream
    request = parsed.call.request
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "More?"),
    ]  # fmt: skip
    sampling = request.sampling
    assert sampling.max_tokens == 16 and sampling.top_k == 20
    assert sampling.temperature == pytest.approx(0.5) and sampling.top_p == pytest.approx(0.9)
    assert list(sampling.stop) == ["\n\n", "END"]
    assert request.assistant_prefix == ""
    assert parsed.call.user == "alice"  # routing's session key


def test_unset_sampling_stays_unset_and_a_last_assistant_message_is_a_prefill():
    parsed = an.parse_messages(body(messages=[*HI, {"role": "assistant", "content": "Sure,"}]))
    request = parsed.call.request
    assert [m.role for m in request.messages] == ["user"]
    assert request.assistant_prefix == "Sure,"
    assert not request.sampling.HasField("temperature") and not request.sampling.stop
    assert not parsed.stream and parsed.call.user is None


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"max_tokens": None}, "max_tokens is required", "max_tokens"),
        ({"max_tokens": 0}, "max_tokens must be at least 1, not 0", "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens must be an integer, not 2.5", "max_tokens"),
        ({"max_tokens": True}, "max_tokens must be an integer, not true", "max_tokens"),
        ({"messages": []}, "messages must hold at least one message", "messages"),
        ({"messages": [{"role": "system", "content": "x"}]},
         "'system' is not one of user, assistant; put a system prompt in the top-level system",
         "messages[0].role"),
        ({"messages": [*HI, {"role": "tool", "content": "x"}]},
         "'tool' is not one of user, assistant", "messages[1].role"),
        ({"messages": [{"role": "assistant", "content": "x"}, *HI]},
         "messages[0].role: the first message must be the user's", "messages[0].role"),
        ({"messages": [{"role": "user", "content": ""}]},
         "messages[0].content is empty", "messages[0]"),
        ({"messages": [{"role": "user", "content": []}]},
         "messages[0].content is empty", "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
         "messages[0].content[0]: unknown content block type 'audio'; send text blocks",
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": ["Hi"]}]},
         "must be a content block with a type", "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
         "messages[0].content[0].text must be a string", "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
         "image blocks: images and documents are not supported", "messages[0].content[0].type"),
        ({"messages": [*HI, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
         "a last assistant message is a prefill, which cannot hold tool_use blocks",
         "messages[1].content"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
         "tool_use blocks belong in an assistant's content", "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
         "tool_use_id is required", "messages[0].content[0].tool_use_id"),
        ({"messages": [*HI, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}, *HI]},
         "input must be an object", "messages[1].content[0].input"),
        ({"messages": [{"role": "user", "content": [
            {"type": "server_tool_use", "id": "t", "name": "web_search", "input": {}}]}]},
         "server tools and their blocks are not supported", "messages[0].content[0].type"),
        ({"tools": [{"input_schema": {"type": "object"}}]},
         "tools[0].name is required: a tool needs a name", "tools[0].name"),
        ({"tools": [{"name": "get weather", "input_schema": {"type": "object"}}]},
         "must be 1 to 64 of A-Z", "tools[0].name"),
        ({"tools": [{"name": "f"}]},
         "tools[0].input_schema must be a JSON Schema object", "tools[0].input_schema"),
        ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]},
         "tools[0].input_schema must be a JSON Schema object", "tools[0].input_schema"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object", "properties": 3}}]},
         "input_schema of 'f' is not a JSON Schema", "tools[0].input_schema"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object"}}] * 2},
         "two tools are named 'f'", "tools[1].name"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         "tool type 'web_search_20250305': server tools", "tools[0].type"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object"}}],
          "tool_choice": {"type": "tool", "name": "g"}},
         'tool_choice.name "g" is not among tools (f)', "tool_choice.name"),
        ({"tool_choice": {"type": "any"}}, "tool_choice 'any' needs tools", "tool_choice"),
        ({"tool_choice": {"type": "sometimes"}},
         'tool_choice.type "sometimes" is not one of auto, any, tool, none', "tool_choice.type"),
        ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}},
         "must be true or false", "tool_choice.disable_parallel_tool_use"),
        ({"thinking": {"type": "always"}}, "thinking must be", "thinking"),
        ({"system": [{"type": "image"}]}, "system[0]: image blocks", "system[0].type"),
        ({"system": 3}, "system: ", "system"),
        ({"model": ""}, "model is empty", "model"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences holds at most 16 strings",
         "stop_sequences"),
        ({"stop_sequences": "END"}, "stop_sequences", "stop_sequences"),
        ({"temperature": "hot"}, "temperature", "temperature"),
        ({"top_k": 1.5}, "top_k", "top_k"),
        ({"stream": "yes"}, "stream: ", "stream"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_field(fields, message, param):
    value = body(**fields)
    if fields.get("max_tokens", 0) is None:
        del value["max_tokens"]
    error = refusal(an.parse_messages, value)
    assert message in error.message and error.param == param


def test_output_config_format_is_a_json_schema_constraint_and_effort_is_ignored():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    parsed = an.parse_messages(
        body(output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}})
    )
    assert json.loads(parsed.call.request.constraint.json_schema) == schema
    plain = an.parse_messages(body(output_config={"effort": "high"})).call.request
    assert plain.constraint.WhichOneof("kind") is None
    for bad in ({"format": {"type": "json_object"}}, {"format": {"type": "json_schema"}}, "x"):
        error = refusal(an.parse_messages, body(output_config=bad))
        assert error.param in ("output_config", "output_config.format")


def test_thinking_is_asked_for_or_not_and_the_body_must_be_an_object():
    assert not an.parse_messages(body(thinking={"type": "disabled"})).thinking
    assert not an.parse_messages(body()).thinking
    assert an.parse_messages(body(thinking={"type": "enabled", "budget_tokens": 1024})).thinking
    assert an.parse_messages(body(thinking={"type": "adaptive"})).thinking
    assert refusal(an.parse_messages, []).message == "request body must be a JSON object"  # type: ignore[arg-type]


def test_count_tokens_reads_the_prompt_only():
    call = an.parse_count_tokens({"model": "m", "system": "Be brief.", "messages": HI})
    assert [(m.role, m.content) for m in call.request.messages] == [
        ("system", "Be brief."), ("user", "Hi")
    ]  # fmt: skip
    assert not call.request.sampling.HasField("max_tokens")
    error = refusal(an.parse_count_tokens, {"model": "m", "messages": HI, "tools": [{}]})
    assert error.param == "tools[0].name"
    counted = an.parse_count_tokens({"model": "m", "messages": HI, "tools": [WEATHER]})
    assert [t.name for t in counted.request.tools] == ["get_weather"]  # the prompt holds them


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"]}  # fmt: skip
WEATHER = {"name": "get_weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}
TIME = {"name": "get_time", "input_schema": {"type": "object"}, "type": "custom"}


@pytest.mark.parametrize(
    ("choice", "mode", "function", "parallel"),
    [
        (None, gen_pb.ToolChoice.MODE_AUTO, "", None),
        ({"type": "auto"}, gen_pb.ToolChoice.MODE_AUTO, "", None),
        ({"type": "any"}, gen_pb.ToolChoice.MODE_REQUIRED, "", None),
        ({"type": "tool", "name": "get_time"}, gen_pb.ToolChoice.MODE_FUNCTION, "get_time", None),
        ({"type": "none"}, gen_pb.ToolChoice.MODE_NONE, "", None),
        ({"type": "any", "disable_parallel_tool_use": True},
         gen_pb.ToolChoice.MODE_REQUIRED, "", False),
    ],
)  # fmt: skip
def test_tools_and_tool_choice_become_the_chat_requests(choice, mode, function, parallel):
    fields: dict[str, Any] = {"tools": [WEATHER, TIME]}
    if choice is not None:
        fields["tool_choice"] = choice
    request = an.parse_messages(body(**fields)).call.request
    assert [(t.name, t.description) for t in request.tools] == [
        ("get_weather", "Weather now"), ("get_time", "")
    ]  # fmt: skip
    assert json.loads(request.tools[0].parameters_json) == WEATHER_SCHEMA
    assert (request.tool_choice.mode, request.tool_choice.function) == (mode, function)
    if parallel is None:
        assert not request.HasField("parallel_tool_calls")
    else:
        assert request.parallel_tool_calls is parallel


def weather_use(use_id: str, city: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": use_id, "name": "get_weather", "input": {"city": city}}


def test_tool_use_and_tool_result_blocks_become_calls_and_tool_messages():
    history = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two cities.", "signature": ""},
            {"type": "text", "text": "Checking."},
            weather_use("toolu_1", "Paris"),
            weather_use("toolu_2", "Oslo"),
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "no station"}]},
            {"type": "text", "text": "Thanks."},
        ]},
    ]  # fmt: skip
    request = an.parse_messages(body(messages=history, tools=[WEATHER])).call.request
    roles = [m.role for m in request.messages]
    assert roles == ["user", "assistant", "tool", "tool", "user"]
    assistant = request.messages[1]
    assert assistant.content == "Checking."  # the thinking block is dropped
    assert [(c.id, c.name, json.loads(c.arguments)) for c in assistant.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Paris"}), ("toolu_2", "get_weather", {"city": "Oslo"})
    ]  # fmt: skip
    first, second = request.messages[2], request.messages[3]
    assert (first.tool_call_id, first.name, first.content) == ("toolu_1", "get_weather", "18 C")
    assert (second.tool_call_id, second.content) == ("toolu_2", "Error: no station")
    assert request.messages[4].content == "Thanks."


def call_delta(index: int, call_id: str = "", name: str = "", arguments: str = ""):
    return gen_pb.ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)


TOOL_CHUNKS = [
    gen_pb.GenerationChunk(reasoning="The user wants "),
    gen_pb.GenerationChunk(reasoning="the weather."),
    gen_pb.GenerationChunk(text="Let me check."),
    gen_pb.GenerationChunk(tool_calls=[call_delta(0, "call_" + "a" * 24, "get_weather",
                                                  '{"city": ')]),
    gen_pb.GenerationChunk(tool_calls=[call_delta(0, arguments='"Paris"}')]),
    gen_pb.GenerationChunk(tool_calls=[call_delta(1, "call_" + "b" * 24, "get_time", "{}")],
                           finish_reason=gen_pb.FINISH_REASON_TOOL_CALLS,
                           usage=gen_pb.Usage(prompt_tokens=30, completion_tokens=20)),
]  # fmt: skip


def test_a_reply_with_tool_calls_and_thinking_is_a_message_of_blocks():
    parsed = Message.model_validate(an.message("msg_1", "m", TOOL_CHUNKS, thinking=True))
    assert [block.type for block in parsed.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert parsed.content[0].thinking == "The user wants the weather."
    paris, now = parsed.content[2], parsed.content[3]
    assert (paris.id, paris.name, paris.input) == ("toolu_" + "a" * 24, "get_weather",
                                                   {"city": "Paris"})  # fmt: skip
    assert (now.id, now.name, now.input) == ("toolu_" + "b" * 24, "get_time", {})
    assert parsed.stop_reason == "tool_use"
    plain = Message.model_validate(an.message("msg_1", "m", TOOL_CHUNKS[2:]))
    assert [block.type for block in plain.content] == ["text", "tool_use", "tool_use"]
    only_calls = Message.model_validate(an.message("msg_1", "m", TOOL_CHUNKS[3:]))
    assert [block.type for block in only_calls.content] == ["tool_use", "tool_use"]
    unasked = an.message("msg_1", "m", TOOL_CHUNKS, thinking=False)
    assert "thinking" not in [block["type"] for block in unasked["content"]]


def test_arguments_that_are_not_a_json_object_are_the_workers_fault():
    bad = [gen_pb.GenerationChunk(tool_calls=[call_delta(0, "call_1", "f", "[1]"),
                                              call_delta(1, "call_2", "g", "{nope")],
                                  finish_reason=gen_pb.FINISH_REASON_TOOL_CALLS)]  # fmt: skip
    with pytest.raises(Internal, match="arguments of 'f' that are not a JSON object"):
        an.message("msg_1", "m", bad)


def replay(raw: list[bytes]) -> Any:
    """The Message the official client assembles from the events (its own accumulator)."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in events(raw):
        if name == "ping":
            continue
        event = construct_type_unchecked(type_=RawMessageStreamEvent, value=data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


def test_a_streamed_reply_opens_a_block_per_kind_and_the_client_assembles_it():
    stream = an.MessageStream("msg_1", "m", thinking=True)
    raw = stream.start() + [e for chunk in TOOL_CHUNKS for e in stream.chunk(chunk)]
    names = [(name, data.get("index"), (data.get("content_block") or data.get("delta") or {}
              ).get("type")) for name, data in events(raw)]  # fmt: skip
    assert names == [
        ("message_start", None, None), ("ping", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None), ("message_delta", None, None),
        ("message_stop", None, None),
    ]  # fmt: skip
    message = replay(raw)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use",
                                                         "tool_use"]  # fmt: skip
    assert message.content[0].thinking == "The user wants the weather."
    assert message.content[2].input == {"city": "Paris"} and message.content[3].input == {}
    assert message.content[2].id == "toolu_" + "a" * 24
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 20


def test_a_stream_without_thinking_asked_drops_the_reasoning():
    stream = an.MessageStream("msg_1", "m")
    raw = stream.start() + [e for chunk in TOOL_CHUNKS for e in stream.chunk(chunk)]
    assert [b.type for b in replay(raw).content] == ["text", "tool_use", "tool_use"]


def final_chunk(finish: int, stop: str = "") -> gen_pb.GenerationChunk:
    usage = gen_pb.Usage(prompt_tokens=12, completion_tokens=5, cached_prompt_tokens=4)
    return gen_pb.GenerationChunk(text="", finish_reason=finish, usage=usage, stop_sequence=stop)


@pytest.mark.parametrize(
    ("finish", "stop", "reason"),
    [
        (gen_pb.FINISH_REASON_STOP, "", "end_turn"),
        (gen_pb.FINISH_REASON_LENGTH, "", "max_tokens"),
        (gen_pb.FINISH_REASON_STOP, "END", "stop_sequence"),
    ],
)
def test_a_reply_is_a_message_the_client_parses(finish, stop, reason):
    reply = an.message(
        "msg_1", "m", [gen_pb.GenerationChunk(text="Hello"), final_chunk(finish, stop)]
    )
    parsed = Message.model_validate(reply)
    assert parsed.content[0].type == "text" and parsed.content[0].text == "Hello"
    assert parsed.stop_reason == reason and parsed.stop_sequence == (stop or None)
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (12, 5)
    assert parsed.usage.cache_read_input_tokens == 4


def events(raw: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for item in raw:
        name, data = item.decode().removesuffix("\n\n").split("\n")
        parsed.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return parsed


def test_stream_events_are_named_and_shaped_as_anthropics():
    stream = an.MessageStream("msg_1", "m")
    start = events(stream.start())
    assert [name for name, _ in start] == ["message_start", "ping"]
    assert all(data["type"] == name for name, data in start)
    message = RawMessageStartEvent.model_validate(start[0][1]).message
    assert message.content == [] and message.stop_reason is None
    first = events(stream.chunk(gen_pb.GenerationChunk(text="Hi")))
    assert [name for name, _ in first] == ["content_block_start", "content_block_delta"]
    assert first[1][1]["delta"] == {"type": "text_delta", "text": "Hi"}
    end = events(stream.chunk(final_chunk(gen_pb.FINISH_REASON_STOP, "END")))
    assert [name for name, _ in end] == ["content_block_stop", "message_delta", "message_stop"]
    delta = RawMessageDeltaEvent.model_validate(end[1][1])
    assert delta.delta.stop_reason == "stop_sequence" and delta.delta.stop_sequence == "END"
    assert (delta.usage.input_tokens, delta.usage.output_tokens) == (12, 5)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (BadRequest("no"), None, "invalid_request_error"),
        (ModelNotServed("q", ["m"]), None, "not_found_error"),
        (Overloaded("full"), None, "rate_limit_error"),
        (UpstreamFailed("gone"), None, "overloaded_error"),
        (Internal("bug"), None, "api_error"),
        (BadRequest("no route"), 404, "not_found_error"),
        (BadRequest("no method"), 405, "invalid_request_error"),
    ],
)
def test_errors_carry_anthropics_types(error, status, kind):
    assert an.error_body(error, status) == {
        "type": "error", "error": {"type": kind, "message": error.message}
    }  # fmt: skip


def test_a_refused_key_is_an_authentication_error():
    assert an.authentication_error("no key") == {
        "type": "error", "error": {"type": "authentication_error", "message": "no key"}
    }  # fmt: skip


def test_an_empty_reply_still_has_a_text_block():
    stream = an.MessageStream("msg_1", "m")
    raw = stream.start() + stream.chunk(final_chunk(gen_pb.FINISH_REASON_LENGTH))
    message = replay(raw)
    assert [(b.type, b.text) for b in message.content] == [("text", "")]
    assert message.stop_reason == "max_tokens"
