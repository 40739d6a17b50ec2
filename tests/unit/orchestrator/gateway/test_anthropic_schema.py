"""Anthropic Messages bodies to the chat protos and back, pure: what each field becomes, the
refusals with their precise messages, and the reply and event shapes the official client
parses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, RawMessageDeltaEvent, RawMessageStartEvent
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
         "tool_use blocks: tool use is not supported yet", "messages[1].content[0].type"),
        ({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]},
         "tool_result blocks: tool use is not supported yet", "messages[0].content[0].type"),
        ({"messages": [*HI, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "x", "signature": "s"}]}]},
         "thinking blocks: extended thinking is not supported", "messages[1].content[0].type"),
        ({"tools": [{"name": "f", "input_schema": {}}]}, "tool use is not supported yet",
         "tools"),
        ({"tool_choice": {"type": "auto"}}, "tool use is not supported yet", "tools"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}},
         "extended thinking is not supported", "thinking"),
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


def test_thinking_turned_off_is_accepted_and_the_body_must_be_an_object():
    assert an.parse_messages(body(thinking={"type": "disabled"})).call.request.messages
    assert refusal(an.parse_messages, []).message == "request body must be a JSON object"  # type: ignore[arg-type]


def test_count_tokens_reads_the_prompt_only():
    call = an.parse_count_tokens({"model": "m", "system": "Be brief.", "messages": HI})
    assert [(m.role, m.content) for m in call.request.messages] == [
        ("system", "Be brief."), ("user", "Hi")
    ]  # fmt: skip
    assert not call.request.sampling.HasField("max_tokens")
    error = refusal(an.parse_count_tokens, {"model": "m", "messages": HI, "tools": [{}]})
    assert "tool use is not supported yet" in error.message


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
    reply = an.message("msg_1", "m", "Hello", final_chunk(finish, stop))
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
    start = events(an.stream_start("msg_1", "m"))
    assert [name for name, _ in start] == ["message_start", "content_block_start", "ping"]
    assert all(data["type"] == name for name, data in start)
    message = RawMessageStartEvent.model_validate(start[0][1]).message
    assert message.content == [] and message.stop_reason is None
    assert events([an.text_delta("Hi")])[0][1]["delta"] == {"type": "text_delta", "text": "Hi"}
    end = events(an.stream_end(final_chunk(gen_pb.FINISH_REASON_STOP, "END")))
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
