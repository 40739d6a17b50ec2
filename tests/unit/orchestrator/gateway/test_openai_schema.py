"""OpenAI request bodies to our protos, and our replies in the shapes the official `openai`
client parses (checked with its own pydantic types)."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import pytest
from llamaherd.v1 import generation_pb2 as gen_pb
from llamaherd.v1 import inference_pb2 as inf_pb
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from orchestrator.gateway import openai_schema as schema
from orchestrator.gateway.errors import BadRequest, http_status, openai_envelope

CHAT = {"model": "gemma", "messages": [{"role": "user", "content": "Hi"}]}
USAGE = gen_pb.Usage(prompt_tokens=10, completion_tokens=4, cached_prompt_tokens=6)
TIMINGS = gen_pb.Timings(
    prompt_ms=12.5, decode_ms=80.0, time_to_first_token_ms=15.0,
    prompt_tokens_per_second=320.0, decode_tokens_per_second=50.0,
)  # fmt: skip


def _refused(parse, body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(body)
    return info.value


# ---- chat requests --------------------------------------------------------------------
def test_chat_maps_messages_and_every_sampling_option():
    call = schema.parse_chat(
        {
            **CHAT,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello, "},
                                             {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": None},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
            "repeat_penalty": 1.1, "repeat_last_n": 32, "presence_penalty": 0.2,
            "frequency_penalty": 0.3, "seed": 7, "stop": "END", "max_tokens": 99,
            "logit_bias": {"12": -100}, "user": "ignored", "metadata": {"ignored": True},
            "ignore_eos": True,
        }
    )  # fmt: skip
    assert call.model == "gemma" and call.stream and call.include_usage
    roles = [(m.role, m.content) for m in call.request.messages]
    assert roles == [("system", "Be brief."), ("user", "Hello, there"), ("assistant", "")]
    s = call.request.sampling
    assert s.temperature == pytest.approx(0.5) and s.top_p == pytest.approx(0.9)
    assert (s.top_k, s.repeat_last_n, s.seed, s.max_tokens) == (40, 32, 7, 99)
    assert s.min_p == pytest.approx(0.05) and s.repeat_penalty == pytest.approx(1.1)
    assert s.presence_penalty == pytest.approx(0.2) and s.frequency_penalty == pytest.approx(0.3)
    assert list(s.stop) == ["END"] and dict(s.logit_bias) == {12: -100.0}
    assert s.ignore_eos
    assert not call.request.HasField("constraint")


def test_unset_sampling_fields_stay_unset_so_the_worker_applies_its_defaults():
    sampling = schema.parse_chat(CHAT).request.sampling
    for name in ("temperature", "top_p", "top_k", "seed", "max_tokens", "ignore_eos"):
        assert not sampling.HasField(name), name


def test_max_completion_tokens_wins_over_max_tokens():
    call = schema.parse_chat({**CHAT, "max_tokens": 5, "max_completion_tokens": 9})
    assert call.request.sampling.max_tokens == 9


def test_64_bit_seeds_are_folded_into_llama_cpps_32():
    assert schema.parse_chat({**CHAT, "seed": 2**40 + 3}).request.sampling.seed == 3
    assert schema.parse_chat({**CHAT, "seed": -1}).request.sampling.seed == 2**32 - 1


@pytest.mark.parametrize(
    ("extra", "constraint"),
    [
        ({"response_format": {"type": "json_object"}}, gen_pb.OutputConstraint(json_object=True)),
        ({"grammar": 'root ::= "yes"'}, gen_pb.OutputConstraint(grammar='root ::= "yes"')),
        (
            {"response_format": {"type": "json_schema",
                                 "json_schema": {"name": "p", "schema": {"type": "object"}}}},
            gen_pb.OutputConstraint(json_schema='{"type": "object"}'),
        ),
    ],
)  # fmt: skip
def test_constrained_output(extra, constraint):
    assert schema.parse_chat({**CHAT, **extra}).request.constraint == constraint


def test_text_response_format_is_no_constraint():
    call = schema.parse_chat({**CHAT, "response_format": {"type": "text"}})
    assert not call.request.HasField("constraint")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ([1, 2], None, "JSON object"),
        ({"messages": []}, "model", "Field required"),
        ({**CHAT, "model": ""}, "model", "GET /v1/models"),
        ({**CHAT, "messages": []}, "messages", "at least one"),
        ({**CHAT, "messages": "Hi"}, "messages", "valid list"),
        ({**CHAT, "messages": [{"content": "x"}]}, "messages[0].role", "Field required"),
        ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "robot"),
        ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id",
         "tool_call_id"),
        ({**CHAT, "messages": [{"role": "function", "content": "x"}]}, "messages[0].role",
         "deprecated"),
        ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content[0]", "only text"),
        ({**CHAT, "temperature": "hot"}, "temperature", "number"),
        ({**CHAT, "temperature": math.nan}, "temperature", "finite"),
        ({**CHAT, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({**CHAT, "max_tokens": 2**31}, "max_tokens", "less than or equal"),
        ({**CHAT, "top_k": 1.5}, "top_k", "integer"),
        ({**CHAT, "stream": "yes"}, "stream", "boolean"),
        ({**CHAT, "stop": ["a"] * 17}, "stop", "at most 16"),
        ({**CHAT, "n": 1000}, "n", "[1, 16]"),
        ({**CHAT, "n": 0}, "n", "[1, 16]"),
        ({**CHAT, "logprobs": True, "top_logprobs": 50}, "top_logprobs", "[0, 20]"),
        ({**CHAT, "top_logprobs": 3}, "top_logprobs", "logprobs: true"),
        ({**CHAT, "logprobs": 3}, "logprobs", "boolean"),
        ({**CHAT, "logit_bias": {"token": 1}}, "logit_bias", "not a token id"),
        ({**CHAT, "logit_bias": {"-4": 1}}, "logit_bias", "not a token id"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools[0].function", "Field required"),
        ({**CHAT, "functions": [{"name": "f"}]}, "functions", "tools and tool_choice"),
        ({**CHAT, "function_call": "auto"}, "function_call", "tools and tool_choice"),
        ({**CHAT, "grammar": "root ::= x", "response_format": {"type": "json_object"}},
         "grammar", "not both"),
        ({**CHAT, "response_format": {"type": "json_schema"}},
         "response_format.json_schema", "needs json_schema.schema"),
        ({**CHAT, "response_format": {"type": "xml"}}, "response_format.type", "json_object"),
    ],
)  # fmt: skip
def test_bad_chat_requests_name_the_parameter(body, param, words):
    error = _refused(schema.parse_chat, body)
    assert error.param == param
    assert words in error.message
    envelope = openai_envelope(error)["error"]
    assert http_status(error) == 400 and envelope["param"] == param
    assert envelope["type"] == "invalid_request_error"


# ---- completions and embeddings ---------------------------------------------------------
def test_completion_takes_a_prompt_or_a_one_prompt_list():
    call = schema.parse_completion({"model": "m", "prompt": ["Once"], "max_tokens": 3})
    assert call.request.prompt == "Once" and call.request.sampling.max_tokens == 3
    assert not call.stream and not call.include_usage
    assert len(call.requests) == 1 and call.n == 1 and call.echoed == ()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1, 2], "b", 3]}, "prompt[2]"),
        ({"prompt": [[]]}, "prompt[0]"),
        ({"prompt": [-1]}, "prompt[0]"),
        ({"prompt": ["x"] * 65}, "prompt"),
        ({"echo": True, "prompt": [1, 2]}, "echo"),
        ({"echo": True, "logprobs": 2}, "echo"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"n": 17}, "n"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
    ],
)
def test_unsupported_completion_options_are_refused_by_name(extra, param):
    error = _refused(schema.parse_completion, {"model": "m", "prompt": "x", **extra})
    assert error.param == param


def test_embeddings_take_one_or_many_texts():
    one = schema.parse_embeddings({"model": "e", "input": "a"})
    many = schema.parse_embeddings({"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
    assert list(one.request.inputs) == ["a"] and one.encoding_format == "float"
    assert list(many.request.inputs) == ["a", "b"] and many.encoding_format == "base64"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ["x"] * 257}, "input"),
        ({"input": ["x", [1, 2]]}, "input[1]"),
        ({"input": "x", "dimensions": 64}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_bad_embedding_requests_name_the_parameter(extra, param):
    assert _refused(schema.parse_embeddings, {"model": "e", **extra}).param == param


# ---- responses, parsed by the openai client's own types -----------------------------------
def _final(reason: int = gen_pb.FINISH_REASON_STOP, **fields: Any) -> gen_pb.GenerationChunk:
    return gen_pb.GenerationChunk(finish_reason=reason, usage=USAGE, timings=TIMINGS, **fields)


def test_streamed_chat_chunks_parse_as_openai_chunks():
    stream = schema.ChatStream("c-1", 100, "gemma")
    (first,) = stream.start()
    middle = stream.payload(0, gen_pb.GenerationChunk(text="Hel", token_ids=[1]))
    assert not stream.done
    last = stream.payload(0, _final(gen_pb.FINISH_REASON_LENGTH))
    assert stream.done
    parsed = [ChatCompletionChunk.model_validate(c) for c in (first, middle, last, stream.usage())]
    assert parsed[0].choices[0].delta.role == "assistant"
    assert parsed[1].choices[0].delta.content == "Hel"
    assert parsed[2].choices[0].finish_reason == "length"
    assert parsed[3].choices == [] and parsed[3].usage is not None
    assert parsed[3].usage.total_tokens == 14
    assert parsed[3].usage.prompt_tokens_details.cached_tokens == 6
    assert stream.payload(0, gen_pb.GenerationChunk(token_ids=[2])) is None, "nothing to say"


def test_whole_chat_completion_parses_and_carries_llama_server_timings():
    chunks = [gen_pb.GenerationChunk(text="Hi"), _final(text="!")]
    body = schema.chat_completion("c-2", 100, "gemma", chunks)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "Hi!"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.choices[0].logprobs is None and parsed.choices[0].message.tool_calls is None
    assert parsed.usage is not None and parsed.usage.completion_tokens == 4
    assert body["timings"] == {
        "prompt_n": 4, "prompt_ms": 12.5, "prompt_per_second": 320.0, "predicted_n": 4,
        "predicted_ms": 80.0, "predicted_per_second": 50.0, "cache_n": 6, "ttft_ms": 15.0,
    }  # fmt: skip


def test_text_completions_parse():
    whole = schema.text_completion(
        "t-1", 100, "m", [[gen_pb.GenerationChunk(text="s"), _final(2, text="ky")]]
    )
    parsed = Completion.model_validate(whole)
    assert parsed.choices[0].finish_reason == "length" and parsed.choices[0].text == "sky"
    stream = schema.CompletionStream("t-1", 100, "m")
    assert stream.start() == []
    # Mid-stream chunks carry finish_reason null, as OpenAI's do; the client's Completion
    # type does not allow that, which is why it parses stream chunks without validation.
    middle = stream.payload(0, gen_pb.GenerationChunk(text="s"))
    assert middle is not None and middle["choices"][0]["finish_reason"] is None
    last = stream.payload(0, _final(text="s"))
    assert Completion.model_validate(last).choices[0].text == "s" and stream.done


def test_base64_embeddings_decode_to_the_same_floats():
    response = gen_pb.EmbedResponse(
        embeddings=[gen_pb.Embedding(values=[0.5, -1.25, 3.0])], prompt_tokens=3
    )
    floats = CreateEmbeddingResponse.model_validate(
        schema.embeddings_response("e", response, "float")
    )
    assert floats.data[0].embedding == [0.5, -1.25, 3.0] and floats.usage.prompt_tokens == 3
    encoded = schema.embeddings_response("e", response, "base64")["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (0.5, -1.25, 3.0)


def test_model_list_entries_parse_and_say_where_the_model_runs():
    response = inf_pb.ListClusterModelsResponse(
        models=[inf_pb.ClusterModel(alias="gemma", ready_replicas=2, nodes=["a", "b"],
                                    n_ctx=4096, architecture="gemma3", created_unix_s=5)]
    )  # fmt: skip
    listing = schema.models_list(response)
    model = Model.model_validate(listing["data"][0])
    assert (model.id, model.created, model.object) == ("gemma", 5, "model")
    assert listing["data"][0]["meta"]["nodes"] == ["a", "b"]


def test_sse_events_are_compact_json_lines():
    assert schema.sse_event("[DONE]") == b"data: [DONE]\n\n"
    event = schema.sse_event({"a": 1})
    assert event == b'data: {"a":1}\n\n' and json.loads(event[6:]) == {"a": 1}


def test_finish_reasons():
    assert schema.finish_reason_name(gen_pb.FINISH_REASON_STOP) == "stop"
    assert schema.finish_reason_name(gen_pb.FINISH_REASON_LENGTH) == "length"
    assert schema.finish_reason_name(gen_pb.FINISH_REASON_UNSPECIFIED) is None


# ---- the `user` field (routing's session key) ---------------------------------------------
def test_user_field_is_kept_for_routing_on_every_kind():
    assert schema.parse_chat({**CHAT, "user": "alice"}).user == "alice"
    completion = {"model": "gemma", "prompt": "Hi", "user": "bob"}
    assert schema.parse_completion(completion).user == "bob"
    embeddings = {"model": "e", "input": "Hi", "user": "carol"}
    assert schema.parse_embeddings(embeddings).user == "carol"


@pytest.mark.parametrize("user", [None, "", 42, {"id": "alice"}])
def test_a_user_field_that_is_no_string_is_ignored_not_refused(user):
    assert schema.parse_chat({**CHAT, "user": user}).user is None


# ---- tools, logprobs, n, prompts (issue 20) -----------------------------------------------
Chunk = gen_pb.GenerationChunk
Delta = gen_pb.ToolCallDelta
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}  # fmt: skip
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip


def _tool(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def test_tools_and_a_tool_history_map_to_the_contract():
    call = schema.parse_chat({
        **CHAT,
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
        ],
        "tools": [WEATHER, _tool("noop")],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    })  # fmt: skip
    request = call.request
    assert [t.name for t in request.tools] == ["get_weather", "noop"]
    assert json.loads(request.tools[0].parameters_json) == WEATHER["function"]["parameters"]
    assert request.tools[0].description == "The weather in a city."
    assert request.tools[1].parameters_json == ""
    assert request.tool_choice == gen_pb.ToolChoice(
        mode=gen_pb.ToolChoice.MODE_FUNCTION, function="get_weather"
    )
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant.content == "" and list(assistant.tool_calls) == [
        gen_pb.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    ]
    # The tool message is named after the call it answers (templates want the name).
    assert (tool.role, tool.tool_call_id, tool.name, tool.content) == (
        "tool", "call_1", "get_weather", "12 C",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "mode"),
    [
        ("auto", gen_pb.ToolChoice.MODE_AUTO),
        ("none", gen_pb.ToolChoice.MODE_NONE),
        ("required", gen_pb.ToolChoice.MODE_REQUIRED),
    ],
)
def test_tool_choice_modes(choice, mode):
    request = schema.parse_chat({**CHAT, "tools": [WEATHER], "tool_choice": choice}).request
    assert request.tool_choice.mode == mode
    assert not request.HasField("parallel_tool_calls"), "unset: the worker's default (true)"


def test_no_tools_is_no_tool_calling():
    request = schema.parse_chat({**CHAT, "tool_choice": "none"}).request
    assert not request.tools and request.tool_choice.mode == gen_pb.ToolChoice.MODE_NONE


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": [_tool("")]}, "tools[0].function.name", "needs a name"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]},
         "tools[0].function.name", "needs a name"),
        ({"tools": [_tool("a b")]}, "tools[0].function.name", "1 to 64"),
        ({"tools": [_tool("x" * 65)]}, "tools[0].function.name", "1 to 64"),
        ({"tools": [_tool("f"), _tool("f")]}, "tools[1].function.name", "two tools"),
        ({"tools": [_tool("f", {"type": "objekt"})]}, "tools[0].function.parameters",
         "not a JSON Schema"),
        ({"tools": [_tool("f", {"properties": {"a": {"minLength": -1}}})]},
         "tools[0].function.parameters", "not a JSON Schema"),
        ({"tools": [_tool("f", [1])]}, "tools[0].function.parameters", "dictionary"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type",
         "function"),
        ({"tools": [_tool(f"f{i}") for i in range(129)]}, "tools", "at most 128"),
        ({"tools": [_tool("f")], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice", "'g', which is not in tools (tools: f)"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [_tool("f")], "tool_choice": "sometimes"}, "tool_choice", "auto"),
        ({"tools": [_tool("f")], "parallel_tool_calls": "yes"}, "parallel_tool_calls",
         "boolean"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]}, "messages[0]",
         "only assistant"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
         "messages[0].tool_calls[0].function", "Field required"),
    ],
)  # fmt: skip
def test_bad_tools_are_refused_naming_the_parameter(extra, param, words):
    error = _refused(schema.parse_chat, {**CHAT, **extra})
    assert error.param == param and words in error.message, error.message


def test_chat_logprobs_and_n():
    request = schema.parse_chat({**CHAT, "logprobs": True, "top_logprobs": 3, "n": 2}).request
    assert request.sampling.top_logprobs == 3 and request.n == 2
    plain = schema.parse_chat({**CHAT, "logprobs": True}).request
    assert plain.sampling.HasField("top_logprobs") and plain.sampling.top_logprobs == 0
    off = schema.parse_chat({**CHAT, "logprobs": False}).request
    assert not off.sampling.HasField("top_logprobs") and off.n == 1


def test_completion_prompts_fan_out_text_and_token_ids():
    call = schema.parse_completion(
        {"model": "m", "prompt": ["a", [5, 6], "b"], "n": 2, "logprobs": 2, "max_tokens": 4}
    )
    assert [r.prompt for r in call.requests] == ["a", "", "b"]
    assert [list(r.prompt_tokens) for r in call.requests] == [[], [5, 6], []]
    assert all(r.n == 2 and r.sampling.top_logprobs == 2 for r in call.requests)
    assert all(r.sampling.max_tokens == 4 for r in call.requests) and call.n == 2
    tokens = schema.parse_completion({"model": "m", "prompt": [1, 2, 3]})
    assert len(tokens.requests) == 1 and list(tokens.request.prompt_tokens) == [1, 2, 3]
    echo = schema.parse_completion({"model": "m", "prompt": ["x", "y"], "echo": True})
    assert echo.echoed == ("x", "y")


def _lp(piece: bytes, logprob: float, *top: tuple[bytes, float]) -> gen_pb.TokenLogprobs:
    return gen_pb.TokenLogprobs(
        chosen=gen_pb.TokenLogprob(token_id=1, piece=piece, logprob=logprob),
        top=[gen_pb.TokenLogprob(token_id=2, piece=p, logprob=v) for p, v in top],
    )


def test_whole_chat_with_tool_calls_reasoning_logprobs_and_two_choices():
    usage = gen_pb.Usage(prompt_tokens=10, completion_tokens=3)
    chunks = [
        Chunk(index=0, reasoning="Think.", logprobs=[_lp(b"T", -0.5, (b"T", -0.5))]),
        Chunk(index=1, text="Sunny", logprobs=[_lp(b"\xc3", -1.0)]),
        Chunk(index=0, tool_calls=[
            Delta(index=0, id="call_a", name="get_weather", arguments='{"ci'),
        ]),
        Chunk(index=0, tool_calls=[Delta(index=0, arguments='ty": "Oslo"}')]),
        Chunk(index=1, finish_reason=gen_pb.FINISH_REASON_STOP, usage=usage),
        Chunk(index=0, finish_reason=gen_pb.FINISH_REASON_TOOL_CALLS, usage=usage),
    ]  # fmt: skip
    body = schema.chat_completion("c", 1, "m", chunks, logprobs=True)
    parsed = ChatCompletion.model_validate(body)
    first, second = parsed.choices
    assert (first.index, first.finish_reason, second.finish_reason) == (0, "tool_calls", "stop")
    assert first.message.content is None, "null content in a reply that only calls tools"
    (tool_call,) = first.message.tool_calls or []
    assert (tool_call.id, tool_call.function.name) == ("call_a", "get_weather")
    assert json.loads(tool_call.function.arguments) == {"city": "Oslo"}
    assert body["choices"][0]["message"]["reasoning_content"] == "Think."
    assert second.message.content == "Sunny" and second.message.tool_calls is None
    assert second.logprobs is not None and second.logprobs.content is not None
    entry = second.logprobs.content[0]
    assert (entry.token, entry.logprob, entry.bytes) == ("\ufffd", -1.0, [0xC3])
    assert first.logprobs is not None and first.logprobs.content is not None
    assert first.logprobs.content[0].top_logprobs[0].token == "T"
    # The prompt is counted once; the two sequences' completion tokens add up.
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (10, 6)


def test_streamed_tool_calls_and_two_choices_parse_as_openai_chunks():
    stream = schema.ChatStream("c", 1, "m", n=2, logprobs=True)
    opening = stream.start()
    assert [c["choices"][0]["index"] for c in opening] == [0, 1]
    usage = gen_pb.Usage(prompt_tokens=7, completion_tokens=2)
    chunks = [
        Chunk(index=1, text="Hi", logprobs=[_lp(b"Hi", -0.1, (b"Hi", -0.1))]),
        Chunk(index=0, reasoning="Hm"),
        Chunk(index=0, tool_calls=[
            Delta(index=0, id="call_a", name="f", arguments="{}"),
            Delta(index=1, id="call_b", name="g", arguments='{"x"'),
        ]),
        Chunk(index=0, tool_calls=[Delta(index=1, arguments=": 1}")]),
        Chunk(index=0, finish_reason=gen_pb.FINISH_REASON_TOOL_CALLS, usage=usage),
        Chunk(index=1, finish_reason=gen_pb.FINISH_REASON_LENGTH, usage=usage),
    ]  # fmt: skip
    payloads = []
    for chunk in chunks:
        assert not stream.done
        payload = stream.payload(0, chunk)
        assert payload is not None
        payloads.append(payload)
    assert stream.done
    parsed = [ChatCompletionChunk.model_validate(p) for p in opening + payloads]
    hi = parsed[2].choices[0]
    assert (hi.index, hi.delta.content) == (1, "Hi")
    assert hi.logprobs is not None and hi.logprobs.content is not None
    assert hi.logprobs.content[0].top_logprobs[0].logprob == pytest.approx(-0.1)
    assert payloads[1]["choices"][0]["delta"] == {"reasoning_content": "Hm"}
    calls = parsed[4].choices[0].delta.tool_calls or []
    assert [(c.index, c.id, c.type, c.function.name) for c in calls if c.function] == [
        (0, "call_a", "function", "f"), (1, "call_b", "function", "g"),
    ]  # fmt: skip
    # Later deltas of a call only append to its arguments, as OpenAI streams them.
    assert payloads[3]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 1, "function": {"arguments": ": 1}"}}
    ]
    finishes = [(c.choices[0].index, c.choices[0].finish_reason) for c in parsed[-2:]]
    assert finishes == [(0, "tool_calls"), (1, "length")]
    total = ChatCompletionChunk.model_validate(stream.usage()).usage
    assert total is not None and (total.prompt_tokens, total.completion_tokens) == (7, 4)


def test_completion_logprobs_offsets_echo_and_choice_indices():
    usage = gen_pb.Usage(prompt_tokens=2, completion_tokens=2)
    replies = [
        [Chunk(text="é", logprobs=[_lp(b"\xc3", -1.0), _lp(b"\xa9", -2.0)]),
         Chunk(text="b", logprobs=[_lp(b"b", -0.5, (b"b", -0.5), (b"c", -1.5))],
                                finish_reason=gen_pb.FINISH_REASON_LENGTH, usage=usage)],
        [Chunk(index=1, text="z", finish_reason=1, usage=usage),
         Chunk(index=0, text="y", finish_reason=1, usage=usage)],
    ]  # fmt: skip
    body = schema.text_completion("t", 1, "m", replies, n=2, echoed=("ab", "c"), logprobs=True)
    parsed = Completion.model_validate(body)
    assert [(c.index, c.text) for c in parsed.choices] == [(0, "abéb"), (2, "cy"), (3, "cz")]
    logprobs = parsed.choices[0].logprobs
    assert logprobs is not None
    # After the echoed "ab": "é" is two tokens that start one character; "b" starts after it.
    assert logprobs.text_offset == [2, 2, 3]
    assert logprobs.token_logprobs == [-1.0, -2.0, -0.5]
    assert logprobs.top_logprobs is not None and logprobs.top_logprobs[2] == {"b": -0.5, "c": -1.5}
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens) == (4, 6)


def test_a_streamed_completion_of_two_prompts_echoes_and_counts_usage_per_prompt():
    stream = schema.CompletionStream("t", 1, "m", prompts=2, n=1, echoed=("p", "q"), logprobs=True)
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in stream.start()] == [
        (0, "p"), (1, "q"),
    ]  # fmt: skip
    usage = gen_pb.Usage(prompt_tokens=3, completion_tokens=1)
    second = stream.payload(1, Chunk(
        text="x", logprobs=[_lp(b"x", -0.2)], finish_reason=1, usage=usage
    ))  # fmt: skip
    assert second is not None and second["choices"][0]["index"] == 1
    assert second["choices"][0]["logprobs"]["text_offset"] == [1], "after the echoed prompt"
    assert not stream.done
    stream.payload(0, Chunk(text="y", finish_reason=1, usage=usage))
    assert stream.done
    assert stream.usage()["usage"]["prompt_tokens"] == 6
    assert stream.usage()["usage"]["completion_tokens"] == 2
