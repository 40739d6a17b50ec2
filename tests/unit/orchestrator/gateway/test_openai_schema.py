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
    assert not call.request.HasField("constraint")


def test_unset_sampling_fields_stay_unset_so_the_worker_applies_its_defaults():
    sampling = schema.parse_chat(CHAT).request.sampling
    for name in ("temperature", "top_p", "top_k", "seed", "max_tokens"):
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
        ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages[0]", "tool"),
        ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content[0]", "only text"),
        ({**CHAT, "temperature": "hot"}, "temperature", "number"),
        ({**CHAT, "temperature": math.nan}, "temperature", "finite"),
        ({**CHAT, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({**CHAT, "max_tokens": 2**31}, "max_tokens", "less than or equal"),
        ({**CHAT, "top_k": 1.5}, "top_k", "integer"),
        ({**CHAT, "stream": "yes"}, "stream", "boolean"),
        ({**CHAT, "stop": ["a"] * 17}, "stop", "at most 16"),
        ({**CHAT, "n": 2}, "n", "n must be 1"),
        ({**CHAT, "logprobs": True}, "logprobs", "not supported"),
        ({**CHAT, "logit_bias": {"token": 1}}, "logit_bias", "not a token id"),
        ({**CHAT, "logit_bias": {"-4": 1}}, "logit_bias", "not a token id"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools", "tool calling"),
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


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [[1, 2, 3]]}, "prompt"),
        ({"echo": True}, "echo"),
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
def test_streamed_chat_chunks_parse_as_openai_chunks():
    first = schema.chat_chunk("c-1", 100, "gemma", role=True)
    middle = schema.chat_chunk("c-1", 100, "gemma", text="Hel")
    last = schema.chat_chunk("c-1", 100, "gemma", finish_reason="length")
    usage = schema.usage_chunk("c-1", 100, "gemma", USAGE, "chat.completion.chunk")
    parsed = [ChatCompletionChunk.model_validate(c) for c in (first, middle, last, usage)]
    assert parsed[0].choices[0].delta.role == "assistant"
    assert parsed[1].choices[0].delta.content == "Hel"
    assert parsed[2].choices[0].finish_reason == "length"
    assert parsed[3].choices == [] and parsed[3].usage is not None
    assert parsed[3].usage.total_tokens == 14
    assert parsed[3].usage.prompt_tokens_details.cached_tokens == 6


def test_whole_chat_completion_parses_and_carries_llama_server_timings():
    body = schema.chat_completion(
        "c-2", 100, "gemma", "Hi!", gen_pb.FINISH_REASON_STOP, USAGE, TIMINGS
    )
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "Hi!"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None and parsed.usage.completion_tokens == 4
    assert body["timings"] == {
        "prompt_n": 4, "prompt_ms": 12.5, "prompt_per_second": 320.0, "predicted_n": 4,
        "predicted_ms": 80.0, "predicted_per_second": 50.0, "cache_n": 6, "ttft_ms": 15.0,
    }  # fmt: skip


def test_text_completions_parse():
    whole = schema.text_completion(
        "t-1", 100, "m", "sky", gen_pb.FINISH_REASON_LENGTH, USAGE, TIMINGS
    )
    assert Completion.model_validate(whole).choices[0].finish_reason == "length"
    last = schema.completion_chunk("t-1", 100, "m", text="s", finish_reason="stop")
    assert Completion.model_validate(last).choices[0].text == "s"
    # Mid-stream chunks carry finish_reason null, as OpenAI's do; the client's Completion
    # type does not allow that, which is why it parses stream chunks without validation.
    middle = schema.completion_chunk("t-1", 100, "m", text="s")
    assert middle["choices"][0]["finish_reason"] is None


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
